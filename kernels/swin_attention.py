"""Swin's shifted-window attention: fused Triton forward and backward, the launchers, the autograd
Function and the Triton backend's entry point (the public op `vitfast.kernels.window_attention`, with
its SDPA and eager backends, is in ops.py).

Every Triton program reads q, k, v straight from the (B, H, W, 3·C) projection: it works out where
each window token sits in the un-shifted map (roll, padding and partition are address arithmetic)
and writes its rows back to the un-shifted layout. What a window adds to its scores (relative-position
bias, shift mask, −inf past the window's last token) depends only on the head and on whether the
window is in the last row and/or column of windows, so one small launch per call gathers it from the
table into (kinds, heads, L, L) floats (kinds: 1 unshifted, 4 shifted; L: the window's tokens rounded
up to whole tiles), which the kernels read as contiguous tiles. No rolled or partitioned copy, and no
bias or mask tensor of size windows×M×M, exists in memory.

- Forward: one program per (batch, window, block of query rows, group of heads); it walks its heads
  one after another (all of a window's heads unless that leaves the GPU short of programs), so the
  token geometry is worked out once and, with num_stages ≥ 2, the next head's q, k, v (neighbouring
  channels of the same token rows) load while this one computes. Online softmax in base 2; it saves
  the row log-sum-exp (B·windows·heads·M floats) for the backward.
- Backward: one program per (head, chunk of (image, window) items); for each item it recomputes
  the window's scores, writes dq, dk, dv into dqkv, and adds dS (the bias gradient) to a sum held
  in registers. Windows of one 64-token tile (window ≤ 8) run with four warps, so two programs share
  an SM, and three pipeline stages: Triton's pipeliner copies item i+1's tiles into shared memory
  (cp.async) while item i computes. The per-program sums (about four programs per SM, so their
  memory does not grow with batch or map size) are added in a fixed order and folded into the
  table's rows by diagonal sums (tensor ops on the GPU, no index tensor, no host work), so the
  backward is deterministic (no atomics). Windows larger than one 64-token tile (window 12) take the
  same path tile by tile, accumulating dq and the bias sum through a per-program fp32 scratch.
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
def _token_rows(win_y, win_x, start, H, W, sh, sw, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr):
    """_window_tokens' window index t, un-shifted source (oy, ox), in_window and real."""
    t, _, _, _, _, oy, ox, in_window, real = _window_tokens(win_y, win_x, start, H, W, sh, sw, WH, WW, BLOCK)
    return t, oy, ox, in_window, real


@triton.jit
def _map_ptrs(base, oy, ox, channel, stride_h, stride_w, stride_c):
    """Pointers to a (tokens, channels) tile of a channels-last map."""
    return (base + tl.cast(oy, tl.int64)[:, None] * stride_h + tl.cast(ox, tl.int64)[:, None] * stride_w
            + channel[None, :] * stride_c)


