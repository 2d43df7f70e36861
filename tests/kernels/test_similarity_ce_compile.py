"""Compile gate for the CLIP-loss kernels (kernels/similarity_ce.py): every tile of kernels/tiles.json
("clip.lse", the log-sum-exp pass, and "clip.grad", the gradient pass) builds for every GPU it runs on
(no GPU needed; see tests/kernels/aot.py).

Each GPU row's configuration is built for every architecture of its tile families (sm_80: 80; sm_86:
86, 89, 120; sm_90: 90, 100; sm_89 runs sm_86's build, judged by sm_89's limits; aot.FAMILY_ARCHS), in
every numerics of the dtype classes the launcher sends to it (16bit: float16 and bfloat16; fp32:
"tf32" and "ieee"), specialized like a launch at N=32768. The gradient pass with both softmaxes
(single process) at embedding dims 64, 80 (a tail in the D loop) and 512 (256-wide output blocks),
and with one (the gathered multi-GPU passes) at 512; "ieee" (exact float32, not a speed path) at
512 with both. The LSE pass takes D at run time: one build per numerics and arch. 100 builds (120
variants): under one of the three gates' 4.5 minutes on 2 cores with a cold Triton cache.

Asserted: it compiles, fits shared (and tensor) memory, uses the arch's tensor cores (none for
"ieee"), and does not spill on sm_90. The table (registers, spills, shared memory and its limit,
CTAs per SM and what limits them) prints with ``-s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("triton")

from aot import (CLASS_NUMERICS, AotRequest, build_all, build_arch, build_label, check_build,  # noqa: E402
                 family_archs, launch_request, row_uses)
from vitfast.kernels import similarity_ce as sce  # noqa: E402
from vitfast.kernels import tables  # noqa: E402

N = 32768
DIMS = (64, 80, 512)
# The gradient pass's softmax terms: "both" (single process), "row" or "col" (gathered, multi-GPU).
TERMS = {"lse": ("",), "grad": ("both", "row", "col")}


@dataclass(frozen=True)
class Variant:
    kernel: str  # "lse" or "grad"
    terms: str
    config: tables.TileConfig
    dtype: str
    precision: str
    dim: int
    arch: int  # whose limits apply; the build is for build_arch(arch)

    @property
    def id(self) -> str:
        label = build_label(self.config, self.dtype, self.precision)
        return f"{self.kernel}{'-' + self.terms if self.terms else ''}-{label}-d{self.dim}-sm{self.arch}"

    def request(self) -> AotRequest:
        dim = self.dim
        args = {"A": "*" + self.dtype, "B": "*" + self.dtype, "SCALE": "*fp32", "BIAS": "*fp32"}
        if self.kernel == "lse":
            fn = sce._clip_lse_kernel
            args |= {"LSE": "*fp32", "n_a": N, "n_b": N, "D": dim, "stride_a": dim, "stride_ak": 1,
                     "stride_b": dim, "stride_bk": 1}
            meta = {}
        else:
            fn = sce._clip_grad_kernel
            args |= {"LSE_A": "*fp32", "LSE_B": "*fp32", "G": "*fp32", "ROW_SUMS": "*fp32", "n_a": N, "n_b": N,
                     "D": dim, "stride_a": dim, "stride_ak": 1, "stride_b": dim, "stride_bk": 1, "stride_g": dim}
            meta = {"BLOCK_DO": sce.grad_block_do(dim), "ROW_TERM": self.terms != "col",
                    "COL_TERM": self.terms != "row"}
        meta |= dict(HAS_BIAS=True, PRECISION=self.precision, **dict(self.config.params))
        return launch_request(fn, args, meta, arch=build_arch(self.arch), num_warps=self.config.num_warps,
                              num_stages=self.config.num_stages)


def _variants() -> list[Variant]:
    out: dict[str, Variant] = {}
    for kernel, terms in TERMS.items():
        for use in row_uses(f"clip.{kernel}", DIMS, [N]):
            for arch in family_archs([use.family]):
                for dtype, precision in CLASS_NUMERICS[use.dtype_class]:
                    # The one-sided passes differ from "both" only in which softmax they add, and "ieee"
                    # (exact float32, not a speed path) only in its dot: built at the widest dim (the most
                    # shared memory and registers). The LSE pass takes D as a runtime argument, so one
                    # build serves every dim (all multiples of 16).
                    for term in terms if precision != "ieee" else terms[:1]:
                        for dim in use.head_dims if term == "both" and precision != "ieee" else use.head_dims[-1:]:
                            v = Variant(kernel, term, use.row.config, dtype, precision, dim, arch)
                            out.setdefault(v.id, v)
    return list(out.values())


VARIANTS = _variants()


@pytest.fixture(scope="module")
def builds():
    return build_all("clip-loss compile gate", {v.id: (v.arch, v.request()) for v in VARIANTS})


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_compiles(builds, variant: Variant) -> None:
    result = builds[variant.id]
    if not isinstance(result, Exception):
        assert (result.num_warps, result.num_stages) == (variant.config.num_warps, variant.config.num_stages)
    check_build(result, variant.id, precision=variant.precision, no_spills=True)
