"""Hugging Face SiglipModel <-> vitfast SigLIP: tiny random HF models must give the same embeddings and
logits in vitfast, exports must load in transformers with no missing or unexpected keys, and the
tokenizer must travel with the weights."""

from __future__ import annotations

import json

import pytest
import safetensors.torch as safetensors_torch
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app
from vitfast.convert import ConvertError, convert, export
from vitfast.convert.hf import hf_to_vitfast, vitfast_to_hf
from vitfast.models import build_model
from vitfast.tokenizer import SiglipTokenizer, canonicalize, load_tokenizer, read_siglip_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # fp32, eval, eager attention on both sides

# (vision, text) overrides of HF's SiglipVisionConfig / SiglipTextConfig
SMALL = ({"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8},
         {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "vocab_size": 100, "max_position_embeddings": 16})
# MLPs not 4x wide (int(width * ratio) must round trip), a text tower narrower than the image trunk with
# its projection into the trunk's width, exact GELU, HF-style eps, a 3x3 patch grid
ODD = ({"hidden_size": 48, "intermediate_size": 100, "num_hidden_layers": 2, "num_attention_heads": 6,
        "image_size": 48, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
       {"hidden_size": 40, "intermediate_size": 88, "num_hidden_layers": 3, "num_attention_heads": 5,
        "vocab_size": 120, "max_position_embeddings": 12, "projection_size": 48, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5})


def _hf_siglip(vision: dict, text: dict, seed: int = 0):
    config = transformers.SiglipConfig(vision_config=vision,
                                       text_config={"pad_token_id": 0, "bos_token_id": None, "eos_token_id": 1} | text)
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # layer norms at (1, 0) and zero biases would hide swapped or misplaced tensors
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _saved(model, folder) -> tuple[dict, dict]:
    """config.json and weights exactly as save_pretrained writes them (the Hub layout)."""
    model.save_pretrained(folder)
    return json.loads((folder / "config.json").read_text()), safetensors_torch.load_file(folder / "model.safetensors")


def _inputs(config, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, config.in_chans, config.image_size, config.image_size, generator=g)
    text = torch.randint(0, config.vocab_size, (2, config.context_length), generator=g)
    return images, text


def _max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _assert_same(ours, hf_model, images, text) -> float:
    """vitfast vs HF: normalized embeddings and both logits; returns the largest difference."""
    with torch.no_grad():
        out = hf_model(input_ids=text, pixel_values=images)
        image, txt, scale, bias = ours(images, text)
        logits_per_text = txt @ image.t() * scale + bias
        diffs = [_max_diff(image, out.image_embeds), _max_diff(txt, out.text_embeds),
                 _max_diff(logits_per_text, out.logits_per_text), _max_diff(logits_per_text.t(), out.logits_per_image),
                 _max_diff(ours.encode_image(images), hf_model.get_image_features(pixel_values=images).pooler_output),
                 _max_diff(ours.encode_text(text), hf_model.get_text_features(input_ids=text).pooler_output)]
    assert max(diffs) <= TOL, diffs
    return max(diffs)


def _siglip_tokenizer(context_length: int) -> SiglipTokenizer:
    """A small SentencePiece-style (Unigram, Metaspace) tokenizer laid out like SigLIP's: <pad> 0, </s> 1,
    <unk> 2, every text ended by </s>."""
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz0123456789", "▁a", "▁the", "▁photo", "▁of", "▁cat", "▁dog", "ph", "oto"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - 0.01 * i) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return SiglipTokenizer(tok, context_length, "<pad>", "</s>")


TEXTS = ["A photo of the cat!", "dog", "a_b  c,d " * 10, "Ünïcode tëxt 42"]


# ------------------------------------------------------------------------------------------- (a) import


@pytest.mark.parametrize("towers", [SMALL, ODD], ids=["small", "odd"])
def test_hf_siglip_converts_to_the_same_embeddings_and_logits(tmp_path, towers):
    hf = _hf_siglip(*towers)
    family, config, state = hf_to_vitfast(*_saved(hf, tmp_path / "hf"))
    vision, text = towers
    assert family == "siglip"
    assert (config.embed_dim, config.vision_width, config.text_width) == (vision["hidden_size"], vision["hidden_size"],
                                                                          text["hidden_size"])
    assert int(config.vision_width * config.vision_mlp_ratio) == vision["intermediate_size"]
    assert int(config.text_width * config.text_mlp_ratio) == text["intermediate_size"]
    assert config.gelu_approximate == ("none" if vision.get("hidden_act") == "gelu" else "tanh")
    assert config.norm_eps == vision.get("layer_norm_eps", 1e-6)
    assert config.context_length == text["max_position_embeddings"]
    config.attn_backend = "eager"
    ours = build_model(family, config).eval()
    ours.load_state_dict(state, strict=True)
    assert ours.logit_scale.item() == hf.logit_scale.item() and ours.logit_bias.item() == hf.logit_bias.item()
    _assert_same(ours, hf, *_inputs(config))


def test_hf_pooling_head_split(tmp_path):
    """HF's nn.MultiheadAttention in_proj is timm's q (first third, on the probe) and kv (the rest)."""
    hf = _hf_siglip(*SMALL)
    _, _, state = hf_to_vitfast(*_saved(hf, tmp_path / "hf"))
    head = hf.vision_model.head
    assert torch.equal(state["visual.trunk.attn_pool.latent"], head.probe)
    assert torch.equal(state["visual.trunk.attn_pool.q.weight"], head.attention.in_proj_weight[:32])
    assert torch.equal(state["visual.trunk.attn_pool.kv.bias"], head.attention.in_proj_bias[32:])
    assert state["visual.trunk.pos_embed"].shape == (1, 16, 32) and state["logit_scale"].shape == ()
    # pieces are clones: the state dict saves with safetensors as it is
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "vitfast.safetensors")


# ------------------------------------------------------------------------------------------- (b) export


@pytest.mark.parametrize("gelu", ["tanh", "none"])
def test_vitfast_siglip_exports_to_a_siglip_model_that_loads_strictly(tmp_path, gelu):
    torch.manual_seed(0)
    ours = vitfast.create_model("siglip_tiny", vision_layers=2, text_layers=2, vocab_size=200, context_length=12,
                                vision_mlp_ratio=3.7362, gelu_approximate=gelu, attn_backend="eager").eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf_config, hf_state = vitfast_to_hf("siglip", ours.config, ours.state_dict())
    assert hf_config["model_type"] == "siglip" and hf_config["architectures"] == ["SiglipModel"]
    assert hf_config["vision_config"]["intermediate_size"] == int(128 * 3.7362) == 478
    transformers.AutoConfig.for_model(**hf_config)  # the dict is a valid config
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(hf_config))
    safetensors_torch.save_file(hf_state, out / "model.safetensors")
    hf, info = transformers.SiglipModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert hf.config.vision_config.hidden_act == ("gelu_pytorch_tanh" if gelu == "tanh" else "gelu")
    _assert_same(ours, hf.eval(), *_inputs(ours.config))


