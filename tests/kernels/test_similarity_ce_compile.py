"""Compile gate for the CLIP-loss kernels (kernels/similarity_ce.py): every tile of kernels/tiles.json
("clip.lse", the log-sum-exp pass, and "clip.grad", the gradient pass) builds for every GPU it runs on
(no GPU needed; see tests/kernels/aot.py).

Each GPU row's configuration is built for every architecture of its tile families (sm_80: 80; sm_86:
86, 89, 120; sm_90: 90, 100; sm_89 runs sm_86's build, judged by sm_89's limits; aot.FAMILY_ARCHS), in
the numerics of the dtype classes the launcher sends to it (16bit: float16 and bfloat16; fp32: "tf32"
and "ieee"), specialized like a launch at N=32768.

The gradient pass's D-wide accumulator makes BLOCK_D (the next power of two of D) a constexpr, so each
row is built at the narrowest and widest BLOCK_D it serves among 64, 256, 512 and 1024 (D itself is a
runtime argument: 768 runs 1024's build, 80 a 128-wide one between 64's and 256's), with both
softmaxes (single process). The one-sided passes (the gathered multi-GPU ones, "row" and "col") are
built at the row's widest dim in float16 and "tf32" (bfloat16 compiles the same code with another
element type); "ieee" (exact float32, not a speed path) with both softmaxes at the widest dim. The LSE
pass takes D at run time: one build per numerics and arch, with the column statistics (single process,
"cols") and without (gathered, "rows"; float16 and "tf32" only).

Asserted: it compiles, fits shared (and tensor) memory, uses the arch's tensor cores (none for "ieee"),
and does not spill on sm_90. The gradient tiles for D > 512 have 16 rows (a 64-row fp32 accumulator
D wide would not fit the register file), too few for a 64-row warp group, so on sm_90 and sm_100 they
run mma.sync (HMMA) rather than wgmma or tcgen05; that is asserted for them instead. The table
(registers, spills, shared memory and its limit, CTAs per SM and what limits them) prints with ``-s``.
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
DIMS = (64, 256, 512, 1024)
# The passes' variants: the LSE pass with or without the column statistics; the gradient pass's
# softmax terms, "both" (single process), "row" or "col" (gathered, multi-GPU). The first of each is
# the single-process one, built at every dim and in every numerics.
TERMS = {"lse": ("cols", "rows"), "grad": ("both", "row", "col")}
# The numerics the other variants are built in: one per dtype class.
ONE_SIDED_NUMERICS = {("fp16", "tf32"), ("fp32", "tf32")}
# Warp-group matmuls (wgmma on sm_90, tcgen05 on sm_100) need 64 rows; narrower tiles use mma.sync.
WARP_GROUP_ROWS = 64


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
        return f"{self.kernel}-{self.terms}-{label}-d{self.dim}-sm{self.arch}"

    def request(self) -> AotRequest:
        dim = self.dim
        args = {"A": "*" + self.dtype, "B": "*" + self.dtype, "SCALE": "*fp32", "BIAS": "*fp32"}
        if self.kernel == "lse":
            fn = sce._clip_lse_kernel
            groups, per_split, _ = sce.lse_grid(N, N, self.config["BLOCK_M"], self.config["BLOCK_N"], True)
            args |= {"ROW_PART": "*fp32", "COL_PART": "*fp32", "n_a": N, "n_b": N, "D": dim, "stride_a": dim,
                     "stride_ak": 1, "stride_b": dim, "stride_bk": 1, "groups": groups,
                     "blocks_per_split": per_split}
            meta = {"COLUMNS": self.terms == "cols"}
        else:
            fn = sce._clip_grad_kernel
            args |= {"LSE_A": "*fp32", "LSE_B": "*fp32", "G": "*fp32", "ROW_SUMS": "*fp32", "n_a": N, "n_b": N,
                     "D": dim, "stride_a": dim, "stride_ak": 1, "stride_b": dim, "stride_bk": 1,
                     "blocks_per_split": N // self.config["BLOCK_N"]}
            meta = {"BLOCK_D": sce.grad_block_d(dim), "ROW_TERM": self.terms != "col",
                    "COL_TERM": self.terms != "row"}
        meta |= dict(HAS_BIAS=True, PRECISION=self.precision, **dict(self.config.params))
        return launch_request(fn, args, meta, arch=build_arch(self.arch), num_warps=self.config.num_warps,
                              num_stages=self.config.num_stages)

    @property
    def warp_group_tile(self) -> bool:
        """Whether sm_90/sm_100 can run this tile's dots as warp-group matmuls."""
        return self.kernel == "lse" or self.config["BLOCK_M"] >= WARP_GROUP_ROWS


def _variants() -> list[Variant]:
    out: dict[str, Variant] = {}
    for kernel, terms in TERMS.items():
        for use in row_uses(f"clip.{kernel}", DIMS, [N]):
            # The LSE pass takes D at run time: one build serves every dim (all multiples of 16).
            dims = sorted({use.head_dims[0], use.head_dims[-1]}) if kernel == "grad" else use.head_dims[-1:]
            for arch in family_archs([use.family]):
                for dtype, precision in CLASS_NUMERICS[use.dtype_class]:
                    for term in terms:
                        first = term == terms[0]
                        if not first and (dtype, precision) not in ONE_SIDED_NUMERICS:
                            continue
                        for dim in dims if first and precision != "ieee" else dims[-1:]:
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
    if variant.warp_group_tile or variant.arch not in (90, 100):
        check_build(result, variant.id, precision=variant.precision, no_spills=True)
        return
    check_build(result, variant.id, precision=None, no_spills=True)
    if variant.precision != "ieee":
        assert "HMMA" in result.mma_families, f"{variant.id}: no mma.sync (matrix ops: {result.mma_ops or 'none'})"
        assert variant.arch != 90 or not result.spills, f"{variant.id} spills on sm_90 ({result.stack_bytes} bytes)"
