"""Flash attention: Triton forward and backward, the launchers, the torch.library ops with their
autograd, and the Triton backend's entry points (the public ops `vitfast.kernels.attention` and
`packed_attention`, which pick a backend, are in ops.py).

Forward (FlashAttention-2 schedule): one program per (batch·head, block of BLOCK_M query rows); it
streams key/value blocks through an online softmax in base 2 with float32 accumulators and stores the
output and the row log-sum-exp, never the N×N matrix. Backward recomputes the probabilities from the
log-sum-exp, in one of two schedules chosen by the tile table:
- short sequences ("attention.bwd" rows: ViT, CLIP): one launch, one program per (batch, head). It
  computes delta = rowsum(O ∘ dO) first, then walks the key blocks, each against the query blocks
  that see it: five products per tile (S, dP, dV, dK, dQ). dK and dV stay in registers; dQ is summed
  over key blocks in the program's own float32 scratch rows, in key order.
- longer ones: a delta kernel, one kernel per key block for dK and dV, one per query block for dQ
  (which recomputes S and dP: seven products), so the grid has enough programs.
No program writes another's rows and nothing uses atomics, and tiles come from kernels/tiles.json,
not from timing, so gradients are bit-identical run to run and rank to rank.

Every tensor is addressed through its own strides, batch, head and block offsets in 64-bit. So the
packed entry point needs no copy: it reads q, k and v where the qkv projection (B, N, 3·C) put them,
writes the output straight in (B, N, C) (heads concatenated, what the output projection takes; a
(B, H, N, D) output would need a transpose copy), and the backward writes dQ, dK and dV into one
(B, N, 3·C) dqkv (three tensors would need autograd to stack them, a copy, then another to lay them
out as the projection's gradient).

The launchers are registered as torch.library custom ops (``vitfast::flash_attention_forward``,
``..._backward`` and their ``packed`` pair, with fake implementations and the forward's autograd), so
``torch.compile`` sees one opaque op per call, with no graph break, and nothing in them waits on the GPU.
"""

from __future__ import annotations

import torch

