"""Vision Transformer (Dosovitskiy et al., 2020), laid out exactly like timm's VisionTransformer.

Parameter and buffer names match timm's for the same model name, so a timm state dict loads with
``strict=True`` and gives the same logits. Every block's attention goes through
``vitfast.kernels.packed_attention`` with the backend from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Attention, Block, PatchEmbed, check_attn_backend, init_linears, run_blocks


@dataclass
class ViTConfig:
    """Hyper-parameters of a ViT; `vitfast.create_model(name, **overrides)` starts from a named one."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens, then fc_norm)
    drop_rate: float = 0.0  # dropout before the head
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this value over the blocks
    attn_backend: str = "auto"  # vitfast.choices.ATTENTION_BACKENDS; see vitfast.kernels.attention
    norm_eps: float = 1e-6  # every LayerNorm's epsilon: timm's and the original ViT's; HF's ViT uses 1e-12

    def validate(self) -> None:
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1); got {self.drop_path_rate}.")
        check_attn_backend(self.attn_backend)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}.")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg'; got {self.global_pool!r}.")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'.")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}.")


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """Bicubically resize the patch part of a (1, prefix + H·W, D) position embedding to `new_grid`.

    The old grid is taken to be square, as for every named ViT.
    """
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = int(math.isqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise ValueError(f"cannot resample a position embedding of {grid.shape[1]} patches (not square).")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT with timm's module names: patch_embed, cls_token, pos_embed, blocks, norm/fc_norm, head."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.embed_dim
        self.num_prefix_tokens = 1 if config.class_token else 0
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        grid = config.img_size // config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + grid * grid, dim))
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(dim, Attention(dim, config.num_heads, config.qkv_bias, config.attn_backend), config.mlp_ratio,
                  rate, config.norm_eps)
            for rate in rates
        ])
        use_fc_norm = config.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=config.norm_eps)
        self.fc_norm = nn.LayerNorm(dim, eps=config.norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.init_weights()
        # Checkpoints at another image size get their position embedding resized on load.
        self._register_load_state_dict_pre_hook(self._resample_loaded_pos_embed)

    def init_weights(self) -> None:
        """timm's default ('jax'-free) init: truncated normal 0.02 for linears and position embedding."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        init_linears(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _resample_loaded_pos_embed(self, state_dict, prefix, *args) -> None:
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            grid = self.config.img_size // self.config.patch_size
            state_dict[key] = resample_pos_embed(state_dict[key], (grid, grid), self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, H and W multiples of the patch size, to (B, prefix + N, D) normalized tokens."""
        _, _, h, w = x.shape
        p = self.config.patch_size
        x = self.patch_embed(x).flatten(1, 2)  # refuses a size that is not a multiple of p
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        # Another input size gets the learned grid resized to match; the trained size gets it as is.
        x = x + resample_pos_embed(self.pos_embed, (h // p, w // p), self.num_prefix_tokens)
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing and self.training))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.config.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _named(patch: int, dim: int, depth: int, heads: int, img: int = 224, **kw) -> ViTConfig:
    return ViTConfig(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, **kw)


# timm's names and shapes, at 224 and 384 pixels (ViT-H/14 only at 224: timm has no 384 variant).
# `vit_micro_patch4_32` is vitfast's own: sized for the built-in default data (32×32 images, 10 classes)
# so that training it on a 2-core CPU takes minutes.
VIT_CONFIGS: dict[str, ViTConfig] = {
    **{f"vit_{size}_patch{patch}_{img}": _named(patch, dim, depth, heads, img=img)
       for size, patch, dim, depth, heads in [("tiny", 16, 192, 12, 3), ("small", 16, 384, 12, 6),
                                              ("base", 16, 768, 12, 12), ("base", 32, 768, 12, 12),
                                              ("large", 16, 1024, 24, 16)]
       for img in (224, 384)},
    "vit_huge_patch14_224": _named(14, 1280, 32, 16, num_classes=0),  # timm: in21k features, no head
    "vit_micro_patch4_32": _named(4, 128, 6, 4, img=32, num_classes=10, global_pool="avg"),
}
