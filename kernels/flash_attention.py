"""Flash attention: Triton forward and backward, the launcher, the autograd Function and the Triton
backend's entry point (the public op `vitfast.kernels.attention`, which picks a backend, is in ops.py).

Forward (FlashAttention-2 schedule): one program per (batch·head, block of BLOCK_M query rows); it
streams key/value blocks through an online softmax in base 2 with float32 accumulators and stores the
output and the row log-sum-exp, never the N×N matrix. Backward recomputes the probabilities from the
log-sum-exp: one kernel per key block accumulates dK and dV, another per query block accumulates dQ.
No program writes another's rows and nothing uses atomics, and tiles come from kernels/tiles.json,
not from timing, so gradients are bit-identical run to run and rank to rank.

The launchers are registered as torch.library custom ops (``vitfast::flash_attention_forward`` and
``..._backward``, with fake implementations and the forward's autograd), so ``torch.compile`` sees one
opaque op per call, with no graph break, and nothing in them waits on the GPU.

Every tensor is addressed through its own strides (q, k and v unbound from a packed qkv need no copy);
batch, head and block offsets are 64-bit so tensors past 2^31 elements are safe.
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
    mask = _tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM)
    o = tl.load(_tile_ptrs(_head_base(O, bh, H, stride_ob, stride_oh),
                           start_m, stride_on, stride_od, BLOCK_M, BLOCK_D), mask=mask, other=0.0)
    do = tl.load(_tile_ptrs(_head_base(DO, bh, H, stride_dob, stride_doh),
                            start_m, stride_don, stride_dod, BLOCK_M, BLOCK_D), mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
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
    offs_d = tl.arange(0, BLOCK_D)
    arange_m = tl.arange(0, BLOCK_M)

    q_base = _head_base(Q, bh, H, stride_qb, stride_qh)
    do_base = _head_base(DO, bh, H, stride_dob, stride_doh)
    lse_base = LSE + tl.cast(bh, tl.int64) * N
    delta_base = DELTA + tl.cast(bh, tl.int64) * N

    kv_mask = _tile_mask(start_n, N, BLOCK_N, BLOCK_D, HEAD_DIM)
    k = tl.load(_tile_ptrs(_head_base(K, bh, H, stride_kb, stride_kh),
                           start_n, stride_kn, stride_kd, BLOCK_N, BLOCK_D), mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(_head_base(V, bh, H, stride_vb, stride_vh),
                           start_n, stride_vn, stride_vd, BLOCK_N, BLOCK_D), mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    lo = (start_n // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for start_m in range(lo, N, BLOCK_M):
        offs_m = start_m + arange_m
        m_in = offs_m < N
        qT_ptrs = (q_base + tl.cast(start_m, tl.int64) * stride_qn
                   + offs_d[:, None] * stride_qd + arange_m[None, :] * stride_qn)
        qT = tl.load(qT_ptrs, mask=(offs_d[:, None] < HEAD_DIM) & m_in[None, :], other=0.0)
        do = tl.load(_tile_ptrs(do_base, start_m, stride_don, stride_dod, BLOCK_M, BLOCK_D),
                     mask=_tile_mask(start_m, N, BLOCK_M, BLOCK_D, HEAD_DIM), other=0.0)
        # Rows past N get lse = +inf, hence probability 0, and delta 0.
        lse = tl.load(lse_base + offs_m, mask=m_in, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=m_in, other=0.0)

        pT = tl.math.exp2(tl.dot(k, qT, input_precision=PRECISION) * qk_scale - lse[None, :])
        if CAUSAL:
            pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PRECISION)

    dk = dk * sm_scale
    tl.store(_tile_ptrs(_head_base(DK, bh, H, stride_dkb, stride_dkh),
                        start_n, stride_dkn, stride_dkd, BLOCK_N, BLOCK_D),
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(_tile_ptrs(_head_base(DV, bh, H, stride_dvb, stride_dvh),
                        start_n, stride_dvn, stride_dvd, BLOCK_N, BLOCK_D),
             dv.to(DV.dtype.element_ty), mask=kv_mask)


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
    config: tables.TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; returns the output (B, H, N, D) and the base-2 LSE (B·H, N) in float32.

    precision: `tl.dot`'s input_precision for float32 inputs ("ieee" or "tf32"). config: a tile to use
    instead of the table's (tests run every row's)."""
    B, H, N, D = q.shape
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


def attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, causal: bool, scale: float, precision: str = "ieee",
    dkdv_config: tables.TileConfig | None = None, dq_config: tables.TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels; returns dQ, dK, dV with the shapes and dtype of q, k, v."""
    B, H, N, D = q.shape
    block_d = _block_d(D)
    delta = torch.empty_like(lse)
    _attn_bwd_delta_kernel[(B * H * triton.cdiv(N, DELTA_BLOCK_M),)](
        out, do, delta, *_strides(out), *_strides(do), H, N,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=DELTA_BLOCK_M,
    )
    dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, N, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, H, N, D), dtype=v.dtype, device=v.device)
    common = dict(CAUSAL=causal, HEAD_DIM=D, BLOCK_D=block_d, PRECISION=precision)

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
