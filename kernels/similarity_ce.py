"""The fused similarity-matrix cross-entropy: CLIP's symmetric loss without the N×N logits. Triton
kernels, a chunked PyTorch path, the autograd Function, the gather across ranks and the entry point of
the two tiled backends (the public op `vitfast.kernels.clip_loss`, which picks a backend, is in ops.py).

With S = image·textᵀ, logits L = s·S + b, row and column log-sum-exps r_i = LSE_j L_ij and
c_j = LSE_i L_ij, the loss is

    loss = (Σ_i r_i + Σ_j c_j − 2·Σ_i L_ii) / (2N)

and, with P_ij = exp(L_ij − r_i) + exp(L_ij − c_j) (row softmax plus column softmax),

    d image_i = s/(2N) · (Σ_j P_ij·text_j − 2·text_i)      d text_j: the same with the roles swapped
    d s = (Σ_ij P_ij·S_ij − 2·Σ_i S_ii) / (2N)             d b = (Σ_ij P_ij − 2N) / (2N)  (zero in exact arithmetic)

Every pass computes S tile by tile and keeps only O(N·D) (the scratch below is O(N) for the forward
and O(D) for the backward), so no N×N matrix is ever stored. Single process, five N²D products:

- forward (1 product): one kernel computes each tile of S once and updates both its rows' and its
  columns' log-sum-exps. Its grid is row groups × column splits (`lse_grid`, about 2×132 programs
  when there are that many tiles): a program walks its row blocks, each against its split's columns,
  keeping the row statistics in registers and merging the column statistics into its own row of a
  (groups × N) scratch; the (splits × N) partial row LSEs and the (groups × N) partial column LSEs
  are merged by torch.logsumexp, as flash-decoding merges its splits.
- backward (4 products): per side, one gradient pass (the text side is the same kernel with the
  operands and LSEs swapped). A program, (row block, column split), holds a D-wide fp32 accumulator
  and computes each tile of S once (1 product) for P·B (1 product), with the row sums of P·S and P
  for the scale and bias gradients. Splits come only while there are fewer row blocks than
  WAVE_PROGRAMS; their fp32 partials (splits × n × D, fewer than 3·WAVE_PROGRAMS·BLOCK_M·D floats)
  are summed by torch.

Across ranks (`group=`), each rank scores its n local pairs against the gathered global batch of N,
two n×N matrices (the local images' rows of the global S and the local texts' columns), in units of
n·N·D: a forward of two one-sided LSE passes (2 products) and a backward of four one-sided gradient
passes (8: the local rows' gradients and, transposed, the gathered rows', which the gather's
backward sums across ranks; 4 when the gathered features need no gradient). `backend="chunked"`
does the same math in PyTorch with row chunks (for CPUs): the forward's one pass merges the chunks'
column LSEs as it goes; its backward computes each softmax's product on its own (two chunks of
logits live at once, not three). Nothing is atomic and every split is summed in a fixed order, so
results are deterministic.

Both backends multiply operands in the dtype the precision policy chose (kernels/precision.py: under
autocast, 16-bit operands as open_clip's matmul) and keep log-sum-exps, probabilities' sums and
gradient accumulators in float32. The forward and backward are torch.library custom ops
(``vitfast::clip_loss_forward`` and ``..._backward``, fake implementations, registered autograd);
tiles come from kernels/tiles.json.
"""

from __future__ import annotations

import math

import torch

