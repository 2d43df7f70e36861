"""ViT against timm's VisionTransformer (random weights, no downloads), and model folders."""

from __future__ import annotations

import json

import pytest
import torch

import vitfast
from vitfast.checkpoint import CheckpointError
from vitfast.models.vit import VIT_CONFIGS

timm = pytest.importorskip("timm")

TIMM_NAMES = [n for n in VIT_CONFIGS if n != "vit_micro_patch4_32"]


def _pair(name: str, timm_only: dict | None = None, **kw):
    """timm and vitfast models of one name, with timm's random weights loaded into vitfast (strict)."""
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, **kw, **(timm_only or {})).eval()
    ours = vitfast.create_model(name, attn_backend="sdpa", **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_same_keys_and_logits_as_timm(name):
    # Two blocks keep the big models quick; the block structure is what is being compared.
    ref, ours = _pair(name, depth=2)
    assert list(ref.state_dict()) == list(ours.state_dict())
    size = ours.config.img_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_full_depth_base_matches_timm():
    ref, ours = _pair("vit_base_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_avg_pool_and_other_head_match_timm():
    ref, ours = _pair("vit_small_patch16_224", depth=2, global_pool="avg", num_classes=7)
    assert "fc_norm.weight" in ours.state_dict()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_other_input_size_interpolates_position_embedding_like_timm():
    # vitfast always resamples for another input size; timm does with dynamic_img_size.
    ref, ours = _pair("vit_tiny_patch16_224", timm_only={"dynamic_img_size": True}, depth=2)
    x = torch.randn(2, 3, 160, 240)  # 10×15 patches instead of 14×14
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_checkpoint_at_another_size_loads_resampled():
    src = vitfast.create_model("vit_tiny_patch16_224", depth=1)
    dst = vitfast.create_model("vit_tiny_patch16_224", depth=1, img_size=384)
    dst.load_state_dict(src.state_dict(), strict=True)
    assert dst.pos_embed.shape == (1, 1 + 24 * 24, 192)
    # The class-token position is carried over unchanged.
    torch.testing.assert_close(dst.pos_embed[:, 0], src.pos_embed[:, 0])


def test_triton_backend_inside_the_model(device):
    model = vitfast.create_model("vit_micro_patch4_32", depth=2).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    model.eval()
    with torch.no_grad():
        outs = {}
        for backend in ("triton", "sdpa"):
            for block in model.blocks:
                block.attn.backend = backend
            outs[backend] = model(x)
    torch.testing.assert_close(outs["triton"], outs["sdpa"], atol=1e-4, rtol=1e-4)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = vitfast.create_model("vit_micro_patch4_32", attn_backend="sdpa")
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_stochastic_depth_only_in_training():
    model = vitfast.create_model("vit_micro_patch4_32", drop_path_rate=0.5, attn_backend="sdpa")
    x = torch.randn(8, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        vitfast.create_model("vit_base_patch16_244")
    with pytest.raises(ValueError, match="unknown vit config field"):
        vitfast.create_model("vit_micro_patch4_32", embed=3)
    assert "vit_large_patch16_384" in vitfast.list_models("large")


def test_save_and_load_round_trip(tmp_path):
    model = vitfast.create_model("vit_micro_patch4_32", attn_backend="sdpa").eval()
    vitfast.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["family"] == "vit" and config["model_name"] == "vit_micro_patch4_32"
    loaded = vitfast.load(tmp_path / "m").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    # The lone safetensors file describes itself.
    lone = vitfast.load(tmp_path / "m" / "model.safetensors").eval()
    assert torch.equal(model(x), lone(x))


def test_sharded_save_round_trip(tmp_path):
    model = vitfast.create_model("vit_micro_patch4_32")
    vitfast.save(model, tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    loaded = vitfast.load(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_corrupt_and_mismatched_folders_name_the_problem(tmp_path):
    model = vitfast.create_model("vit_micro_patch4_32")
    vitfast.save(model, tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vitfast.load(tmp_path)
    weights.write_bytes(good)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        vitfast.load(tmp_path)
    config["config"]["depth"] = 6
    config["config"]["embed_dim"] = 64
    config["config"]["num_heads"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        vitfast.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        vitfast.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        vitfast.load(tmp_path / "nowhere")
