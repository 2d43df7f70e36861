"""Flash attention: Triton forward and backward, the launcher, the autograd Function and the Triton
backend's entry point (the public op `vitfast.kernels.attention`, which picks a backend, is in ops.py).

Forward (FlashAttention-2 schedule): one program per (batch·head, block of BLOCK_M query rows); it
streams key/value blocks through an online softmax in base 2 with float32 accumulators and stores the
output and the row log-sum-exp, never the N×N matrix. Backward recomputes the probabilities from the
log-sum-exp: one kernel per key block accumulates dK and dV, another per query block accumulates dQ.
No program writes another's rows and nothing uses atomics, so gradients are bit-identical run to run.

Every tensor is addressed through its own strides (q, k and v unbound from a packed qkv need no copy);
batch, head and block offsets are 64-bit so tensors past 2^31 elements are safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton import dot_precision, interpreting, require_triton, tl, triton

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
# Launch configurations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileConfig:
    """Block sizes and launch options of one kernel; BLOCK_M is always a multiple of BLOCK_N."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def as_triton(self) -> "triton.Config":
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n},
                             num_warps=self.num_warps, num_stages=self.num_stages)


# The autotuner's candidates on a GPU, per kernel and input width; the compile gate
# (tests/test_flash_attention_compile.py) builds each for sm_80 and sm_90 and checks shared memory,
# spills and tensor cores. On sm_90 a dot needs M >= 64 rows for wgmma: the M of every dot is
# BLOCK_M in the forward and dQ kernels and BLOCK_N in the dK/dV kernel. Small tiles suit ViT
# lengths (197-577), where a 128-row tile leaves SMs idle; large tiles suit long sequences.
CONFIGS: dict[str, dict[str, tuple[TileConfig, ...]]] = {
    "fwd": {
        "16bit": (TileConfig(64, 32, 4, 3), TileConfig(64, 64, 4, 3),
                  TileConfig(128, 64, 8, 3), TileConfig(128, 128, 8, 2)),
        # float32 tiles take twice the registers: 8 warps keep them spill-free in TF32.
        "fp32": (TileConfig(64, 32, 8, 2),),
    },
    # dK/dV kernel: BLOCK_N keys held, BLOCK_M queries streamed.
    "dkdv": {
        "16bit": (TileConfig(32, 64, 4, 3), TileConfig(64, 64, 8, 3), TileConfig(32, 128, 8, 2)),
        "fp32": (TileConfig(32, 64, 8, 2),),
    },
    # dQ kernel: BLOCK_M queries held, BLOCK_N keys streamed.
    "dq": {
        "16bit": (TileConfig(64, 32, 4, 3), TileConfig(64, 64, 4, 2), TileConfig(128, 32, 8, 3)),
        "fp32": (TileConfig(64, 32, 8, 2), TileConfig(64, 16, 4, 2)),
    },
}
# The interpreter runs one program at a time in numpy and cannot autotune over several configs.
INTERPRETER_CONFIG = TileConfig(64, 32, 1, 1)
DELTA_BLOCK_M = 64


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def candidate_configs(kernel: str, dtype: torch.dtype) -> tuple[TileConfig, ...]:
    """The configs the autotuner tries for `kernel` ("fwd", "dkdv", "dq") on inputs of `dtype`."""
    return CONFIGS[kernel]["fp32" if dtype == torch.float32 else "16bit"]


_tuned: dict[tuple[str, torch.dtype], object] = {}