# --------------------------------------------------------------------------------------- (c) round trips


@pytest.mark.parametrize("towers", [SMALL, ODD], ids=["small", "odd"])
def test_round_trips_are_bit_identical(tmp_path, towers):
    hf_config, hf_state = _saved(_hf_siglip(*towers), tmp_path / "hf")
    family, config, state = hf_to_vitfast(hf_config, hf_state)
    back_config, back_state = vitfast_to_hf(family, config, state)
    assert back_state.keys() == hf_state.keys()
    assert all(torch.equal(back_state[k], hf_state[k]) for k in hf_state)
    for tower in ("vision_config", "text_config"):
        for key, value in back_config[tower].items():
            if key not in ("pad_token_id", "bos_token_id", "eos_token_id"):
                assert hf_config[tower][key] == value, (tower, key)
    again_family, _, again = hf_to_vitfast(back_config, back_state)
    assert again_family == family and again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)


# ----------------------------------------------------------------------------------------- (d) refusals


def _config(vision: dict | None = None, text: dict | None = None) -> dict:
    return {"model_type": "siglip", "vision_config": SMALL[0] | (vision or {}), "text_config": SMALL[1] | (text or {})}


@pytest.mark.parametrize("vision, text, message", [
    ({"hidden_act": "gelu"}, {}, r"towers use different activations \['gelu', 'gelu_pytorch_tanh'\]"),
    ({"hidden_act": "quick_gelu"}, {"hidden_act": "quick_gelu"}, "hidden_act is 'quick_gelu'; vitfast supports"),
    ({}, {"layer_norm_eps": 1e-5}, r"towers use different layer_norm_eps \[1e-06, 1e-05\]"),
    ({}, {"projection_size": 64}, "text_config.projection_size 64 differs from vision_config.hidden_size 32"),
    ({}, {"hidden_size": 64}, "text_config.projection_size 64 differs from vision_config.hidden_size 32"),
    ({"vision_use_head": False}, {}, "vision_use_head is False"),
    ({"image_size": [32, 48]}, {}, r"vision_config.image_size is \[32, 48\]; vitfast supports square sizes only"),
])
def test_unrepresentable_configs_are_refused_in_one_line(vision, text, message):
    with pytest.raises(ValueError, match=message) as err:
        hf_to_vitfast(_config(vision, text), {})
    assert "\n" not in str(err.value)


