"""The public ops, `attention`, `window_attention` and `clip_loss`: each checks its inputs and runs
the backend asked for.

This is the one module that imports both the optimized files (flash_attention.py, swin_attention.py,
similarity_ce.py: one op's kernels, launcher and autograd Function each) and the eager oracles in
reference.py, so that neither side imports the other: an optimized path cannot quietly run the
oracle, and the oracle stays plain PyTorch that tests can trust (attention-gym's rule; Liger-Kernel's
thin wrapper). Backend names come from vitfast.choices, as the CLI's flags do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vitfast.choices import ATTENTION_BACKENDS, CLIP_LOSS_BACKENDS

from . import flash_attention, reference, similarity_ce, swin_attention
from . import window_geometry as geo


def _check_backend(backend: str, choices: tuple[str, ...], op: str) -> None:
    if backend not in choices:
        raise ValueError(f"unknown {op} backend {backend!r}; choose one of {', '.join(map(repr, choices))}.")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention over (B, H, N, D) tensors, like ``F.scaled_dot_product_attention``.

    Args:
        q, k, v: (B, H, N, D) tensors of one dtype; any strides (e.g. unbound from a packed qkv).
        causal: mask keys after each query (query i sees keys 0..i), for causal text towers.
        scale: multiplier of q·kᵀ; defaults to 1/sqrt(D).
        backend: one of vitfast.choices.ATTENTION_BACKENDS: "triton" (fused kernels; CUDA, or CPU
            under TRITON_INTERPRET=1), "sdpa" (torch's scaled_dot_product_attention), "eager" (the
            reference in kernels/reference.py), or "auto" (Triton for supported CUDA inputs,
            otherwise SDPA).

    Returns:
        (B, H, N, D) output with the dtype of q.
    """
    _check_backend(backend, ATTENTION_BACKENDS, "attention")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "auto":
        backend = "triton" if flash_attention.triton_supports(q, k, v) else "sdpa"
    if backend == "triton":
        return flash_attention.triton_attention(q, k, v, causal=causal, scale=scale)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return reference.attention(q, k, v, causal=causal, scale=scale)


def window_attention(qkv: torch.Tensor, bias_table: torch.Tensor, *, num_heads: int,
                     window_size: int | tuple[int, int], shift_size: int | tuple[int, int],
                     qkv_bias: torch.Tensor | None = None, scale: float | None = None, shrink_window: bool = True,
                     backend: str = "auto") -> torch.Tensor:
    """Shifted-window attention over a (B, H, W, 3·C) qkv map; returns (B, H, W, C), un-shifted.

    Args:
        qkv: the block's qkv projection of the (B, H, W, C) map, channels last; any strides.
        bias_table: relative-position bias, ((2·Mh−1)·(2·Mw−1), heads).
        num_heads: attention heads; C must be divisible by it.
        window_size, shift_size: an int or an (h, w) pair. Along an axis where the map is no larger
            than the window, the window shrinks to the map and the shift becomes 0 (as timm).
        qkv_bias: the projection's bias, the q, k, v of padded tokens (timm zero-pads before qkv).
        scale: multiplier of q·kᵀ; defaults to head_dim^-0.5.
        shrink_window: apply the shrink rule above to this call's map. False keeps the window and
            shift as given (timm's blocks fix them for the resolution they were built for).
        backend: one of vitfast.choices.ATTENTION_BACKENDS: "triton" (fused kernels, forward and
            backward; CUDA, or CPU under TRITON_INTERPRET=1), "sdpa" (torch's
            scaled_dot_product_attention on the partitioned windows, with the bias and shift mask as
            attn_mask: one (windows, heads, M, M) tensor, broadcast over the batch), "eager" (the
            oracle in kernels/reference.py), or "auto" (Triton for supported CUDA inputs, otherwise SDPA).
    """
    if qkv.dim() != 4 or qkv.shape[-1] % 3 or (qkv.shape[-1] // 3) % num_heads:
        raise ValueError(f"qkv must be (B, H, W, 3·C) with C divisible by num_heads={num_heads}; "
                         f"got {tuple(qkv.shape)}.")
    if bias_table.dim() != 2 or bias_table.shape[1] != num_heads:
        raise ValueError(f"bias_table must be (table rows, num_heads={num_heads}); got {tuple(bias_table.shape)}.")
    _check_backend(backend, ATTENTION_BACKENDS, "window-attention")
    if backend == "auto":
        backend = "triton" if swin_attention.triton_supports(qkv, bias_table, qkv_bias, num_heads) else "sdpa"
    window = dict(num_heads=num_heads, window_size=window_size, shift_size=shift_size, qkv_bias=qkv_bias,
                  shrink_window=shrink_window)
    if backend == "triton":
        return swin_attention.triton_window_attention(qkv, bias_table, scale=scale, **window)
    if backend == "sdpa":
        q, k, v, bias, geometry = geo.window_partition_qkv(qkv, bias_table, **window)
        return geo.window_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), geometry)
    return reference.window_attention(qkv, bias_table, scale=scale, **window)


