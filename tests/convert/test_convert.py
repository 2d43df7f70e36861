"""vitfast convert: timm ViT/Swin, open_clip and OpenAI-layout CLIP checkpoints into model folders that
give the source library's outputs (fp32, CPU, ≤ 1e-4), safely and atomically."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import vitfast
from vitfast.checkpoint import read_state_dict
from vitfast.cli import app
from vitfast.convert import ConvertError, convert
from vitfast.convert.infer import clip_config
from vitfast.convert.write import build
from vitfast.models import mlp_ratio_for
from vitfast.tokenizer import load_tokenizer, train_bpe, write_hf_tokenizer

timm = pytest.importorskip("timm")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("kw", [dict(num_classes=7, img_size=64),
                                dict(num_classes=0, img_size=48, class_token=False, global_pool="avg")],
                         ids=["token-head", "avg-no-head"])
def test_timm_vit_training_checkpoint(tmp_path, kw):
    source = timm.create_model("vit_tiny_patch16_224", **kw).eval()
    wrapped = {"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth.tar")
    report = convert(tmp_path / "ckpt.pth.tar", tmp_path / "out")
    assert report["source"] == "timm" and report["family"] == "vit" and report["max_abs_diff"] <= 1e-4
    ours = vitfast.load(tmp_path / "out", attn_backend="eager").eval()
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        assert _max_diff(ours(x), source(x)) <= 1e-4


def test_timm_swin_safetensors_matches_a_named_config(tmp_path):
    source = timm.create_model("swin_tiny_patch4_window7_224", num_classes=5).eval()
    save_file(source.state_dict(), tmp_path / "swin.safetensors")
    report = convert(tmp_path / "swin.safetensors", tmp_path / "out", dtype="fp32")
    assert report["model_name"] == "swin_tiny_patch4_window7_224" and report["max_abs_diff"] <= 1e-4
    ours = vitfast.load(tmp_path / "out", attn_backend="eager").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert _max_diff(ours(x), source(x)) <= 1e-4


def _open_clip_model(quick_gelu: bool):
    open_clip = pytest.importorskip("open_clip")
    vision = {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2}
    text = {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}
    return open_clip.model.CLIP(64, vision, text, quick_gelu=quick_gelu).eval()


@pytest.mark.parametrize("layout", ["open_clip", "openai"])
def test_clip_checkpoints_match_open_clip(tmp_path, layout):
    source = _open_clip_model(quick_gelu=layout == "openai")
    state = source.state_dict()
    if layout == "openai":  # OpenAI's archives carry these beside the weights
        state |= {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16),
                  "vocab_size": torch.tensor(49408)}
        torch.save(state, tmp_path / "clip.pt")
    else:
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "clip.pt")
    report = convert(tmp_path / "clip.pt", tmp_path / "out")
    assert report["source"] == layout and report["max_abs_diff"] <= 1e-4
    ours = vitfast.load(tmp_path / "out", attn_backend="eager").eval()
    assert ours.config.quick_gelu == (layout == "openai") and (tmp_path / "out" / "tokenizer.json").is_file()
    image = torch.randn(2, 3, 32, 32)
    text = load_tokenizer(tmp_path / "out")(["a diagram", "a dog on a sofa"])
    with torch.no_grad():
        assert _max_diff(ours.encode_image(image), source.encode_image(image)) <= 1e-4
        assert _max_diff(ours.encode_text(text), source.encode_text(text)) <= 1e-4


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path):
    control, marker = _Exploit(), tmp_path / "pwned"
    control.marker = tmp_path / "control"
    pickle.loads(pickle.dumps(control))  # unpickled without restrictions, it runs its command
    assert control.marker.exists()
    exploit = _Exploit()
    exploit.marker = marker
    torch.save({"state_dict": {"w": exploit}}, tmp_path / "evil.pth")
    with pytest.raises(ConvertError, match=r"refused or could not read .*evil\.pth.*nothing in the file ran"):
        convert(tmp_path / "evil.pth", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_corrupt_missing_and_misshaped_sources_name_the_problem(tmp_path):
    state = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).state_dict()
    save_file(state, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=r"cut\.safetensors is not a readable safetensors file"):
        convert(tmp_path / "cut.safetensors", tmp_path / "out")
    missing = {k: v for k, v in state.items() if k != "blocks.3.norm1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConvertError, match=r"missing: blocks\.3\.norm1\.weight"):
        convert(tmp_path / "missing.pth", tmp_path / "out")
    torch.save(state | {"blocks.1.mlp.fc2.bias": torch.zeros(5)}, tmp_path / "shape.pth")
    with pytest.raises(ConvertError, match=r"mis-shaped: blocks\.1\.mlp\.fc2\.bias \(5,\) vs \(192,\)"):
        convert(tmp_path / "shape.pth", tmp_path / "out")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(ConvertError, match="match no known layout"):
        convert(tmp_path / "foreign.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_destination_needs_force_and_survives_a_failure(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32)
    torch.save(source.state_dict(), tmp_path / "a.pth")
    convert(tmp_path / "a.pth", tmp_path / "out", verify=False)
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp_path / "a.pth"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    result = runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), str(tmp_path / "out"), "--force"])
    assert result.exit_code == 1 and (tmp_path / "out" / "model.safetensors").read_bytes() == before
    result = runner.invoke(app, ["convert", str(tmp_path / "a.pth"), str(tmp_path / "out"), "--force",
                                 "--dtype", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["family"] == "vit"
    assert read_state_dict(tmp_path / "out")[1]["head.weight"].dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "bad.pth", "out"]  # no temporary left


def test_hf_folders_convert_and_export_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=256, image_size=32, patch_size=8, num_labels=5,
                                       layer_norm_eps=1e-6)
    source = transformers.ViTForImageClassification(hf_config).eval()
    source.save_pretrained(tmp_path / "hf")
    report = convert(tmp_path / "hf", tmp_path / "vf")
    assert report["source"] == "hf" and report["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 3, 32, 32)
    ours = vitfast.load(tmp_path / "vf", attn_backend="eager").eval()
    with torch.no_grad():
        assert _max_diff(ours(x), source(pixel_values=x).logits) <= 1e-4
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "vf"), str(tmp_path / "back"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    exported = transformers.ViTForImageClassification.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert _max_diff(exported(pixel_values=x).logits, ours(x)) <= 1e-4
    with pytest.raises(ConvertError, match="already a vitfast model folder"):
        convert(tmp_path / "vf", tmp_path / "again")


def test_export_to_timm_loads_in_timm(tmp_path):
    model = vitfast.create_model("swin_micro_patch2_window4_32", attn_backend="eager").eval()
    vitfast.save(model, tmp_path / "vf")
    report = convert(tmp_path / "vf", tmp_path / "timm", to="timm")
    assert report["target"] == "timm"
    meta = json.loads((tmp_path / "timm" / "config.json").read_text())
    reference = timm.models.swin_transformer.SwinTransformer(**meta["model_args"]).eval()
    reference.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(reference(x), model(x)) <= 1e-4


def test_torchscript_clip_archive_is_read_without_running_it(tmp_path):
    source = _open_clip_model(quick_gelu=True)
    image = torch.randn(1, 3, 32, 32)
    text = torch.randint(0, 49406, (1, 16))
    text[:, -1] = 49407
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about open_clip's data-dependent pooling
        torch.jit.trace(source, (image, text), strict=False, check_trace=False).save(str(tmp_path / "clip.pt"))
    report = convert(tmp_path / "clip.pt", tmp_path / "out")
    assert report["source"] == "openai" and report["max_abs_diff"] <= 1e-4
    ours = vitfast.load(tmp_path / "out", attn_backend="eager").eval()
    with torch.no_grad():
        assert _max_diff(ours.encode_text(text), source.encode_text(text)) <= 1e-4


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab+merges"])
def test_hf_clip_folder_brings_its_tokenizer_and_exports_it(tmp_path, files):
    transformers = pytest.importorskip("transformers")

    captions = ["a photo of a red dog", "two cats and one bird", "a blue car on the road"] * 20
    tok = train_bpe(captions, vocab_size=560, context_length=16)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    write_hf_tokenizer(tok, hf_dir)  # the slow tokenizer's files: vocab.json + merges.txt
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    if files == "tokenizer.json":  # what transformers 5 (and CLIPTokenizerFast) save instead
        for name in ("vocab.json", "merges.txt"):
            (hf_dir / name).unlink()
        hf_tok.save_pretrained(hf_dir)
        assert (hf_dir / "tokenizer.json").is_file()
    config = transformers.CLIPConfig(
        projection_dim=32,
        vision_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 256,
                       "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 256,
                     "vocab_size": tok.vocab_size, "max_position_embeddings": 16, "pad_token_id": 0,
                     "bos_token_id": tok.sot_token_id, "eos_token_id": tok.eot_token_id})
    torch.manual_seed(0)
    source = transformers.CLIPModel(config).eval()
    source.save_pretrained(hf_dir)

    report = convert(hf_dir, tmp_path / "vf")
    assert report["family"] == "clip" and report["max_abs_diff"] <= 1e-4
    ours = vitfast.load(tmp_path / "vf", attn_backend="eager").eval()
    converted = load_tokenizer(tmp_path / "vf")
    texts = ["a red bird on the car", "one dog"]
    ids = converted(texts)
    for row, text in zip(ids.tolist(), texts):
        assert row[: row.index(tok.eot_token_id) + 1] == hf_tok(text)["input_ids"]
    hf_ids = hf_tok(texts, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # vitfast pads with 0, transformers with the end token: the embedding is the same
        expected = source(input_ids=hf_ids, pixel_values=torch.randn(2, 3, 32, 32)).text_embeds
        assert _max_diff(ours.encode_text(ids, normalize=True), expected) <= 1e-4

    # and back: the exported folder carries a tokenizer transformers loads, with the same ids
    export = convert(tmp_path / "vf", tmp_path / "back", to="hf")
    assert export["tokenizer"]
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert [again(t)["input_ids"] for t in texts] == [hf_tok(t)["input_ids"] for t in texts]


def test_hf_tokenizer_that_is_not_clips_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        projection_dim=16,
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": 16, "patch_size": 8},
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                     "vocab_size": 600, "max_position_embeddings": 8, "eos_token_id": 599, "bos_token_id": 598})
    transformers.CLIPModel(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ConvertError, match="lacks .* of CLIP's tokens"):
        convert(tmp_path / "hf", tmp_path / "vf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConvertError, match="tokenizer files are unreadable"):
        convert(tmp_path / "hf", tmp_path / "vf")
    assert not (tmp_path / "vf").exists()


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_headless_hf_models_are_verified_from_a_sharded_folder(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    if family == "vit":
        config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, image_size=24, patch_size=8, layer_norm_eps=1e-6)
        source = transformers.ViTModel(config)  # with its pooler, which vitfast leaves out
    else:
        config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                                         num_heads=[2, 4], window_size=4)
        source = transformers.SwinModel(config)
    source.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    report = convert(tmp_path / "hf", tmp_path / "vf")
    assert report["family"] == family and report["max_abs_diff"] is not None and report["max_abs_diff"] <= 1e-4


def test_resnet_clip_is_refused_by_name(tmp_path):
    # open_clip's RN50 layout (a ModifiedResNet image tower), as a few of its keys
    state = {"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
             "token_embedding.weight": torch.zeros(49408, 8), "positional_embedding": torch.zeros(77, 8)}
    torch.save(state, tmp_path / "rn50.pt")
    with pytest.raises(ConvertError, match=r"ResNet .* image tower; vitfast's CLIP has a ViT image tower only"):
        convert(tmp_path / "rn50.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, kw, feature", [
    ("vit_base_patch32_clip_224", {}, "a norm before the blocks"),
    ("deit_tiny_distilled_patch16_224", {}, "a distillation token"),
    ("vit_small_patch14_dinov2", {"img_size": 28}, "layer scale"),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False},
     "average pooling after the final norm"),
])
def test_timm_vit_features_vitfast_lacks_are_named(tmp_path, name, kw, feature):
    torch.save(timm.create_model(name, **kw).state_dict(), tmp_path / "x.pth")
    with pytest.raises(ConvertError, match=f"this timm ViT has {feature}.*which vitfast's ViT does not implement"):
        convert(tmp_path / "x.pth", tmp_path / "out")


def test_wide_head_vits_get_timm_and_open_clips_head_counts(tmp_path):
    # ViT-H's width at a size no named config has: 16 heads of 80, as timm (not 20 of 64).
    from timm.models.vision_transformer import VisionTransformer

    source = VisionTransformer(img_size=28, patch_size=14, embed_dim=1280, depth=1, num_heads=16, num_classes=3).eval()
    torch.save(source.state_dict(), tmp_path / "h.pth")
    report = convert(tmp_path / "h.pth", tmp_path / "vit")
    ours = vitfast.load(tmp_path / "vit", attn_backend="eager").eval()
    assert ours.config.num_heads == 16 and "16 heads of 80" in report["warning"]
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert _max_diff(ours(x), source(x)) <= 1e-4

    # ViT-g's vision tower (1408 wide, 16 heads of 88, MLP ratio 4.3637) in an open_clip CLIP
    open_clip = pytest.importorskip("open_clip")
    vision = {"image_size": 28, "patch_size": 14, "width": 1408, "layers": 1, "head_width": 88, "mlp_ratio": 48 / 11}
    text = {"context_length": 8, "vocab_size": 64, "width": 128, "heads": 2, "layers": 1}
    clip = open_clip.model.CLIP(32, vision, text).eval()
    _, cfg, _ = clip_config(clip.state_dict(), None, quick_gelu=False)
    assert (cfg.vision_heads, cfg.vision_mlp_ratio, cfg.text_heads) == (16, 6144 / 1408, 2)
    cfg.attn_backend = "eager"
    ours = build("clip", cfg, clip.state_dict()).eval()  # (a 64-token vocabulary has no CLIP tokenizer to save)
    with torch.no_grad():
        image = torch.randn(2, 3, 28, 28)
        assert _max_diff(ours.encode_image(image), clip.encode_image(image)) <= 1e-4


def test_open_clip_source_warns_about_quickgelu(tmp_path):
    source = _open_clip_model(quick_gelu=True)  # trained with QuickGELU: nothing in the weights says so
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    report = convert(tmp_path / "clip.pt", tmp_path / "gelu", verify=False)
    assert "GELU was assumed" in report["warning"] and "--from openai" in report["warning"]
    report = convert(tmp_path / "clip.pt", tmp_path / "quick", source="openai")
    assert "warning" not in report or "GELU" not in report["warning"]
    ours = vitfast.load(tmp_path / "quick", attn_backend="eager").eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(ours.encode_image(image), source.encode_image(image)) <= 1e-4


@pytest.mark.parametrize("what, state, message", [
    ("swin v2", {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4),
                 "layers.0.blocks.0.attn.logit_scale": torch.zeros(2),
                 "layers.0.blocks.0.attn.cpb_mlp.0.weight": torch.zeros(4, 2)}, "timm Swin V2"),
    ("siglip", {"visual.trunk.pos_embed": torch.zeros(1, 4, 8), "logit_bias": torch.zeros(1)}, "timm image tower"),
    ("coca", {"text.cls_emb": torch.zeros(8), "logit_scale": torch.zeros(())}, "CoCa"),
])
def test_unsupported_variants_are_named(tmp_path, what, state, message):
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / "x.pt", tmp_path / "out")


def test_from_overrides_detection(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConvertError, match="not OpenAI or open_clip CLIP weights"):
        convert(tmp_path / "vit.pth", tmp_path / "out", source="open_clip")
    assert int(88 * mlp_ratio_for(88, 120)) == 120 and mlp_ratio_for(768, 3072) == 4.0
