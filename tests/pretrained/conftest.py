"""A Hub cache of tiny repos of every layout the peers publish, shared by the tests of this folder, and
the environment that makes every Hub library read it offline (HF_HUB_CACHE, HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
from pathlib import Path

import hub_cache as hc
import pytest

# repo id -> how the tests refer to it
TIMM_VIT = "timm/vit_tiny_patch16_224.tiny_test"
TIMM_SWIN = "timm/swin_tiny_patch4_window7_224.tiny_test"
OPEN_CLIP = "laion/CLIP-tiny-test"
OPEN_CLIP_BIN = "laion/CLIP-tiny-test-bin"
OPEN_CLIP_QUICKGELU = "timm/vit_tiny_clip.openai_test"
OPEN_CLIP_SIGLIP = "timm/ViT-tiny-SigLIP-test"
HF_VIT = "google/vit-tiny-test"
HF_CLIP = "openai/clip-tiny-test"
# a real tag's repo name (vit_base_patch16_224's default tag), holding tiny weights with timm's model_args
TAGGED = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
REVISION = "v2"
# what timm leaves in the cache for create_model("vit_tiny_patch16_224", pretrained=True): the weights only
TIMM_FILLED = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a second revision of TIMM_VIT, with other weights


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> dict:
    """{"cache": the cache folder, "models": {repo: the peer's model}, "commits": {repo: commit}}."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    models, commits = {}, {}

    def add(repo, built, revision="main"):
        model, folder = built
        key = repo if revision == "main" else f"{repo}@{revision}"
        models[key], commits[key] = model, hc.add_repo(cache, repo, folder, revision)

    add(TIMM_VIT, hc.timm_vit(tmp / "a", labels=[f"class {i}" for i in range(5)]))
    add(TIMM_VIT, hc.timm_vit(tmp / "b", classes=5, depth=1), revision=REVISION)
    add(TIMM_SWIN, hc.timm_swin(tmp / "c"))
    add(OPEN_CLIP, hc.open_clip_model(tmp / "d"))
    add(OPEN_CLIP_BIN, hc.open_clip_model(tmp / "e", safetensors=False))
    add(OPEN_CLIP_QUICKGELU, hc.open_clip_model(tmp / "f", quick_gelu=True))
    add(HF_VIT, hc.hf_vit(tmp / "g"))
    add(HF_CLIP, hc.hf_clip(tmp / "i"))
    add(TIMM_FILLED, hc.timm_filled(tmp / "j"))
    add(OPEN_CLIP_SIGLIP, hc.open_clip_siglip(tmp / "k", OPEN_CLIP_SIGLIP))
    model, folder = hc.timm_vit(tmp / "h", classes=1000)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "vit_base_patch16_224"
    config["pretrained_cfg"]["tag"] = "augreg2_in21k_ft_in1k"
    (folder / "config.json").write_text(json.dumps(config))
    add(TAGGED, (model, folder))
    return {"cache": cache, "models": models, "commits": commits}


@pytest.fixture
def offline(hub, monkeypatch) -> Path:
    """The hub cache, offline, for this test (and any vitfast subprocess it starts)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HOME", raising=False)
    import huggingface_hub.constants as constants

    # timm and open_clip call huggingface_hub, which read these at import: point it at the same cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub["cache"]
