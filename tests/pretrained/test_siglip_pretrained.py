"""open_clip's SigLIP repos (open_clip_config.json, weights and the repo's own tokenizer.json) read from a Hub
cache offline: the same embeddings as open_clip's model, the same token ids as open_clip's tokenizer, and
convert / eval on them; and open_clip SigLIP checkpoint files converted with their tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import OPEN_CLIP_SIGLIP
from hub_cache import SIGLIP_TEXTS

import vitfast
from vitfast.convert import convert
from vitfast.convert.infer import ConvertError
from vitfast.convert.repos import repo_tokenizer, resolve
from vitfast.tokenizer import SiglipTokenizer, canonicalize, load_tokenizer

open_clip = pytest.importorskip("open_clip")

REPO = f"hf-hub:{OPEN_CLIP_SIGLIP}"
TEXTS = [*SIGLIP_TEXTS, "", "ünïcode café &amp; friends_of_mine " * 4]


def _open_clip_tokenizer():
    """What open_clip.get_tokenizer(REPO) builds (its HFTokenizer on the repo named by the config), on the
    repo's snapshot folder: transformers reads its own cache setting at import, which the fixture cannot move."""
    source = resolve(REPO)
    config = json.loads((source.folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert config["hf_tokenizer_name"] == OPEN_CLIP_SIGLIP
    return open_clip.tokenizer.HFTokenizer(str(source.folder), context_length=config["context_length"],
                                           **config["tokenizer_kwargs"])


def _inputs(model):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 3, 32, 32, generator=g)
    text = torch.randint(0, model.config.vocab_size, (3, model.config.context_length), generator=g)
    return image, text


def test_create_model_reads_the_repo(offline, hub):
    ours = vitfast.create_model(REPO, attn_backend="eager").eval()
    ref = hub["models"][OPEN_CLIP_SIGLIP]
    assert type(ours).__name__ == "SigLIP"
    image, text = _inputs(ours)
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(image), ref.encode_image(image), atol=1e-5)
        assert torch.allclose(ours.encode_text(text), ref.encode_text(text), atol=1e-5)
    assert ours.logit_bias.item() == pytest.approx(ref.logit_bias.item())
    assert ours.preprocess["mean"] == [0.5, 0.5, 0.5] or tuple(ours.preprocess["mean"]) == (0.5, 0.5, 0.5)


def test_tokenizer_matches_open_clip(offline):
    ours = repo_tokenizer(resolve(REPO))
    assert isinstance(ours, SiglipTokenizer)
    theirs = _open_clip_tokenizer()
    assert torch.equal(ours(TEXTS), theirs(TEXTS))
    assert ours(TEXTS).shape == (len(TEXTS), 16)
    assert ours.decode(ours("A zebra, striped!")[0]) == "a zebra striped"


def test_canonicalize_is_open_clips():
    from open_clip.tokenizer import _clean_canonicalize

    for text in [*TEXTS, "Hello,  World!! 'quoted' (x_y)", "\u00c9t\u00e9\tFran\u00e7ais…"]:
        assert canonicalize(text) == _clean_canonicalize(text)


def test_convert_hub_writes_the_tokenizer(offline, hub, tmp_path):
    report = convert(REPO, tmp_path / "out")
    assert report["family"] == "siglip" and report["max_abs_diff"] < 1e-5
    assert "warning" not in report
    saved = load_tokenizer(tmp_path / "out")
    assert isinstance(saved, SiglipTokenizer)
    assert torch.equal(saved(TEXTS), _open_clip_tokenizer()(TEXTS))
    model = vitfast.load(tmp_path / "out", attn_backend="eager").eval()
    assert model.pretrained_from["from"] == REPO


