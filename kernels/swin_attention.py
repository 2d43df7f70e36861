"""Swin's shifted-window attention: fused Triton forward and backward, the launchers, the autograd
Function and the Triton backend's entry point (the public op `vitfast.kernels.window_attention`, with
its SDPA and eager backends, is in ops.py).

Every Triton program reads q, k, v straight from the (B, H, W, 3·C) projection: it works out where
each window token sits in the un-shifted map (roll, padding and partition are address arithmetic),
gathers the relative-position bias from the table, derives the shift mask from region ids, and
writes its rows back to the un-shifted layout. No rolled or partitioned copy, and no bias or mask
tensor of size windows×M×M, exists in memory.

- Forward: one program per (batch, window, head, block of query rows); online softmax in base 2.
  It saves the row log-sum-exp (B·windows·heads·M floats) for the backward.
- Backward: one program per (head, chunk of (image, window) items); for each item it recomputes
  the window's scores, writes dq, dk, dv into dqkv, and adds dS (the bias gradient) to a sum held
  in registers. The per-program sums (about four programs per SM, so their memory does not grow
  with batch or map size) are added in a fixed order and folded into the table's rows by diagonal
  sums (tensor ops on the GPU, no index tensor, no host work), so the backward is deterministic (no
  atomics). Windows larger than one 64-token tile (window 12)
  take the same path tile by tile, accumulating dq and the bias sum through a per-program fp32
  scratch.
- Padded tokens (maps not a multiple of the window) are the projection's bias `qkv_bias`, as in
  timm, which pads before the projection; their dk, dv flow to `qkv_bias`'s gradient.

The geometry (roll, padding, partition, which window a bias table was made for) comes from
window_geometry.py, which the oracle shares; this file never imports the oracle. Tiles come from
kernels/tiles.json. The launchers are torch.library custom ops (``vitfast::window_attention_forward``
and ``..._backward``, fake implementations, the forward's autograd), so torch.compile takes each call
as one op.
"""

from __future__ import annotations

import math

import torch

from . import window_geometry as geo
from . import arch, tables
from ._triton import require_triton, tl, triton

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------
# Address arithmetic shared by the kernels
# --------------------------------------------------------------------------------------------------


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
    return t, ty, tx, py, px, oy, ox, in_window, real


@triton.jit
def _map_ptrs(base, oy, ox, channel, stride_h, stride_w, stride_c):
    """Pointers to a (tokens, channels) tile of a channels-last map."""
    return (base + tl.cast(oy, tl.int64)[:, None] * stride_h + tl.cast(ox, tl.int64)[:, None] * stride_w
            + channel[None, :] * stride_c)


