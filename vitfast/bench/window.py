"""Window-attention benchmark (`vitfast bench window`): time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.window_attention` at Swin stage shapes, beside the peers a user would pick today:

- "flex": torch's FlexAttention, compiled, on the windows folded into the heads dimension, with a score_mod
  adding the relative-position bias and timm's shift mask (−100 across regions). No block mask: every token of a
  window sees every other (the mask is additive, as timm's), and windows never meet, being heads.
- "timm": timm's own ``WindowAttention`` with the same bias table, inside the steps of timm's
  ``SwinTransformerBlock._attn`` (roll, pad, ``window_partition``, the block's own shift mask,
  ``window_reverse``, roll back), as timm ships it (its fused path is opt-in, TIMM_FUSED_ATTN=2).

Every row starts from the same (B, H, W, 3·C) qkv map and ends at the (B, H, W, C) map before the output
projection, so the peers' ``qkv`` and ``proj`` are left out (identities), as ours are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from vitfast.bench.harness import defaults_for
from vitfast.bench.sweep import (ATTENTION_BACKWARD_FLOP_RATIO, ATTENTION_IMPLS, KernelRow, KernelSweep, check_sweep,
                                 compiled_flex, kernel_call, kernel_fields, mode_flops, sweep_kernel)
from vitfast.choices import AUTO, KERNEL_MODES, WINDOW_PEERS
from vitfast.kernels import window_attention
from vitfast.kernels import window_geometry as geo
from vitfast.runtime import resolve_device, resolve_dtype

BACKENDS = ATTENTION_IMPLS
PEERS = WINDOW_PEERS
KNOWN_BACKENDS = BACKENDS + PEERS


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
    backend="window-attention backend: triton (fused kernels), sdpa (torch's scaled_dot_product_attention on the "
            "windows folded into heads, 4-D, with bias + shift mask as attn_mask), eager (roll, pad, partition, "
            "softmax in PyTorch); the peers: flex (flex_attention under torch.compile, bias and shift mask in a "
            "score_mod, the first warm-up call compiling), timm (timm's WindowAttention in its block's steps, with "
            "the same bias table; under autocast for 16-bit dtypes)",
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
    (wh, ww), _ = geo.effective_window(stage.height, stage.width, window, 0)
    windows = -(-stage.height // wh) * -(-stage.width // ww)
    return mode_flops(4.0 * batch * windows * (wh * ww) ** 2 * stage.channels, mode, ATTENTION_BACKWARD_FLOP_RATIO)


def make_call(backend: str, mode: str, batch: int, stage: WindowStage, window: int, shift: int,
              dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """The call one case times: window attention on a random (B, H, W, 3C) qkv map (and its backward, the
    gradients of qkv and of the bias table)."""
    gen = torch.Generator(device=device).manual_seed(0)
    draw = functools.partial(torch.randn, generator=gen, dtype=dtype, device=device)
    qkv = draw(batch, stage.height, stage.width, 3 * stage.channels)
    table = 0.02 * torch.randn((2 * window - 1) ** 2, stage.heads, generator=gen, device=device)
    grad_out = lambda: draw(batch, stage.height, stage.width, stage.channels)  # noqa: E731
    if backend == "flex":
        return kernel_call(mode, flex_window_attention(qkv, table, stage.heads, window, shift, mode), (qkv, table),
                           grad_out)
    if backend == "timm":
        block, forward = timm_window_attention(qkv, table, stage.heads, window, shift)
        return kernel_call(mode, forward, (qkv, block.attn.relative_position_bias_table), grad_out)
    forward = functools.partial(window_attention, qkv, table, num_heads=stage.heads, window_size=window,
                                shift_size=shift, backend=backend)
    return kernel_call(mode, forward, (qkv, table), grad_out)


def flex_window_attention(qkv: torch.Tensor, table: torch.Tensor, heads: int, window: int, shift: int,
                          mode: str) -> Callable[[], torch.Tensor]:
    """The "flex" peer's forward on `qkv` and `table`: compiled flex_attention on the windows folded into the
    heads dimension (head h is window h // heads, head h % heads), its score_mod adding the bias (gathered from
    the table each call, so its gradient flows) and, when shifted, −100 where two tokens' regions differ. The
    geometry, relative-position index and regions are made once, untimed, as a model keeps them as buffers."""
    g = geo.window_geometry(qkv, table, window, shift)
    (wh, ww), M = g.window, g.window[0] * g.window[1]
    index = geo.relative_position_index(wh, ww, g.table_window).view(-1).to(qkv.device)
    region = geo.shift_regions(*g.padded, g.window, g.shift).to(qkv.device)
    shifted = any(g.shift)
    flex = compiled_flex(mode, qkv.device)

    def forward() -> torch.Tensor:
        q, k, v = geo.fold_windows(*geo.partition_windows(qkv, g, heads))
        bias = table[index].view(M, M, heads).permute(2, 0, 1)  # heads, M, M

        def score_mod(score, b, h, q_idx, kv_idx):
            score = score + bias[h % heads, q_idx, kv_idx]
            if shifted:
                w = h // heads
                score = score + torch.where(region[w, q_idx] == region[w, kv_idx], 0.0, -100.0)
            return score

        return geo.window_merge(flex(q, k, v, score_mod=score_mod), g)

    return forward


def timm_window_attention(qkv: torch.Tensor, table: torch.Tensor, heads: int, window: int,
                          shift: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """The "timm" peer: a timm ``SwinTransformerBlock`` for `qkv`'s map (timm's own window shrink rule and shift
    mask), whose ``WindowAttention`` holds the bias table our kernels read from `table` and takes the projection
    as given (``qkv`` and ``proj`` are identities), and its forward on `qkv`: the steps of the block's ``_attn``
    with timm's functions. Under autocast to `qkv`'s dtype when that is 16-bit, as timm's models run in it.
    Returns (block, forward); the table to take gradients of is ``block.attn.relative_position_bias_table``."""
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

    B, H, W, C3 = qkv.shape
    block = SwinTransformerBlock(C3 // 3, (H, W), num_heads=heads, window_size=window, shift_size=shift).to(qkv.device)
    attn = block.attn
    attn.qkv, attn.proj = nn.Identity(), nn.Identity()
    # timm's table is for its (possibly shrunk) window: the rows of ours that the same offsets read.
    g = geo.window_geometry(qkv, table, window, shift)
    ours = geo.relative_position_index(*g.window, g.table_window).view(-1)
    theirs = geo.relative_position_index(*g.window).view(-1)
    with torch.no_grad():
        attn.relative_position_bias_table[theirs.to(table.device)] = table[ours.to(table.device)]
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    autocast = qkv.dtype != torch.float32

    def forward() -> torch.Tensor:
        with torch.autocast(qkv.device.type, dtype=qkv.dtype, enabled=autocast):
            x = torch.roll(qkv, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else qkv
            x = torch.nn.functional.pad(x, (0, 0, 0, (-W) % ww, 0, (-H) % wh))
            Hp, Wp = x.shape[1:3]
            out = attn(window_partition(x, (wh, ww)).view(-1, wh * ww, C3), mask=block.attn_mask)
            out = window_reverse(out.view(-1, wh, ww, C3 // 3), (wh, ww), Hp, Wp)[:, :H, :W].contiguous()
            return torch.roll(out, shifts=(sh, sw), dims=(1, 2)) if sh or sw else out

    return block, forward


def validate_window_sweep(*, batch: int, stages: Sequence[str], window: int, shift: int, dtype: torch.dtype,
                          backends: Sequence[str], modes: Sequence[str], warmup: int, rep: int, **_: object) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_window` (before any run)."""
    check_sweep(counts={"batch size": batch, "window": window, "warmup": warmup, "rep": rep}, dtype=dtype,
                choices=(("stage", stages, tuple(STAGES)), ("backend", backends, KNOWN_BACKENDS),
                         ("mode", modes, KERNEL_MODES)))
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window); got shift {shift} with window {window}.")


def bench_window(*, batch: int, dtype: torch.dtype, device: torch.device, warmup: int, rep: int,
                 stages: Sequence[str] = DEFAULT_STAGES, window: int = 7, shift: int = 3,
                 backends: Sequence[str] = BACKENDS, modes: Sequence[str] = KERNEL_MODES,
                 on_row: Callable[[WindowBenchRow], None] | None = None) -> list[WindowBenchRow]:
    """Window attention (Swin-T: window 7, shift 3) on a random (batch, H, W, 3C) qkv map of `dtype` at each of
    `stages` (names from :data:`STAGES`), swept as :func:`~vitfast.bench.sweep.sweep_kernel` sweeps; the bias
    table stays float32, as a model's parameter under autocast. `backends` may name peers (:data:`PEERS`).
    Raises ValueError for a bad argument."""
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
