"""Hugging Face <-> vitfast conversion: tiny random HF models must give the same outputs in vitfast."""

from __future__ import annotations

import json

import pytest
import safetensors.torch as safetensors_torch
import torch

from vitfast import create_model
from vitfast.convert.hf import hf_to_vitfast, vitfast_to_hf
from vitfast.models import build_model

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _saved(model, tmp_path) -> tuple[dict, dict]:
    """config.json and weights exactly as save_pretrained writes them (the Hub layout)."""
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    return config, safetensors_torch.load_file(tmp_path / "hf" / "model.safetensors")


def _to_vitfast(hf_model, tmp_path):
    family, config, state = hf_to_vitfast(*_saved(hf_model, tmp_path))
    config.attn_backend = "eager"
    model = build_model(family, config).eval()
    model.load_state_dict(state, strict=True)
    return family, config, model


def _export_and_reload(family, config, model, tmp_path, cls, **kwargs):
    """Export, check the vitfast -> HF -> vitfast round trip is bit-identical, reload strictly in HF."""
    hf_config, hf_state = vitfast_to_hf(family, config, model.state_dict())
    back_family, _, back_state = hf_to_vitfast(hf_config, hf_state)
    assert back_family == family
    original = model.state_dict()
    assert back_state.keys() == original.keys()
    assert all(torch.equal(back_state[k], original[k]) for k in original)
    transformers.AutoConfig.for_model(**hf_config)  # the dict is a valid config
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(hf_config))
    safetensors_torch.save_file(hf_state, out / "model.safetensors")
    hf_model, info = cls.from_pretrained(out, output_loading_info=True, **kwargs)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert type(hf_model).__name__ == hf_config["architectures"][0]
    return hf_model.eval()


def _tiny_vit(num_labels: int, eps: float = 1e-6):
    # eps 1e-6 as timm (and the original JAX ViT); HF's default 1e-12 has its own case below.
    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                    image_size=32, patch_size=8, num_labels=max(num_labels, 1), layer_norm_eps=eps)
    torch.manual_seed(0)
    if num_labels:
        return transformers.ViTForImageClassification(config).eval()
    return transformers.ViTModel(config).eval()  # with its pooler, as the Hub's in21k checkpoints


@pytest.mark.parametrize("eps", [1e-6, 1e-12], ids=["timm-eps", "hf-default-eps"])
@torch.no_grad()
def test_vit_classifier_matches_and_round_trips(tmp_path, eps):
    # HF's layer_norm_eps default 1e-12 (google/vit-*) becomes the config's norm_eps. At random init (token
    # variance ~1e-3) forcing timm's 1e-6 instead would be off by ~7e-4 on ViT-B's logits.
    hf = _tiny_vit(5, eps)
    family, config, model = _to_vitfast(hf, tmp_path)
    assert (family, config.num_classes, config.embed_dim, config.depth, config.num_heads) == ("vit", 5, 64, 2, 4)
    assert config.norm_eps == eps
    x = torch.randn(2, 3, 32, 32)
    expected = hf(pixel_values=x).logits
    assert (model(x) - expected).abs().max() <= TOL
    exported = _export_and_reload(family, config, model, tmp_path, transformers.ViTForImageClassification)
    assert exported.config.layer_norm_eps == eps
    assert (exported(pixel_values=x).logits - expected).abs().max() <= TOL


@torch.no_grad()
def test_vit_without_head_drops_pooler_and_matches_hidden_states(tmp_path):
    hf = _tiny_vit(0)
    family, config, model = _to_vitfast(hf, tmp_path)
    assert config.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    expected = hf(pixel_values=x).last_hidden_state
    assert (model.forward_features(x) - expected).abs().max() <= TOL
    exported = _export_and_reload(family, config, model, tmp_path, transformers.ViTModel, add_pooling_layer=False)
    assert (exported(pixel_values=x).last_hidden_state - expected).abs().max() <= TOL