def test_key_problems_are_listed_together(tmp_path):
    config, state = _saved(_hf_siglip(*SMALL), tmp_path / "hf")
    del state["vision_model.head.attention.in_proj_weight"]
    del state["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    state["vision_model.head.attention.in_proj_bias"] = torch.zeros(97)
    state["text_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        hf_to_vitfast(config, state)
    message = str(err.value)
    assert "\n" not in message
    assert ("missing 3: vision_model.head.attention.in_proj_weight[q], vision_model.head.attention.in_proj_weight[kv], "
            "text_model.encoder.layers.1.self_attn.k_proj.bias") in message
    assert "mis-shaped 1: vision_model.head.attention.in_proj_bias[kv] (65,) (expected (64,))" in message
    assert "unexpected 1: text_model.extra.weight" in message
    model = vitfast.create_model("siglip_tiny")
    state = model.state_dict()
    del state["visual.trunk.attn_pool.kv.weight"]
    with pytest.raises(ValueError, match=r"missing 1: visual\.trunk\.attn_pool\.kv\.weight"):
        vitfast_to_hf("siglip", model.config, state)


def test_other_model_types_name_siglip():
    with pytest.raises(ValueError, match="'siglip2' is not supported.*'siglip' \\(SiglipModel"):
        hf_to_vitfast({"model_type": "siglip2"}, {})
    with pytest.raises(ValueError, match="'clip' and 'siglip'"):
        vitfast_to_hf("siglip2", None, {})


def test_export_to_timm_is_refused(tmp_path):
    vitfast.save(vitfast.create_model("siglip_tiny", vision_layers=1, text_layers=1), tmp_path / "vf")
    with pytest.raises(ConvertError, match="timm has no SigLIP text tower; export SigLIP with --to hf"):
        export(tmp_path / "vf", tmp_path / "timm", to="timm")
    assert not (tmp_path / "timm").exists()


# ------------------------------------------------------------------------------ (e) folders, end to end


def test_hf_folder_converts_and_exports_back_with_its_tokenizer(tmp_path):
    hf = _hf_siglip(*SMALL)
    tok = _siglip_tokenizer(16)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    tok.save(hf_dir)

    report = convert(hf_dir, tmp_path / "vf")
    assert report["source"] == "hf" and report["family"] == "siglip"
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] <= TOL
    ours = vitfast.load(tmp_path / "vf", attn_backend="eager").eval()
    _assert_same(ours, hf, *_inputs(ours.config))

    # convert() writes tokenizer.json for CLIP only so far; put the SigLIP one into the folder as training does
    tok.save(tmp_path / "vf")
    assert isinstance(load_tokenizer(tmp_path / "vf"), SiglipTokenizer)
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "vf"), str(tmp_path / "back"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    back = tmp_path / "back"
    assert sorted(p.name for p in back.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                      "tokenizer.json", "tokenizer_config.json"]
    text_config = json.loads((back / "config.json").read_text())["text_config"]
    assert (text_config["pad_token_id"], text_config["eos_token_id"]) == (0, 1)
    exported = transformers.SiglipModel.from_pretrained(back).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(back)
    ids = hf_tok([canonicalize(t) for t in TEXTS], padding="max_length", max_length=16, truncation=True,
                 return_tensors="pt").input_ids
    assert torch.equal(ids, tok(TEXTS))
    images = _inputs(ours.config)[0]
    _assert_same(ours, exported, images, ids)
    # and the exported folder's tokenizer reads back into vitfast
    assert torch.equal(read_siglip_tokenizer(back, 16)(TEXTS), ids)

    # the exported HF folder converts again, to the same weights
    again = convert(back, tmp_path / "again")
    assert again["max_abs_diff"] <= TOL
    state, again_state = ours.state_dict(), vitfast.load(tmp_path / "again").state_dict()
    assert all(torch.equal(state[k], again_state[k]) for k in state)


def test_hf_folder_with_an_unreadable_tokenizer_is_refused(tmp_path):
    hf_dir = tmp_path / "hf"
    _hf_siglip(*SMALL).save_pretrained(hf_dir)
    (hf_dir / "spiece.model").write_bytes(b"\0")
    with pytest.raises(ConvertError, match="spiece.model but no tokenizer.json"):
        convert(hf_dir, tmp_path / "vf")
    assert not (tmp_path / "vf").exists()


def test_siglip_with_a_clip_style_bpe_exports_a_tokenizer_that_pads_like_vitfast(tmp_path):
    """A SigLIP trained on vitfast's own BPE: HF's CLIPTokenizer must pad with id 0, not the end token,
    because SigLIP reads the last (padding) position."""
    tok = train_bpe(["a photo of a red dog", "two cats and one bird", "a blue car on the road"] * 20,
                    vocab_size=560, context_length=12)
    torch.manual_seed(0)
    ours = vitfast.create_model("siglip_tiny", vision_layers=1, text_layers=1, vocab_size=tok.vocab_size,
                                context_length=12, attn_backend="eager").eval()
    vitfast.save(ours, tmp_path / "vf")
    tok.save(tmp_path / "vf")
    assert export(tmp_path / "vf", tmp_path / "back", to="hf")["tokenizer"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    texts = ["a red bird on the car", "one dog"]
    ids = hf_tok(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, tok(texts))
    text_config = json.loads((tmp_path / "back" / "config.json").read_text())["text_config"]
    assert (text_config["pad_token_id"], text_config["eos_token_id"]) == (0, tok.eot_token_id)
    exported = transformers.SiglipModel.from_pretrained(tmp_path / "back").eval()
    _assert_same(ours, exported, _inputs(ours.config)[0], ids)
