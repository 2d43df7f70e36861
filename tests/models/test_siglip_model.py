"""SigLIP against open_clip's CustomTextCLIP with timm's `map`-pooled trunk (random weights, no downloads)."""

from __future__ import annotations

import dataclasses
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from vitfast.models.peers import siglip_peer
from vitfast.models.siglip import SIGLIP_CONFIGS, SigLIP, SigLIPConfig

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

OPEN_CLIP_NAMES = [n for n in SIGLIP_CONFIGS if n != "siglip_tiny"]


def _with_trunk_overrides(build, overrides: dict):
    """Call `build()` while timm.create_model, which open_clip's TimmModel calls with only the model name,
    the pool and the head size, builds the trunk with `overrides` (timm's VisionTransformer kwargs)."""
    create = timm.create_model
    with mock.patch.object(timm, "create_model", lambda name, **kw: create(name, **{**kw, **overrides})):
        return build()


def _open_clip_from_json(name: str, cfg: SigLIPConfig):
    """open_clip's own json for `name`, with only the depths of both towers cut to `cfg`'s."""
    oc = {k: v for k, v in open_clip.get_model_config(name).items() if k != "custom_text"}  # the factory's switch
    oc["text_cfg"] = {**oc["text_cfg"], "layers": cfg.text_layers}
    return _with_trunk_overrides(lambda: open_clip.model.CustomTextCLIP(**oc),
                                 {"depth": cfg.vision_layers})


