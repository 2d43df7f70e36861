"""Layers that the ViT, Swin and CLIP models share (as timm keeps them in ``timm/layers/``).

Each model file holds only what is its own; what they have in common is here: stochastic depth, the
two-layer MLP, multi-head self-attention through ``vitfast.kernels.packed_attention``, the patch
embedding and pre-norm block of ViT and Swin, the block loop with optional activation checkpointing,
timm's init of linear layers, and the check of ``attn_backend``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vitfast.choices import ATTENTION_BACKENDS
from vitfast.kernels import packed_attention


def check_attn_backend(backend: str) -> None:
    """Raise ValueError unless `backend` is one of vitfast.choices.ATTENTION_BACKENDS.

    Configs call it from ``validate()``, so a bad name fails when the model is created or loaded,
    not at its first forward pass.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attn_backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}.")


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch for a random subset of samples."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """fc1, activation, fc2 (timm's names)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] | Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def multi_head_attention(qkv: torch.Tensor, num_heads: int, *, causal: bool, backend: str) -> torch.Tensor:
    """Self-attention of a (B, N, 3·C) packed q, k, v projection: (B, N, C), heads concatenated,
    ready for the output projection. The Triton kernels read qkv in place and write this layout, and
    their backward one packed gradient, so nothing around the attention is copied."""
    return packed_attention(qkv, num_heads, causal=causal, backend=backend)


class Attention(nn.Module):
    """Multi-head self-attention with timm's names: packed ``qkv`` projection, attention, ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(multi_head_attention(self.qkv(x), self.num_heads, causal=False, backend=self.backend))


class InProjAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (packed in_proj, out_proj), as
    open_clip's towers (CLIP's, causal in the text tower; SigLIP's bidirectional text tower); the computation
    is multi_head_attention."""

    def __init__(self, dim: int, num_heads: int, backend: str, causal: bool):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's own init, which open_clip's vision tower keeps.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        return self.out_proj(multi_head_attention(qkv, self.num_heads, causal=self.causal, backend=self.backend))


class PatchEmbed(nn.Module):
    """Conv patchify (timm's ``proj``), channels last: (B, C, H, W) to (B, H/p, W/p, D).

    H and W must be multiples of the patch size p, for ViT and Swin alike: timm's PatchEmbed refuses
    other sizes too (Swin's ``strict_img_size=False`` lifts only the fixed size; padding to whole
    patches is a separate ``dynamic_img_pad`` that timm's Swin does not use), and a padded patch would
    give logits no timm or HF model gives. Swin's patches are then normalized (``norm``), ViT's are not.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, norm: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}×{w} is not a multiple of the patch size {p}.")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Block(nn.Module):
    """Pre-norm transformer block with timm's names: x + attn(norm1(x)), then x + mlp(norm2(x)), each
    branch under stochastic depth. `attn` is the family's own: ViT's global, Swin's windowed."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float, norm_eps: float = 1e-5,
                 act: type[nn.Module] | Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """`x` through each block in turn; with `checkpointed`, each block's activations are recomputed
    in the backward pass instead of kept (models pass ``grad_checkpointing and training``)."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
    return x


def init_linears(module: nn.Module, std: float = 0.02) -> None:
    """timm's init of every nn.Linear inside `module`: truncated normal weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_text_blocks(blocks: Iterable[nn.Module], width: int, layers: int) -> float:
    """open_clip's GPT-2-style init of a text tower's residual blocks (in_proj, out_proj, c_fc, c_proj):
    projections into the residual stream scaled by the depth. Returns the attention std, which open_clip
    also gives the text projection."""
    attn_std = width ** -0.5
    proj_std = attn_std * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in blocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    return attn_std
