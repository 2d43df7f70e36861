"""Compile gate for the SigLIP-loss kernels (kernels/similarity_sigmoid.py): they run on the CLIP loss's
tile rows ("clip.lse" for the loss pass, "clip.grad" for the gradient passes), and every one of those rows
must build them for every GPU it runs on (no GPU needed; see tests/kernels/aot.py), as
test_similarity_ce_compile.py builds the CLIP kernels: each row for every architecture of its tile families,
in the numerics of its dtype class, specialized like a launch at N=32768; the gradient pass at the narrowest
and widest BLOCK_D its row serves ("ieee": the widest only), the loss pass once (D is a runtime argument).

Asserted: it compiles, fits shared (and tensor) memory, uses the arch's tensor cores (none for "ieee"), and
does not spill on sm_90; gradient tiles under 64 rows run mma.sync (HMMA) on sm_90 and sm_100, as the CLIP
gradient pass's do. ``-s`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("triton")

from aot import (CLASS_NUMERICS, AotRequest, build_all, build_arch, build_label, check_build,  # noqa: E402
                 family_archs, launch_request, row_uses)
from vitfast.kernels import similarity_sigmoid as ssg  # noqa: E402
from vitfast.kernels import tables  # noqa: E402

N = 32768
DIMS = (64, 256, 512, 1024)
WARP_GROUP_ROWS = 64


@dataclass(frozen=True)
class Variant:
    kernel: str  # "loss" or "grad"
    config: tables.TileConfig
    dtype: str
    precision: str
    dim: int
    arch: int

    @property
    def id(self) -> str:
        return f"{self.kernel}-{build_label(self.config, self.dtype, self.precision)}-d{self.dim}-sm{self.arch}"

    def request(self) -> AotRequest:
        dim = self.dim
        args = {"A": "*" + self.dtype, "B": "*" + self.dtype, "SCALE": "*fp32", "BIAS": "*fp32"}
        shape = {"n_a": N, "n_b": N, "D": dim, "stride_a": dim, "stride_ak": 1, "stride_b": dim, "stride_bk": 1,
                 "offset": 0, "blocks_per_split": N // self.config["BLOCK_N"]}
        if self.kernel == "loss":
            fn, meta = ssg._siglip_loss_kernel, {}
            args |= {"PART": "*fp32", **shape}
        else:
            fn, meta = ssg._siglip_grad_kernel, {"BLOCK_D": ssg.grad_block_d(dim)}
            args |= {"G": "*fp32", "ROW_SUMS": "*fp32", **shape}
        meta |= dict(PRECISION=self.precision, **dict(self.config.params))
        return launch_request(fn, args, meta, arch=build_arch(self.arch), num_warps=self.config.num_warps,
                              num_stages=self.config.num_stages)

    @property
    def warp_group_tile(self) -> bool:
        return self.kernel == "loss" or self.config["BLOCK_M"] >= WARP_GROUP_ROWS


def _variants() -> list[Variant]:
    out: dict[str, Variant] = {}
    for kernel, row in (("loss", "clip.lse"), ("grad", "clip.grad")):
        for use in row_uses(row, DIMS, [N]):
            dims = sorted({use.head_dims[0], use.head_dims[-1]}) if kernel == "grad" else use.head_dims[-1:]
            for arch in family_archs([use.family]):
                for dtype, precision in CLASS_NUMERICS[use.dtype_class]:
                    for dim in dims if precision != "ieee" else dims[-1:]:
                        v = Variant(kernel, use.row.config, dtype, precision, dim, arch)
                        out.setdefault(v.id, v)
    return list(out.values())


VARIANTS = _variants()


@pytest.fixture(scope="module")
def builds():
    return build_all("siglip-loss compile gate", {v.id: (v.arch, v.request()) for v in VARIANTS})


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
