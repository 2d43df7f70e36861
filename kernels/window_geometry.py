"""Swin window geometry: how a (B, H, W) map is rolled, padded and cut into windows, which window a
relative-position bias table was made for, and the shift mask's regions.

Shared by the fused kernel's launcher (swin_attention.py), its oracle (reference.py), the Swin model
and the benchmarks, so none of them imports another for it. The partition and merge below are the
plain-PyTorch (materializing) form used by the eager and SDPA paths (and the benchmarks' FlexAttention
and timm peers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def check_window(window_size: int | tuple[int, int], shift_size: int | tuple[int, int]) -> None:
    """Raise ValueError unless each axis has a window of at least 1 and a shift from 0 to below its window
    (Swin shifts by window // 2; a shift of a whole window or more would move tokens into other windows)."""
    (wh, ww), (sh, sw) = _pair(window_size), _pair(shift_size)
    if min(wh, ww) < 1 or not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"shift_size {shift_size} must be at least 0 and less than window_size {window_size} "
                         f"along each axis (Swin uses window_size // 2).")


def effective_window(height: int, width: int, window_size: int | tuple[int, int],
                     shift_size: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm's per-axis rule: where the map is no larger than the window, the window shrinks to the
    map and the shift along that axis becomes 0 (a 5×11 map with window 7 uses 5×7, shift (0, 3))."""
    (wh, ww), (sh, sw) = _pair(window_size), _pair(shift_size)
    if height <= wh:
        wh, sh = height, 0
    if width <= ww:
        ww, sw = width, 0
    return (wh, ww), (sh, sw)


def relative_position_index(win_h: int, win_w: int, table_window: tuple[int, int] | None = None) -> torch.Tensor:
    """(M, M) indices into a ((2·Th−1)·(2·Tw−1), heads) bias table for a win_h×win_w window.

    The table's window (Th, Tw) defaults to the window itself; a smaller window indexes the centre of
    a larger table (the relative offsets it can see).
    """
    th, tw = table_window or (win_h, win_w)
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # 2, M, M
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)


def shift_regions(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(windows, M) region of each token of a shifted, padded height×width map (timm's nine regions): two
    tokens of one window in different regions were not neighbours in the un-shifted map."""
    (wh, ww), (sh, sw) = window, shift
    rows = torch.zeros(height, dtype=torch.long)
    cols = torch.zeros(width, dtype=torch.long)
    rows[height - wh:height - sh] = 1
    rows[height - sh:] = 2
    cols[width - ww:width - sw] = 1
    cols[width - sw:] = 2
    region = rows[:, None] * 3 + cols[None, :]
    return region.view(height // wh, wh, width // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def shift_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
               mask_value: float = -100.0) -> torch.Tensor:
    """(windows, M, M) additive mask of a shifted, padded height×width map: tokens of one window that
    came from different regions of the un-shifted map may not attend to each other (timm's regions)."""
    region = shift_regions(height, width, window, shift)
    differs = region[:, :, None] != region[:, None, :]
    return differs.float() * mask_value


def _table_window(bias_table: torch.Tensor, requested: tuple[int, int], used: tuple[int, int]) -> tuple[int, int]:
    """The window a bias table was made for: the requested one, or the shrunk one actually used
    (timm builds a block's table for its shrunk window)."""
    for th, tw in (requested, used):
        if bias_table.shape[0] == (2 * th - 1) * (2 * tw - 1):
            return th, tw
    need = (2 * requested[0] - 1) * (2 * requested[1] - 1)
    raise ValueError(f"bias_table has {bias_table.shape[0]} rows; a {requested[0]}×{requested[1]} window needs "
                     f"(2·{requested[0]}−1)·(2·{requested[1]}−1) = {need}.")


@dataclass(frozen=True)
class WindowGeometry:
    """How a (B, H, W) map is rolled, padded and cut into windows, and which window the bias table is for."""

    batch: int
    height: int
    width: int
    padded: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    table_window: tuple[int, int]

    @property
    def windows_per_row(self) -> int:
        return self.padded[1] // self.window[1]

    @property
    def num_windows(self) -> int:
        return (self.padded[0] // self.window[0]) * self.windows_per_row


def window_geometry(qkv: torch.Tensor, bias_table: torch.Tensor, window_size: int | tuple[int, int],
                    shift_size: int | tuple[int, int], shrink_window: bool = True) -> WindowGeometry:
    """The window, shift, padded size and bias-table window for a (B, H, W, 3·C) map.

    With shrink_window=False the window and shift are used as given even on a smaller map (padded up
    to one window), as timm's blocks do at input sizes other than the one they were built for.
    """
    B, H, W, _ = qkv.shape
    if shrink_window:
        (wh, ww), shift = effective_window(H, W, window_size, shift_size)
    else:
        (wh, ww), shift = _pair(window_size), _pair(shift_size)
    table_window = _table_window(bias_table, _pair(window_size), (wh, ww))
    return WindowGeometry(B, H, W, (H + (-H) % wh, W + (-W) % ww), (wh, ww), shift, table_window)


def partition_windows(qkv: torch.Tensor, g: WindowGeometry, num_heads: int,
                      qkv_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Roll, pad and partition a (B, H, W, 3·C) projection as timm does, into q, k, v views of shape
    (B, windows, heads, M, head_dim)."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    (Hp, Wp), (wh, ww), (sh, sw) = g.padded, g.window, g.shift
    x = torch.roll(qkv, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else qkv
    if (Hp, Wp) != (H, W):
        # timm pads the normalized map with zeros before the projection: padded q, k, v are its bias.
        fill = qkv_bias if qkv_bias is not None else qkv.new_zeros(C3)
        padded = fill.to(qkv.dtype).expand(B, Hp, Wp, C3).clone()
        padded[:, :H, :W] = x
        x = padded
    windows = x.view(B, Hp // wh, wh, Wp // ww, ww, C3).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(B, g.num_windows, wh * ww, 3, num_heads, C // num_heads).permute(3, 0, 1, 4, 2, 5).unbind(0)


def window_bias(bias_table: torch.Tensor, g: WindowGeometry, dtype: torch.dtype) -> torch.Tensor:
    """The additive bias + shift mask of every window and head, (windows, heads, M, M) in `dtype`: one for
    the whole batch (materialized: this is the oracle's form)."""
    (Hp, Wp), (wh, ww), (sh, sw) = g.padded, g.window, g.shift
    M, heads = wh * ww, bias_table.shape[1]
    index = relative_position_index(wh, ww, g.table_window).to(bias_table.device)
    bias = bias_table[index.view(-1)].view(M, M, heads).permute(2, 0, 1)  # heads, M, M
    bias = bias.to(dtype).expand(g.num_windows, heads, M, M)
    if sh or sw:
        bias = bias + shift_mask(Hp, Wp, (wh, ww), (sh, sw)).to(device=bias.device, dtype=dtype)[:, None]
    return bias


def window_partition_qkv(
    qkv: torch.Tensor, bias_table: torch.Tensor, *, num_heads: int, window_size: int | tuple[int, int],
    shift_size: int | tuple[int, int], qkv_bias: torch.Tensor | None = None, shrink_window: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, WindowGeometry]:
    """Roll, pad and partition a (B, H, W, 3·C) projection as timm does (geometry: window_geometry).

    Returns q, k, v of shape (B, windows, heads, M, head_dim) (:func:`partition_windows`); the additive
    bias + shift mask of shape (windows, heads, M, M) (:func:`window_bias`); and the geometry.
    """
    g = window_geometry(qkv, bias_table, window_size, shift_size, shrink_window)
    q, k, v = partition_windows(qkv, g, num_heads, qkv_bias)
    return q, k, v, window_bias(bias_table, g, q.dtype), g


def fold_windows(*windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each of `windows`' (…, windows, heads, M, X) tensors as (B, windows·heads, M, X): the windows ride in
    the heads dimension, so q, k, v are plain 4-D (batch, heads, tokens, head_dim) tensors, the form SDPA's
    fused kernels take (5-D inputs send it to its math path), and the (windows, heads, M, M) bias becomes
    (1, windows·heads, M, M), broadcast over the batch as it stands. q, k, v are copied in the fold (the
    partition's windows and heads are not adjacent in memory); the bias at most once, never per image."""
    return tuple(t.reshape(-1 if t.dim() == 5 else 1, t.shape[-4] * t.shape[-3], *t.shape[-2:]) for t in windows)


def window_merge(out: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """Window outputs, (B, windows, heads, M, head_dim) or folded (B, windows·heads, M, head_dim), back to
    the (B, H, W, C) un-shifted map."""
    (Hp, Wp), (wh, ww), (sh, sw) = g.padded, g.window, g.shift
    out = out.reshape(g.batch, g.num_windows, -1, wh * ww, out.shape[-1])
    C = out.shape[2] * out.shape[4]
    out = out.transpose(2, 3).reshape(g.batch, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(g.batch, Hp, Wp, C)[:, : g.height, : g.width]
    return torch.roll(out, shifts=(sh, sw), dims=(1, 2)) if sh or sw else out
