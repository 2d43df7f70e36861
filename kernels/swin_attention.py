"""Swin's shifted-window attention: the public op and its backends.

`backend="eager"` is the oracle in kernels/reference.py; `backend="sdpa"` feeds the same windows to
torch's scaled_dot_product_attention with bias + shift mask as `attn_mask` (one (windows, heads,
M, M) tensor, broadcast over the batch). The fused Triton kernel (no rolled or partitioned copies,
no materialized bias or mask) is not written yet; `backend="triton"` says so.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from . import reference

Backend = Literal["auto", "sdpa", "eager"]


def window_attention(
    qkv: torch.Tensor,
    bias_table: torch.Tensor,
    *,
    num_heads: int,
    window_size: int | tuple[int, int],
    shift_size: int | tuple[int, int],
    qkv_bias: torch.Tensor | None = None,
    scale: float | None = None,
    shrink_window: bool = True,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Shifted-window attention over a (B, H, W, 3·C) qkv map; returns (B, H, W, C), un-shifted.

    Args:
        qkv: the block's qkv projection of the (B, H, W, C) map, channels last.
        bias_table: relative-position bias, ((2·Mh−1)·(2·Mw−1), heads).
        num_heads: attention heads; C must be divisible by it.
        window_size, shift_size: an int or an (h, w) pair. Along an axis where the map is no larger
            than the window, the window shrinks to the map and the shift becomes 0 (as timm).
        qkv_bias: the projection's bias, the q, k, v of padded tokens (timm zero-pads before qkv).
        scale: multiplier of q·kᵀ; defaults to head_dim^-0.5.
        shrink_window: apply the shrink rule above to this call's map. False keeps the window and
            shift as given (timm's blocks fix them for the resolution they were built for).
        backend: "auto" (SDPA), "sdpa" or "eager".
    """
    if qkv.dim() != 4 or qkv.shape[-1] % 3 or (qkv.shape[-1] // 3) % num_heads:
        raise ValueError(f"qkv must be (B, H, W, 3·C) with C divisible by num_heads={num_heads}; "
                         f"got {tuple(qkv.shape)}.")
    if backend == "eager":
        return reference.window_attention(qkv, bias_table, num_heads=num_heads, window_size=window_size,
                                          shift_size=shift_size, qkv_bias=qkv_bias, scale=scale,
                                          shrink_window=shrink_window)
    if backend in ("auto", "sdpa"):
        q, k, v, bias, geometry = reference.window_partition_qkv(
            qkv, bias_table, num_heads=num_heads, window_size=window_size, shift_size=shift_size,
            qkv_bias=qkv_bias, shrink_window=shrink_window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        return reference.window_merge(out, geometry)
    if backend == "triton":
        raise ValueError("window_attention has no Triton kernel yet (issue 4); use backend='sdpa' or 'eager'.")
    raise ValueError(f"unknown window-attention backend {backend!r}; choose 'auto', 'sdpa' or 'eager'.")
