"""Swin's shifted-window attention: the fused Triton forward, the public op and its backends.

The Triton forward reads q, k, v straight from the (B, H, W, 3·C) projection: each program takes one
(window, head, block of query rows), works out where each window token sits in the un-shifted map
(roll, padding and partition are address arithmetic), gathers the relative-position bias from the
table and derives the shift mask from region ids, and writes its rows back to the un-shifted
layout. No rolled or partitioned copy, and no bias or mask tensor, exists in memory. The backward
kernel is not written yet, so `backend="triton"` serves inference (no gradients) only.

`backend="eager"` is the oracle in kernels/reference.py; `backend="sdpa"` feeds the same windows to
torch's scaled_dot_product_attention with bias + shift mask as `attn_mask` (one (windows, heads,
M, M) tensor, broadcast over the batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from . import reference
from ._triton import dot_precision, interpreting, require_triton, tl, triton

Backend = Literal["auto", "triton", "sdpa", "eager"]
LOG2E = 1.4426950408889634


@triton.jit
def _region(pos, padded, window, shift):
    # timm's regions of a shifted, padded axis: [0, P-window), [P-window, P-shift), [P-shift, P).
    return tl.where(pos < padded - window, 0, tl.where(pos < padded - shift, 1, 2))


@triton.jit
def _window_tokens(win_y, win_x, start, H, W, sh, sw, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr):
    """For window tokens [start, start+BLOCK): local (ty, tx), padded-shifted (py, px), the
    un-shifted source (oy, ox), and whether it is inside the window and inside the map."""
    t = start + tl.arange(0, BLOCK)
    in_window = t < WH * WW
    ty = t // WW
    tx = t % WW
    py = win_y * WH + ty
    px = win_x * WW + tx
    real = in_window & (py < H) & (px < W)
    oy = (py + sh) % H
    ox = (px + sw) % W
    return ty, tx, py, px, oy, ox, in_window, real


@triton.jit
def _load_part(qkv_base, qkv_bias, oy, ox, real, offs_d, part_offset, stride_h, stride_w, stride_c,
               HEAD_DIM: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """q, k or v rows (BLOCK, BLOCK_D) of real tokens; padded tokens get the projection's bias."""
    d_ok = offs_d < HEAD_DIM
    ptrs = (qkv_base + tl.cast(oy, tl.int64)[:, None] * stride_h + tl.cast(ox, tl.int64)[:, None] * stride_w
            + (part_offset + offs_d)[None, :] * stride_c)
    x = tl.load(ptrs, mask=real[:, None] & d_ok[None, :], other=0.0)
    if HAS_QKV_BIAS:
        b = tl.load(qkv_bias + part_offset + offs_d, mask=d_ok, other=0.0)
        x = tl.where(real[:, None], x, b[None, :].to(x.dtype))
    return x


