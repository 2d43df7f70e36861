"""Swin Transformer V1 (Liu et al., 2021), laid out exactly like timm's SwinTransformer.

Parameter names match timm's for the same model name (buffers are non-persistent), so a timm state
dict loads with ``strict=True`` and gives the same logits, also at input sizes other than the trained
one (as timm with ``strict_img_size=False``); like timm's (and ViT), a size must be a multiple of the
patch size. Every block's attention goes through
``vitfast.kernels.window_attention`` with the backend from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitfast.kernels import window_attention
from vitfast.kernels.window_geometry import effective_window

from .layers import Attention, Block, PatchEmbed, check_attn_backend, init_linears, run_blocks


@dataclass
class SwinConfig:
    """Hyper-parameters of a Swin V1; `vitfast.create_model(name, **overrides)` starts from a named one."""

    img_size: int = 224  # the size windows and shifts are fixed for; other multiples of patch_size run too
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96  # channels of the first stage; each later stage doubles them
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # per stage
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attn_backend: str = "auto"  # vitfast.choices.ATTENTION_BACKENDS; see vitfast.kernels.window_attention

    def __post_init__(self) -> None:  # JSON round trips give lists
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)

    def validate(self) -> None:
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1); got {self.drop_path_rate}.")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}.")
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1; got {self.window_size}.")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length.")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: {self.embed_dim * 2**i} channels are not divisible by {heads} heads.")
        check_attn_backend(self.attn_backend)


class WindowAttention(Attention):
    """Attention's qkv and proj around fused (shifted) window attention with a relative-position bias table."""

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int], window: int, shift: int,
                 qkv_bias: bool, backend: str):
        super().__init__(dim, num_heads, qkv_bias, backend)
        # Window and shift are fixed for the configured resolution, as in timm; a map no larger than
        # the window shrinks it (and the bias table) and drops the shift along that axis.
        self.window, self.shift = effective_window(*resolution, window, shift)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * self.window[0] - 1) * (2 * self.window[1] - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(window_attention(self.qkv(x), self.relative_position_bias_table, num_heads=self.num_heads,
                                          window_size=self.window, shift_size=self.shift, qkv_bias=self.qkv.bias,
                                          shrink_window=False, backend=self.backend))


class PatchMerging(nn.Module):
    """2×2 neighbourhoods concatenated (timm's order), normalized, projected to 2·C: halves H and W."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = x.shape[1], x.shape[2]
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Stage `i`, channels last: a PatchMerging after the first, then blocks alternating plain and shifted windows."""

    def __init__(self, config: SwinConfig, i: int, drop_paths: list[float]):
        super().__init__()
        dim, window = config.embed_dim * 2**i, config.window_size
        res = -(-config.img_size // config.patch_size // 2**i)  # the stage's map size, which fixes its windows
        self.downsample = PatchMerging(dim // 2) if i > 0 else nn.Identity()
        self.blocks = nn.Sequential(*[
            Block(dim, WindowAttention(dim, config.num_heads[i], (res, res), window, window // 2 if j % 2 else 0,
                                       config.qkv_bias, config.attn_backend), config.mlp_ratio, rate)
            for j, rate in enumerate(drop_paths)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing and self.training)


class ClassifierHead(nn.Module):
    """Average over H and W, dropout, linear (timm's `head.fc`)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin V1 with timm's module names: patch_embed, layers.{i}.downsample/blocks, norm, head.fc."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        config.validate()
        self.config = config
        dims = [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dims[0], norm=True)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).split(config.depths)
        self.layers = nn.Sequential(*[SwinStage(config, i, stage.tolist()) for i, stage in enumerate(rates)])
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], config.num_classes, config.drop_rate)
        init_linears(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _named(dim: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int = 7, img: int = 224,
           **kw) -> SwinConfig:
    return SwinConfig(img_size=img, embed_dim=dim, depths=depths, num_heads=heads, window_size=window, **kw)


# timm's names and shapes. `swin_micro_patch2_window4_32` is vitfast's own, for the built-in 32×32 data.
SWIN_CONFIGS: dict[str, SwinConfig] = {
    "swin_tiny_patch4_window7_224": _named(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small_patch4_window7_224": _named(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    **{f"swin_{size}_patch4_window{window}_{img}": _named(dim, (2, 2, 18, 2), heads, window, img)
       for size, dim, heads in [("base", 128, (4, 8, 16, 32)), ("large", 192, (6, 12, 24, 48))]
       for window, img in [(7, 224), (12, 384)]},
    "swin_micro_patch2_window4_32": _named(64, (2, 2, 2), (2, 4, 8), window=4, img=32, patch_size=2,
                                           num_classes=10),
}
