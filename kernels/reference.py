"""Eager PyTorch oracles for every vitfast kernel.

Plain, readable PyTorch that runs anywhere (no Triton import). The tests compare the Triton kernels
against these run in float64, and ``backend="eager"`` uses them directly.
"""

from __future__ import annotations

import math

import torch


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