def _kernel_for(name: str, kernel, dtype: torch.dtype, config: TileConfig | None):
    """`kernel` with its block sizes chosen: fixed (`config`, or the interpreter's), or autotuned."""
    if config is None and interpreting():
        config = INTERPRETER_CONFIG
    if config is not None:
        return kernel, {"BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                        "num_warps": config.num_warps, "num_stages": config.num_stages}
    if (name, dtype) not in _tuned:
        _tuned[name, dtype] = triton.autotune(
            configs=[c.as_triton() for c in candidate_configs(name, dtype)],
            # Tuned once per sequence length (and dtype, which Triton adds to the key): a training run
            # tunes once; nothing is written in place, so re-running a config during tuning is safe.
            key=["N", "HEAD_DIM", "CAUSAL", "PRECISION"],
        )(kernel)
    return _tuned[name, dtype], {}


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def _grid(n_blocks_of):
    return lambda meta: (n_blocks_of(meta),)


def _check_triton_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming the problem when the Triton kernels cannot take these tensors."""
    require_triton()
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "backend='triton' needs q, k and v of one shape (B, H, N, D); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}. "
            "Use backend='sdpa' for cross-attention with different lengths."
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"backend='triton' needs q, k, v of one dtype among float16, bfloat16, float32; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}."
        )
    head_dim = q.shape[-1]
    if head_dim % 8 or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"backend='triton' supports head dims that are multiples of 8 from {MIN_HEAD_DIM} to "
            f"{MAX_HEAD_DIM}; got {head_dim}. Use backend='sdpa' for this head dim."
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}.")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); "
            f"got a {q.device.type} tensor. Use backend='sdpa' or 'eager' on this device."
        )


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; returns the output (B, H, N, D) and the base-2 LSE (B·H, N) in float32."""
    B, H, N, D = q.shape
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * H, N), dtype=torch.float32, device=q.device)
    kernel, fixed = _kernel_for("fwd", _attn_fwd_kernel, q.dtype, config)
    kernel[_grid(lambda meta: B * H * triton.cdiv(N, meta["BLOCK_M"]))](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        H, N, scale * LOG2E,
        CAUSAL=causal, HEAD_DIM=D, BLOCK_D=_block_d(D), PRECISION=dot_precision(q.dtype),
        **fixed,
    )
    return out, lse


def attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, causal: bool, scale: float,
    dkdv_config: TileConfig | None = None, dq_config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernels; returns dQ, dK, dV with the shapes and dtype of q, k, v."""
    B, H, N, D = q.shape
    block_d = _block_d(D)
    precision = dot_precision(q.dtype)
    delta = torch.empty_like(lse)
    _attn_bwd_delta_kernel[(B * H * triton.cdiv(N, DELTA_BLOCK_M),)](
        out, do, delta, *_strides(out), *_strides(do), H, N,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=DELTA_BLOCK_M,
    )
    dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, N, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, H, N, D), dtype=v.dtype, device=v.device)
    common = dict(CAUSAL=causal, HEAD_DIM=D, BLOCK_D=block_d, PRECISION=precision)

    kernel, fixed = _kernel_for("dkdv", _attn_bwd_dkdv_kernel, q.dtype, dkdv_config)
    kernel[_grid(lambda meta: B * H * triton.cdiv(N, meta["BLOCK_N"]))](
        q, k, v, do, dk, dv, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        H, N, scale * LOG2E, scale, **common, **fixed,
    )
    kernel, fixed = _kernel_for("dq", _attn_bwd_dq_kernel, q.dtype, dq_config)
    kernel[_grid(lambda meta: B * H * triton.cdiv(N, meta["BLOCK_M"]))](
        q, k, v, do, dq, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        H, N, scale * LOG2E, scale, **common, **fixed,
    )
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Triton flash attention; saves q, k, v, the output and the row log-sum-exp (B·H·N floats)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        out, lse = attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


# --------------------------------------------------------------------------------------------------
# The Triton backend
# --------------------------------------------------------------------------------------------------


def triton_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether backend='triton' accepts these inputs (what backend='auto' uses to choose)."""
    try:
        _check_triton_inputs(q, k, v)
    except ValueError:
        return False
    return q.device.type == "cuda"


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                     scale: float) -> torch.Tensor:
    """``attention(..., backend="triton")``: checks the inputs (ValueError naming the problem), then
    runs the fused kernels with autograd. (B, H, N, D) in and out."""
    _check_triton_inputs(q, k, v)
    if q.numel() == 0:
        return torch.empty_like(q)
    return FlashAttentionFunction.apply(q, k, v, causal, float(scale))