def _perturb(model: torch.nn.Module) -> None:
    """LayerNorms start at 1 and 0 and biases at 0: move every parameter so that a mix-up shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def _pair(cfg: SigLIPConfig, name: str | None = None):
    """open_clip's and vitfast's SigLIP with the same (perturbed, random) weights, loaded strictly."""
    torch.manual_seed(0)
    ref = (_open_clip_from_json(name, cfg) if name else siglip_peer(cfg)).eval()
    _perturb(ref)
    ours = SigLIP(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _tiny(**overrides) -> SigLIPConfig:
    return dataclasses.replace(SIGLIP_CONFIGS["siglip_tiny"], **{"attn_backend": "eager", **overrides})


def _inputs(cfg: SigLIPConfig, n: int = 3):
    images = torch.randn(n, cfg.in_chans, cfg.image_size, cfg.image_size)
    text = torch.randint(0, cfg.vocab_size, (n, cfg.context_length))
    return images, text


def _assert_same_outputs(ref, ours, cfg: SigLIPConfig, tol: float = 1e-4) -> None:
    images, text = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=tol, rtol=tol)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=tol, rtol=tol)
        got, want = ours(images, text), ref(images, text)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", OPEN_CLIP_NAMES)
def test_same_state_dict_layout_as_open_clip(name):
    # On the meta device nothing is allocated, so even SO400M builds in seconds; no download is needed.
    with torch.device("meta"):
        ref = open_clip.create_model(name, pretrained=None, device="meta")
        ours = SigLIP(SIGLIP_CONFIGS[name])
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    cfg, trunk = ours.config, ref.visual.trunk
    # What the shapes do not show: heads, epsilons, pooling, the mask and the sizes.
    assert (cfg.vision_heads, cfg.text_heads) == (trunk.blocks[0].attn.num_heads, ref.text.heads)
    assert trunk.global_pool == "map" and not trunk.has_class_token and trunk.patch_embed.img_size == (
        cfg.image_size, cfg.image_size)
    assert ref.text.pool_type == "last" and ref.text.attn_mask is None
    assert cfg.context_length == ref.context_length and cfg.vocab_size == ref.vocab_size
    for norm in (trunk.norm, trunk.attn_pool.norm, trunk.blocks[0].norm1, ref.text.ln_final,
                 ref.text.transformer.resblocks[0].ln_1):
        assert norm.eps == cfg.norm_eps
    assert cfg.init_logit_bias == open_clip.get_model_config(name)["init_logit_bias"]


def test_tiny_matches_open_clip():
    cfg = _tiny()
    ref, ours = _pair(cfg)
    _assert_same_outputs(ref, ours, cfg)


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP"])
def test_named_shapes_at_one_block_match_open_clip(name):
    # open_clip's own json (epsilons, pooling, mask, projection bias), both towers cut to one block.
    cfg = dataclasses.replace(SIGLIP_CONFIGS[name], vision_layers=1, text_layers=1, attn_backend="eager")
    ref, ours = _pair(cfg, name)
    _assert_same_outputs(ref, ours, cfg)


def test_sdpa_backend_matches_eager():
    torch.manual_seed(0)
    eager = SigLIP(_tiny()).eval()
    sdpa = SigLIP(_tiny(attn_backend="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    images, text = _inputs(eager.config)
    with torch.no_grad():
        for a, b in zip(sdpa(images, text), eager(images, text)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_triton_backend_inside_the_model(device):
    torch.manual_seed(0)
    small = {"vision_layers": 1, "text_layers": 1}
    triton_model = SigLIP(_tiny(attn_backend="triton", **small)).to(device).eval()
    sdpa_model = SigLIP(_tiny(attn_backend="sdpa", **small)).to(device).eval()
    sdpa_model.load_state_dict(triton_model.state_dict())
    images, text = (x.to(device) for x in _inputs(triton_model.config, n=2))
    with torch.no_grad():
        for a, b in zip(triton_model(images, text), sdpa_model(images, text)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_text_tower_is_bidirectional():
    torch.manual_seed(0)
    model = SigLIP(_tiny(text_layers=1)).eval()
    _, text = _inputs(model.config, n=1)
    changed = text.clone()
    changed[0, 6] = (text[0, 6] + 1) % model.config.vocab_size
    with torch.no_grad():
        before, after = model.text_tokens(text), model.text_tokens(changed)
    assert not torch.allclose(after[:, :6], before[:, :6], atol=1e-4)  # earlier positions see the later token
    with torch.no_grad():  # the embedding is the last position's, projected
        torch.testing.assert_close(model.encode_text(text), model.text.text_projection(before[:, -1]))


def test_fresh_model_has_siglips_logit_scale_and_bias():
    model = SigLIP(_tiny())
    assert math.isclose(model.logit_scale.exp().item(), 10.0, rel_tol=1e-6)
    assert model.logit_bias.item() == -10.0
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.item(), math.log(100), rel_tol=1e-6)


def test_weight_init_timm_and_big_vision():
    """The named models start as open_clip's timm trunk does; siglip_tiny as big_vision's ViT, which SigLIP was
    trained from (and which, unlike timm's 0.02 normals, trains at 128 wide on the default data)."""
    assert all(SIGLIP_CONFIGS[n].weight_init == "timm" for n in OPEN_CLIP_NAMES)
    assert SIGLIP_CONFIGS["siglip_tiny"].weight_init == "big_vision"
    torch.manual_seed(0)
    timm_init, big_vision = SigLIP(_tiny(weight_init="timm")).visual.trunk, SigLIP(_tiny()).visual.trunk
    width = 128
    assert abs(timm_init.pos_embed.std().item() - 0.02) < 0.004
    assert abs(big_vision.pos_embed.std().item() - width ** -0.5) < 0.01
    assert abs(timm_init.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.003
    for q_k_or_v in big_vision.blocks[0].attn.qkv.weight.split(width):  # Xavier per (width, width) kernel
        assert abs(q_k_or_v.std().item() - (1 / width) ** 0.5) < 0.005
    fc1 = big_vision.blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - (2 / (5 * width)) ** 0.5) < 0.004
    assert 0 < fc1.bias.abs().max().item() < 1e-4 and big_vision.blocks[0].attn.qkv.bias.abs().max() == 0
    assert abs(big_vision.attn_pool.latent.std().item() - (2 / (width + 1)) ** 0.5) < 0.02


def test_gelu_approximate_reaches_every_mlp():
    model = SigLIP(_tiny(gelu_approximate="tanh"))
    acts = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    assert len(acts) == 4 + 1 + 3 and all(a.approximate == "tanh" for a in acts)


def _sigmoid_loss(image_emb, text_emb, scale, bias):
    """SigLIP's loss: every pair a binary decision, matching pairs on the diagonal."""
    logits = scale * image_emb @ text_emb.T + bias
    labels = 2 * torch.eye(len(logits)) - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SigLIP(_tiny(attn_backend="sdpa")).train()
    _sigmoid_loss(*model(*_inputs(model.config, n=4))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = SigLIP(_tiny(attn_backend="sdpa")).train()
    inputs = _inputs(model.config, n=4)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        _sigmoid_loss(*model(*inputs)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert model.visual.trunk.grad_checkpointing and model.text.transformer.grad_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("field, value, message", [
    ("embed_dim", 32, "embed_dim 32 differs from vision_width 128"),
    ("vision_heads", 3, "vision_width 128 is not divisible by vision_heads 3"),
    ("image_size", 36, "image_size 36 is not a multiple of patch_size 8"),
    ("attn_backend", "bogus", "unknown attn_backend 'bogus'"),
    ("init_logit_scale", 5.0, "init_logit_scale 5.0 is outside"),
    ("weight_init", "jax", "weight_init must be 'timm'"),
    ("gelu_approximate", "erf", "gelu_approximate must be 'none'"),
])
def test_config_refuses_inconsistent_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        SigLIP(_tiny(**{field: value}))


def test_inputs_are_checked():
    model = SigLIP(_tiny()).eval()
    images, text = _inputs(model.config, n=1)
    with pytest.raises(ValueError, match="takes 32×32"):
        model.encode_image(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="takes 1 to 24"):
        model.encode_text(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 1024\)"):
        model.encode_text(text + 1024)
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode_text(text.float())
