"""Swin Transformer V1 (Liu et al., 2021), laid out exactly like timm's SwinTransformer.

Parameter names match timm's for the same model name (buffers are non-persistent), so a timm state
dict loads with ``strict=True`` and gives the same logits, also at input sizes other than the trained
one (as timm with ``strict_img_size=False``); like timm's (and ViT), a size must be a multiple of the
patch size. Every block's attention goes through
``vitfast.kernels.window_attention`` with the backend from the config. Weights trained at another
``window_size`` load too: their bias tables are resized as timm's checkpoint filter resizes them
(`resize_relative_position_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitfast.kernels import window_attention
from vitfast.kernels.window_geometry import effective_window

from .layers import Attention, Block, PatchEmbed, check_attn_backend, init_linears, run_blocks


def _table_side(rows: int) -> int | None:
    """The side 2w−1 of a square bias table with `rows` rows, or None where `rows` is no odd square."""
    side = math.isqrt(rows)
    return side if side * side == rows and side % 2 else None


def _source_offsets(src: int, dst: int) -> list[float]:
    """BEiT's placement of a `src`-long axis of relative offsets on the `dst`-long axis it is resized to.

    The offsets 0, ±1, ±(1+q), ±(1+q+q²), … grow geometrically, q being bisected in [1.01, 1.5] (float64)
    until the outermost one reaches dst // 2: the centre, where the bias is sharpest, keeps unit steps.
    Shrinking pins q to 1.01 (the outermost offset lies past dst // 2); growing past what q = 1.5 reaches
    leaves the outer targets beyond the source grid.
    """
    half, reach = src // 2, dst // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:
        q = (low + high) / 2.0
        if (1.0 - q**half) / (1.0 - q) > reach:  # 1 + q + … + q^(half−1)
            high = q
        else:
            low = q
    offsets, offset = [], 1.0
    for i in range(half):
        offsets.append(offset)
        offset += q ** (i + 1)
    return [-o for o in reversed(offsets)] + [0.0] + offsets


def _axis_interpolation(src: int, dst: int, device: torch.device):
    """Per target offset along one axis: the source indices left and right of it and its (non-negative)
    distances past the left one and short of the right one. A target beyond the grid gets the edge
    index on both sides with one distance 0 (so it takes the edge value); one exactly on the first
    point gets both distances 1."""
    points = torch.tensor(_source_offsets(src, dst), dtype=torch.float32, device=device)
    targets = torch.arange(-(dst // 2), dst // 2 + 1, dtype=torch.float32, device=device)
    right = torch.bucketize(targets, points).clamp(max=src - 1)  # first point at or after the target
    left = (right - 1).clamp(min=0)
    past_left = (targets - points[left]).clamp(min=0)
    short_of_right = (points[right] - targets).clamp(min=0)
    on_first = (past_left == 0) & (short_of_right == 0)
    past_left[on_first] = short_of_right[on_first] = 1.0
    return left, right, past_left, short_of_right


def resize_relative_position_table(table: torch.Tensor, new_window: int | tuple[int, int]) -> torch.Tensor:
    """A Swin relative-position bias table for another window, as timm resizes one when loading a checkpoint.

    `table` is ((2w−1)², heads) for a square window w; the result is ((2h'−1)·(2w'−1), heads) for
    `new_window` (h' = w' for an int), same dtype and device, computed in float32. Each head's
    (2w−1)×(2w−1) grid is put on BEiT's geometric source offsets (`_source_offsets`) and read at the new
    integer offsets by bilinear interpolation, clamped to the edge outside the grid: timm's
    `resize_rel_pos_bias_table` without scipy (its `RegularGridInterpolator`), with the same float32
    operations in the same order, so the two agree bit for bit. The same window returns `table` itself.
    """
    if table.ndim != 2:
        raise ValueError(f"expected a (positions, heads) table; got shape {tuple(table.shape)}.")
    src = _table_side(table.shape[0])
    if src is None:
        raise ValueError(f"a table of {table.shape[0]} rows is not (2w-1)² for a window w.")
    new_h, new_w = (new_window, new_window) if isinstance(new_window, int) else new_window
    if min(new_h, new_w) < 1:
        raise ValueError(f"new_window must be at least 1; got {new_window}.")
    dst_h, dst_w = 2 * new_h - 1, 2 * new_w - 1
    if (src, src) == (dst_h, dst_w):
        return table
    grid = table.float().reshape(src, src, -1)  # (Δy, Δx, heads)
    ly, ry, py, sy = (t[:, None] for t in _axis_interpolation(src, dst_h, table.device))
    lx, rx, px, sx = (t[None, :] for t in _axis_interpolation(src, dst_w, table.device))
    py, sy, px, sx = (d[..., None] for d in (py, sy, px, sx))  # against the heads axis
    # Each corner weighs by the distances to the opposite corner, over the cell's area (zero distances
    # make the weights of a target on a grid line, or clamped outside, fall on that line).
    resized = (grid[ly, lx] * (sy * sx) + grid[ly, rx] * (sy * px) + grid[ry, lx] * (py * sx)
               + grid[ry, rx] * (py * px)) / ((py + sy) * (px + sx))
    return resized.reshape(dst_h * dst_w, -1).to(table.dtype)


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
        self._register_load_state_dict_pre_hook(self._resize_loaded_bias_tables)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def _resize_loaded_bias_tables(self, state_dict, prefix, *args) -> None:
        """Weights trained with another window_size: each block's loaded bias table is resized (as timm's
        checkpoint filter does) to the window that block actually has, which a stage's small map may
        have shrunk. Tables that no resize could fit (other head counts) are left for the size error."""
        for name, module in self.named_modules():
            if not isinstance(module, WindowAttention):
                continue
            key = f"{prefix}{name}.relative_position_bias_table"
            table, own = state_dict.get(key), module.relative_position_bias_table
            if (table is not None and table.shape != own.shape and table.ndim == 2
                    and table.shape[1] == own.shape[1] and _table_side(table.shape[0]) is not None):
                state_dict[key] = resize_relative_position_table(table, module.window)

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
