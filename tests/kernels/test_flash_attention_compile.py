"""Compile gate for flash attention: every configuration the launcher can pick builds for sm_80 and sm_90.

No GPU needed: tests/aot.py compiles ahead of time. Every tile config the launcher may choose
(``candidate_configs(kernel, dtype)``; DELTA_BLOCK_M for the delta kernel) is built for sm_80 and
sm_90, specialized the way a launch on contiguous (B, H, N, D) tensors with N = 197 specializes it
(unit strides constant, 16-divisible pointers and strides marked). About 4 minutes on 2 cores with a
cold Triton cache, seconds with a warm one:

- float16 and bfloat16: head dims 64 (BLOCK_D 64) and 80 (uneven: BLOCK_D 128 with a masked tail),
  causal and not. Head dim 128 builds the same BLOCK_D 128 tiles as 80 (measured: the same shared
  memory for every config, registers within a few).
- float32 with "tf32" (torch.backends.cuda.matmul.allow_tf32): head dim 128, the most shared memory
  and registers; causal and not.
- float32 with "ieee" (torch's default): head dims 64 and 128, not causal only (the slowest builds:
  matmuls on FMA units).

Asserted per build: it compiles; its shared memory fits the arch's per-block limit; its matmuls run
on tensor cores (HGMMA on sm_90, HMMA on sm_80), or for "ieee" on none; on sm_90, the target, no
16-bit or TF32 build spills. Spills on sm_80 and in "ieee" builds (the exact-float32 path, not a
speed path) are printed and flagged in the table, not asserted. The table (registers, spills, shared
memory, tensor-core instructions per build) prints with ``-s`` or ``-rA``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from aot import AotRequest, AotResult, check_build, compile_all, launch_request  # noqa: E402
from vitfast.kernels import flash_attention as fa  # noqa: E402

ARCHS = (80, 90)
B, H, N = 2, 12, 197  # a ViT-B/16 sequence: N is no multiple of 16, as at most ViT lengths

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (dtype, precision, head dims, causal settings); the launcher passes "tf32" for 16-bit inputs, where
# it has no effect. The slow "ieee" builds come first so the pool does not end on them.
_GRID = (
    ("fp32", "ieee", (64, 128), (False,)),
    ("fp16", "tf32", (64, 80), (False, True)),
    ("bf16", "tf32", (64, 80), (False, True)),
    ("fp32", "tf32", (128,), (False, True)),
)
_KERNELS = {
    "fwd": fa._attn_fwd_kernel,
    "dkdv": fa._attn_bwd_dkdv_kernel,
    "dq": fa._attn_bwd_dq_kernel,
}
# The tensors each kernel takes, in order, and their element type ("io" is q's dtype).
_TENSORS = {
    "fwd": (("Q", "io"), ("K", "io"), ("V", "io"), ("O", "io"), ("LSE", "fp32")),
    "delta": (("O", "io"), ("DO", "io"), ("DELTA", "fp32")),
    "dkdv": (("Q", "io"), ("K", "io"), ("V", "io"), ("DO", "io"), ("DK", "io"), ("DV", "io"),
             ("LSE", "fp32"), ("DELTA", "fp32")),
    "dq": (("Q", "io"), ("K", "io"), ("V", "io"), ("DO", "io"), ("DQ", "io"), ("LSE", "fp32"), ("DELTA", "fp32")),
}


@dataclass(frozen=True)
class Variant:
    kernel: str  # "fwd", "delta", "dkdv", "dq"
    config: fa.TileConfig | None  # None for the delta kernel: DELTA_BLOCK_M, Triton's default warps and stages
    dtype: str
    precision: str
    head_dim: int
    causal: bool
    arch: int

    @property
    def row(self) -> str:
        """The name of its table row: everything but the arch."""
        c = self.config
        tile = f"m{c.block_m}n{c.block_n}w{c.num_warps}s{c.num_stages}" if c else f"m{fa.DELTA_BLOCK_M}"
        numerics = f"{self.dtype}-{self.precision}" if self.dtype == "fp32" else self.dtype
        return f"{self.kernel}-{tile}-{numerics}-d{self.head_dim}{'-causal' if self.causal else ''}"

    @property
    def id(self) -> str:
        return f"{self.row}-sm{self.arch}"

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
        if self.kernel in ("dkdv", "dq"):
            args["sm_scale"] = D ** -0.5
        if self.config is None:
            kernel, warps, stages = fa._attn_bwd_delta_kernel, None, None
            meta = dict(HEAD_DIM=D, BLOCK_D=fa._block_d(D), BLOCK_M=fa.DELTA_BLOCK_M)
        else:
            kernel, warps, stages = _KERNELS[self.kernel], self.config.num_warps, self.config.num_stages
            meta = dict(CAUSAL=self.causal, HEAD_DIM=D, BLOCK_D=fa._block_d(D), BLOCK_M=self.config.block_m,
                        BLOCK_N=self.config.block_n, PRECISION=self.precision)
        return launch_request(kernel, args, meta, arch=self.arch, num_warps=warps, num_stages=stages)


def _variants() -> list[Variant]:
    out = []
    for dtype, precision, head_dims, causals in _GRID:
        for D in head_dims:
            for arch in ARCHS:
                if precision == "tf32":  # the delta kernel has no matmul: one build per dtype and head dim
                    out.append(Variant("delta", None, dtype, precision, D, False, arch))
                for kernel in _KERNELS:
                    for cfg in fa.candidate_configs(kernel, _DTYPES[dtype]):
                        for causal in causals:
                            out.append(Variant(kernel, cfg, dtype, precision, D, causal, arch))
    return out


VARIANTS = _variants()


def _cell(result: AotResult | Exception) -> str:
    if isinstance(result, Exception):
        return f"{'FAILED TO COMPILE':<49}"
    families: Counter[str] = Counter()
    for op, n in result.mma_ops.items():
        families[op.split(".")[0]] += n
    mma = "+".join(f"{op}:{n}" for op, n in sorted(families.items()))
    flags = ("!spill" if result.spills else "") + ("!smem" if not result.fits_shared_memory else "")
    return (f"{result.registers:>4} {result.stack_bytes:>5} {result.spill_stores:>5}/{result.spill_loads:<5} "
            f"{result.shared_bytes:>6} {mma or '-':<10} {flags:<11}")


def _table(results: dict[str, AotResult | Exception]) -> str:
    """One row per variant, one column group per arch, rows grouped by kernel."""
    rows: dict[str, dict[int, AotResult | Exception]] = {}
    order = {k: i for i, k in enumerate(("fwd", "delta", "dkdv", "dq"))}
    for v in sorted(VARIANTS, key=lambda v: order[v.kernel]):
        rows.setdefault(v.row, {})[v.arch] = results[v.id]
    head = f"{'regs':>4} {'stack':>5} {'STL/LDL':<11} {'smem':>6} {'mma':<10} {'':<11}"
    lines = [f"{'':<40} " + " | ".join(f"sm_{a:<{len(head) - 3}}" for a in ARCHS),
             f"{'variant':<40} " + " | ".join(head for _ in ARCHS)]
    lines += [f"{row:<40} " + " | ".join(_cell(cells[a]) for a in ARCHS) for row, cells in rows.items()]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def builds() -> dict[str, AotResult | Exception]:
    start = time.perf_counter()
    results = dict(zip((v.id for v in VARIANTS), compile_all(v.request() for v in VARIANTS)))
    print(f"\nflash-attention compile gate: {len(VARIANTS)} builds in {time.perf_counter() - start:.0f} s. "
          "Per thread: registers, stack bytes, spill store/load instructions; per block: shared memory bytes; "
          "tensor-core instructions.\n" + _table(results))
    return results


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_compiles(builds, variant: Variant) -> None:
    result = builds[variant.id]
    if variant.config is not None and not isinstance(result, Exception):
        assert (result.num_warps, result.num_stages) == (variant.config.num_warps, variant.config.num_stages)
    # The delta kernel has no matmul; every other kernel's configs must stay on tensor cores unspilled.
    check_build(result, variant.id, precision=None if variant.kernel == "delta" else variant.precision,
                no_spills=True)
