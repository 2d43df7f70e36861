"""Swin weights moved to another window size: the bias-table resize against timm's, alone and in whole models."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import vitfast
from vitfast.models import named_config
from vitfast.models.peers import peer_model
from vitfast.models.swin import WindowAttention, resize_relative_position_table

timm = pytest.importorskip("timm")
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table  # noqa: E402
from timm.models.swin_transformer import checkpoint_filter_fn  # noqa: E402

MICRO = "swin_micro_patch2_window4_32"


def _timm_resize(table: torch.Tensor, window: int) -> torch.Tensor:
    with warnings.catch_warnings():  # timm's interpolator warns about torch indexing it uses
        warnings.simplefilter("ignore")
        return resize_rel_pos_bias_table(table, new_window_size=(window, window),
                                         new_bias_shape=((2 * window - 1) ** 2, table.shape[1]))


@pytest.mark.parametrize("old,new", [(7, 12), (12, 7), (7, 8), (4, 7), (4, 12), (8, 4), (2, 1), (1, 3)])
def test_resize_matches_timm(old, new):
    torch.manual_seed(old * 100 + new)
    table = torch.randn((2 * old - 1) ** 2, 6)
    ours = resize_relative_position_table(table, new)
    assert ours.shape == ((2 * new - 1) ** 2, 6)
    assert (ours - _timm_resize(table, new)).abs().max().item() <= 1e-6


def test_resize_same_window_returns_the_table():
    table = torch.randn(13 * 13, 3)
    assert resize_relative_position_table(table, 7) is table


def test_resize_keeps_dtype_and_checks_the_table():
    table = torch.randn(13 * 13, 3, dtype=torch.bfloat16)
    ours = resize_relative_position_table(table, 12)
    assert ours.dtype == torch.bfloat16 and ours.device == table.device
    torch.testing.assert_close(ours, _timm_resize(table, 12), atol=0, rtol=0)
    with pytest.raises(ValueError, match="rows"):
        resize_relative_position_table(torch.randn(12 * 12, 3), 7)


# (window, img_size) of the model loading window-4 micro weights: every stage resized (64); a last stage
# whose 4×4 map keeps it at window 4, so its table loads as is (32); a smaller window, padded maps (24).
@pytest.mark.parametrize("window,img", [(8, 64), (8, 32), (3, 24)])
def test_window_resized_micro_swin_matches_timm(window, img):
    torch.manual_seed(0)
    _, config = named_config(MICRO)
    source = peer_model("swin", config).state_dict()
    for key in source:  # unit-scale tables (init gives 0.02) make the logits depend on how they were resized
        if key.endswith("relative_position_bias_table"):
            source[key] = torch.randn_like(source[key])
    new_config = dataclasses.replace(config, window_size=window, img_size=img)
    ref = peer_model("swin", new_config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.load_state_dict(checkpoint_filter_fn(source, ref), strict=True)
    ours = vitfast.create_model(MICRO, window_size=window, img_size=img, attn_backend="eager").eval()
    ours.load_state_dict(source, strict=True)
    for name, module in ours.named_modules():
        if isinstance(module, WindowAttention):
            assert tuple(ref.get_submodule(name).window_size) == module.window
            torch.testing.assert_close(module.relative_position_bias_table,
                                       ref.get_submodule(name).relative_position_bias_table, atol=1e-6, rtol=0)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_load_leaves_other_head_counts_to_the_size_error():
    model = vitfast.create_model(MICRO, attn_backend="eager")
    state = model.state_dict()
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    state[key] = torch.zeros(13 * 13, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(state)