from ._triton import require_triton, tl, triton
from .similarity import (WAVE_PROGRAMS, _acc_dtype, _chunk_rows, _similarity_tile, _splits, _tile, grad_block_d,
                         unsupported_reason)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _clip_lse_kernel(
    A,  # (N_A, D) embeddings whose rows get a log-sum-exp, any strides
    B,  # (N_B, D) the other side's embeddings (the columns), any strides
    SCALE,  # () fp32 logit scale
    BIAS,  # () fp32 logit bias, or a dummy pointer when HAS_BIAS is False
    ROW_PART,  # (splits, N_A) fp32 out: per column split, log2 Σ_j 2^(log2e·L_ij) over its columns
    COL_PART,  # (groups, N_B) fp32 in/out when COLUMNS: per row group, the same over its rows; −inf on entry
    n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
    groups,  # row groups: program g takes row blocks g, g + groups, ...
    blocks_per_split,  # column blocks of one split: program c takes [c·blocks_per_split, +blocks_per_split)
    HAS_BIAS: tl.constexpr, COLUMNS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """Each similarity tile once, for the row statistics and (COLUMNS) the column statistics.

    Row statistics stay in registers over the split's columns; column statistics go through this
    program's own row of COL_PART (no other program touches it, so no atomics and a fixed order)."""
    pid_g = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale_log2 = tl.load(SCALE).to(tl.float32) * 1.4426950408889634
    bias_log2 = 0.0
    if HAS_BIAS:
        bias_log2 = tl.load(BIAS).to(tl.float32) * 1.4426950408889634
    col_begin = pid_c * blocks_per_split * BLOCK_N
    col_end = tl.minimum(col_begin + blocks_per_split * BLOCK_N, n_b)
    for m0 in range(pid_g * BLOCK_M, n_a, groups * BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < n_a
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for n0 in range(col_begin, col_end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < n_b
            s = _similarity_tile(A, B, rows, cols, n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
                                 BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
            # −1e30 outside the matrix: it vanishes from real rows' and columns' sums (each block holds
            # a real entry), and padding rows and columns, never stored, get finite maxima (no NaN).
            s = tl.where(row_ok[:, None] & col_ok[None, :], s * scale_log2 + bias_log2, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
            m_i = m_new
            if COLUMNS:
                m_c = tl.max(s, 0)
                l_c = tl.sum(tl.math.exp2(s - m_c[None, :]), 0)
                col_ptrs = COL_PART + pid_g * n_b + cols
                old = tl.load(col_ptrs, mask=col_ok, other=float("-inf"))
                top = tl.maximum(old, m_c)
                tl.store(col_ptrs, top + tl.math.log2(tl.math.exp2(old - top) + l_c * tl.math.exp2(m_c - top)),
                         mask=col_ok)
                # The next row block reads these columns back, maybe in other threads.
                tl.debug_barrier()
        tl.store(ROW_PART + pid_c * n_a + rows, m_i + tl.math.log2(l_i), mask=row_ok)


@triton.jit
def _clip_grad_kernel(
    A,  # (N_A, D) the side whose gradient this pass computes, any strides
    B,  # (N_B, D) the other side, any strides
    SCALE,  # () fp32 logit scale
    BIAS,  # () fp32 logit bias, or a dummy pointer when HAS_BIAS is False
    LSE_A,  # (N_A,) fp32 log-sum-exps over A's rows (natural log); read when ROW_TERM
    LSE_B,  # (N_B,) fp32 log-sum-exps over B's rows; read when COL_TERM
    G,  # (splits, N_A, D) fp32 out, contiguous: Σ_j P_ij·B_j over column split c's columns j
    ROW_SUMS,  # (splits, N_A, 2) fp32 out, contiguous: Σ_j P_ij·S_ij and Σ_j P_ij over the same columns
    n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
    blocks_per_split,  # column blocks of one split: program (i, c) takes [c·blocks_per_split, +blocks_per_split)
    HAS_BIAS: tl.constexpr, ROW_TERM: tl.constexpr, COL_TERM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """P_ij = [ROW_TERM] exp(L_ij − LSE_A_i) + [COL_TERM] exp(L_ij − LSE_B_j): the row softmax, the
    column softmax, or both (the single-process symmetric loss needs both in one pass).

    The accumulator spans all of D (BLOCK_D), so each similarity tile is computed once (over D in
    BLOCK_K slices, which keeps shared memory to one D-wide B block) and serves every output column."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_a
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    scale_log2 = tl.load(SCALE).to(tl.float32) * 1.4426950408889634
    bias_log2 = 0.0
    if HAS_BIAS:
        bias_log2 = tl.load(BIAS).to(tl.float32) * 1.4426950408889634
    if ROW_TERM:
        lse_a = tl.load(LSE_A + rows, mask=row_ok, other=0.0) * 1.4426950408889634

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    ps = tl.zeros([BLOCK_M], dtype=tl.float32)
    p_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    col_begin = pid_c * blocks_per_split * BLOCK_N
    col_end = tl.minimum(col_begin + blocks_per_split * BLOCK_N, n_b)
    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_b
        s = _similarity_tile(A, B, rows, cols, n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
                             BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        logit = s * scale_log2 + bias_log2
        p = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if ROW_TERM:
            p += tl.math.exp2(logit - lse_a[:, None])
        if COL_TERM:
            lse_b = tl.load(LSE_B + cols, mask=col_ok, other=0.0) * 1.4426950408889634
            p += tl.math.exp2(logit - lse_b[None, :])
        p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
        ps += tl.sum(p * s, 1)
        p_sum += tl.sum(p, 1)
        b = tl.load(B + tl.cast(cols, tl.int64)[:, None] * stride_b + offs_d[None, :] * stride_bk,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(p.to(b.dtype), b, acc, input_precision=PRECISION)

    out_rows = pid_c * n_a + tl.cast(rows, tl.int64)
    tl.store(G + out_rows[:, None] * D + offs_d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(ROW_SUMS + out_rows * 2, ps, mask=row_ok)
    tl.store(ROW_SUMS + out_rows * 2 + 1, p_sum, mask=row_ok)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

def lse_grid(n_a: int, n_b: int, block_m: int, block_n: int, columns: bool) -> tuple[int, int, int]:
    """(row groups, blocks per column split, column splits) of the LSE pass. One-sided, a program per row
    block; with the column statistics, about √WAVE_PROGRAMS row groups, so that their partial column
    LSEs (groups × N_B floats) stay O(N)."""
    row_blocks = triton.cdiv(n_a, block_m)
    groups = min(row_blocks, math.isqrt(WAVE_PROGRAMS - 1) + 1) if columns else row_blocks
    return (groups, *_splits(triton.cdiv(n_b, block_n), groups))


def _merge_lse(part: torch.Tensor) -> torch.Tensor:
    """Natural-log LSE over the first dimension of base-2 partial LSEs (torch's fixed reduction order)."""
    return torch.logsumexp(part.mul_(LN2), dim=0)


def _triton_lse(a, b, scale, bias, columns: bool, precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row LSEs of L = s·a·bᵀ + bias and, with `columns`, its column LSEs, from one pass over S."""
    n_a, n_b = a.shape[0], b.shape[0]
    c = _tile("clip.lse", a)
    groups, per_split, splits = lse_grid(n_a, n_b, c["BLOCK_M"], c["BLOCK_N"], columns)
    row_part = torch.empty((splits, n_a), dtype=torch.float32, device=a.device)
    col_part = torch.full((groups if columns else 0, n_b), float("-inf"), dtype=torch.float32, device=a.device)
    _clip_lse_kernel[(groups, splits)](
        a, b, scale, bias if bias is not None else scale, row_part, col_part, n_a, n_b, a.shape[1],
        *a.stride(), *b.stride(), groups, per_split, HAS_BIAS=bias is not None, COLUMNS=columns,
        PRECISION=precision, **c.launch_kwargs(),
    )
    return _merge_lse(row_part), _merge_lse(col_part) if columns else None


def _triton_grad(a, b, scale, bias, lse_a, lse_b, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_j P_ij·b_j in fp32, per-row [Σ_j P_ij·S_ij, Σ_j P_ij]); a None LSE drops that softmax from P."""
    n, d = a.shape
    c = _tile("clip.grad", a)
    per_split, splits = _splits(triton.cdiv(b.shape[0], c["BLOCK_N"]), triton.cdiv(n, c["BLOCK_M"]))
    g = torch.empty((splits, n, d), dtype=torch.float32, device=a.device)
    row_sums = torch.empty((splits, n, 2), dtype=torch.float32, device=a.device)
    _clip_grad_kernel[(triton.cdiv(n, c["BLOCK_M"]), splits)](
        a, b, scale, bias if bias is not None else scale, lse_a if lse_a is not None else scale,
        lse_b if lse_b is not None else scale, g, row_sums, n, b.shape[0], d, *a.stride(), *b.stride(), per_split,
        HAS_BIAS=bias is not None, ROW_TERM=lse_a is not None, COL_TERM=lse_b is not None, BLOCK_D=grad_block_d(d),
        PRECISION=precision, **c.launch_kwargs(),
    )
    # The splits' partial sums, added in a fixed order.
    return (g[0], row_sums[0]) if splits == 1 else (g.sum(0), row_sums.sum(0))


def _logits(s: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return s * scale + bias if bias is not None else s * scale


def _chunked_lse(a, b, scale, bias, columns: bool, precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """_triton_lse's results, a chunk of rows at a time; the column LSEs merge chunk by chunk."""
    step = _chunk_rows(b.shape[0])
    a, b = a.to(_acc_dtype(a)), b.to(_acc_dtype(b))
    rows, col_lse = [], None
    for i in range(0, a.shape[0], step):
        logits = _logits(a[i:i + step] @ b.t(), scale, bias)
        rows.append(torch.logsumexp(logits, dim=1))
        if columns:
            chunk = torch.logsumexp(logits, dim=0)
            col_lse = chunk if col_lse is None else torch.logaddexp(col_lse, chunk)
        del logits  # before the next chunk's product: one chunk of logits at a time
    return torch.cat(rows), col_lse


def _chunked_grad(a, b, scale, bias, lse_a, lse_b, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Per chunk, the similarities s and one softmax p at a time: two chunks of logits live at once (the
    # row-wise and column-wise softmaxes are used one after the other, not summed first), and p·s is
    # reduced by a batched dot rather than through a third chunk-sized product.
    step = _chunk_rows(b.shape[0])
    a, b = a.to(_acc_dtype(a)), b.to(_acc_dtype(b))
    g = a.new_zeros(a.shape)
    row_sums = a.new_zeros((a.shape[0], 2))
    for i in range(0, a.shape[0], step):
        rows = slice(i, i + step)
        s = a[rows] @ b.t()
        for lse in (None if lse_a is None else lse_a[rows, None], None if lse_b is None else lse_b[None, :]):
            if lse is None:
                continue
            p = torch.mul(s, scale)
            if bias is not None:
                p.add_(bias)
            p.sub_(lse).exp_()
            g[rows].addmm_(p, b)
            row_sums[rows, 0] += torch.bmm(p.unsqueeze(1), s.unsqueeze(2)).flatten()
            row_sums[rows, 1] += p.sum(1)
            del p
    return g, row_sums


# --------------------------------------------------------------------------------------------------
# The loss's forward and backward, and their torch.library registration
# --------------------------------------------------------------------------------------------------


def loss_forward(image, text, all_image, all_text, scale, bias, use_triton: bool, precision: str):
    """The loss and what its backward needs: (loss, row LSEs, column LSEs, the diagonal similarities).

    Single process (all_image is None): rows and columns of the n×n logits from one pass.
    Gathered (all_image, all_text: the global batch of N pairs, the local n pairs inside it): the local
    images' rows against all texts and the local texts' rows against all images, as open_clip's
    local loss; the backward's one-sided passes also give the gradients of the gathered features.
    """
    with torch.autocast(image.device.type, enabled=False):
        acc = _acc_dtype(image)
        s = scale.detach().to(torch.float32 if use_triton else acc).reshape(())
        b = None if bias is None else bias.detach().to(s.dtype).reshape(())
        lse = _triton_lse if use_triton else _chunked_lse
        if all_image is None:  # one pass: each tile of S feeds its rows' and its columns' statistics
            row_lse, col_lse = lse(image, text, s, b, True, precision)
        else:  # two matrices: the local images' rows of the global S and the local texts' columns
            row_lse = lse(image, all_text, s, b, False, precision)[0]
            col_lse = lse(text, all_image, s, b, False, precision)[0]
        diag_s = (image.to(acc) * text.to(acc)).sum(1)
        diag = diag_s * s + (b if b is not None else 0.0)
        loss = (row_lse.sum() + col_lse.sum() - 2 * diag.sum()) / (2 * image.shape[0])
        return loss.to(acc), row_lse, col_lse, diag_s


def loss_backward(grad, image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s,
                  use_triton: bool, precision: str, need_all: bool):
    """Gradients of the loss for image, text, (if need_all) the gathered features, the scale and the bias,
    in float32 (float64 for float64 inputs); the caller casts them to its tensors' dtypes."""
    with torch.autocast(image.device.type, enabled=False):
        n = image.shape[0]
        s = scale.detach().to(row_lse.dtype).reshape(())
        b = None if bias is None else bias.detach().to(s.dtype).reshape(())
        grad_fn = _triton_grad if use_triton else _chunked_grad
        gathered = all_image is not None
        if gathered:  # each softmax on its own: rows of local×global and their transposes
            g_i, sums_i = grad_fn(image, all_text, s, b, row_lse, None, precision)
            g_t, sums_t = grad_fn(text, all_image, s, b, col_lse, None, precision)
            sums = sums_i.sum(0) + sums_t.sum(0)
        else:  # P = row softmax + column softmax of the one n×n matrix, in one pass per side
            g_i, sums_i = grad_fn(image, text, s, b, row_lse, col_lse, precision)
            g_t, _ = grad_fn(text, image, s, b, col_lse, row_lse, precision)
            sums = sums_i.sum(0)
        coef = grad.to(g_i.dtype) / (2 * n)
        step = coef * s.to(g_i.dtype)
        d_image = step * (g_i - 2 * text.to(g_i.dtype))
        d_text = step * (g_t - 2 * image.to(g_t.dtype))
        d_all_image, d_all_text = g_i.new_empty(0), g_i.new_empty(0)
        if gathered and need_all:
            d_all_image = step * grad_fn(all_image, text, s, b, None, col_lse, precision)[0]
            d_all_text = step * grad_fn(all_text, image, s, b, None, row_lse, precision)[0]
        d_scale = coef * (sums[0] - 2 * diag_s.sum())
        d_bias = coef * (sums[1] - 2 * n)
        return d_image, d_text, d_all_image, d_all_text, d_scale, d_bias


@torch.library.custom_op("vitfast::clip_loss_forward", mutates_args=())
def _forward_op(image: torch.Tensor, text: torch.Tensor, all_image: torch.Tensor | None,
                all_text: torch.Tensor | None, scale: torch.Tensor, bias: torch.Tensor | None, use_triton: bool,
                precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return loss_forward(image, text, all_image, all_text, scale, bias, use_triton, precision)


@_forward_op.register_fake
def _(image, text, all_image, all_text, scale, bias, use_triton, precision):
    acc = _acc_dtype(image)
    n = image.shape[0]
    return (image.new_empty((), dtype=acc), image.new_empty((n,), dtype=acc), image.new_empty((n,), dtype=acc),
            image.new_empty((n,), dtype=acc))


@torch.library.custom_op("vitfast::clip_loss_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, image: torch.Tensor, text: torch.Tensor, all_image: torch.Tensor | None,
                 all_text: torch.Tensor | None, scale: torch.Tensor, bias: torch.Tensor | None,
                 row_lse: torch.Tensor, col_lse: torch.Tensor, diag_s: torch.Tensor, use_triton: bool,
                 precision: str, need_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor, torch.Tensor]:
    return loss_backward(grad, image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s,
                         use_triton, precision, need_all)


@_backward_op.register_fake
def _(grad, image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s, use_triton, precision,
      need_all):
    acc = _acc_dtype(image)
    gathered_shape = all_image.shape if all_image is not None and need_all else (0,)
    return (image.new_empty(image.shape, dtype=acc), text.new_empty(text.shape, dtype=acc),
            image.new_empty(gathered_shape, dtype=acc), text.new_empty(gathered_shape, dtype=acc),
            image.new_empty((), dtype=acc), image.new_empty((), dtype=acc))


def _setup_context(ctx, inputs, output) -> None:
    image, text, all_image, all_text, scale, bias, use_triton, precision = inputs
    _, row_lse, col_lse, diag_s = output
    ctx.save_for_backward(image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s)
    ctx.use_triton, ctx.precision = use_triton, precision


def _backward(ctx, grad, _d_row, _d_col, _d_diag):
    image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s = ctx.saved_tensors
    need_all = all_image is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
    d_image, d_text, d_all_image, d_all_text, d_scale, d_bias = _backward_op(
        grad, image, text, all_image, all_text, scale, bias, row_lse, col_lse, diag_s, ctx.use_triton,
        ctx.precision, need_all)
    return (d_image.to(image.dtype), d_text.to(text.dtype),
            d_all_image.to(all_image.dtype) if need_all else None,
            d_all_text.to(all_text.dtype) if need_all else None,
            d_scale.to(scale.dtype).reshape(scale.shape),
            d_bias.to(bias.dtype).reshape(bias.shape) if bias is not None else None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# The tiled backends
# --------------------------------------------------------------------------------------------------


def tiled_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                    logit_bias: torch.Tensor | float | None, *, all_image: torch.Tensor | None = None,
                    all_text: torch.Tensor | None = None, use_triton: bool, precision: str = "ieee") -> torch.Tensor:
    """``clip_loss(..., backend="triton")`` (`use_triton`) or ``backend="chunked"`` on inputs the public
    op has checked and cast to the operand dtype, with the gathered global batch (`all_image`,
    `all_text`) if any; `precision` is `tl.dot`'s for float32 operands. The Triton backend first checks
    what its kernels need (ValueError naming the problem)."""
    if use_triton:
        require_triton()
        reason = unsupported_reason(image_emb.shape[1], image_emb.dtype, image_emb.device)
        if reason:
            raise ValueError(f"backend='triton' cannot run here: {reason}. Use backend='chunked'.")
    scale = torch.as_tensor(logit_scale, device=image_emb.device)
    if not scale.is_floating_point():
        scale = scale.float()
    bias = None
    if logit_bias is not None:
        bias = torch.as_tensor(logit_bias, device=image_emb.device)
        bias = bias if bias.is_floating_point() else bias.float()
    return _forward_op(image_emb, text_emb, all_image, all_text, scale, bias, use_triton, precision)[0]