@triton.jit
def _window_attn_fwd_kernel(
    QKV,  # (B, H, W, 3·C), any strides
    QKV_BIAS,  # (3·C,) or a dummy pointer when HAS_QKV_BIAS is False
    TABLE,  # ((2·TH−1)·(2·TW−1), heads) relative-position bias, any strides
    OUT,  # (B, H, W, C), any strides
    stride_b, stride_h, stride_w, stride_c,
    stride_ob, stride_oh, stride_ow, stride_oc,
    stride_t_row, stride_t_head,
    H, W, C, heads, n_win_x, n_win, Hp, Wp, sh, sw, TH, TW, scale_log2,
    WH: tl.constexpr, WW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_QKV_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Flat grid, query blocks fastest, then heads, windows, batch.
    pid = tl.program_id(0)
    num_m = tl.cdiv(WH * WW, BLOCK_M)
    m_block = pid % num_m
    rest = pid // num_m
    head = rest % heads
    rest = rest // heads
    win = rest % n_win
    b = rest // n_win
    win_y = win // n_win_x
    win_x = win % n_win_x

    offs_d = tl.arange(0, BLOCK_D)
    qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
    head_c = head * HEAD_DIM
    qy, qx, qpy, qpx, qoy, qox, q_in, q_real = _window_tokens(win_y, win_x, m_block * BLOCK_M, H, W, sh, sw,
                                                              WH, WW, BLOCK_M)
    q = _load_part(qkv_base, QKV_BIAS, qoy, qox, q_real, offs_d, head_c, stride_h, stride_w, stride_c,
                   HEAD_DIM, HAS_QKV_BIAS)
    if HAS_SHIFT:
        q_region = _region(qpy, Hp, WH, sh) * 3 + _region(qpx, Wp, WW, sw)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, WH * WW, BLOCK_N):
        ky, kx, kpy, kpx, koy, kox, k_in, k_real = _window_tokens(win_y, win_x, start_n, H, W, sh, sw,
                                                                  WH, WW, BLOCK_N)
        k = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, C + head_c, stride_h, stride_w,
                       stride_c, HEAD_DIM, HAS_QKV_BIAS)
        v = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, 2 * C + head_c, stride_h, stride_w,
                       stride_c, HEAD_DIM, HAS_QKV_BIAS)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        rel = (qy[:, None] - ky[None, :] + TH - 1) * (2 * TW - 1) + (qx[:, None] - kx[None, :] + TW - 1)
        pair_in = q_in[:, None] & k_in[None, :]
        bias = tl.load(TABLE + rel * stride_t_row + head * stride_t_head, mask=pair_in, other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
        if HAS_SHIFT:
            k_region = _region(kpy, Hp, WH, sh) * 3 + _region(kpx, Wp, WW, sw)
            s += tl.where(q_region[:, None] != k_region[None, :], -100.0 * 1.4426950408889634, 0.0)
        s = tl.where(k_in[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    out_ptrs = (OUT + tl.cast(b, tl.int64) * stride_ob + tl.cast(qoy, tl.int64)[:, None] * stride_oh
                + tl.cast(qox, tl.int64)[:, None] * stride_ow + (head_c + offs_d)[None, :] * stride_oc)
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=q_real[:, None] & (offs_d < HEAD_DIM)[None, :])


# The launch configuration (one, for now): 64-row tiles cover a 7×7 window (49 tokens) in one block
# and a 12×12 window (144) in three; M = 64 keeps every dot on wgmma on sm_90. The compile gate
# (tests/test_swin_attention_compile.py) builds it for sm_80 and sm_90.
BLOCK_M, BLOCK_N, NUM_WARPS = 64, 64, 8


def _triton_forward(qkv, bias_table, num_heads, window_size, shift_size, qkv_bias, scale, shrink_window):
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    head_dim = C // num_heads
    g = reference.window_geometry(qkv, bias_table, window_size, shift_size, shrink_window)
    (Hp, Wp), (wh, ww), (sh, sw), (th, tw) = g.padded, g.window, g.shift, g.table_window
    out = torch.empty((B, H, W, C), dtype=qkv.dtype, device=qkv.device)
    scale = head_dim**-0.5 if scale is None else scale
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (B * g.num_windows * num_heads * triton.cdiv(wh * ww, BLOCK_M),)
    _window_attn_fwd_kernel[grid](
        qkv, qkv_bias if qkv_bias is not None else qkv, bias_table, out,
        *qkv.stride(), *out.stride(), *bias_table.stride(),
        H, W, C, num_heads, g.windows_per_row, g.num_windows, Hp, Wp, sh, sw, th, tw, scale * LOG2E,
        WH=wh, WW=ww, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        HAS_SHIFT=bool(sh or sw), HAS_QKV_BIAS=qkv_bias is not None, PRECISION=dot_precision(qkv.dtype),
        num_warps=NUM_WARPS,
    )
    return out


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
        backend: "auto" (SDPA until the Triton backward exists), "triton" (forward only: CUDA, or
            CPU under TRITON_INTERPRET=1, without gradients), "sdpa" or "eager".
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
        require_triton()
        wants_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (qkv, bias_table, qkv_bias))
        if wants_grad:
            raise ValueError("the Triton window-attention kernel has no backward yet; run it under "
                             "torch.no_grad() or use backend='sdpa' for training.")
        if qkv.device.type != "cuda" and not interpreting():
            raise ValueError("backend='triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); "
                             "use backend='sdpa' or 'eager' here.")
        head_dim = qkv.shape[-1] // 3 // num_heads
        if head_dim % 8 or not 16 <= head_dim <= 128 or qkv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"backend='triton' supports head dims that are multiples of 8 from 16 to 128 and "
                             f"float16/bfloat16/float32; got head dim {head_dim}, {qkv.dtype}.")
        return _triton_forward(qkv, bias_table, num_heads, window_size, shift_size, qkv_bias, scale, shrink_window)
    raise ValueError(f"unknown window-attention backend {backend!r}; choose 'auto', 'sdpa' or 'eager'.")
