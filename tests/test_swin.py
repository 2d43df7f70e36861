"""Swin: window attention (oracle and SDPA) against timm's block, and models against timm's."""

from __future__ import annotations

import pytest
import torch

import vitfast
from vitfast.kernels import window_attention
from vitfast.models.swin import SWIN_CONFIGS

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock  # noqa: E402

MICRO = dict(img_size=32, patch_size=2, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4,
             num_classes=10)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "height, width, window, shifted, heads, dim",
    [
        (7, 7, 7, True, 3, 96),  # map = window: no shift
        (14, 14, 7, True, 3, 96),
        (28, 28, 7, False, 2, 64),
        (60, 60, 7, True, 1, 32),  # padded to 63
        (12, 20, 7, True, 2, 64),  # non-square, padded
        (5, 11, 7, True, 2, 64),  # window shrinks to 5×7, shift (0, 3)
        (24, 24, 12, True, 2, 64),
        (30, 17, 12, True, 2, 64),
    ],
)
def test_window_attention_matches_timm_block(height, width, window, shifted, heads, dim, backend):
    torch.manual_seed(height * 100 + width)
    block = SwinTransformerBlock(dim=dim, input_resolution=(height, width), num_heads=heads, window_size=window,
                                 shift_size=window // 2 if shifted else 0, dynamic_mask=True).eval()
    attn = block.attn
    # Non-trivial bias table and qkv bias: padded tokens carry the bias, so it must matter.
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    torch.nn.init.normal_(attn.qkv.bias, std=1.0)
    x = torch.randn(2, height, width, dim)
    with torch.no_grad():
        expected = block._attn(x)
        got = attn.proj(window_attention(attn.qkv(x), attn.relative_position_bias_table, num_heads=heads,
                                         window_size=window, shift_size=window // 2 if shifted else 0,
                                         qkv_bias=attn.qkv.bias, backend=backend))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_window_attention_rejects_bad_input():
    qkv = torch.randn(1, 7, 7, 3 * 32)
    table = torch.randn(13 * 13, 2)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        window_attention(qkv, table, num_heads=5, window_size=7, shift_size=3)
    with pytest.raises(ValueError, match="bias_table has 169 rows; a 5×5 window needs"):
        window_attention(qkv, table, num_heads=2, window_size=5, shift_size=2)
    with pytest.raises(ValueError, match="unknown window-attention backend"):
        window_attention(qkv, table, num_heads=2, window_size=7, shift_size=3, backend="flash")


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
    from vitfast.train import TrainConfig, train

    metrics = train(TrainConfig(model="swin_micro_patch2_window4_32", data_dir=str(tiny_image_folder),
                                output=str(tmp_path), epochs=1, batch_size=8, img_size=16, workers=0,
                                attn_backend="sdpa", quiet=True), log=lambda m: None)
    assert metrics["val_images"] == 32
    model = vitfast.load(tmp_path).eval()
    assert model.config.depths == (2, 2, 2)
    model.set_grad_checkpointing(True)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)


# ------------------------------------------------------------------------ fused Triton forward


def _window_case(batch, height, width, heads, head_dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    C = heads * head_dim
    qkv = torch.randn(batch, height, width, 3 * C, generator=g).to(device=device, dtype=dtype)
    return qkv, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "height, width, window, shift",
    [(7, 7, 7, 3), (14, 14, 7, 3), (28, 28, 7, 0), (60, 60, 7, 3), (12, 20, 7, 3), (24, 36, 12, 6),
     (5, 11, 7, 3), (9, 16, 4, 2)],
)
@pytest.mark.parametrize("with_qkv_bias", [True, False], ids=["qkv_bias", "zero_pad"])
def test_triton_forward_matches_oracle(height, width, window, shift, dtype, with_qkv_bias, device):
    heads, head_dim = 2, 32
    qkv, g = _window_case(2 if height < 30 else 1, height, width, heads, head_dim, dtype, device, height * width)
    table = torch.randn((2 * window - 1) ** 2, heads, generator=g).to(device=device, dtype=dtype)
    qkv_bias = torch.randn(qkv.shape[-1], generator=g).to(device=device, dtype=dtype) if with_qkv_bias else None
    kw = dict(num_heads=heads, window_size=window, shift_size=shift)
    as64 = None if qkv_bias is None else qkv_bias.double()
    ref = window_attention(qkv.double(), table.double(), qkv_bias=as64, backend="eager", **kw)
    eager = window_attention(qkv, table, qkv_bias=qkv_bias, backend="eager", **kw)
    out = window_attention(qkv, table, qkv_bias=qkv_bias, backend="triton", **kw)
    assert out.shape == (qkv.shape[0], height, width, heads * head_dim) and out.dtype == dtype
    err = (out.double() - ref).abs().max().item()
    eager_err = (eager.double() - ref).abs().max().item()
    assert err <= 2 * eager_err + 1e-5, f"max error {err:.3g}, eager's {eager_err:.3g}"


def test_triton_forward_reads_strided_qkv_and_fixed_windows(device):
    heads, head_dim = 3, 32
    wide, g = _window_case(2, 10, 13, 2 * heads, head_dim, torch.float32, device, 1)
    qkv = wide[..., : 3 * heads * head_dim]  # a strided view: channel stride 1, row strides of the wide tensor
    assert not qkv.is_contiguous()
    table = torch.randn(13 * 13, heads, generator=g).to(device)
    for shrink in (True, False):
        kw = dict(num_heads=heads, window_size=7, shift_size=3, shrink_window=shrink)
        ref = window_attention(qkv.double(), table.double(), backend="eager", **kw)
        out = window_attention(qkv, table, backend="triton", **kw)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_triton_forward_refuses_gradients(device):
    qkv = torch.randn(1, 7, 7, 3 * 96, device=device, requires_grad=True)
    table = torch.randn(169, 3, device=device)
    with pytest.raises(ValueError, match="no backward yet"):
        window_attention(qkv, table, num_heads=3, window_size=7, shift_size=3, backend="triton")
    with torch.no_grad():
        window_attention(qkv, table, num_heads=3, window_size=7, shift_size=3, backend="triton")
