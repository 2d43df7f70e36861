"""Window-attention benchmark (`vitfast bench window`): time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.window_attention` at Swin stage shapes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vitfast.bench.harness import defaults_for
from vitfast.bench.sweep import (ATTENTION_BACKWARD_FLOP_RATIO, ATTENTION_IMPLS, KernelRow, KernelSweep, check_sweep,
                                 kernel_call, kernel_fields, mode_flops, sweep_kernel)
from vitfast.choices import AUTO, KERNEL_MODES
from vitfast.kernels import window_attention
from vitfast.kernels.window_geometry import effective_window
from vitfast.runtime import resolve_device, resolve_dtype

BACKENDS = ATTENTION_IMPLS


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

FIELDS = kernel_fields(
    backend="window-attention backend: triton (fused kernels), sdpa (torch's scaled_dot_product_attention with "
            "bias + shift mask as attn_mask), eager (roll, pad, partition, softmax in PyTorch)",
    mode="fwd: forward only, no autograd graph; fwd+bwd: forward, then gradients of qkv and the bias table",
    case=("stage", "Swin-T stage at 224: stage1 56×56 C=96 3 heads, stage2 28×28 C=192 6, stage3 14×14 C=384 12, "
                   "stage4 7×7 C=768 24"),
    tflops="4·B·windows·M²·C for fwd (M tokens per window, C channels), 3.5× that for fwd+bwd, divided by time_ms",
    inputs="qkv, the table and the grad output")


class WindowBenchRow(KernelRow):
    """One (mode, stage, backend) case; its case is the stage's name."""

    case_field = "stage"


def window_flops(*, batch: int, stage: WindowStage, window: int, mode: str) -> float:
    """Matmul FLOPs of one call: 4·B·windows·M²·C forward over the padded map, 3.5× that fwd+bwd."""
    (wh, ww), _ = effective_window(stage.height, stage.width, window, 0)
    windows = -(-stage.height // wh) * -(-stage.width // ww)
    return mode_flops(4.0 * batch * windows * (wh * ww) ** 2 * stage.channels, mode, ATTENTION_BACKWARD_FLOP_RATIO)


def make_call(backend: str, mode: str, batch: int, stage: WindowStage, window: int, shift: int,
              dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """The call one case times: window attention on a random (B, H, W, 3C) qkv map (and its backward)."""
    gen = torch.Generator(device=device).manual_seed(0)
    draw = functools.partial(torch.randn, generator=gen, dtype=dtype, device=device)
    qkv = draw(batch, stage.height, stage.width, 3 * stage.channels)
    table = 0.02 * torch.randn((2 * window - 1) ** 2, stage.heads, generator=gen, device=device)
    forward = functools.partial(window_attention, qkv, table, num_heads=stage.heads, window_size=window,
                                shift_size=shift, backend=backend)
    return kernel_call(mode, forward, (qkv, table), lambda: draw(batch, stage.height, stage.width, stage.channels))


def validate_window_sweep(*, batch: int, stages: Sequence[str], window: int, shift: int, dtype: torch.dtype,
                          backends: Sequence[str], modes: Sequence[str], warmup: int, rep: int, **_: object) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_window` (before any run)."""
    check_sweep(counts={"batch size": batch, "window": window, "warmup": warmup, "rep": rep}, dtype=dtype,
                choices=(("stage", stages, tuple(STAGES)), ("backend", backends, BACKENDS),
                         ("mode", modes, KERNEL_MODES)))
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window); got shift {shift} with window {window}.")


def bench_window(*, batch: int, dtype: torch.dtype, device: torch.device, warmup: int, rep: int,
                 stages: Sequence[str] = DEFAULT_STAGES, window: int = 7, shift: int = 3,
                 backends: Sequence[str] = BACKENDS, modes: Sequence[str] = KERNEL_MODES,
                 on_row: Callable[[WindowBenchRow], None] | None = None) -> list[WindowBenchRow]:
    """Window attention (Swin-T: window 7, shift 3) on a random (batch, H, W, 3C) qkv map of `dtype` at each of
    `stages` (names from :data:`STAGES`), swept as :func:`~vitfast.bench.sweep.sweep_kernel` sweeps; the bias
    table stays float32, as a model's parameter under autocast. Raises ValueError for a bad argument."""
    validate_window_sweep(batch=batch, stages=stages, window=window, shift=shift, dtype=dtype, backends=backends,
                          modes=modes, warmup=warmup, rep=rep)
    return sweep_kernel(
        WindowBenchRow, modes=modes, cases=stages, backends=backends, device=device, warmup=warmup, rep=rep,
        make_call=lambda backend, mode, name: make_call(backend, mode, batch, STAGES[name], window, shift, dtype,
                                                        device),
        flops=lambda mode, name: window_flops(batch=batch, stage=STAGES[name], window=window, mode=mode),
        on_row=on_row)


def window_sweep(params: dict[str, object], **labels: object) -> KernelSweep:
    """:func:`bench_window` with the keywords `params`, as the commands run it; `labels` as in
    :class:`~vitfast.bench.sweep.Sweep` (title)."""
    brief = f"B={params['batch']} window {params.get('window', 7)} shift {params.get('shift', 3)}"
    shape = (f"{brief} {str(params['dtype']).removeprefix('torch.')}; "
             + ", ".join(f"{s} {STAGES[s].describe()}" for s in params["stages"]))
    cases = len(params["modes"]) * len(params["stages"]) * len(params.get("backends", BACKENDS))
    return KernelSweep(name="window", label="window attention", bench=bench_window, params=params,
                       benchmark="window_attention", fields=FIELDS, cases=cases, shape=shape, brief=brief,
                       point_name="stage", **labels)


def plan(*, batch: int | None = None, stages: Sequence[str] = DEFAULT_STAGES, window: int = 7, shift: int = 3,
         dtype: str = AUTO, backends: Sequence[str] = BACKENDS, modes: Sequence[str] = KERNEL_MODES, device: str = AUTO,
         warmup: int | None = None, rep: int | None = None) -> KernelSweep:
    """`vitfast bench window`: the sweep its flags ask for, with device and dtype names resolved and unset
    values the device's defaults. Raises ValueError naming the first bad argument."""
    dev = resolve_device(device)
    defaults = defaults_for(dev)
    params = dict(batch=defaults.batch if batch is None else batch, stages=list(stages), window=window,
                  shift=shift, dtype=resolve_dtype(dtype, dev), backends=list(backends), modes=list(modes),
                  **defaults.timing(warmup, rep), device=dev)
    validate_window_sweep(**params)
    return window_sweep(params)
