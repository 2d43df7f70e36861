"""Eager PyTorch oracles for every vitfast kernel.

Plain, readable PyTorch that runs anywhere (no Triton import). The tests compare the Triton kernels
against these run in float64, and ``backend="eager"`` (kernels/ops.py) uses them directly. They import
nothing optimized, and no optimized file imports them.
"""

from __future__ import annotations

import math

import torch

from .window_geometry import window_merge, window_partition_qkv


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale [+ causal mask]) · v over (..., N, D) tensors, materializing the N×N scores.

    The causal mask is aligned top-left (query i sees keys 0..i), as in SDPA's ``is_causal``.
    Softmax runs in float32 (or float64 for float64 inputs) and the result has the input dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        n_q, n_k = scores.shape[-2], scores.shape[-1]
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    softmax_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    probs = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(v.dtype)
    return torch.matmul(probs, v)


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
) -> torch.Tensor:
    """Swin's (shifted) window attention, as timm's SwinTransformerBlock computes it.

    qkv: (B, H, W, 3·C) channels-last projection of the map. Rolled by −shift, padded at the bottom
    and right to a multiple of the window (padded tokens' q, k, v are `qkv_bias`), partitioned;
    softmax(q·kᵀ·scale + bias + mask)·v with mask −100 across regions; windows reversed, cropped,
    rolled back. Returns (B, H, W, C): the attention output before the block's `proj`.
    """
    q, k, v, bias, geometry = window_partition_qkv(qkv, bias_table, num_heads=num_heads, window_size=window_size,
                                                   shift_size=shift_size, qkv_bias=qkv_bias,
                                                   shrink_window=shrink_window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-2, -1)) + bias
    softmax_dtype = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    out = torch.matmul(torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(v.dtype), v)
    return window_merge(out, geometry)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              logit_bias: torch.Tensor | float | None = None, *, all_image: torch.Tensor | None = None,
              all_text: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the full logits, as open_clip's ClipLoss.

    logits = logit_scale · image_emb · text_embᵀ (+ logit_bias); the loss is the mean of the
    image→text and text→image cross-entropies with the matching pair (the diagonal) as the label.
    With `all_image`/`all_text` (the global batch, in which the given pairs are rows offset, offset+1,
    ...), the local images are scored against all texts and the local texts against all images, as
    open_clip's ``local_loss=True``. Computed in float32 (float64 for float64 inputs); returns a 0-dim
    tensor of that dtype.
    """
    dtype = torch.float64 if image_emb.dtype == torch.float64 else torch.float32
    all_image = image_emb if all_image is None else all_image
    all_text = text_emb if all_text is None else all_text
    logits_per_image = logit_scale * (image_emb.to(dtype) @ all_text.to(dtype).t())
    logits_per_text = logit_scale * (text_emb.to(dtype) @ all_image.to(dtype).t())
    if logit_bias is not None:
        logits_per_image = logits_per_image + logit_bias
        logits_per_text = logits_per_text + logit_bias
    labels = torch.arange(offset, offset + image_emb.shape[0], device=image_emb.device)
    return (torch.nn.functional.cross_entropy(logits_per_image, labels)
            + torch.nn.functional.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float, *, all_text: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over the full logits, as open_clip's SigLipLoss.

    logits = logit_scale · image_emb · textsᵀ + logit_bias, texts the given ones or `all_text` (the
    global batch, in which the given pairs sit at offset, offset+1, ...); labels +1 for the matching
    pair and −1 elsewhere; the loss is −Σ logsigmoid(labels · logits) divided by the local batch.
    Computed in float32 (float64 for float64 inputs); returns a 0-dim tensor of that dtype.
    """
    dtype = torch.float64 if image_emb.dtype == torch.float64 else torch.float32
    texts = text_emb if all_text is None else all_text
    logits = logit_scale * (image_emb.to(dtype) @ texts.to(dtype).t()) + logit_bias
    labels = -torch.ones_like(logits)
    n = image_emb.shape[0]
    labels[torch.arange(n, device=logits.device), torch.arange(offset, offset + n, device=logits.device)] = 1.0
    return -torch.nn.functional.logsigmoid(labels * logits).sum() / n
