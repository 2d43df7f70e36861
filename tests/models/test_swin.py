"""Swin models against timm's: same keys, same logits, at the trained size and others; train and reload.

The window-attention op itself is tested in test_swin_attention.py."""

from __future__ import annotations

import pytest
import torch

import vitfast
from vitfast.models.swin import SWIN_CONFIGS
from vitfast.train import TrainConfig, train

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformer  # noqa: E402

MICRO = dict(img_size=32, patch_size=2, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4,
             num_classes=10)


def _pair(name: str, timm_model, **kw):
    ours = vitfast.create_model(name, attn_backend="sdpa", **kw).eval()
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("size", [224, 200, 160])
def test_swin_tiny_matches_timm_at_trained_and_other_sizes(size):
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, strict_img_size=False).eval()
    ours = _pair("swin_tiny_patch4_window7_224", ref)
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in SWIN_CONFIGS if n not in ("swin_tiny_patch4_window7_224",
                                                                        "swin_micro_patch2_window4_32")])
def test_named_swins_match_timm(name):
    torch.manual_seed(0)
    # Two blocks per stage (one plain, one shifted) keep the big models quick.
    ref = timm.create_model(name, pretrained=False, strict_img_size=False, depths=(2, 2, 2, 2)).eval()
    ours = _pair(name, ref, depths=(2, 2, 2, 2))
    size = ours.config.img_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [32, 36, 20])
def test_micro_config_matches_timm(size):
    torch.manual_seed(0)
    ref = SwinTransformer(strict_img_size=False, **MICRO).eval()
    ours = _pair("swin_micro_patch2_window4_32", ref)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_swin_save_load_and_train(tiny_image_folder, tmp_path):
    metrics = train(TrainConfig(model="swin_micro_patch2_window4_32", data_dir=str(tiny_image_folder),
                                output=str(tmp_path), epochs=1, batch_size=8, img_size=16, workers=0,
                                attn_backend="sdpa", quiet=True), log=lambda m: None)
    assert metrics["val_images"] == 32
    model = vitfast.load(tmp_path).eval()
    assert model.config.depths == (2, 2, 2)
    model.set_grad_checkpointing(True)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def test_micro_swin_on_triton_kernels_matches_sdpa(device):
    # The fused kernels inside a whole model, forward and backward, at a size that pads every stage.
    torch.manual_seed(0)
    sdpa = vitfast.create_model("swin_micro_patch2_window4_32", attn_backend="sdpa").to(device).eval()
    fused = vitfast.create_model("swin_micro_patch2_window4_32", attn_backend="triton").to(device).eval()
    fused.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 20, 20, device=device)
    logits = []
    for model in (sdpa, fused):
        out = model(x)
        out.logsumexp(-1).sum().backward()
        logits.append(out)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
    for (name, p_ref), p in zip(sdpa.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
