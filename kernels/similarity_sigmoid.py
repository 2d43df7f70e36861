"""The fused sigmoid similarity loss: SigLIP's pairwise loss without the N×N logits. Triton kernels, a
chunked PyTorch path, the torch.library ops with their autograd, and the entry point of the two tiled
backends (the public op `vitfast.kernels.siglip_loss`, which picks a backend, is in ops.py).

With S = image·textᵀ over the n local images and the texts scored against them (the n local ones, or
the N gathered from every rank, in which this rank's pairs sit at columns offset, offset + 1, ...),
logits L = s·S + b and labels y_ij = +1 for the matching pair (j = i + offset) and −1 otherwise,

    loss = Σ_ij softplus(−y_ij·L_ij) / n          (= −Σ logsigmoid(y·L) / n, open_clip's SigLipLoss)

and, with G_ij = σ(L_ij) − [j = i + offset] (the derivative of each term in L),

    d image_i = s/n · Σ_j G_ij·text_j       d text_j = s/n · Σ_i G_ij·image_i
    d s = Σ_ij G_ij·S_ij / n                d b = Σ_ij G_ij / n

Three N²D-sized products per step (units of n·N·D): the forward's S (1), and a gradient pass per
side (each S once and G·B once: 4). No row statistics are needed, so the forward stores only one
partial sum per program, and the backward only its fp32 D-wide accumulators. Grids, splits and the
similarity tile are the CLIP loss's (kernels/similarity.py); so are the tile rows ("clip.lse" for the
forward, "clip.grad" for the gradient passes: the same tile shapes and working sets). Nothing is
atomic and every split is summed by torch in a fixed order, so results are deterministic.

Across ranks (`group=`), each rank's n images are scored against all N texts, gathered with gradient,
so each text's gradient reaches the rank that computed it (the gather's backward sums it there): this
rank's loss is its images' rows of the global loss, as open_clip's SigLipLoss(world_size=...) (its
neighbour exchange), and with equal batches the mean of the ranks' losses is the global batch's loss.
"""

from __future__ import annotations

import torch

