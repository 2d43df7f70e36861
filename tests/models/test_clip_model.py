"""CLIP against open_clip's CLIP (random weights, no downloads), its causal text tower, and model folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from vitfast.kernels import clip_loss

import vitfast
from vitfast.models.clip import CLIP, CLIP_CONFIGS, CLIPConfig

open_clip = pytest.importorskip("open_clip")

OPEN_CLIP_NAMES = [n for n in CLIP_CONFIGS if n != "clip_tiny"]

# Small enough for a CPU; widths, head counts and lengths differ between the towers so that a mixed-up
# field shows. Head dims are 16, the smallest the Triton kernel takes.
SMALL = {"embed_dim": 24, "image_size": 16, "patch_size": 4, "vision_width": 64, "vision_layers": 2,
         "vision_heads": 4, "context_length": 12, "vocab_size": 100, "text_width": 48, "text_layers": 2,
         "text_heads": 3, "eot_token_id": 99}


def _open_clip_model(cfg: CLIPConfig):
    """open_clip's CLIP with the shapes of `cfg` (open_clip's EOT is the largest id, as here)."""
    vision = {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
              "layers": cfg.vision_layers, "head_width": cfg.vision_width // cfg.vision_heads,
              "mlp_ratio": cfg.vision_mlp_ratio}
    text = {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
            "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": cfg.text_mlp_ratio}
    return open_clip.model.CLIP(cfg.embed_dim, vision, text, quick_gelu=cfg.quick_gelu)


def _pair(quick_gelu: bool = False, **overrides):
    """open_clip's and vitfast's CLIP with the same (perturbed, random) weights, loaded strictly."""
    torch.manual_seed(0)
    cfg = CLIPConfig(**{**SMALL, "attn_backend": "eager", "quick_gelu": quick_gelu, **overrides})
    ref = _open_clip_model(cfg).eval()
    with torch.no_grad():  # LayerNorms start at 1 and 0 and biases at 0: move them so a mix-up shows
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = CLIP(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _text(eot_positions: list[int], length: int, eot: int = 99, vocab: int = 100) -> torch.Tensor:
    """Token rows ending at the given EOT positions, random ids before, zero padding after."""
    rows = torch.randint(1, min(eot, vocab), (len(eot_positions), length))
    for row, pos in zip(rows, eot_positions):
        row[pos] = eot
        row[pos + 1:] = 0
    return rows


def _images(n: int, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


@pytest.mark.parametrize("name", OPEN_CLIP_NAMES)
def test_same_state_dict_layout_as_open_clip(name):
    # On the meta device nothing is allocated, so even ViT-H-14 builds in a blink.
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**open_clip.get_model_config(name))
        ours = vitfast.create_model(name)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    assert ours.config.vision_heads == ref.visual.transformer.resblocks[0].attn.num_heads
    assert ours.config.text_heads == ref.transformer.resblocks[0].attn.num_heads
    act, ref_act = ours.transformer.resblocks[0].mlp.gelu, ref.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == type(ref_act).__name__


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_embeddings_match_open_clip(quick_gelu):
    ref, ours = _pair(quick_gelu)
    images = _images(3)
    text = _text([0, 5, 11], length=12)  # EOT first, in the middle, last
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=1e-5)
        for a, b in zip(ours(images, text), ref(images, text)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_text_shorter_than_context_gives_the_same_embedding():
    _, ours = _pair()
    text = _text([2, 6, 4], length=12)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_text(text[:, :7]), ours.encode_text(text), atol=1e-5, rtol=1e-5)


def test_first_eot_is_read_for_any_eot_id():
    # vitfast's own tokenizers may give EOT any id, so pooling cannot be open_clip's argmax.
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**{**SMALL, "eot_token_id": 3, "attn_backend": "eager"})).eval()
    text = torch.tensor([[5, 7, 3, 90, 3, 0], [3, 9, 9, 9, 9, 9]])
    with torch.no_grad():
        hidden = model.text_tokens(text)
        torch.testing.assert_close(model.encode_text(text), hidden[[0, 1], [2, 0]] @ model.text_projection)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_text_tower_is_causal(backend, device):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**{**SMALL, "text_layers": 1, "attn_backend": backend})).to(device).eval()
    text = _text([9], length=10).to(device)
    changed = text.clone()
    changed[0, 6] = 42 if text[0, 6] != 42 else 43
    with torch.no_grad():
        before, after = model.text_tokens(text), model.text_tokens(changed)
    torch.testing.assert_close(after[:, :6], before[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, 6:], before[:, 6:], atol=1e-3)


def test_triton_backend_inside_the_model(device):
    torch.manual_seed(0)
    small = {**SMALL, "vision_layers": 1, "text_layers": 1}
    triton_model = CLIP(CLIPConfig(**small, attn_backend="triton")).to(device).eval()
    sdpa_model = CLIP(CLIPConfig(**small, attn_backend="sdpa")).to(device).eval()
    sdpa_model.load_state_dict(triton_model.state_dict())
    images, text = _images(2).to(device), _text([3, 11], length=12).to(device)
    with torch.no_grad():
        for a, b in zip(triton_model(images, text), sdpa_model(images, text)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**SMALL, attn_backend="sdpa")).train()
    image_features, text_features, scale = model(_images(4), _text([1, 4, 7, 11], length=12))
    clip_loss(image_features, text_features, scale, backend="eager").backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**SMALL, attn_backend="sdpa")).train()
    images, text = _images(4), _text([1, 4, 7, 11], length=12)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        clip_loss(*model(images, text), backend="eager").backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert model.transformer.grad_checkpointing and model.visual.transformer.grad_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_init_matches_open_clip_statistics():
    torch.manual_seed(0)
    cfg = CLIPConfig(**SMALL)
    ref, ours = _open_clip_model(cfg), CLIP(cfg)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs[name].detach()
        if p.numel() == 1:
            assert p.item() == pytest.approx(q.item()), name
            continue
        # The std of an estimate shrinks as 1/sqrt(n); allow five of those.
        slack = 5 / math.sqrt(p.numel())
        assert abs(p.std().item() - q.std().item()) <= slack * q.std().item() + 1e-6, name
        assert abs(p.mean().item() - q.mean().item()) <= slack * q.std().item() + 1e-6, name
    assert ours.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_clamp_logit_scale_in_place():
    model = vitfast.create_model("clip_tiny", vision_layers=1, text_layers=1)
    param = model.logit_scale
    with torch.no_grad():
        param.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale is param and param.requires_grad
    assert param.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        param.fill_(-1.0)
    model.clamp_logit_scale()
    assert param.item() == 0.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"vision_width": 100, "vision_heads": 3}, "vision_width 100 is not divisible by vision_heads 3"),
    ({"text_width": 50, "text_heads": 4}, "text_width 50 is not divisible by text_heads 4"),
    ({"image_size": 30}, "image_size 30 is not a multiple of patch_size 8"),
    ({"eot_token_id": 1024}, r"eot_token_id 1024 is outside the vocabulary \[0, 1024\)"),
    ({"text_layers": 0}, "text_layers must be a positive integer"),
    ({"init_logit_scale": 5.0}, "init_logit_scale 5.0 is outside"),
])
def test_invalid_configs_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        vitfast.create_model("clip_tiny", **overrides)


def test_invalid_inputs_name_the_problem():
    model = vitfast.create_model("clip_tiny", vision_layers=1, text_layers=1, attn_backend="sdpa")
    good = _text([3, 5], length=8, eot=1023, vocab=1024)
    no_eot = good.clone()
    no_eot[1, 5] = 7
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no end-of-text token \(id 1023"):
        model.encode_text(no_eot)
    model.text_tokens(no_eot)  # per-position states need no EOT
    too_big = good.clone()
    too_big[0, 0] = 1024
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 1024\)"):
        model.encode_text(too_big)
    with pytest.raises(ValueError, match="has 25 tokens but the model takes at most 24"):
        model.encode_text(torch.full((1, 25), 1023))
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode_text(good.float())
    with pytest.raises(ValueError, match=r"images are 64×64 but this model takes 32×32"):
        model.encode_image(torch.randn(1, 3, 64, 64))


def test_registry_lists_open_clip_names():
    assert [n for n in vitfast.list_models("ViT-") if "SigLIP" not in n] == sorted(OPEN_CLIP_NAMES)
    assert isinstance(vitfast.create_model("clip_tiny", vision_layers=1, text_layers=1), CLIP)
    with pytest.raises(ValueError, match="unknown clip config field"):
        vitfast.create_model("clip_tiny", width=3)


def test_save_and_load_round_trip(tmp_path):
    # As the trainer does: vocabulary and EOT come from a freshly trained tokenizer.
    model = vitfast.create_model("clip_tiny", vision_layers=1, text_layers=1, vocab_size=300, eot_token_id=2,
                                 attn_backend="sdpa").eval()
    vitfast.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["family"] == "clip" and config["model_name"] == "clip_tiny"
    loaded = vitfast.load(tmp_path / "m", attn_backend="eager").eval()
    assert loaded.config.vocab_size == 300 and loaded.config.eot_token_id == 2
    images, text = _images(2, size=32), _text([4, 9], length=10, eot=2, vocab=300)
    with torch.no_grad():
        for a, b in zip(model(images, text), loaded(images, text)):
            torch.testing.assert_close(a, b)


def test_full_size_b32_matches_open_clip():
    torch.manual_seed(0)
    ref = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-32")).eval()
    ours = vitfast.create_model("ViT-B-32", attn_backend="sdpa").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    images = torch.randn(2, 3, 224, 224)
    text = _text([7, 76], length=77, eot=49407, vocab=49408)
    with torch.no_grad():
        for a, b in zip(ours(images, text), ref(images, text)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
