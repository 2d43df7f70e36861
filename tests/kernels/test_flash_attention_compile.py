"""Compile gate for flash attention: every tile of kernels/tiles.json builds for every GPU it runs on.

No GPU needed: tests/kernels/aot.py compiles ahead of time. For each GPU row of "attention.fwd",
"attention.bwd" (the one-launch backward of short sequences), "attention.dkdv" and "attention.dq",
its configuration is built for every architecture of the row's tile families (sm_80: 80; sm_86: 86,
89, 120; sm_90: 90, 100; sm_89 runs sm_86's build, judged by sm_89's limits; aot.FAMILY_ARCHS), in
every numerics of its dtype class (16bit: float16 and bfloat16;
fp32: "tf32" and "ieee"), at the largest head dim the launcher sends to the row (BLOCK_D, the next
power of two, sets the shared memory and most registers). Causal builds (the mask changes registers
a little, nothing else) are made in bfloat16 and TF32; bfloat16 (the default autocast dtype) is also
built at head dim 64 (ViT-B/L, CLIP), causal and not, where the row takes it besides a larger one.
The delta kernel (fixed DELTA_BLOCK_M, Triton's default warps and stages) builds per dtype and arch
at head dim 128. Specialized like a launch on contiguous (B, H, N, D) tensors with N = 197 (unit
strides constant, 16-divisible pointers and strides marked). 237 builds (279 variants): about 2 of
the three gates' 4.5 minutes on 2 cores with a cold Triton cache; the three take 25 s with a warm one.

Asserted per build: it compiles; its shared memory (dynamic + static) fits the arch's per-block
limit, and its tensor memory sm_100's; its matmuls run on the arch's tensor cores (HMMA on sm_8x and
sm_120, HGMMA on sm_90, UTCHMMA on sm_100), or for "ieee" on none; on sm_90, the target, no 16-bit or
TF32 build spills; the fused backward in 16-bit at head dim 64 holds two CTAs per SM on sm_80 and
sm_90. Spills elsewhere and in "ieee" builds (the exact-float32 path, not a speed path)
are printed and flagged, not asserted. The table (registers, spills, shared memory and its limit,
CTAs per SM and what limits them, matrix instructions, build seconds) prints with ``-s`` or ``-rA``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("triton")

from aot import (CLASS_NUMERICS, AotRequest, build_all, build_arch, build_label, check_build,  # noqa: E402
                 family_archs, launch_request, row_uses)
from vitfast.kernels import flash_attention as fa  # noqa: E402
from vitfast.kernels import tables  # noqa: E402

B, H, N = 2, 12, 197  # a ViT-B/16 sequence: N is no multiple of 16, as at most ViT lengths
# What the launcher takes: head dims that are multiples of 8 from 16 to 128, any sequence length.
HEAD_DIMS = range(fa.MIN_HEAD_DIM, fa.MAX_HEAD_DIM + 1, 8)
COMMON_HEAD_DIM = 64  # ViT-B/L, CLIP: built wherever a row takes it, besides the row's largest

_KERNELS = {"attention.fwd": "fwd", "attention.bwd": "bwd", "attention.dkdv": "dkdv", "attention.dq": "dq"}
_JIT = {"fwd": fa._attn_fwd_kernel, "delta": fa._attn_bwd_delta_kernel, "dkdv": fa._attn_bwd_dkdv_kernel,
        "dq": fa._attn_bwd_dq_kernel, "bwd": fa._attn_bwd_fused_kernel}
# The tensors each kernel takes, in order, and their element type ("io" is q's dtype).
_TENSORS = {
    "fwd": (("Q", "io"), ("K", "io"), ("V", "io"), ("O", "io"), ("LSE", "fp32")),
    "delta": (("O", "io"), ("DO", "io"), ("DELTA", "fp32")),
    "dkdv": (("Q", "io"), ("K", "io"), ("V", "io"), ("DO", "io"), ("DK", "io"), ("DV", "io"),
             ("LSE", "fp32"), ("DELTA", "fp32")),
    "dq": (("Q", "io"), ("K", "io"), ("V", "io"), ("DO", "io"), ("DQ", "io"), ("LSE", "fp32"), ("DELTA", "fp32")),
    "bwd": (("Q", "io"), ("K", "io"), ("V", "io"), ("O", "io"), ("DO", "io"), ("DQ", "io"), ("DK", "io"),
            ("DV", "io"), ("LSE", "fp32"), ("DELTA", "fp32"), ("DQ_ACC", "fp32")),
}


@dataclass(frozen=True)
class Variant:
    kernel: str  # "fwd", "delta", "bwd", "dkdv", "dq"
    config: tables.TileConfig | None  # None for the delta kernel
    dtype: str
    precision: str
    head_dim: int
    causal: bool
    arch: int  # whose limits apply; the build is for build_arch(arch)

    @property
    def id(self) -> str:
        label = build_label(self.config if self.config else f"M={fa.DELTA_BLOCK_M}", self.dtype, self.precision)
        return f"{self.kernel}-{label}-d{self.head_dim}{'-causal' if self.causal else ''}-sm{self.arch}"

    def request(self) -> AotRequest:
        D = self.head_dim
        tensors = _TENSORS[self.kernel]
        args: dict[str, object] = {name: "*" + (self.dtype if ty == "io" else ty) for name, ty in tensors}
        for name, ty in tensors:
            if ty == "io":  # contiguous (B, H, N, D), strides in the kernel's order
                s = name.lower()
                args.update({f"stride_{s}b": H * N * D, f"stride_{s}h": N * D,
                             f"stride_{s}n": D, f"stride_{s}d": 1})
        args.update(H=H, N=N)
        if self.kernel != "delta":
            args["qk_scale"] = D ** -0.5 * fa.LOG2E
        if self.kernel in ("bwd", "dkdv", "dq"):
            args["sm_scale"] = D ** -0.5
        if self.config is None:
            meta, launch = dict(HEAD_DIM=D, BLOCK_D=fa._block_d(D), BLOCK_M=fa.DELTA_BLOCK_M), {}
        else:
            meta = dict(CAUSAL=self.causal, HEAD_DIM=D, BLOCK_D=fa._block_d(D), PRECISION=self.precision,
                        **dict(self.config.params))
            launch = dict(num_warps=self.config.num_warps, num_stages=self.config.num_stages)
        return launch_request(_JIT[self.kernel], args, meta, arch=build_arch(self.arch), **launch)


def _shapes(dtype: str, precision: str, head_dims: tuple[int, ...]) -> list[tuple[int, bool]]:
    """(head dim, causal) pairs to build a row at, given the head dims the launcher sends to it.

    The largest head dim takes the most shared memory and registers, so every numerics is built there.
    The causal mask changes neither shared memory nor tensor-core use, only registers a little: it is
    built in bfloat16 (the default autocast dtype; float16 shares every layout with it) and TF32, not in
    float16 or "ieee" (exact float32, not a speed path). Head dim 64 (ViT-B/L, CLIP) is built in
    bfloat16, causal (CLIP's text tower) and not, where the row takes it besides a larger one."""
    masks = (False, True) if dtype == "bf16" or (dtype, precision) == ("fp32", "tf32") else (False,)
    shapes = [(head_dims[-1], causal) for causal in masks]
    if dtype == "bf16" and COMMON_HEAD_DIM in head_dims[:-1]:
        shapes += [(COMMON_HEAD_DIM, causal) for causal in masks]
    return shapes


def _variants() -> list[Variant]:
    out: dict[str, Variant] = {}
    sizes = {r.max_size for k in _KERNELS for r in tables.tile_rows(k) if r.max_size} | {1 << 30}
    for name, kernel in _KERNELS.items():
        for use in row_uses(name, HEAD_DIMS, sizes):
            for arch in family_archs([use.family]):
                for dtype, precision in CLASS_NUMERICS[use.dtype_class]:
                    for D, causal in _shapes(dtype, precision, use.head_dims):
                        v = Variant(kernel, use.row.config, dtype, precision, D, causal, arch)
                        out.setdefault(v.id, v)
    # The delta kernel has no matmul and one tile: per dtype and arch, at the widest head dim.
    for arch in family_archs(("sm_80", "sm_86", "sm_90")):
        for dtype in ("fp16", "bf16", "fp32"):
            v = Variant("delta", None, dtype, "tf32", fa.MAX_HEAD_DIM, False, arch)
            out[v.id] = v
    return list(out.values())


VARIANTS = _variants()


@pytest.fixture(scope="module")
def builds():
    return build_all("flash-attention compile gate", {v.id: (v.arch, v.request()) for v in VARIANTS})


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_compiles(builds, variant: Variant) -> None:
    result = builds[variant.id]
    if variant.config is not None and not isinstance(result, Exception):
        assert (result.num_warps, result.num_stages) == (variant.config.num_warps, variant.config.num_stages)
    # The delta kernel has no matmul; every other kernel's configs must stay on tensor cores unspilled.
    check_build(result, variant.id, precision=None if variant.kernel == "delta" else variant.precision,
                no_spills=True)


# ViT-B/L and CLIP (head dim 64) in 16-bit: the one-launch backward must leave room for a second program
# on each SM of the two families the tiles are written for, so one program's loads overlap another's math.
OCCUPANCY_VARIANTS = [v for v in VARIANTS
                      if v.kernel == "bwd" and v.dtype in ("fp16", "bf16") and v.head_dim <= 64 and v.arch in (80, 90)]


@pytest.mark.parametrize("variant", OCCUPANCY_VARIANTS, ids=lambda v: v.id)
def test_fused_backward_runs_two_programs_per_sm(builds, variant: Variant) -> None:
    result = builds[variant.id]
    assert not isinstance(result, Exception), result
    assert result.ctas_per_sm >= 2, (f"{variant.id}: {result.ctas_per_sm} CTA per SM ({result.occupancy_limiter}, "
                                     f"{result.registers} registers × {32 * result.num_warps} threads)")


def test_occupancy_is_checked_for_both_families() -> None:
    assert {v.arch for v in OCCUPANCY_VARIANTS} == {80, 90}