from . import arch, tables
from ._triton import require_triton, tl, triton

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _tile_ptrs(base, start, stride_row, stride_col, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Pointers to rows [start, start+ROWS) × cols [0, COLS) of a row-major-strided matrix at `base`.

    The row offset is taken in 64-bit as a scalar; the in-tile offsets stay 32-bit.
    """
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    base = base + tl.cast(start, tl.int64) * stride_row
    return base + rows[:, None] * stride_row + cols[None, :] * stride_col


@triton.jit
def _tile_mask(start, n_rows, ROWS: tl.constexpr, COLS: tl.constexpr, HEAD_DIM: tl.constexpr):
    rows = start + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    return (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)


@triton.jit
def _head_base(ptr, bh, H, stride_b, stride_h):
    b = bh // H
    h = bh % H
    return ptr + tl.cast(b, tl.int64) * stride_b + tl.cast(h, tl.int64) * stride_h


@triton.jit
def _fwd_inner(
    acc, m_i, l_i, q,
    k_base, v_base,  # this head's (N, D) key and value matrices
    stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, lo, hi, N, qk_scale,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # K is read transposed, (BLOCK_D, BLOCK_N), so q·kᵀ is a plain dot.
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        k_ptrs = (k_base + tl.cast(start_n, tl.int64) * stride_kn
                  + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn)
        v_ptrs = _tile_ptrs(v_base, start_n, stride_vn, stride_vd, BLOCK_N, BLOCK_D)
        if MASK:
            kv_mask_t = ((start_n + offs_n)[None, :] < N) & (offs_d[:, None] < HEAD_DIM)
            kT = tl.load(k_ptrs, mask=kv_mask_t, other=0.0)
            v = tl.load(v_ptrs, mask=_tile_mask(start_n, N, BLOCK_N, BLOCK_D, HEAD_DIM), other=0.0)
        else:
            kT = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        qk = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        if MASK:
            keep = (start_n + offs_n)[None, :] < N
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= (start_n + offs_n)[None, :])
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V,  # (B, H, N, D), any strides
    O,  # (B, H, N, D), any strides; FlashAttention's name for the output  # noqa: E741
    LSE,  # (B·H, N) float32, contiguous: row log-sum-exp in base 2, saved for backward
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N, qk_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # One flat grid, query blocks fastest: consecutive programs share a head's K/V in L2, and the
    # flat index avoids CUDA's 65535 limit on the second grid dimension.
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    m_block = pid % num_m
    if CAUSAL:  # the longest rows first, so the tail of the grid is short work
        m_block = num_m - 1 - m_block
    start_m = m_block * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)

    q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
    k_base = _head_base(K, bh, H, stride_kb, stride_kh)
    v_base = _head_base(V, bh, H, stride_vb, stride_vh)
    o_base = _head_base(O, bh, H, stride_ob, stride_oh)

    row_mask = _tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM)
    q = tl.load(_tile_ptrs(q_base, start_m, stride_qn, stride_qd, BLOCK_M, BLOCK_D),
                mask=row_mask, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # Key blocks that need no mask (inside N and, if causal, wholly below the diagonal; BLOCK_M is a
    # multiple of BLOCK_N), then the few that do.
    full_end = (N // BLOCK_N) * BLOCK_N
    if CAUSAL:
        full_end = tl.minimum(full_end, start_m)
        end = tl.minimum(N, start_m + BLOCK_M)
    else:
        end = N
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base,
                               stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, 0, full_end, N, qk_scale,
                               False, CAUSAL, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base,
                               stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, full_end, end, N, qk_scale,
                               True, CAUSAL, HEAD_DIM, BLOCK_N, BLOCK_D, PRECISION)

    acc = acc / l_i[:, None]
    tl.store(_tile_ptrs(o_base, start_m, stride_on, stride_od, BLOCK_M, BLOCK_D),
             acc.to(O.dtype.element_ty), mask=row_mask)
    tl.store(LSE + tl.cast(bh, tl.int64) * N + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < N)


@triton.jit
def _delta_rows(o_base, do_base, start_m, stride_on, stride_od, stride_don, stride_dod, N,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """rowsum(O ∘ dO) in float32 of one head's query rows [start_m, start_m + BLOCK_M)."""
    mask = _tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM)
    o = tl.load(_tile_ptrs(o_base, start_m, stride_on, stride_od, BLOCK_M, BLOCK_D), mask=mask, other=0.0)
    do = tl.load(_tile_ptrs(do_base, start_m, stride_don, stride_dod, BLOCK_M, BLOCK_D), mask=mask, other=0.0)
    return tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)


@triton.jit
def _load_key_block(K, V, bh, H, start_n, N, stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One head's key rows [start_n, start_n + BLOCK_N) of K and V, and the mask of those inside N."""
    kv_mask = _tile_mask(start_n, N, BLOCK_N, BLOCK_D, HEAD_DIM)
    k = tl.load(_tile_ptrs(_head_base(K, bh, H, stride_kb, stride_kh),
                           start_n, stride_kn, stride_kd, BLOCK_N, BLOCK_D), mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(_head_base(V, bh, H, stride_vb, stride_vh),
                           start_n, stride_vn, stride_vd, BLOCK_N, BLOCK_D), mask=kv_mask, other=0.0)
    return k, v, kv_mask


@triton.jit
def _key_block_step(k, v, dk, dv, q_base, do_base, lse_base, delta_base, start_m, offs_n, N,
                    stride_qn, stride_qd, stride_don, stride_dod, qk_scale,
                    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                    PRECISION: tl.constexpr):
    """A key block's dK and dV updated with query rows [start_m, start_m + BLOCK_M); also returns the
    tile's dSᵀ (keys along rows), from which dQ's share follows. Rows past N get lse = +inf, hence
    probability 0, and delta 0."""
    offs_d = tl.arange(0, BLOCK_D)
    arange_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + arange_m
    m_in = offs_m < N
    qT = tl.load(q_base + tl.cast(start_m, tl.int64) * stride_qn
                 + offs_d[:, None] * stride_qd + arange_m[None, :] * stride_qn,
                 mask=(offs_d[:, None] < HEAD_DIM) & m_in[None, :], other=0.0)
    do = tl.load(_tile_ptrs(do_base, start_m, stride_don, stride_dod, BLOCK_M, BLOCK_D),
                 mask=_tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM), other=0.0)
    lse = tl.load(lse_base + offs_m, mask=m_in, other=float("inf"))
    delta = tl.load(delta_base + offs_m, mask=m_in, other=0.0)

    pT = tl.math.exp2(tl.dot(k, qT, input_precision=PRECISION) * qk_scale - lse[None, :])
    if CAUSAL:
        pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
    dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PRECISION)
    return dk, dv, dsT


