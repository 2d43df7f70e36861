"""Window-attention benchmark: time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.window_attention` at Swin stage shapes.

Library half of `vitfast bench window`. Timing, memory and failure handling are the attention
benchmark's (vitfast.bench.measure_case): every (mode, stage, backend) case is one
:class:`WindowBenchRow`, and a case that cannot run is a row whose ``status`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vitfast.bench import (BACKWARD_FLOP_RATIO, MODES, StatusRow, check_sweep, defaults_for, measure_case,
                           resolve_device)
from vitfast.kernels import window_attention
from vitfast.kernels.window_geometry import effective_window

BACKENDS = ("triton", "sdpa", "eager")


@dataclass(frozen=True)
class WindowStage:
    """One Swin stage's window attention: a height×width map of `channels` channels in `heads` heads."""

    height: int
    width: int
    channels: int
    heads: int

    def describe(self) -> str:
        return f"{self.height}×{self.width} C={self.channels} {self.heads}h"


# Swin-T's stages at 224×224 (patch 4: a 56×56 map, halved and doubled in channels per stage).
STAGES = {
    "stage1": WindowStage(56, 56, 96, 3),
    "stage2": WindowStage(28, 28, 192, 6),
    "stage3": WindowStage(14, 14, 384, 12),
    "stage4": WindowStage(7, 7, 768, 24),
}
DEFAULT_STAGES = ("stage1", "stage2", "stage3")

FIELDS = {
    "backend": "window-attention backend: triton (fused kernels), sdpa (torch's scaled_dot_product_attention "
               "with bias + shift mask as attn_mask), eager (roll, pad, partition, softmax in PyTorch)",
    "mode": "fwd: forward only, no autograd graph; fwd+bwd: forward, then gradients of qkv and the bias table",
    "stage": "Swin-T stage at 224: stage1 56×56 C=96 3 heads, stage2 28×28 C=192 6, stage3 14×14 C=384 12, "
             "stage4 7×7 C=768 24",
    "time_ms": "median time of one call in ms (CUDA events after an L2 flush on a GPU, perf_counter on a CPU); "
               "null when the case did not run",
    "tflops": "4·B·windows·M²·C for fwd (M tokens per window, C channels), 3.5× that for fwd+bwd, "
              "divided by time_ms",
    "peak_mem_bytes": "peak memory allocated during one call above what was allocated before it "
                      "(qkv, the table and the grad output are not counted)",
    "status": "'ok', or why the case has no numbers",
}


@dataclass(frozen=True)
class WindowBenchRow(StatusRow):
    """One measured case. Numbers are None when the case did not run; ``status`` then says why."""

    backend: str
    mode: str
    stage: str
    time_ms: float | None
    tflops: float | None
    peak_mem_bytes: int | None
    status: str

    @property
    def case(self) -> str:
        return self.stage

    @property
    def point(self) -> str:
        return self.stage


def window_flops(*, batch: int, stage: WindowStage, window: int, mode: str) -> float:
    """Matmul FLOPs of one call: 4·B·windows·M²·C forward over the padded map, 3.5× that fwd+bwd."""
    (wh, ww), _ = effective_window(stage.height, stage.width, window, 0)
    windows = -(-stage.height // wh) * -(-stage.width // ww)
    flops = 4.0 * batch * windows * (wh * ww) ** 2 * stage.channels
    if mode == "fwd+bwd":
        return flops * (1.0 + BACKWARD_FLOP_RATIO)
    if mode != "fwd":
        raise ValueError(f"unknown mode {mode!r}; choose {', '.join(MODES)}.")
    return flops


def validate_window_sweep(*, batch: int, stages: Sequence[str], window: int, shift: int, dtype: torch.dtype,
                          backends: Sequence[str], modes: Sequence[str], warmup: int, rep: int) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_window` (before any run)."""
    check_sweep(counts={"batch size": batch, "window": window, "warmup": warmup, "rep": rep}, dtype=dtype,
                choices=(("stage", stages, tuple(STAGES)), ("backend", backends, BACKENDS), ("mode", modes, MODES)))
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window); got shift {shift} with window {window}.")


def bench_window(
    *,
    batch: int,
    dtype: torch.dtype,
    stages: Sequence[str] = DEFAULT_STAGES,
    window: int = 7,
    shift: int = 3,
    backends: Sequence[str] = BACKENDS,
    modes: Sequence[str] = MODES,
    device: torch.device | None = None,
    warmup: int | None = None,
    rep: int | None = None,
    on_row: Callable[[WindowBenchRow], None] | None = None,
) -> list[WindowBenchRow]:
    """Benchmark window attention at Swin stage shapes for every mode × stage × backend.

    Args:
        batch: images per call (the issue's reference: 64).
        dtype: dtype of qkv (the bias table stays float32, as a model's parameter under autocast).
        stages: names from :data:`STAGES`.
        window, shift: window size and cyclic shift (Swin-T: 7 and 3).
        backends: any of "triton", "sdpa", "eager".
        modes: "fwd" and/or "fwd+bwd" (gradients of qkv and the bias table).
        device, warmup, rep, on_row: as for :func:`vitfast.bench.bench_attention`.

    Returns:
        Rows ordered by mode, then stage, then backend.
    """
    device = device if device is not None else resolve_device("auto")
    defaults = defaults_for(device)
    warmup = defaults.warmup if warmup is None else warmup
    rep = defaults.rep if rep is None else rep
    validate_window_sweep(batch=batch, stages=stages, window=window, shift=shift, dtype=dtype, backends=backends,
                          modes=modes, warmup=warmup, rep=rep)
    rows = []
    for mode in modes:
        for name in stages:
            stage = STAGES[name]
            for backend in backends:
                make = lambda: make_call(backend, mode, batch, stage, window, shift, dtype, device)  # noqa: E731
                time_ms, peak, status = measure_case(make, backend, device, warmup, rep)
                tflops = None
                if time_ms is not None:
                    tflops = window_flops(batch=batch, stage=stage, window=window, mode=mode) / (time_ms * 1e-3) / 1e12
                row = WindowBenchRow(backend, mode, name, time_ms, tflops, peak, status)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def make_call(backend: str, mode: str, batch: int, stage: WindowStage, window: int, shift: int,
              dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """The call one case times: window attention on a random (B, H, W, 3C) qkv map (and its backward)."""
    gen = torch.Generator(device=device).manual_seed(0)
    C = stage.channels
    qkv = torch.randn(batch, stage.height, stage.width, 3 * C, generator=gen, dtype=dtype, device=device)
    table = 0.02 * torch.randn((2 * window - 1) ** 2, stage.heads, generator=gen, device=device)
    kw = dict(num_heads=stage.heads, window_size=window, shift_size=shift, backend=backend)
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                window_attention(qkv, table, **kw)

        return fwd

    qkv.requires_grad_(True)
    table.requires_grad_(True)
    grad_out = torch.randn(batch, stage.height, stage.width, C, generator=gen, dtype=dtype, device=device)

    def fwd_bwd() -> None:
        out = window_attention(qkv, table, **kw)
        torch.autograd.grad(out, (qkv, table), grad_out)

    return fwd_bwd