def _check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale, logit_bias) -> None:
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (N, D) with the same N and D; got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}.")
    if image_emb.shape[0] == 0:
        raise ValueError("clip_loss needs at least one image-text pair; got N = 0.")
    if image_emb.dtype != text_emb.dtype or image_emb.device != text_emb.device:
        raise ValueError(f"image_emb and text_emb must share dtype and device; got {image_emb.dtype} on "
                         f"{image_emb.device} and {text_emb.dtype} on {text_emb.device}.")
    for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element); got shape {tuple(value.shape)}.")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, *,
              logit_bias: torch.Tensor | float | None = None, backend: str = "auto", group=None) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, equal to open_clip's ClipLoss, without the N×N logits.

    Args:
        image_emb, text_emb: (N, D) L2-normalized embeddings of N matching pairs; any strides.
        logit_scale: the logits' multiplier, a scalar tensor (usually ``param.exp()``) or a float.
        logit_bias: optional scalar added to every logit.
        backend: one of vitfast.choices.CLIP_LOSS_BACKENDS: "triton" (tiled kernels; CUDA, or CPU
            under TRITON_INTERPRET=1; D a multiple of 16), "chunked" (the same tiling in PyTorch,
            O(N·D) memory, any device), "eager" (the full N×N oracle), or "auto" (Triton for
            supported CUDA inputs, otherwise chunked).
        group: a torch.distributed process group (``torch.distributed.group.WORLD`` for all ranks)
            to train across ranks: every rank's embeddings are gathered with gradient, and this
            rank's loss covers its own images against all texts and its own texts against all
            images (open_clip's ``local_loss=True, gather_with_grad=True``). With equal batches per
            rank, the mean of the ranks' losses is the loss over the global batch, and the gradients
            that DDP averages equal the global batch's. Ranks may hold different batch sizes.

    Returns:
        The mean of the image→text and text→image cross-entropies: a 0-dim float32 tensor
        (float64 for float64 inputs), with gradients for the embeddings, the scale and the bias.
    """
    _check_backend(backend, CLIP_LOSS_BACKENDS, "clip-loss")
    _check_pairs(image_emb, text_emb, logit_scale, logit_bias)
    all_image = all_text = None
    offset = 0
    if group is not None:
        all_image, all_text, offset = similarity_ce.gather_pairs(image_emb, text_emb, group)
    if backend == "eager":
        return reference.clip_loss(image_emb, text_emb, logit_scale, logit_bias, all_image=all_image,
                                   all_text=all_text, offset=offset)
    if backend == "auto":
        backend = "triton" if similarity_ce.triton_supports(image_emb) else "chunked"
    return similarity_ce.tiled_clip_loss(image_emb, text_emb, logit_scale, logit_bias, all_image=all_image,
                                         all_text=all_text, use_triton=backend == "triton")