from ._triton import require_triton, tl, triton
from .similarity import _acc_dtype, _chunk_rows, _similarity_tile, _splits, _tile, grad_block_d, unsupported_reason

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _siglip_loss_kernel(
    A,  # (n_a, D) the rows (images), any strides
    B,  # (n_b, D) the columns (texts), any strides
    SCALE,  # () fp32 logit scale
    BIAS,  # () fp32 logit bias
    PART,  # (row blocks, splits) fp32 out: Σ softplus(−y·L) over the program's tile rows and columns
    n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
    offset,  # the row i's positive column is i + offset
    blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_a
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    col_begin = pid_c * blocks_per_split * BLOCK_N
    col_end = tl.minimum(col_begin + blocks_per_split * BLOCK_N, n_b)
    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        s = _similarity_tile(A, B, rows, cols, n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
                             BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        logit = s * scale + bias
        z = tl.where(cols[None, :] == (rows + offset)[:, None], -logit, logit)  # −y·L
        # softplus(z) = max(z, 0) + ln(1 + e^−|z|), in base 2 (literals: jit code reads no globals)
        term = tl.maximum(z, 0.0) + 0.6931471805599453 * tl.math.log2(
            1.0 + tl.math.exp2(-tl.abs(z) * 1.4426950408889634))
        term = tl.where(row_ok[:, None] & (cols < n_b)[None, :], term, 0.0)
        total += tl.sum(term, 1)
    tl.store(PART + pid_m * tl.num_programs(1) + pid_c, tl.sum(total, 0))


@triton.jit
def _siglip_grad_kernel(
    A,  # (n_a, D) the side whose gradient this pass computes, any strides
    B,  # (n_b, D) the other side, any strides
    SCALE,  # () fp32 logit scale
    BIAS,  # () fp32 logit bias
    G,  # (splits, n_a, D) fp32 out, contiguous: Σ_j G_ij·B_j over column split c's columns j
    ROW_SUMS,  # (splits, n_a, 2) fp32 out, contiguous: Σ_j G_ij·S_ij and Σ_j G_ij over the same columns
    n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
    offset,  # the row i's positive column is i + offset
    blocks_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """G_ij = σ(L_ij) − [j = i + offset], its product with B and its row sums; each tile of S once."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_a
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    scale = tl.load(SCALE).to(tl.float32)
    bias = tl.load(BIAS).to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    gs = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    col_begin = pid_c * blocks_per_split * BLOCK_N
    col_end = tl.minimum(col_begin + blocks_per_split * BLOCK_N, n_b)
    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_b
        s = _similarity_tile(A, B, rows, cols, n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
                             BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        g = 1.0 / (1.0 + tl.math.exp2(-(s * scale + bias) * 1.4426950408889634))
        g = tl.where(cols[None, :] == (rows + offset)[:, None], g - 1.0, g)
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        gs += tl.sum(g * s, 1)
        g_sum += tl.sum(g, 1)
        b = tl.load(B + tl.cast(cols, tl.int64)[:, None] * stride_b + offs_d[None, :] * stride_bk,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(g.to(b.dtype), b, acc, input_precision=PRECISION)
    out_rows = pid_c * n_a + tl.cast(rows, tl.int64)
    tl.store(G + out_rows[:, None] * D + offs_d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(ROW_SUMS + out_rows * 2, gs, mask=row_ok)
    tl.store(ROW_SUMS + out_rows * 2 + 1, g_sum, mask=row_ok)


# --------------------------------------------------------------------------------------------------
# Launchers: the Triton passes, and the chunked PyTorch passes that compute the same
# --------------------------------------------------------------------------------------------------


def _triton_loss_sum(a, b, scale, bias, offset: int, precision: str) -> torch.Tensor:
    """Σ_ij softplus(−y_ij·L_ij) over a's rows and b's columns, in fp32."""
    c = _tile("clip.lse", a)
    row_blocks = triton.cdiv(a.shape[0], c["BLOCK_M"])
    per_split, splits = _splits(triton.cdiv(b.shape[0], c["BLOCK_N"]), row_blocks)
    part = torch.empty((row_blocks, splits), dtype=torch.float32, device=a.device)
    _siglip_loss_kernel[(row_blocks, splits)](
        a, b, scale, bias, part, a.shape[0], b.shape[0], a.shape[1], *a.stride(), *b.stride(), offset, per_split,
        PRECISION=precision, **c.launch_kwargs(),
    )
    return part.sum()


def _triton_grad(a, b, scale, bias, offset: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_j G_ij·b_j in fp32, per-row [Σ_j G_ij·S_ij, Σ_j G_ij])."""
    n, d = a.shape
    c = _tile("clip.grad", a)
    per_split, splits = _splits(triton.cdiv(b.shape[0], c["BLOCK_N"]), triton.cdiv(n, c["BLOCK_M"]))
    g = torch.empty((splits, n, d), dtype=torch.float32, device=a.device)
    row_sums = torch.empty((splits, n, 2), dtype=torch.float32, device=a.device)
    _siglip_grad_kernel[(triton.cdiv(n, c["BLOCK_M"]), splits)](
        a, b, scale, bias, g, row_sums, n, b.shape[0], d, *a.stride(), *b.stride(), offset, per_split,
        BLOCK_D=grad_block_d(d), PRECISION=precision, **c.launch_kwargs(),
    )
    return (g[0], row_sums[0]) if splits == 1 else (g.sum(0), row_sums.sum(0))


def _logits(a_rows, b, scale, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, L) of a chunk of rows against all of b."""
    s = a_rows @ b.t()
    return s, s * scale + bias


def _positives(n_rows: int, first_row: int, offset: int, n_cols: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the chunk's matching pairs that fall inside the columns."""
    rows = torch.arange(n_rows, device=device)
    cols = rows + first_row + offset
    keep = (cols >= 0) & (cols < n_cols)
    return rows[keep], cols[keep]


def _chunked_loss_sum(a, b, scale, bias, offset: int, precision: str) -> torch.Tensor:
    step = _chunk_rows(b.shape[0])
    a, b = a.to(_acc_dtype(a)), b.to(_acc_dtype(b))
    total = a.new_zeros(())
    for i in range(0, a.shape[0], step):
        _, logit = _logits(a[i:i + step], b, scale, bias)
        rows, cols = _positives(logit.shape[0], i, offset, b.shape[0], a.device)
        logit[rows, cols] = -logit[rows, cols]  # −y·L, in place: one chunk of logits at a time
        total += torch.nn.functional.softplus(logit).sum()
        del logit
    return total


def _chunked_grads(a, b, scale, bias, offset: int, precision: str):
    """Both sides' Σ G·(other side) and the sums, in one pass over row chunks of a (G·a accumulates into
    b's gradient chunk by chunk)."""
    step = _chunk_rows(b.shape[0])
    a, b = a.to(_acc_dtype(a)), b.to(_acc_dtype(b))
    g_a, g_b = a.new_zeros(a.shape), b.new_zeros(b.shape)
    gs, g_sum = a.new_zeros(()), a.new_zeros(())
    for i in range(0, a.shape[0], step):
        s, g = _logits(a[i:i + step], b, scale, bias)
        g.sigmoid_()
        rows, cols = _positives(g.shape[0], i, offset, b.shape[0], a.device)
        g[rows, cols] -= 1.0
        g_a[i:i + step] = g @ b
        g_b.addmm_(g.t(), a[i:i + step])
        gs += torch.dot(g.flatten(), s.flatten())
        g_sum += g.sum()
        del s, g
    return g_a, g_b, gs, g_sum


# --------------------------------------------------------------------------------------------------
# The loss's forward and backward, and their torch.library registration
# --------------------------------------------------------------------------------------------------


def loss_forward(image, texts, scale, bias, offset: int, use_triton: bool, precision: str) -> torch.Tensor:
    """Σ softplus(−y·L) / n over the n images' rows against `texts` (the local or the gathered ones)."""
    with torch.autocast(image.device.type, enabled=False):
        acc = _acc_dtype(image)
        s = scale.detach().to(torch.float32 if use_triton else acc).reshape(())
        b = bias.detach().to(s.dtype).reshape(())
        total = (_triton_loss_sum if use_triton else _chunked_loss_sum)(image, texts, s, b, offset, precision)
        return (total / image.shape[0]).to(acc)


def loss_backward(grad, image, texts, scale, bias, offset: int, use_triton: bool, precision: str):
    """(d image, d texts, d scale, d bias) in float32 (float64 for float64 inputs)."""
    with torch.autocast(image.device.type, enabled=False):
        acc = _acc_dtype(image)
        n = image.shape[0]
        s = scale.detach().to(torch.float32 if use_triton else acc).reshape(())
        b = bias.detach().to(s.dtype).reshape(())
        if use_triton:
            g_i, sums = _triton_grad(image, texts, s, b, offset, precision)
            g_t, _ = _triton_grad(texts, image, s, b, -offset, precision)
            gs, g_sum = sums[:, 0].sum(), sums[:, 1].sum()
        else:
            g_i, g_t, gs, g_sum = _chunked_grads(image, texts, s, b, offset, precision)
        coef = grad.to(acc) / n
        step = coef * s.to(acc)
        return step * g_i.to(acc), step * g_t.to(acc), coef * gs.to(acc), coef * g_sum.to(acc)


@torch.library.custom_op("vitfast::siglip_loss_forward", mutates_args=())
def _forward_op(image: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, offset: int,
                use_triton: bool, precision: str) -> torch.Tensor:
    return loss_forward(image, texts, scale, bias, offset, use_triton, precision)


@_forward_op.register_fake
def _(image, texts, scale, bias, offset, use_triton, precision):
    return image.new_empty((), dtype=_acc_dtype(image))


@torch.library.custom_op("vitfast::siglip_loss_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, image: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor, offset: int, use_triton: bool,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return loss_backward(grad, image, texts, scale, bias, offset, use_triton, precision)


@_backward_op.register_fake
def _(grad, image, texts, scale, bias, offset, use_triton, precision):
    acc = _acc_dtype(image)
    return (image.new_empty(image.shape, dtype=acc), texts.new_empty(texts.shape, dtype=acc),
            image.new_empty((), dtype=acc), image.new_empty((), dtype=acc))


def _setup_context(ctx, inputs, output) -> None:
    image, texts, scale, bias, offset, use_triton, precision = inputs
    ctx.save_for_backward(image, texts, scale, bias)
    ctx.offset, ctx.use_triton, ctx.precision = offset, use_triton, precision


def _backward(ctx, grad):
    image, texts, scale, bias = ctx.saved_tensors
    d_image, d_texts, d_scale, d_bias = _backward_op(grad, image, texts, scale, bias, ctx.offset, ctx.use_triton,
                                                     ctx.precision)
    return (d_image.to(image.dtype), d_texts.to(texts.dtype), d_scale.to(scale.dtype).reshape(scale.shape),
            d_bias.to(bias.dtype).reshape(bias.shape), None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# The tiled backends
# --------------------------------------------------------------------------------------------------


def tiled_siglip_loss(image_emb: torch.Tensor, texts: torch.Tensor, logit_scale, logit_bias, *, offset: int = 0,
                      use_triton: bool, precision: str = "ieee") -> torch.Tensor:
    """``siglip_loss(..., backend="triton")`` (`use_triton`) or ``backend="chunked"`` on inputs the public op
    has checked and cast, `texts` the local or the gathered texts (this rank's pairs at `offset`)."""
    if use_triton:
        require_triton()
        reason = unsupported_reason(image_emb.shape[1], image_emb.dtype, image_emb.device)
        if reason:
            raise ValueError(f"backend='triton' cannot run here: {reason}. Use backend='chunked'.")
    scale = torch.as_tensor(logit_scale, device=image_emb.device)
    scale = scale if scale.is_floating_point() else scale.float()
    bias = torch.as_tensor(logit_bias, device=image_emb.device)
    bias = bias if bias.is_floating_point() else bias.float()
    return _forward_op(image_emb, texts, scale, bias, offset, use_triton, precision)