@triton.jit
def _load_part(qkv_base, qkv_bias, oy, ox, in_window, real, offs_d, part_offset, stride_h, stride_w, stride_c,
               HEAD_DIM: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """q, k or v rows (BLOCK, BLOCK_D) of the window's tokens. Padded tokens read the projection's bias
    `qkv_bias` (timm pads before the projection) through a select of pointers, not of values: the
    tile goes from memory to the matmul untouched (for the pipeliner, straight into shared memory)."""
    d_ok = offs_d < HEAD_DIM
    ptrs = _map_ptrs(qkv_base, oy, ox, part_offset + offs_d, stride_h, stride_w, stride_c)
    if HAS_QKV_BIAS:
        ptrs = tl.where(real[:, None], ptrs, qkv_bias + part_offset + offs_d[None, :])
        mask = in_window[:, None] & d_ok[None, :]
    else:
        mask = real[:, None] & d_ok[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


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
def _window_kind(win_y, win_x, n_win_x, n_win, HAS_SHIFT: tl.constexpr):
    """Which of the score additions a window takes: 2·(last row of windows) + (last column). Only
    the last row and column of a shifted map mix regions, so these four cover every window."""
    if HAS_SHIFT:
        kind = (win_y == n_win // n_win_x - 1).to(tl.int32) * 2 + (win_x == n_win_x - 1).to(tl.int32)
    else:
        kind = 0
    return kind


@triton.jit
def _add_tile(ADD, kind, head, heads, i, j, BLOCK: tl.constexpr, TILES: tl.constexpr):
    """Tile (i, j) of a window kind's score additions for one head: contiguous rows, no gather."""
    L: tl.constexpr = TILES * BLOCK
    rows = i * BLOCK + tl.arange(0, BLOCK)
    cols = j * BLOCK + tl.arange(0, BLOCK)
    base = ADD + (tl.cast(kind, tl.int64) * heads + head) * (L * L)
    return tl.load(base + rows[:, None] * L + cols[None, :])


# --------------------------------------------------------------------------------------------------
# Score additions: bias, shift mask and −inf, per kind of window
# --------------------------------------------------------------------------------------------------


@triton.jit
def _score_add_kernel(
    TABLE,  # ((2·TH−1)·(2·TW−1), heads) relative-position bias, any strides
    ADD,  # (kinds, heads, L, L) fp32, L = TILES·BLOCK
    stride_t_row, stride_t_head, heads, Hp, Wp, sh, sw, TH, TW,
    WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, TILES: tl.constexpr, HAS_SHIFT: tl.constexpr,
):
    # One program per (kind, head, query tile). A window of the kind: the last row (column) of
    # windows, or the first.
    pid = tl.program_id(0)
    i = pid % TILES
    rest = pid // TILES
    head = rest % heads
    kind = rest // heads
    win_y = tl.where(kind // 2 == 1, Hp // WH - 1, 0)
    win_x = tl.where(kind % 2 == 1, Wp // WW - 1, 0)
    L: tl.constexpr = TILES * BLOCK
    qt, qy, qx, qpy, qpx, _, _, q_in, _ = _window_tokens(win_y, win_x, i * BLOCK, Hp, Wp, sh, sw, WH, WW, BLOCK)
    row_base = ADD + (tl.cast(kind, tl.int64) * heads + head) * (L * L) + qt[:, None] * L
    for j in range(TILES):
        kt, ky, kx, kpy, kpx, _, _, k_in, _ = _window_tokens(win_y, win_x, j * BLOCK, Hp, Wp, sh, sw, WH, WW, BLOCK)
        add = _bias_tile(qy, qx, q_in, ky, kx, k_in, TABLE, stride_t_row, stride_t_head, head, TH, TW)
        if HAS_SHIFT:
            add += _shift_mask(qpy, qpx, kpy, kpx, Hp, Wp, sh, sw, WH, WW)
        tl.store(row_base + kt[None, :], add)


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _window_attn_fwd_kernel(
    QKV,  # (B, H, W, 3·C), any strides
    QKV_BIAS,  # (3·C,) or a dummy pointer when HAS_QKV_BIAS is False
    ADD,  # (kinds, heads, L, L) fp32 from _score_add_kernel
    OUT,  # (B, H, W, C), any strides
    LSE,  # (B, windows, heads, M) fp32, base-2 log-sum-exp of the scaled scores
    stride_b, stride_h, stride_w, stride_c,
    stride_ob, stride_oh, stride_ow, stride_oc,
    H, W, C, heads, heads_per_program, head_groups, n_win_x, n_win, sh, sw, scale_log2,
    WH: tl.constexpr, WW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    TILES: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    # Flat grid, query tiles fastest, then groups of heads, windows, batch.
    pid = tl.program_id(0)
    i = pid % TILES
    rest = pid // TILES
    group = rest % head_groups
    rest = rest // head_groups
    win = rest % n_win
    b = rest // n_win
    win_y = win // n_win_x
    win_x = win % n_win_x
    kind = _window_kind(win_y, win_x, n_win_x, n_win, HAS_SHIFT)
    head_start = group * heads_per_program
    head_end = tl.minimum(head_start + heads_per_program, heads)

    offs_d = tl.arange(0, BLOCK_D)
    qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
    out_base = OUT + tl.cast(b, tl.int64) * stride_ob
    qt, qoy, qox, q_in, q_real = _token_rows(win_y, win_x, i * BLOCK, H, W, sh, sw, WH, WW, BLOCK)
    # The heads of the window one after another: the token geometry is worked out once, and (with
    # num_stages ≥ 2) the next head's q, k, v, the neighbouring channels of the same token rows,
    # load while this one computes.
    for head in range(head_start, head_end):
        head_c = head * HEAD_DIM
        q = _load_part(qkv_base, QKV_BIAS, qoy, qox, q_in, q_real, offs_d, head_c, stride_h, stride_w, stride_c,
                       HEAD_DIM, HAS_QKV_BIAS)
        acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
        m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(TILES):
            kt, koy, kox, k_in, k_real = _token_rows(win_y, win_x, j * BLOCK, H, W, sh, sw, WH, WW, BLOCK)
            k = _load_part(qkv_base, QKV_BIAS, koy, kox, k_in, k_real, offs_d, C + head_c, stride_h, stride_w,
                           stride_c, HEAD_DIM, HAS_QKV_BIAS)
            v = _load_part(qkv_base, QKV_BIAS, koy, kox, k_in, k_real, offs_d, 2 * C + head_c, stride_h, stride_w,
                           stride_c, HEAD_DIM, HAS_QKV_BIAS)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s += _add_tile(ADD, kind, head, heads, i, j, BLOCK, TILES)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
            m_i = m_new
        _store_rows(out_base, qoy, qox, q_real, offs_d, head_c, acc / l_i[:, None], stride_oh, stride_ow, stride_oc,
                    HEAD_DIM)
        lse_row = ((tl.cast(b, tl.int64) * n_win + win) * heads + head) * (WH * WW)
        tl.store(LSE + lse_row + qt, m_i + tl.math.log2(l_i), mask=q_in)


# --------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_tile(s, v, do, lse, delta, PRECISION: tl.constexpr):
    """One (query tile, key tile) of the backward from its scores in base-2 units (additions
    included): the probabilities P and dS = P∘(dP − delta), the gradient of the scores in natural
    units (before the scale; it is also the bias gradient). Keys outside the window score −inf and
    queries outside it have lse = +inf, so both get P = 0."""
    p = tl.math.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _load_rows(qkv_base, out_base, do_base, LSE, QKV_BIAS, lse_row, t, oy, ox, in_window, real, offs_d, head_c,
               stride_h, stride_w, stride_c, stride_oh, stride_ow, stride_oc, stride_dh, stride_dw, stride_dc,
               HEAD_DIM: tl.constexpr, HAS_QKV_BIAS: tl.constexpr):
    """A query tile's q, dO, the row LSE (+inf outside the window) and delta = rowsum(dO∘O). Padded
    rows have dO = 0: the window reverse crops them, so they pass no gradient on."""
    d_ok = offs_d < HEAD_DIM
    q = _load_part(qkv_base, QKV_BIAS, oy, ox, in_window, real, offs_d, head_c, stride_h, stride_w, stride_c,
                   HEAD_DIM, HAS_QKV_BIAS)
    row_mask = real[:, None] & d_ok[None, :]
    do = tl.load(_map_ptrs(do_base, oy, ox, head_c + offs_d, stride_dh, stride_dw, stride_dc), mask=row_mask,
                 other=0.0)
    o = tl.load(_map_ptrs(out_base, oy, ox, head_c + offs_d, stride_oh, stride_ow, stride_oc), mask=row_mask,
                other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = tl.load(LSE + lse_row + t, mask=in_window, other=float("inf"))
    return q, do.to(q.dtype), lse, delta


@triton.jit
def _window_attn_bwd_kernel(
    QKV,  # (B, H, W, 3·C), any strides
    QKV_BIAS,  # (3·C,) or a dummy pointer when HAS_QKV_BIAS is False
    ADD,  # (kinds, heads, L, L) fp32 from _score_add_kernel
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
    items, items_per_chunk, H, W, C, heads, n_win_x, n_win, sh, sw, scale, scale_log2,
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
        # The whole window is one tile (window ≤ 8): the bias gradient is summed over the items in
        # registers. The loop body only loads, computes, stores and adds to sums, so Triton's
        # pipeliner (num_stages = 3: two buffers) loads item i+1's q, k, v, dO, O, LSE and additions
        # into shared memory (cp.async) while item i computes. The additions are reloaded per item
        # (from L2, a few kinds per head) rather than held: 32 more registers per thread at four
        # warps would spill.
        t, _, _, t_in, _ = _token_rows(0, 0, 0, H, W, sh, sw, WH, WW, BLOCK)
        dbias = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
        for item in range(item_start, item_end):
            b = item // n_win
            win = item % n_win
            _, oy, ox, _, real = _token_rows(win // n_win_x, win % n_win_x, 0, H, W, sh, sw, WH, WW, BLOCK)
            qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
            lse_row = (tl.cast(item, tl.int64) * heads + head) * M
            q, do, lse, delta = _load_rows(qkv_base, OUT + tl.cast(b, tl.int64) * stride_ob,
                                           DOUT + tl.cast(b, tl.int64) * stride_db, LSE, QKV_BIAS, lse_row, t,
                                           oy, ox, t_in, real, offs_d, head_c, stride_h, stride_w, stride_c,
                                           stride_oh, stride_ow, stride_oc, stride_dh, stride_dw, stride_dc,
                                           HEAD_DIM, HAS_QKV_BIAS)
            k = _load_part(qkv_base, QKV_BIAS, oy, ox, t_in, real, offs_d, C + head_c, stride_h, stride_w, stride_c,
                           HEAD_DIM, HAS_QKV_BIAS)
            v = _load_part(qkv_base, QKV_BIAS, oy, ox, t_in, real, offs_d, 2 * C + head_c, stride_h, stride_w,
                           stride_c, HEAD_DIM, HAS_QKV_BIAS)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s += _add_tile(ADD, _window_kind(win // n_win_x, win % n_win_x, n_win_x, n_win, HAS_SHIFT), head, heads,
                           0, 0, BLOCK, TILES)
            p, ds = _bwd_tile(s, v, do, lse, delta, PRECISION)
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
        tl.store(dbias_base + t[:, None] * M + t[None, :], dbias, mask=t_in[:, None] & t_in[None, :])
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
            kind = _window_kind(win_y, win_x, n_win_x, n_win, HAS_SHIFT)
            qkv_base = QKV + tl.cast(b, tl.int64) * stride_b
            out_base = OUT + tl.cast(b, tl.int64) * stride_ob
            do_base = DOUT + tl.cast(b, tl.int64) * stride_db
            g_base = DQKV + tl.cast(b, tl.int64) * stride_gb
            lse_row = (tl.cast(item, tl.int64) * heads + head) * M
            for j in range(TILES):
                kt, koy, kox, k_in, k_real = _token_rows(win_y, win_x, j * BLOCK, H, W, sh, sw, WH, WW, BLOCK)
                k = _load_part(qkv_base, QKV_BIAS, koy, kox, k_in, k_real, offs_d, C + head_c, stride_h, stride_w,
                               stride_c, HEAD_DIM, HAS_QKV_BIAS)
                v = _load_part(qkv_base, QKV_BIAS, koy, kox, k_in, k_real, offs_d, 2 * C + head_c, stride_h,
                               stride_w, stride_c, HEAD_DIM, HAS_QKV_BIAS)
                dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
                dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
                tl.debug_barrier()
                for i in range(TILES):
                    qt, qoy, qox, q_in, q_real = _token_rows(win_y, win_x, i * BLOCK, H, W, sh, sw, WH, WW, BLOCK)
                    q, do, lse, delta = _load_rows(qkv_base, out_base, do_base, LSE, QKV_BIAS, lse_row, qt,
                                                   qoy, qox, q_in, q_real, offs_d, head_c, stride_h, stride_w,
                                                   stride_c, stride_oh, stride_ow, stride_oc, stride_dh,
                                                   stride_dw, stride_dc, HEAD_DIM, HAS_QKV_BIAS)
                    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
                    s += _add_tile(ADD, kind, head, heads, i, j, BLOCK, TILES)
                    p, ds = _bwd_tile(s, v, do, lse, delta, PRECISION)
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
                    pair_ok = q_in[:, None] & k_in[None, :]
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
                qt, qoy, qox, q_in, q_real = _token_rows(win_y, win_x, i * BLOCK, H, W, sh, sw, WH, WW, BLOCK)
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
# window (144) three. M = 64 keeps every dot on wgmma on sm_90. Swin's own case (one tile, head dim 32,
# 16-bit) takes four warps: two or more programs per SM, where eight warps at the ~240 registers the
# backward needs would fit one. Its backward takes three stages (two buffers: the next item loads while
# this one computes; the 100 KiB sm_86 family fits two programs only with two stages), its forward
# three on sm_80/sm_90 and two on sm_86. Other tiles keep eight warps: the backward holds the window's
# summed bias gradient and several 64×64 products at once. float32 is tabled up to head dim 64 (wider
# float32 tiles of the backward overflow sm_80's shared memory); on the 99 KiB family, float32 above head
# dim 32 takes 32-token tiles (the multi-tile path) to fit.
# Backward programs to aim for per streaming multiprocessor (each adds an M×M partial bias gradient).
BWD_PROGRAMS_PER_SM = 4
# Forward programs to aim for per multiprocessor before a window's heads are split over programs.
FWD_PROGRAMS_PER_SM = 8

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


def _score_additions(bias_table: torch.Tensor, g: geo.WindowGeometry, num_heads: int, block: int,
                     tiles: int) -> torch.Tensor:
    """(kinds, heads, L, L) float32, L = tiles·block: what each kind of window (_window_kind; one kind
    without a shift, four with) adds to its scores in base-2 units: the relative-position bias, the
    shift mask, and −inf for keys outside the window. One launch, a few hundred KiB at Swin's sizes."""
    (Hp, Wp), (sh, sw), (th, tw), (wh, ww) = g.padded, g.shift, g.table_window, g.window
    kinds = 4 if sh or sw else 1
    add = torch.empty((kinds, num_heads, tiles * block, tiles * block), dtype=torch.float32, device=bias_table.device)
    _score_add_kernel[(kinds * num_heads * tiles,)](
        bias_table, add, *bias_table.stride(), num_heads, Hp, Wp, sh, sw, th, tw,
        WH=wh, WW=ww, BLOCK=block, TILES=tiles, HAS_SHIFT=kinds > 1, num_warps=4,
    )
    return add


def _tile(kernel: str, qkv: torch.Tensor, head_dim: int, window_tokens: int) -> tables.TileConfig:
    return tables.required_tile(kernel, arch.device_family(qkv.device), qkv.dtype, head_dim, window_tokens)


def _sm_count(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


def forward_head_groups(programs: int, heads: int, sm_count: int | None) -> int:
    """Into how many groups the forward splits each window's heads, one program per (query block, group)
    of the `programs` (batch × windows × query blocks): one group (every head in one program, which
    reads whole token rows, works out their geometry once and loads one head while computing the
    previous) unless that leaves fewer than FWD_PROGRAMS_PER_SM programs per multiprocessor of a GPU
    with `sm_count` of them (None: one group, as for the interpreter)."""
    if not sm_count:
        return 1
    return max(1, min(heads, math.ceil(FWD_PROGRAMS_PER_SM * sm_count / programs)))


def _triton_forward(qkv: torch.Tensor, bias_table: torch.Tensor, qkv_bias: torch.Tensor | None,
                    g: geo.WindowGeometry, num_heads: int, scale: float,
                    precision: str = "ieee", head_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    head_dim = C // num_heads
    (wh, ww), M = g.window, g.window[0] * g.window[1]
    out = _empty((B, H, W, C), dtype=qkv.dtype, device=qkv.device)
    lse = _empty((B, g.num_windows, num_heads, M), dtype=torch.float32, device=qkv.device)
    c = _tile("window.fwd", qkv, head_dim, M)
    block = c["BLOCK"]
    tiles = triton.cdiv(M, block)
    add = _score_additions(bias_table, g, num_heads, block, tiles)
    programs = B * g.num_windows * tiles
    if head_groups is None:
        head_groups = forward_head_groups(programs, num_heads, _sm_count(qkv.device))
    per_group = triton.cdiv(num_heads, head_groups)
    head_groups = triton.cdiv(num_heads, per_group)  # groups of equal size but the last
    _window_attn_fwd_kernel[(programs * head_groups,)](
        qkv, qkv_bias if qkv_bias is not None else qkv, add, out, lse, *qkv.stride(), *out.stride(),
        H, W, C, num_heads, per_group, head_groups, g.windows_per_row, g.num_windows, *g.shift, scale * LOG2E,
        WH=wh, WW=ww, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK=block,
        TILES=tiles, HAS_SHIFT=add.shape[0] > 1, HAS_QKV_BIAS=qkv_bias is not None, PRECISION=precision,
        num_warps=c.num_warps, num_stages=c.num_stages,
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
        chunks = backward_chunks(items, num_heads, _sm_count(qkv.device))
    per_chunk = triton.cdiv(items, max(1, min(chunks, items)))
    chunks = triton.cdiv(items, per_chunk)
    (Hp, Wp), (th, tw) = g.padded, g.table_window
    has_pad = (Hp, Wp) != (H, W)
    add = _score_additions(bias_table, g, num_heads, block, tiles)

    dqkv = _empty((B, H, W, C3), dtype=qkv.dtype, device=qkv.device)
    dbias = torch.empty((chunks, num_heads, M, M), dtype=torch.float32, device=qkv.device)
    dpad = torch.empty((chunks, num_heads, 2, head_dim) if has_pad else (1,), dtype=torch.float32, device=qkv.device)
    dq_acc = torch.empty((chunks * num_heads, tiles * block, block_d) if tiles > 1 else (1,),
                         dtype=torch.float32, device=qkv.device)
    _window_attn_bwd_kernel[(chunks * num_heads,)](
        qkv, qkv_bias if qkv_bias is not None else qkv, add, out, dout, lse, dqkv, dbias, dpad, dq_acc,
        *qkv.stride(), *out.stride(), *dout.stride(), *dqkv.stride(),
        items, per_chunk, H, W, C, num_heads, g.windows_per_row, g.num_windows, *g.shift, scale, scale * LOG2E,
        WH=wh, WW=ww, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK=block, TILES=tiles,
        HAS_SHIFT=add.shape[0] > 1, HAS_QKV_BIAS=qkv_bias is not None, HAS_PAD=has_pad,
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
    if qkv_bias is not None and qkv_bias.dtype != qkv.dtype:
        qkv_bias = qkv_bias.to(qkv.dtype)  # padded tokens are loaded from it as from qkv: one element type
    if qkv.numel() == 0:
        return qkv.new_empty(*qkv.shape[:3], qkv.shape[-1] // 3)
    return _forward_op(qkv, bias_table, qkv_bias, _pack(geometry), num_heads, scale, precision)[0]
