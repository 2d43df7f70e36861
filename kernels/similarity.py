"""What the two similarity-matrix losses share (CLIP's softmax loss in similarity_ce.py, SigLIP's
sigmoid loss in similarity_sigmoid.py): the similarity tile the kernels compute S = A·Bᵀ in, the grid
rule that spreads a pass over two waves of an H100, the chunk size of the PyTorch paths, and the
gather of every rank's features with gradient."""

from __future__ import annotations

import torch

from . import arch, tables
from ._triton import tl, triton


@triton.jit
def _similarity_tile(A, B, rows, cols, n_a, n_b, D, stride_a, stride_ak, stride_b, stride_bk,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """S[rows, cols] = A[rows]·B[cols]ᵀ in fp32, reduced over D in BLOCK_K slices."""
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + tl.cast(rows, tl.int64)[:, None] * stride_a + offs_k[None, :] * stride_ak
    b_ptrs = B + tl.cast(cols, tl.int64)[:, None] * stride_b + offs_k[None, :] * stride_bk
    for k0 in range(0, D, BLOCK_K):
        k_ok = (k0 + offs_k) < D
        a = tl.load(a_ptrs, mask=(rows < n_a)[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=(cols < n_b)[:, None] & k_ok[None, :], other=0.0)
        s = tl.dot(a, tl.trans(b), s, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return s


# Grids aim at two waves of an H100/H200 (132 SMs) wherever the matrix has that many tiles: a fixed
# number, not the device's SM count, so every GPU and rank splits the sums alike (bit-identical runs).
WAVE_PROGRAMS = 2 * 132


def grad_block_d(dim: int) -> int:
    """Width of the gradient pass's accumulator (all of D, as one power-of-two tensor dimension)."""
    return max(16, triton.next_power_of_2(dim))


def _splits(blocks: int, others: int) -> tuple[int, int]:
    """(blocks per split, splits): `blocks` column blocks cut into at least WAVE_PROGRAMS / `others`
    contiguous splits (as many as there are blocks at most), for a grid of `others` × splits."""
    wanted = min(blocks, max(1, triton.cdiv(WAVE_PROGRAMS, others)))
    per = blocks // wanted
    return per, triton.cdiv(blocks, per)


@torch.compiler.assume_constant_result  # a constant of the graph under torch.compile
def unsupported_reason(dim: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the loss kernels cannot take (N, dim) embeddings of this dtype and device (None: they can). Both
    losses' gradient passes run on the "clip.grad" rows, so that table decides for both."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the kernels take float16, bfloat16 or float32 embeddings; got {dtype}"
    if dim % 16:
        return f"the kernels need an embedding dim that is a multiple of 16; got {dim}"
    reason = arch.unsupported_device(device)
    if reason:
        return reason
    if tables.tile_for("clip.grad", arch.device_family(device), dtype, dim, 0) is None:
        return f"no tile of the kernels fits {arch.device_arch(device)} at {dtype} and embedding dim {dim}"
    return None


def _tile(kernel: str, a: torch.Tensor) -> tables.TileConfig:
    return tables.required_tile(kernel, arch.device_family(a.device), a.dtype, a.shape[1], a.shape[0])


# The chunked PyTorch path: the same passes with CHUNK_ELEMENTS logits (64 MiB in fp32) at a time.
# 16-bit operands (rounded there by the precision policy) are multiplied in float32, as the Triton
# kernels accumulate: PyTorch's 16-bit matmul would round every logit to 16 bits (open_clip's AMP
# loss does), an error of up to scale·2⁻⁹ ≈ 0.2 per logit in bf16. Logits, probabilities and sums are
# float32 (float64 for float64 operands).
CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(n_cols: int) -> int:
    """Rows per chunk, so that a chunk of logits against `n_cols` columns holds about CHUNK_ELEMENTS."""
    return max(1, CHUNK_ELEMENTS // max(1, n_cols))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


# --------------------------------------------------------------------------------------------------
# Multi-GPU: gathering the features with gradient
# --------------------------------------------------------------------------------------------------


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order; ranks may hold different numbers of rows.

    The backward sums each rank's gradient for this rank's rows (a reduce-scatter), so a loss that
    uses the gathered rows on every rank trains the features where they were computed.
    """

    @staticmethod
    def forward(ctx, x, group, sizes: list[int]):
        import torch.distributed as dist

        ctx.group, ctx.sizes = group, sizes
        ctx.rank = dist.get_rank(group)
        longest = max(sizes)
        padded = torch.nn.functional.pad(x.contiguous(), (0, 0, 0, longest - x.shape[0]))
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=group)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        longest = max(ctx.sizes)
        stacked = torch.stack([torch.nn.functional.pad(g, (0, 0, 0, longest - g.shape[0]))
                               for g in grad.split(ctx.sizes)])
        if dist.get_backend(ctx.group) == "nccl":
            own = stacked.new_empty(stacked.shape[1:])
            dist.reduce_scatter_tensor(own, stacked.flatten(0, 1), group=ctx.group)
        else:  # gloo has no reduce-scatter
            dist.all_reduce(stacked, group=ctx.group)
            own = stacked[ctx.rank]
        return own[:ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, group, loss: str) -> tuple[torch.Tensor, int]:
    """All ranks' rows of `x` (with gradient) and the offset of this rank's rows among them (`loss` names
    the caller in the error)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{loss}(group=...) needs torch.distributed to be initialized "
                         "(torch.distributed.init_process_group, e.g. under torchrun); pass group=None "
                         "for a single-process loss.")
    count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    return _GatherRows.apply(x, group, sizes), sum(sizes[:dist.get_rank(group)])


def gather_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, group,
                 loss: str = "clip_loss") -> tuple[torch.Tensor, torch.Tensor, int]:
    """All ranks' image and text embeddings (one collective for both, with gradient) and the offset
    of this rank's pairs in the global batch."""
    both, offset = gather_rows(torch.cat([image_emb, text_emb], dim=1), group, loss)
    dim = image_emb.shape[1]
    return both[:, :dim], both[:, dim:], offset