@triton.jit
def _store_key_block(DK, DV, dk, dv, kv_mask, bh, H, start_n, sm_scale,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A key block's finished dK (scaled) and dV into their (B, H, N, D) tensors."""
    tl.store(_tile_ptrs(_head_base(DK, bh, H, stride_dkb, stride_dkh),
                        start_n, stride_dkn, stride_dkd, BLOCK_N, BLOCK_D),
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(_tile_ptrs(_head_base(DV, bh, H, stride_dvb, stride_dvh),
                        start_n, stride_dvn, stride_dvd, BLOCK_N, BLOCK_D),
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO,  # (B, H, N, D), any strides  # noqa: E741
    DELTA,  # (B·H, N) float32: rowsum(O ∘ dO)
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    start_m = (pid % num_m) * BLOCK_M
    delta = _delta_rows(_head_base(O, bh, H, stride_ob, stride_oh), _head_base(DO, bh, H, stride_dob, stride_doh),
                        start_m, stride_on, stride_od, stride_don, stride_dod, N, HEAD_DIM, BLOCK_D, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(DELTA + tl.cast(bh, tl.int64) * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO,  # (B, H, N, D), any strides
    DK, DV,  # (B, H, N, D), any strides
    LSE, DELTA,  # (B·H, N) float32
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, N, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (batch·head, block of BLOCK_N keys): it owns those rows of dK and dV and walks
    # the query blocks that attend to them. Everything is held transposed (keys along rows).
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    bh = pid // num_n
    start_n = (pid % num_n) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
    do_base = _head_base(DO, bh, H, stride_dob, stride_doh)
    lse_base = LSE + tl.cast(bh, tl.int64) * N
    delta_base = DELTA + tl.cast(bh, tl.int64) * N

    k, v, kv_mask = _load_key_block(K, V, bh, H, start_n, N, stride_kb, stride_kh, stride_kn, stride_kd,
                                    stride_vb, stride_vh, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = (start_n // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for start_m in range(lo, N, BLOCK_M):
        dk, dv, _ = _key_block_step(k, v, dk, dv, q_base, do_base, lse_base, delta_base, start_m, offs_n, N,
                                    stride_qn, stride_qd, stride_don, stride_dod, qk_scale,
                                    CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M, PRECISION)
    _store_key_block(DK, DV, dk, dv, kv_mask, bh, H, start_n, sm_scale,
                     stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                     BLOCK_N, BLOCK_D)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO,  # (B, H, N, D), any strides
    DQ,  # (B, H, N, D), any strides
    LSE, DELTA,  # (B·H, N) float32
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (batch·head, block of BLOCK_M queries): it owns those rows of dQ and walks the
    # key blocks they attend to.
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    start_m = (pid % num_m) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    arange_n = tl.arange(0, BLOCK_N)
    m_in = offs_m < N

    k_base = _head_base(K, bh, H, stride_kb, stride_kh)
    v_base = _head_base(V, bh, H, stride_vb, stride_vh)
    q_mask = _tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM)
    q = tl.load(_tile_ptrs(_head_base(Q, bh, H, stride_qb, stride_qh),
                           start_m, stride_qn, stride_qd, BLOCK_M, BLOCK_D), mask=q_mask, other=0.0)
    do = tl.load(_tile_ptrs(_head_base(DO, bh, H, stride_dob, stride_doh),
                            start_m, stride_don, stride_dod, BLOCK_M, BLOCK_D), mask=q_mask, other=0.0)
    lse = tl.load(LSE + tl.cast(bh, tl.int64) * N + offs_m, mask=m_in, other=float("inf"))
    delta = tl.load(DELTA + tl.cast(bh, tl.int64) * N + offs_m, mask=m_in, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    end = tl.minimum(N, start_m + BLOCK_M) if CAUSAL else N
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + arange_n
        kvT_mask = (offs_d[:, None] < HEAD_DIM) & (offs_n[None, :] < N)
        kT = tl.load(k_base + tl.cast(start_n, tl.int64) * stride_kn
                     + offs_d[:, None] * stride_kd + arange_n[None, :] * stride_kn,
                     mask=kvT_mask, other=0.0)
        vT = tl.load(v_base + tl.cast(start_n, tl.int64) * stride_vn
                     + offs_d[:, None] * stride_vd + arange_n[None, :] * stride_vn,
                     mask=kvT_mask, other=0.0)
        p = tl.math.exp2(tl.dot(q, kT, input_precision=PRECISION) * qk_scale - lse[:, None])
        keep = offs_n[None, :] < N
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PRECISION)

    dq = dq * sm_scale
    tl.store(_tile_ptrs(_head_base(DQ, bh, H, stride_dqb, stride_dqh),
                        start_m, stride_dqn, stride_dqd, BLOCK_M, BLOCK_D),
             dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _attn_bwd_fused_kernel(
    Q, K, V, O, DO,  # (B, H, N, D), any strides  # noqa: E741
    DQ, DK, DV,  # (B, H, N, D), any strides (views of one packed dqkv, or three tensors)
    LSE,  # (B·H, N) float32
    DELTA,  # (B·H, N) float32 scratch: rowsum(O ∘ dO), written and read by this kernel
    DQ_ACC,  # (B·H, N, BLOCK_D) float32 scratch: dQ summed over the key blocks done so far
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, N, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # The whole backward of one (batch, head) in one program, for short sequences: delta first, then
    # each key block in turn, walking the query blocks that see it. Per (query, key) tile: S, dP, dV,
    # dK and dQ, five products (the split kernels recompute S and dP for dQ: seven). dK and dV of the
    # key block stay in registers; dQ is summed across key blocks in this program's own float32
    # scratch rows, in key order, and the last key block a query block sees writes it out. One program
    # owns every row it writes, so there are no atomics and the result is the same run to run.
    bh = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    arange_m = tl.arange(0, BLOCK_M)
    arange_n = tl.arange(0, BLOCK_N)
    d_in = offs_d < HEAD_DIM

    q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
    do_base = _head_base(DO, bh, H, stride_dob, stride_doh)
    o_base = _head_base(O, bh, H, stride_ob, stride_oh)
    dq_base = _head_base(DQ, bh, H, stride_dqb, stride_dqh)
    lse_base = LSE + tl.cast(bh, tl.int64) * N
    delta_base = DELTA + tl.cast(bh, tl.int64) * N
    acc_base = DQ_ACC + tl.cast(bh, tl.int64) * N * BLOCK_D

    for start_m in range(0, N, BLOCK_M):
        tl.store(delta_base + start_m + arange_m,
                 _delta_rows(o_base, do_base, start_m, stride_on, stride_od, stride_don, stride_dod, N,
                             HEAD_DIM, BLOCK_D, BLOCK_M), mask=(start_m + arange_m) < N)
    # Other threads of this program read what these stores wrote.
    tl.debug_barrier()

    last_n = ((N - 1) // BLOCK_N) * BLOCK_N
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + arange_n
        k, v, kv_mask = _load_key_block(K, V, bh, H, start_n, N, stride_kb, stride_kh, stride_kn, stride_kd,
                                        stride_vb, stride_vh, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, BLOCK_D)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        lo = (start_n // BLOCK_M) * BLOCK_M if CAUSAL else 0
        for start_m in range(lo, N, BLOCK_M):
            dk, dv, dsT = _key_block_step(k, v, dk, dv, q_base, do_base, lse_base, delta_base, start_m, offs_n, N,
                                          stride_qn, stride_qd, stride_don, stride_dod, qk_scale,
                                          CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_M, PRECISION)
            # This key block's share of dQ, added to the key blocks before it (none for the first). Key
            # rows past N are zero in k, so their dSᵀ adds nothing.
            offs_m = start_m + arange_m
            q_mask = (offs_m < N)[:, None] & d_in[None, :]
            acc_ptrs = acc_base + offs_m[:, None] * BLOCK_D + offs_d[None, :]
            dq = tl.load(acc_ptrs, mask=q_mask & (start_n > 0), other=0.0)
            dq = tl.dot(tl.trans(dsT).to(k.dtype), k, dq, input_precision=PRECISION)
            if CAUSAL:  # the key block holding the query block's last row is the last it sees
                final_n = ((tl.minimum(N, start_m + BLOCK_M) - 1) // BLOCK_N) * BLOCK_N
            else:
                final_n = last_n
            tl.store(acc_ptrs, dq, mask=q_mask & (start_n != final_n))
            tl.store(_tile_ptrs(dq_base, start_m, stride_dqn, stride_dqd, BLOCK_M, BLOCK_D),
                     (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask & (start_n == final_n))
        # The next key block reads the dQ rows this one wrote, possibly in other threads.
        tl.debug_barrier()
        _store_key_block(DK, DV, dk, dv, kv_mask, bh, H, start_n, sm_scale,
                         stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn,
                         stride_dvd, BLOCK_N, BLOCK_D)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

# The delta kernel reads O and dO once per row: its block is fixed, Triton's default warps and stages.
DELTA_BLOCK_M = 64


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


@torch.compiler.assume_constant_result  # a constant of the graph under torch.compile
def unsupported_reason(ndim: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the Triton kernels cannot take q, k, v of this rank, head dim, dtype and device (None: they
    can). Only values that stay fixed when torch.compile makes batch or length dynamic."""
    if ndim != 4:
        return f"q, k, v must be (B, H, N, D); got {ndim} dimensions"
    if dtype not in SUPPORTED_DTYPES:
        return f"the kernels take float16, bfloat16 or float32; got {dtype}"
    if head_dim % 8 or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        return (f"the kernels take head dims that are multiples of 8 from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}; "
                f"got {head_dim}")
    return arch.unsupported_device(device) or (
        None if tables.tile_for("attention.fwd", arch.device_family(device), dtype, head_dim, 0) else
        f"no tile of the kernels fits {arch.device_arch(device)} at {dtype}, head dim {head_dim}")


def _check_triton_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming the problem when the Triton kernels cannot take these tensors."""
    require_triton()
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "backend='triton' needs q, k and v of one shape (B, H, N, D); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}. "
            "Use backend='sdpa' for cross-attention with different lengths."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"backend='triton' needs q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}.")
    reason = unsupported_reason(q.dim(), q.shape[-1], q.dtype, q.device)
    if reason:
        raise ValueError(f"backend='triton' cannot run here: {reason}. Use backend='sdpa' or 'eager'.")


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _launch(kernel: str, q: torch.Tensor, config: tables.TileConfig | None, run) -> None:
    """Run `run(config)` with the given config or the tile table's (tuned under VITFAST_AUTOTUNE)."""
    if config is not None:
        run(config)
    else:
        B, H, N, D = q.shape
        tables.launch(kernel, arch.device_family(q.device), q.dtype, D, N, run, tune_key=(B * H,))


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, precision: str = "ieee",
    config: tables.TileConfig | None = None, out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; returns the output (B, H, N, D) and the base-2 LSE (B·H, N) in float32.

    precision: `tl.dot`'s input_precision for float32 inputs ("ieee" or "tf32"). config: a tile to use
    instead of the table's (tests run every row's). out: where to write the output, any (B, H, N, D)
    view (the packed entry point passes a view of its (B, N, C) result); a new tensor if None."""
    B, H, N, D = q.shape
    if out is None:
        out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * H, N), dtype=torch.float32, device=q.device)

    def run(c: tables.TileConfig) -> None:
        _attn_fwd_kernel[(B * H * triton.cdiv(N, c["BLOCK_M"]),)](
            q, k, v, out, lse,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            H, N, scale * LOG2E,
            CAUSAL=causal, HEAD_DIM=D, BLOCK_D=_block_d(D), PRECISION=precision, **c.launch_kwargs(),
        )

    _launch("attention.fwd", q, config, run)
    return out, lse


def uses_fused_backward(q: torch.Tensor) -> bool:
    """Whether the backward of (B, H, N, D) inputs runs the one-program-per-head kernel: the tile table
    has an "attention.bwd" row for this device, dtype, head dim and length (short sequences)."""
    B, H, N, D = q.shape
    return tables.tile_for("attention.bwd", arch.device_family(q.device), q.dtype, D, N) is not None


def attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, causal: bool, scale: float, precision: str = "ieee",
    dkdv_config: tables.TileConfig | None = None, dq_config: tables.TileConfig | None = None,
    bwd_config: tables.TileConfig | None = None, grads: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels; returns dQ, dK, dV with the shapes and dtype of q, k, v.

    Short sequences (an "attention.bwd" row in the tile table, or `bwd_config`) take the fused kernel:
    one launch, one program per (batch, head). Longer ones, or `dkdv_config`/`dq_config`, take the
    split kernels: delta, then dK and dV per key block, then dQ per query block. grads: the three
    (B, H, N, D) tensors to write dQ, dK, dV into, any strides (views of one packed dqkv)."""
    B, H, N, D = q.shape
    block_d = _block_d(D)
    if grads is None:
        grads = tuple(torch.empty((B, H, N, D), dtype=x.dtype, device=x.device) for x in (q, k, v))
    dq, dk, dv = grads
    delta = torch.empty_like(lse)
    common = dict(CAUSAL=causal, HEAD_DIM=D, BLOCK_D=block_d, PRECISION=precision)
    split = dkdv_config is not None or dq_config is not None
    if not split and (bwd_config is not None or uses_fused_backward(q)):
        def run_fused(c: tables.TileConfig) -> None:
            # dQ's running sum across key blocks, only when there are several.
            acc = (torch.empty((B * H, N, block_d), dtype=torch.float32, device=q.device)
                   if N > c["BLOCK_N"] else delta)
            _attn_bwd_fused_kernel[(B * H,)](
                q, k, v, out, do, dq, dk, dv, lse, delta, acc,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(do),
                *_strides(dq), *_strides(dk), *_strides(dv),
                H, N, scale * LOG2E, scale, **common, **c.launch_kwargs(),
            )

        _launch("attention.bwd", q, bwd_config, run_fused)
        return dq, dk, dv

    _attn_bwd_delta_kernel[(B * H * triton.cdiv(N, DELTA_BLOCK_M),)](
        out, do, delta, *_strides(out), *_strides(do), H, N,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=DELTA_BLOCK_M,
    )

    def run_dkdv(c: tables.TileConfig) -> None:
        _attn_bwd_dkdv_kernel[(B * H * triton.cdiv(N, c["BLOCK_N"]),)](
            q, k, v, do, dk, dv, lse, delta,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
            H, N, scale * LOG2E, scale, **common, **c.launch_kwargs(),
        )

    def run_dq(c: tables.TileConfig) -> None:
        _attn_bwd_dq_kernel[(B * H * triton.cdiv(N, c["BLOCK_M"]),)](
            q, k, v, do, dq, lse, delta,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
            H, N, scale * LOG2E, scale, **common, **c.launch_kwargs(),
        )

    _launch("attention.dkdv", q, dkdv_config, run_dkdv)
    _launch("attention.dq", q, dq_config, run_dq)
    return dq, dk, dv


def unpack_heads(packed: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """`parts` (B, H, N, D) views of a (B, N, parts·H·D) tensor laid out as (parts, H, D) per token: q,
    k, v of a qkv projection (parts=3), or one (B, N, C) output (parts=1). Splitting the last dim is
    always a view, whatever its strides."""
    B, N, C = packed.shape
    return packed.unflatten(-1, (parts, num_heads, C // (parts * num_heads))).permute(2, 0, 3, 1, 4).unbind(0)


def packed_attention_forward(qkv: torch.Tensor, num_heads: int, causal: bool, scale: float,
                             precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel on a (B, N, 3·C) qkv projection, read in place; returns the output written
    straight in (B, N, C), heads concatenated (what the output projection takes), and the LSE."""
    B, N, C3 = qkv.shape
    q, k, v = unpack_heads(qkv, 3, num_heads)
    out = torch.empty((B, N, C3 // 3), dtype=qkv.dtype, device=qkv.device)
    _, lse = attention_forward(q, k, v, causal, scale, precision, out=unpack_heads(out, 1, num_heads)[0])
    return out, lse


def packed_attention_backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                              num_heads: int, causal: bool, scale: float, precision: str = "ieee") -> torch.Tensor:
    """The backward kernels for `packed_attention_forward`: one (B, N, 3·C) dqkv in the projection's
    layout, dQ, dK and dV written into their parts of it."""
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    (do,), (o,) = unpack_heads(dout, 1, num_heads), unpack_heads(out, 1, num_heads)
    attention_backward(do, *unpack_heads(qkv, 3, num_heads), o, lse, causal, scale, precision,
                       grads=unpack_heads(dqkv, 3, num_heads))
    return dqkv


# --------------------------------------------------------------------------------------------------
# torch.library registration: custom ops, fake implementations, autograd
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("vitfast::flash_attention_forward", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, causal, scale, precision)


@_forward_op.register_fake
def _(q, k, v, causal, scale, precision):
    B, H, N, D = q.shape
    return q.new_empty((B, H, N, D)), q.new_empty((B * H, N), dtype=torch.float32)


@torch.library.custom_op("vitfast::flash_attention_backward", mutates_args=())
def _backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(do, q, k, v, out, lse, causal, scale, precision)


@_backward_op.register_fake
def _(do, q, k, v, out, lse, causal, scale, precision):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, causal, scale, precision = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal, ctx.scale, ctx.precision = causal, scale, precision


def _backward(ctx, do, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _backward_op(do, q, k, v, out, lse, ctx.causal, ctx.scale, ctx.precision)
    return dq, dk, dv, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("vitfast::flash_attention_packed_forward", mutates_args=())
def _packed_forward_op(qkv: torch.Tensor, num_heads: int, causal: bool, scale: float,
                       precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    return packed_attention_forward(qkv, num_heads, causal, scale, precision)


@_packed_forward_op.register_fake
def _(qkv, num_heads, causal, scale, precision):
    B, N, C3 = qkv.shape
    return qkv.new_empty((B, N, C3 // 3)), qkv.new_empty((B * num_heads, N), dtype=torch.float32)


@torch.library.custom_op("vitfast::flash_attention_packed_backward", mutates_args=())
def _packed_backward_op(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, num_heads: int,
                        causal: bool, scale: float, precision: str) -> torch.Tensor:
    return packed_attention_backward(dout, qkv, out, lse, num_heads, causal, scale, precision)


@_packed_backward_op.register_fake
def _(dout, qkv, out, lse, num_heads, causal, scale, precision):
    return qkv.new_empty(qkv.shape)


def _packed_setup_context(ctx, inputs, output) -> None:
    qkv, num_heads, causal, scale, precision = inputs
    ctx.save_for_backward(qkv, *output)
    ctx.num_heads, ctx.causal, ctx.scale, ctx.precision = num_heads, causal, scale, precision


def _packed_backward(ctx, dout, _dlse):
    qkv, out, lse = ctx.saved_tensors
    dqkv = _packed_backward_op(dout, qkv, out, lse, ctx.num_heads, ctx.causal, ctx.scale, ctx.precision)
    return dqkv, None, None, None, None


_packed_forward_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


# --------------------------------------------------------------------------------------------------
# The Triton backend
# --------------------------------------------------------------------------------------------------


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
                     precision: str = "ieee") -> torch.Tensor:
    """``attention(..., backend="triton")`` on inputs in the operand dtype the precision policy chose:
    checks them (ValueError naming the problem), then runs the fused kernels with autograd. (B, H, N, D)
    in and out; `precision` is `tl.dot`'s for float32 inputs."""
    _check_triton_inputs(q, k, v)
    if q.numel() == 0:
        return torch.empty_like(q)
    return _forward_op(q, k, v, causal, float(scale), precision)[0]


def triton_packed_attention(qkv: torch.Tensor, num_heads: int, *, causal: bool, scale: float,
                            precision: str = "ieee") -> torch.Tensor:
    """``packed_attention(..., backend="triton")``: self-attention of a (B, N, 3·C) qkv projection,
    read in place, to (B, N, C), with one packed dqkv in the backward; no copy either way."""
    _check_triton_inputs(*unpack_heads(qkv, 3, num_heads))
    if qkv.numel() == 0:
        return qkv.new_empty(qkv.shape[:-1] + (qkv.shape[-1] // 3,))
    return _packed_forward_op(qkv, num_heads, causal, float(scale), precision)[0]