@triton.jit
def _load_part(qkv_base, qkv_bias, oy, ox, real, offs_d, part_offset, stride_h, stride_w, stride_c,
               HEAD_DIM: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """q, k or v rows (BLOCK, BLOCK_D) of real tokens; padded tokens get the projection's bias."""
    d_ok = offs_d < HEAD_DIM
    ptrs = _map_ptrs(qkv_base, oy, ox, part_offset + offs_d, stride_h, stride_w, stride_c)
    x = tl.load(ptrs, mask=real[:, None] & d_ok[None, :], other=0.0)
    if HAS_QKV_BIAS:
        b = tl.load(qkv_bias + part_offset + offs_d, mask=d_ok, other=0.0)
        x = tl.where(real[:, None], x, b[None, :].to(x.dtype))
    return x


@triton.jit
def _store_rows(base, oy, ox, real, offs_d, channel, x, stride_h, stride_w, stride_c, HEAD_DIM: tl.constexpr):
    """x's rows of real tokens into a channels-last map, channels [channel, channel + HEAD_DIM)."""
    mask = real[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(_map_ptrs(base, oy, ox, channel + offs_d, stride_h, stride_w, stride_c), x.to(base.dtype.element_ty),
             mask=mask)


@triton.jit
def _padded_sum(x, in_window, real):
    """x's rows summed over padded tokens (inside the window, outside the map)."""
    return tl.sum(tl.where((in_window & (real == 0))[:, None], x, 0.0), 0)


@triton.jit
def _bias_tile(qy, qx, q_in, ky, kx, k_in, table, stride_t_row, stride_t_head, head, TH, TW):
    """The relative-position bias of a (query tile, key tile) gathered from the table, in base-2
    units, and −inf for keys outside the window. The same for every window."""
    rel = (qy[:, None] - ky[None, :] + TH - 1) * (2 * TW - 1) + (qx[:, None] - kx[None, :] + TW - 1)
    bias = tl.load(table + rel * stride_t_row + head * stride_t_head, mask=q_in[:, None] & k_in[None, :], other=0.0)
    return tl.where(k_in[None, :], bias.to(tl.float32) * 1.4426950408889634, float("-inf"))


@triton.jit
def _shift_mask(qpy, qpx, kpy, kpx, Hp, Wp, sh, sw, WH: tl.constexpr, WW: tl.constexpr):
    """timm's −100 (in base-2 units) between tokens of one window that came from different regions."""
    q_region = _region(qpy, Hp, WH, sh) * 3 + _region(qpx, Wp, WW, sw)
    k_region = _region(kpy, Hp, WH, sh) * 3 + _region(kpx, Wp, WW, sw)
    return tl.where(q_region[:, None] != k_region[None, :], -100.0 * 1.4426950408889634, 0.0)


@triton.jit
def _score_bias(qy, qx, qpy, qpx, q_in, ky, kx, kpy, kpx, k_in, table, stride_t_row, stride_t_head, head,
                TH, TW, Hp, Wp, sh, sw, WH: tl.constexpr, WW: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """Everything added to a (query tile, key tile) of scores, in base-2 units: bias, mask, −inf."""
    add = _bias_tile(qy, qx, q_in, ky, kx, k_in, table, stride_t_row, stride_t_head, head, TH, TW)
    if HAS_SHIFT:
        add += _shift_mask(qpy, qpx, kpy, kpx, Hp, Wp, sh, sw, WH, WW)
    return add


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _window_attn_fwd_kernel(
    QKV,  # (B, H, W, 3·C), any strides
    QKV_BIAS,  # (3·C,) or a dummy pointer when HAS_QKV_BIAS is False
    TABLE,  # ((2·TH−1)·(2·TW−1), heads) relative-position bias, any strides
    OUT,  # (B, H, W, C), any strides
    LSE,  # (B, windows, heads, M) fp32, base-2 log-sum-exp of the scaled scores
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
    qt, qy, qx, qpy, qpx, qoy, qox, q_in, q_real = _window_tokens(win_y, win_x, m_block * BLOCK_M, H, W, sh, sw,
                                                                  WH, WW, BLOCK_M)
    q = _load_part(qkv_base, QKV_BIAS, qoy, qox, q_real, offs_d, head_c, stride_h, stride_w, stride_c,
                   HEAD_DIM, HAS_QKV_BIAS)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, WH * WW, BLOCK_N):
        kt, ky, kx, kpy, kpx, koy, kox, k_in, k_real = _window_tokens(win_y, win_x, start_n, H, W, sh, sw,
                                                                      WH, WW, BLOCK_N)
        k = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, C + head_c, stride_h, stride_w,
                       stride_c, HEAD_DIM, HAS_QKV_BIAS)
        v = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, 2 * C + head_c, stride_h, stride_w,
                       stride_c, HEAD_DIM, HAS_QKV_BIAS)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s += _score_bias(qy, qx, qpy, qpx, q_in, ky, kx, kpy, kpx, k_in, TABLE, stride_t_row, stride_t_head,
                         head, TH, TW, Hp, Wp, sh, sw, WH, WW, HAS_SHIFT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    _store_rows(OUT + tl.cast(b, tl.int64) * stride_ob, qoy, qox, q_real, offs_d, head_c, acc,
                stride_oh, stride_ow, stride_oc, HEAD_DIM)
    lse_row = ((tl.cast(b, tl.int64) * n_win + win) * heads + head) * (WH * WW)
    tl.store(LSE + lse_row + qt, m_i + tl.math.log2(l_i), mask=q_in)


# --------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_tile(q, k, v, do, lse, delta, add, pair_ok, scale_log2, PRECISION: tl.constexpr):
    """One (query tile, key tile) of the backward: the probabilities P and dS = P∘(dP − delta), the
    gradient of the scores in natural units (before the scale; it is also the bias gradient)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2 + add
    p = tl.where(pair_ok, tl.math.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _load_rows(qkv_base, out_base, do_base, LSE, QKV_BIAS, lse_row, t, oy, ox, in_window, real, offs_d, head_c,
               stride_h, stride_w, stride_c, stride_oh, stride_ow, stride_oc, stride_dh, stride_dw, stride_dc,
               HEAD_DIM: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """A query tile's q, dO, the row LSE and delta = rowsum(dO∘O). Padded rows have dO = 0: the
    window reverse crops them, so they pass no gradient on."""
    d_ok = offs_d < HEAD_DIM
    q = _load_part(qkv_base, QKV_BIAS, oy, ox, real, offs_d, head_c, stride_h, stride_w, stride_c,
                   HEAD_DIM, HAS_QKV_BIAS)
    row_mask = real[:, None] & d_ok[None, :]
    do = tl.load(_map_ptrs(do_base, oy, ox, head_c + offs_d, stride_dh, stride_dw, stride_dc), mask=row_mask,
                 other=0.0)
    o = tl.load(_map_ptrs(out_base, oy, ox, head_c + offs_d, stride_oh, stride_ow, stride_oc), mask=row_mask,
                other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = tl.load(LSE + lse_row + t, mask=in_window, other=0.0)
    return q, do.to(q.dtype), lse, delta


@triton.jit
def _window_attn_bwd_kernel(
    QKV,  # (B, H, W, 3·C), any strides
    QKV_BIAS,  # (3·C,) or a dummy pointer when HAS_QKV_BIAS is False
    TABLE,  # ((2·TH−1)·(2·TW−1), heads), any strides
    OUT,  # (B, H, W, C) the forward's output, any strides
    DOUT,  # (B, H, W, C), any strides
    LSE,  # (B, windows, heads, M) fp32 from the forward
    DQKV,  # (B, H, W, 3·C), any strides: every real token's q, k, v slice is written once
    DBIAS,  # (chunks, heads, M, M) fp32: dS summed over the chunk's (image, window) items
    DPAD,  # (chunks, heads, 2, HEAD_DIM) fp32: dk, dv summed over padded tokens
    DQ_ACC,  # (chunks·heads, TILES·BLOCK, BLOCK_D) fp32 scratch, used when TILES > 1
    stride_b, stride_h, stride_w, stride_c,
    stride_ob, stride_oh, stride_ow, stride_oc,
    stride_db, stride_dh, stride_dw, stride_dc,
    stride_gb, stride_gh, stride_gw, stride_gc,
    stride_t_row, stride_t_head,
    items, items_per_chunk, H, W, C, heads, n_win_x, n_win, Hp, Wp, sh, sw, TH, TW, scale, scale_log2,
    WH: tl.constexpr, WW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    TILES: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, HAS_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Flat grid, heads fastest (they read the same rows), then chunks of the B·windows (image, window)
    # items, taken in order: consecutive windows of one image.
    pid = tl.program_id(0)
    head = pid % heads
    chunk = pid // heads
    item_start = chunk * items_per_chunk
    item_end = tl.minimum(item_start + items_per_chunk, items)

    M: tl.constexpr = WH * WW
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    head_c = head * HEAD_DIM
    slot = tl.cast(chunk, tl.int64) * heads + head
    dbias_base = DBIAS + slot * (M * M)
    pad_k = tl.zeros([BLOCK_D], dtype=tl.float32)
    pad_v = tl.zeros([BLOCK_D], dtype=tl.float32)

    if TILES == 1:
        # The whole window is one tile (window ≤ 8): its bias is gathered once, and the bias gradient
        # is summed over the items in registers.
        t, ty, tx, _, _, _, _, t_in, _ = _window_tokens(0, 0, 0, H, W, sh, sw, WH, WW, BLOCK)
        bias = _bias_tile(ty, tx, t_in, ty, tx, t_in, TABLE, stride_t_row, stride_t_head, head, TH, TW)
        pair_ok = t_in[:, None] & t_in[None, :]
        dbias = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
        for item in range(item_start, item_end):
            b = item // n_win
            win = item % n_win
            t, ty, tx, py, px, oy, ox, t_in, real = _window_tokens(win // n_win_x, win % n_win_x, 0, H, W, sh, sw,
                                                                   WH, WW, BLOCK)
            add = bias
            if HAS_SHIFT:
                add += _shift_mask(py, px, py, px, Hp, Wp, sh, sw, WH, WW)
            qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
            lse_row = (tl.cast(item, tl.int64) * heads + head) * M
            q, do, lse, delta = _load_rows(qkv_base, OUT + tl.cast(b, tl.int64) * stride_ob,
                                           DOUT + tl.cast(b, tl.int64) * stride_db, LSE, QKV_BIAS, lse_row, t,
                                           oy, ox, t_in, real, offs_d, head_c, stride_h, stride_w, stride_c,
                                           stride_oh, stride_ow, stride_oc, stride_dh, stride_dw, stride_dc,
                                           HEAD_DIM, HAS_QKV_BIAS)
            k = _load_part(qkv_base, QKV_BIAS, oy, ox, real, offs_d, C + head_c, stride_h, stride_w, stride_c,
                           HEAD_DIM, HAS_QKV_BIAS)
            v = _load_part(qkv_base, QKV_BIAS, oy, ox, real, offs_d, 2 * C + head_c, stride_h, stride_w,
                           stride_c, HEAD_DIM, HAS_QKV_BIAS)
            p, ds = _bwd_tile(q, k, v, do, lse, delta, add, pair_ok, scale_log2, PRECISION)
            dbias += ds
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            ds16 = ds.to(q.dtype)
            dq = tl.dot(ds16, k, input_precision=PRECISION) * scale
            dk = tl.dot(tl.trans(ds16), q, input_precision=PRECISION) * scale
            g_base = DQKV + tl.cast(b, tl.int64) * stride_gb
            _store_rows(g_base, oy, ox, real, offs_d, head_c, dq, stride_gh, stride_gw, stride_gc, HEAD_DIM)
            _store_rows(g_base, oy, ox, real, offs_d, C + head_c, dk, stride_gh, stride_gw, stride_gc, HEAD_DIM)
            _store_rows(g_base, oy, ox, real, offs_d, 2 * C + head_c, dv, stride_gh, stride_gw, stride_gc, HEAD_DIM)
            if HAS_PAD:
                pad_k += _padded_sum(dk, t_in, real)
                pad_v += _padded_sum(dv, t_in, real)
        tl.store(dbias_base + t[:, None] * M + t[None, :], dbias, mask=pair_ok)
    else:
        # Tile by tile (window 12: 144 tokens in three tiles). Per item: key tiles outer with dk, dv in
        # registers, query tiles inner; dq and the bias sum go through fp32 scratch, which only this
        # program touches (barriers order its read-after-write).
        dq_base = DQ_ACC + (pid.to(tl.int64) * (TILES * BLOCK)) * BLOCK_D
        rows = tl.arange(0, BLOCK)
        for item in range(item_start, item_end):
            b = item // n_win
            win_y = (item % n_win) // n_win_x
            win_x = (item % n_win) % n_win_x
            qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
            out_base = OUT + tl.cast(b, tl.int64) * stride_ob
            do_base = DOUT + tl.cast(b, tl.int64) * stride_db
            g_base = DQKV + tl.cast(b, tl.int64) * stride_gb
            lse_row = (tl.cast(item, tl.int64) * heads + head) * M
            for j in range(TILES):
                kt, ky, kx, kpy, kpx, koy, kox, k_in, k_real = _window_tokens(win_y, win_x, j * BLOCK, H, W, sh, sw,
                                                                              WH, WW, BLOCK)
                k = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, C + head_c, stride_h, stride_w,
                               stride_c, HEAD_DIM, HAS_QKV_BIAS)
                v = _load_part(qkv_base, QKV_BIAS, koy, kox, k_real, offs_d, 2 * C + head_c, stride_h, stride_w,
                               stride_c, HEAD_DIM, HAS_QKV_BIAS)
                dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
                dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
                tl.debug_barrier()
                for i in range(TILES):
                    qt, qy, qx, qpy, qpx, qoy, qox, q_in, q_real = _window_tokens(win_y, win_x, i * BLOCK, H, W,
                                                                                  sh, sw, WH, WW, BLOCK)
                    q, do, lse, delta = _load_rows(qkv_base, out_base, do_base, LSE, QKV_BIAS, lse_row, qt,
                                                   qoy, qox, q_in, q_real, offs_d, head_c, stride_h, stride_w,
                                                   stride_c, stride_oh, stride_ow, stride_oc, stride_dh,
                                                   stride_dw, stride_dc, HEAD_DIM, HAS_QKV_BIAS)
                    add = _score_bias(qy, qx, qpy, qpx, q_in, ky, kx, kpy, kpx, k_in, TABLE, stride_t_row,
                                      stride_t_head, head, TH, TW, Hp, Wp, sh, sw, WH, WW, HAS_SHIFT)
                    pair_ok = q_in[:, None] & k_in[None, :]
                    p, ds = _bwd_tile(q, k, v, do, lse, delta, add, pair_ok, scale_log2, PRECISION)
                    dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
                    ds16 = ds.to(q.dtype)
                    dk = tl.dot(tl.trans(ds16), q, dk, input_precision=PRECISION)
                    # Scratch read-modify-writes; the first key tile / first item overwrites.
                    dq_ptrs = dq_base + (i * BLOCK + rows)[:, None] * BLOCK_D + offs_d[None, :]
                    dq = tl.dot(ds16, k, input_precision=PRECISION)
                    if j > 0:
                        dq += tl.load(dq_ptrs)
                    tl.store(dq_ptrs, dq)
                    db_ptrs = dbias_base + qt[:, None] * M + kt[None, :]
                    if item > item_start:
                        ds += tl.load(db_ptrs, mask=pair_ok, other=0.0)
                    tl.store(db_ptrs, ds, mask=pair_ok)
                dk *= scale
                _store_rows(g_base, koy, kox, k_real, offs_d, C + head_c, dk, stride_gh, stride_gw, stride_gc,
                            HEAD_DIM)
                _store_rows(g_base, koy, kox, k_real, offs_d, 2 * C + head_c, dv, stride_gh, stride_gw, stride_gc,
                            HEAD_DIM)
                if HAS_PAD:
                    pad_k += _padded_sum(dk, k_in, k_real)
                    pad_v += _padded_sum(dv, k_in, k_real)
            tl.debug_barrier()
            for i in range(TILES):
                qt, qy, qx, qpy, qpx, qoy, qox, q_in, q_real = _window_tokens(win_y, win_x, i * BLOCK, H, W, sh, sw,
                                                                              WH, WW, BLOCK)
                dq = tl.load(dq_base + (i * BLOCK + rows)[:, None] * BLOCK_D + offs_d[None, :]) * scale
                _store_rows(g_base, qoy, qox, q_real, offs_d, head_c, dq, stride_gh, stride_gw, stride_gc, HEAD_DIM)
    if HAS_PAD:
        # Padded queries get no gradient (their rows are cropped), so qkv_bias's q part gets none.
        pad_base = DPAD + slot * (2 * HEAD_DIM)
        tl.store(pad_base + offs_d, pad_k, mask=d_ok)
        tl.store(pad_base + HEAD_DIM + offs_d, pad_v, mask=d_ok)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

# Tiles (kernels/tiles.json) are mostly 64 tokens square: a 7×7 window (49 tokens) is one tile, a 12×12
# window (144) three. M = 64 keeps every dot on wgmma on sm_90. Eight warps: the backward holds the
# window's bias, its summed gradient and five 64×64 products at once, and with four warps it spills. A
# one-tile forward has no key loop to pipeline, so it takes one stage. float32 is tabled up to head dim
# 64 (wider float32 tiles of the backward overflow sm_80's shared memory); on the 99 KiB family, float32
# above head dim 32 takes 32-token tiles (the multi-tile path) to fit.
# Backward programs to aim for per streaming multiprocessor (each adds an M×M partial bias gradient).
BWD_PROGRAMS_PER_SM = 4

# Allocation of tensors the kernels must fill completely; tests swap in a NaN-filling version.
_empty = torch.empty


@torch.compiler.assume_constant_result  # a constant of the graph under torch.compile
def unsupported_reason(head_dim: int, dtype: torch.dtype, device: torch.device, window_tokens: int) -> str | None:
    """Why the fused kernels cannot take qkv of this head dim, dtype and device (None: they can) for
    windows of `window_tokens`."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the kernels take float16, bfloat16 or float32 qkv; got {dtype}"
    if head_dim % 8 or not 16 <= head_dim <= 128:
        return f"the kernels take head dims that are multiples of 8 from 16 to 128; got {head_dim}"
    reason = arch.unsupported_device(device)
    if reason:
        return reason
    family = arch.device_family(device)
    for kernel in ("window.fwd", "window.bwd"):
        if tables.tile_for(kernel, family, dtype, head_dim, window_tokens) is None:
            hint = " (float32 is tabled up to head dim 64: run in float16/bfloat16, e.g. under autocast)" \
                if dtype == torch.float32 else ""
            return f"no tile of {kernel} fits {arch.device_arch(device)} at {dtype}, head dim {head_dim}{hint}"
    return None


def _check_triton_inputs(qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None,
                         num_heads: int, window_tokens: int) -> None:
    reason = unsupported_reason(qkv.shape[-1] // 3 // num_heads, qkv.dtype, qkv.device, window_tokens)
    if reason:
        raise ValueError(f"backend='triton' cannot run here: {reason}. Use backend='sdpa' or 'eager'.")
    for name, t in (("bias_table", bias_table), ("qkv_bias", qkv_bias)):
        if t is not None and t.device != qkv.device:
            raise ValueError(f"{name} is on {t.device} but qkv is on {qkv.device}; move both to one device.")
    if qkv_bias is not None and qkv_bias.shape != (qkv.shape[-1],):
        raise ValueError(f"qkv_bias must have shape ({qkv.shape[-1]},) (the projection's bias); "
                         f"got {tuple(qkv_bias.shape)}.")


def _geometry_args(g: geo.WindowGeometry) -> tuple:
    (Hp, Wp), (sh, sw), (th, tw) = g.padded, g.shift, g.table_window
    return g.windows_per_row, g.num_windows, Hp, Wp, sh, sw, th, tw


def _tile(kernel: str, qkv: torch.Tensor, head_dim: int, window_tokens: int) -> tables.TileConfig:
    return tables.required_tile(kernel, arch.device_family(qkv.device), qkv.dtype, head_dim, window_tokens)


def _triton_forward(qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None,
                    g: geo.WindowGeometry, num_heads: int, scale: float,
                    precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    head_dim = C // num_heads
    (wh, ww), M = g.window, g.window[0] * g.window[1]
    out = _empty((B, H, W, C), dtype=qkv.dtype, device=qkv.device)
    lse = _empty((B, g.num_windows, num_heads, M), dtype=torch.float32, device=qkv.device)
    c = _tile("window.fwd", qkv, head_dim, M)
    block = c["BLOCK"]
    n_win_x, n_win, Hp, Wp, sh, sw, th, tw = _geometry_args(g)
    _window_attn_fwd_kernel[(B * g.num_windows * num_heads * triton.cdiv(M, block),)](
        qkv, qkv_bias if qkv_bias is not None else qkv, bias_table, out, lse,
        *qkv.stride(), *out.stride(), *bias_table.stride(),
        H, W, C, num_heads, n_win_x, n_win, Hp, Wp, sh, sw, th, tw, scale * LOG2E,
        WH=wh, WW=ww, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block, BLOCK_N=block, HAS_SHIFT=bool(sh or sw), HAS_QKV_BIAS=qkv_bias is not None,
        PRECISION=precision, num_warps=c.num_warps, num_stages=c.num_stages,
    )
    return out, lse


def backward_chunks(items: int, heads: int, sm_count: int | None) -> int:
    """Into how many chunks the backward splits its B·windows (image, window) items, per head:
    enough programs to fill a GPU with `sm_count` multiprocessors (None: one chunk, as for the
    interpreter) and no more, since every program adds an M×M partial bias gradient. So that memory
    is bounded by the GPU's size, never by batch × windows."""
    if not sm_count:
        return 1
    return max(1, min(items, math.ceil(BWD_PROGRAMS_PER_SM * sm_count / heads)))


def _diagonal_sums(x: torch.Tensor) -> torch.Tensor:
    """(..., n, n) → (..., 2n−1): entry n−1+d sums x[..., i, j] over i − j = d.

    Flipping the columns turns i − j into i + j' − (n−1); the anti-diagonals i + j' are then columns of
    the matrix padded to width 2n and re-read with rows 2n−1 long (each row shifts one place further).
    """
    n = x.shape[-1]
    flat = torch.nn.functional.pad(x.flip(-1), (0, n)).flatten(-2)[..., : n * (2 * n - 1)]
    return flat.view(*x.shape[:-2], n, 2 * n - 1).sum(-2)


def table_gradient(per_pair: torch.Tensor, window: tuple[int, int], table_window: tuple[int, int]) -> torch.Tensor:
    """The bias table's gradient ((2·Th−1)·(2·Tw−1), heads) from the gradient of every (query, key) pair
    of a window, (heads, M, M): each table row sums the pairs at its relative offset. Fixed-order
    tensor sums (deterministic) with no index tensor, so nothing is copied from the host."""
    (wh, ww), (th, tw) = window, table_window
    heads = per_pair.shape[0]
    x = per_pair.view(heads, wh, ww, wh, ww).permute(0, 2, 4, 1, 3)  # heads, qx, kx, qy, ky
    x = _diagonal_sums(x)  # heads, qx, kx, dy
    x = _diagonal_sums(x.permute(0, 3, 1, 2))  # heads, dy, dx
    grid = per_pair.new_zeros(heads, 2 * th - 1, 2 * tw - 1)
    grid[:, th - wh: th + wh - 1, tw - ww: tw + ww - 1] = x
    return grid.flatten(1).t().contiguous()


def _triton_backward(dout: torch.Tensor, qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None,
                     out: torch.Tensor, lse: torch.Tensor, g: geo.WindowGeometry, num_heads: int, scale: float,
                     precision: str = "ieee",
                     chunks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dqkv, d bias_table and d qkv_bias (None without qkv_bias) for the forward's output gradient."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    head_dim = C // num_heads
    (wh, ww), M = g.window, g.window[0] * g.window[1]
    c = _tile("window.bwd", qkv, head_dim, M)
    block = c["BLOCK"]
    tiles = triton.cdiv(M, block)
    block_d = max(16, triton.next_power_of_2(head_dim))
    items = B * g.num_windows
    if chunks is None:
        sm_count = torch.cuda.get_device_properties(qkv.device).multi_processor_count if qkv.is_cuda else None
        chunks = backward_chunks(items, num_heads, sm_count)
    per_chunk = triton.cdiv(items, max(1, min(chunks, items)))
    chunks = triton.cdiv(items, per_chunk)
    n_win_x, n_win, Hp, Wp, sh, sw, th, tw = _geometry_args(g)
    has_pad = (Hp, Wp) != (H, W)

    dqkv = _empty((B, H, W, C3), dtype=qkv.dtype, device=qkv.device)
    dbias = torch.empty((chunks, num_heads, M, M), dtype=torch.float32, device=qkv.device)
    dpad = torch.empty((chunks, num_heads, 2, head_dim) if has_pad else (1,), dtype=torch.float32, device=qkv.device)
    dq_acc = torch.empty((chunks * num_heads, tiles * block, block_d) if tiles > 1 else (1,),
                         dtype=torch.float32, device=qkv.device)
    _window_attn_bwd_kernel[(chunks * num_heads,)](
        qkv, qkv_bias if qkv_bias is not None else qkv, bias_table, out, dout, lse, dqkv, dbias, dpad, dq_acc,
        *qkv.stride(), *out.stride(), *dout.stride(), *dqkv.stride(), *bias_table.stride(),
        items, per_chunk, H, W, C, num_heads, n_win_x, n_win, Hp, Wp, sh, sw, th, tw, scale, scale * LOG2E,
        WH=wh, WW=ww, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK=block, TILES=tiles,
        HAS_SHIFT=bool(sh or sw), HAS_QKV_BIAS=qkv_bias is not None, HAS_PAD=has_pad,
        PRECISION=precision, num_warps=c.num_warps, num_stages=c.num_stages,
    )
    # A fixed-order sum over chunks, then each table row sums its pairs.
    dtable = table_gradient(dbias.sum(dim=0), (wh, ww), (th, tw))
    dqkv_bias = None
    if qkv_bias is not None:
        dqkv_bias = torch.zeros(3, num_heads, head_dim, dtype=torch.float32, device=qkv.device)
        if has_pad:
            dqkv_bias[1:] = dpad.sum(dim=0).transpose(0, 1)
        dqkv_bias = dqkv_bias.view(C3).to(qkv_bias.dtype)
    return dqkv, dtable.to(bias_table.dtype), dqkv_bias


# --------------------------------------------------------------------------------------------------
# torch.library registration: custom ops, fake implementations, autograd
# --------------------------------------------------------------------------------------------------

# A WindowGeometry travels through the ops as eleven ints.
def _pack(g: geo.WindowGeometry) -> list[int]:
    return [g.batch, g.height, g.width, *g.padded, *g.window, *g.shift, *g.table_window]


def _unpack(v) -> geo.WindowGeometry:
    v = [int(x) for x in v]
    return geo.WindowGeometry(v[0], v[1], v[2], (v[3], v[4]), (v[5], v[6]), (v[7], v[8]), (v[9], v[10]))


@torch.library.custom_op("vitfast::window_attention_forward", mutates_args=())
def _forward_op(qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None, geometry: list[int],
                num_heads: int, scale: float, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_forward(qkv, bias_table, qkv_bias, _unpack(geometry), num_heads, scale, precision)


@_forward_op.register_fake
def _(qkv, bias_table, qkv_bias, geometry, num_heads, scale, precision):
    g = _unpack(geometry)
    B, H, W, C3 = qkv.shape
    return (qkv.new_empty((B, H, W, C3 // 3)),
            qkv.new_empty((B, g.num_windows, num_heads, g.window[0] * g.window[1]), dtype=torch.float32))


@torch.library.custom_op("vitfast::window_attention_backward", mutates_args=())
def _backward_op(dout: torch.Tensor, qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None,
                 out: torch.Tensor, lse: torch.Tensor, geometry: list[int], num_heads: int, scale: float,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dqkv, dtable, dqkv_bias = _triton_backward(dout, qkv, bias_table, qkv_bias, out, lse, _unpack(geometry),
                                               num_heads, scale, precision)
    # A custom op returns tensors only: without qkv_bias, an empty one stands for None.
    return dqkv, dtable, dqkv_bias if dqkv_bias is not None else qkv.new_empty(0)


@_backward_op.register_fake
def _(dout, qkv, bias_table, qkv_bias, out, lse, geometry, num_heads, scale, precision):
    return (qkv.new_empty(qkv.shape), bias_table.new_empty(bias_table.shape),
            qkv_bias.new_empty(qkv_bias.shape) if qkv_bias is not None else qkv.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    qkv, bias_table, qkv_bias, geometry, num_heads, scale, precision = inputs
    ctx.save_for_backward(qkv, bias_table, qkv_bias, *output)
    ctx.geometry, ctx.num_heads, ctx.scale, ctx.precision = geometry, num_heads, scale, precision


def _backward(ctx, dout, _dlse):
    qkv, bias_table, qkv_bias, out, lse = ctx.saved_tensors
    dqkv, dtable, dqkv_bias = _backward_op(dout, qkv, bias_table, qkv_bias, out, lse, ctx.geometry, ctx.num_heads,
                                           ctx.scale, ctx.precision)
    return dqkv, dtable, dqkv_bias if qkv_bias is not None else None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# The Triton backend
# --------------------------------------------------------------------------------------------------


def triton_window_attention(qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None, *,
                            num_heads: int, window_size: int | tuple[int, int], shift_size: int | tuple[int, int],
                            scale: float | None, shrink_window: bool, precision: str = "ieee") -> torch.Tensor:
    """``window_attention(..., backend="triton")`` on inputs whose shapes the public op has checked, in
    the operand dtype the precision policy chose: checks what the kernels need (ValueError naming the
    problem), then runs them with autograd. `precision` is `tl.dot`'s for float32 inputs."""
    require_triton()
    geometry = geo.window_geometry(qkv, bias_table, window_size, shift_size, shrink_window)
    _check_triton_inputs(qkv, bias_table, qkv_bias, num_heads, geometry.window[0] * geometry.window[1])
    scale = (qkv.shape[-1] // 3 // num_heads) ** -0.5 if scale is None else float(scale)
    if qkv.numel() == 0:
        return qkv.new_empty(*qkv.shape[:3], qkv.shape[-1] // 3)
    return _forward_op(qkv, bias_table, qkv_bias, _pack(geometry), num_heads, scale, precision)[0]