def test_convert_checkpoint_file_with_its_tokenizer(hub, tmp_path):
    from safetensors.torch import save_file

    ref = hub["models"][OPEN_CLIP_SIGLIP]
    src = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    bare = convert(src, tmp_path / "bare")
    assert bare["family"] == "siglip" and bare["max_abs_diff"] < 1e-5
    assert "tokenizer" in bare["warning"]  # none written: a SigLIP's tokenizer comes only from its repo
    assert "1 heads of 64 were assumed" in bare["warning"]  # no named config has these shapes
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
    tokenizer_folder = tmp_path / "tok"
    from hub_cache import siglip_tokenizer_files
    siglip_tokenizer_files(tokenizer_folder)
    report = convert(src, tmp_path / "with", tokenizer=tokenizer_folder / "tokenizer.json")
    assert "tokenizer" not in report["warning"]
    assert isinstance(load_tokenizer(tmp_path / "with"), SiglipTokenizer)
    config = json.loads((tmp_path / "with" / "config.json").read_text())
    assert config["family"] == "siglip" and config["config"]["init_logit_bias"] == pytest.approx(
        ref.logit_bias.item())


def test_refusals_name_the_fix(tmp_path):
    with pytest.raises(ConvertError, match="SigLIP"):
        state = vitfast.create_model("siglip_tiny").state_dict()
        state.pop("logit_bias")
        from vitfast.convert.infer import detect_source
        detect_source(state)
    folder = tmp_path / "sp"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(b"\0")
    from vitfast.tokenizer import TokenizerError, read_siglip_tokenizer
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        read_siglip_tokenizer(folder, 16)


def test_fine_tune_at_another_image_size(offline):
    model = vitfast.create_model(REPO, image_size=48, attn_backend="eager")
    assert model.visual.trunk.pos_embed.shape[1] == (48 // 8) ** 2
    assert model.preprocess["input_size"] == [3, 48, 48]
    with pytest.raises(ValueError, match="cannot differ"):
        vitfast.create_model(REPO, text_width=48)


def _vitfast(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vitfast", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_cli_eval_and_fine_tune_a_hub_siglip(offline, tmp_path):
    """eval by name on the built-in data (zero-shot prompts through the repo's tokenizer), then one epoch of
    fine-tuning with the sigmoid loss: the folder keeps the repo's tokenizer, and eval reads it back."""
    out = json.loads(_vitfast("eval", "--model", REPO, "--pretrained", "-j", "0", "--json", "-q").stdout)
    assert {"zeroshot_top1", "image_to_text_R@1"} <= set(out)
    _vitfast("train", "--model", REPO, "--pretrained", "--epochs", "1", "-b", "64", "-j", "0",
             "-o", str(tmp_path / "ft"), "-q")
    tuned = vitfast.load(tmp_path / "ft")
    start = vitfast.create_model(REPO)
    assert type(tuned).__name__ == "SigLIP" and tuned.pretrained_from["from"] == REPO
    assert not torch.equal(tuned.visual.trunk.pos_embed, start.visual.trunk.pos_embed)  # it trained
    assert isinstance(load_tokenizer(tmp_path / "ft"), SiglipTokenizer)
    assert torch.equal(load_tokenizer(tmp_path / "ft")(TEXTS), _open_clip_tokenizer()(TEXTS))
    again = json.loads(_vitfast("eval", "--model-dir", str(tmp_path / "ft"), "-j", "0", "--json", "-q").stdout)
    assert "zeroshot_top1" in again


def test_open_clip_name_and_tag_reach_the_hub(offline):
    """ViT-B-16-SigLIP with open_clip's tag names open_clip's repo (absent from this offline cache: one line)."""
    from vitfast.hub import HubError

    with pytest.raises(HubError, match="timm/ViT-B-16-SigLIP .*HF_HUB_OFFLINE"):
        vitfast.create_model("ViT-B-16-SigLIP", pretrained="webli")
    with pytest.raises(ValueError, match="unknown pretrained tag 'laion'"):
        vitfast.create_model("ViT-B-16-SigLIP", pretrained="laion")