@torch.no_grad()
def test_clip_embeddings_match_and_round_trip(tmp_path):
    config = transformers.CLIPConfig(
        projection_dim=32,
        vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                           "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                         "vocab_size": 100, "max_position_embeddings": 16, "eos_token_id": 99, "bos_token_id": 98,
                         "pad_token_id": 0},
    )
    torch.manual_seed(0)
    hf = transformers.CLIPModel(config).eval()
    family, cfg, model = _to_vitfast(hf, tmp_path)
    assert (cfg.eot_token_id, cfg.context_length, cfg.embed_dim, cfg.quick_gelu) == (99, 16, 32, True)
    images = torch.randn(2, 3, 32, 32)
    text = torch.randint(1, 98, (2, 12))
    text[0, 7], text[1, 11] = 99, 99  # EOT mid-sequence in one row: pooling must read the first EOT
    out = hf(input_ids=text, pixel_values=images)
    image, txt, scale = model(images, text)
    assert (image - out.image_embeds).abs().max() <= TOL
    assert (txt - out.text_embeds).abs().max() <= TOL
    assert torch.equal(scale, hf.logit_scale.exp())
    exported = _export_and_reload(family, cfg, model, tmp_path, transformers.CLIPModel)
    again = exported(input_ids=text, pixel_values=images)
    assert (again.image_embeds - out.image_embeds).abs().max() <= TOL
    assert (again.text_embeds - out.text_embeds).abs().max() <= TOL


@torch.no_grad()
def test_swin_classifier_matches_and_round_trips(tmp_path):
    # Three stages on a 16×16 patch grid: the last stage (4×4) shrinks the window and drops the shift.
    config = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2],
                                     num_heads=[2, 4, 8], window_size=4, num_labels=3)
    torch.manual_seed(0)
    hf = transformers.SwinForImageClassification(config).eval()
    for name, p in hf.named_parameters():  # HF inits the bias tables to zero; make them matter
        if "relative_position_bias_table" in name:
            p.normal_(std=0.5)
    family, cfg, model = _to_vitfast(hf, tmp_path)
    assert (cfg.depths, cfg.num_heads, cfg.window_size, cfg.num_classes) == ((2, 2, 2), (2, 4, 8), 4, 3)
    x = torch.randn(2, 3, 32, 32)
    expected = hf(pixel_values=x).logits
    assert (model(x) - expected).abs().max() <= TOL
    exported = _export_and_reload(family, cfg, model, tmp_path, transformers.SwinForImageClassification)
    assert (exported(pixel_values=x).logits - expected).abs().max() <= TOL


def test_missing_and_misshaped_keys_are_reported_together(tmp_path):
    config, state = _saved(_tiny_vit(5), tmp_path)
    del state["vit.encoder.layer.1.attention.attention.key.weight"]
    state["vit.layernorm.bias"] = torch.zeros(65)
    state["vit.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        hf_to_vitfast(config, state)
    message = str(err.value)
    assert "missing 1: vit.encoder.layer.1.attention.attention.key.weight" in message
    assert "mis-shaped 1: vit.layernorm.bias (65,) (expected (64,))" in message
    assert "unexpected 1: vit.extra.weight" in message


def test_export_reports_missing_vitfast_key():
    model = create_model("vit_micro_patch4_32", global_pool="token", num_classes=0)
    state = model.state_dict()
    del state["blocks.0.attn.qkv.bias"]
    with pytest.raises(ValueError, match=r"missing 1: blocks\.0\.attn\.qkv\.bias"):
        vitfast_to_hf("vit", model.config, state)


def test_unrepresentable_features_are_named():
    model = create_model("vit_micro_patch4_32")  # global_pool="avg": HF's ViT has no fc_norm pooling
    with pytest.raises(ValueError, match="global_pool='avg'"):
        vitfast_to_hf("vit", model.config, model.state_dict())
    with pytest.raises(ValueError, match="layer_norm_eps is 0.001"):
        hf_to_vitfast({"model_type": "swin", "layer_norm_eps": 1e-3}, {})
    with pytest.raises(ValueError, match="'swinv2' is not supported"):
        hf_to_vitfast({"model_type": "swinv2"}, {})
    with pytest.raises(ValueError, match="use_absolute_embeddings"):
        hf_to_vitfast({"model_type": "swin", "use_absolute_embeddings": True}, {})
