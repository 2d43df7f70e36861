"""create_model(..., pretrained=...) reads each layout the peers publish from a Hub cache, offline, and gives
what timm, open_clip and transformers give on the same weights; fine-tuning changes what timm changes."""

from __future__ import annotations

import pytest
import torch
from conftest import (HF_CLIP, HF_VIT, OPEN_CLIP, OPEN_CLIP_BIN, OPEN_CLIP_QUICKGELU, REVISION, TAGGED, TIMM_SWIN,
                      TIMM_VIT)

import vitfast
from vitfast.convert import ConvertError
from vitfast.hub import HubError

TOL = 1e-4


def _images(n=3, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("repo", [TIMM_VIT, TIMM_SWIN])
def test_timm_repos_give_timms_logits(offline, repo):
    import timm

    ours = vitfast.create_model(f"hf-hub:{repo}", attn_backend="eager").eval()
    theirs = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    x = _images()
    assert _diff(ours(x), theirs(x)) <= TOL
    assert ours.preprocess["mean"] == list(theirs.pretrained_cfg["mean"])
    assert ours.preprocess["crop_pct"] == theirs.pretrained_cfg["crop_pct"]
    assert ours.pretrained_from == {"source": "timm", "from": f"hf-hub:{repo}"}
    if repo == TIMM_VIT:
        assert ours.class_names == [f"class {i}" for i in range(5)]  # the repo's label_names


@torch.no_grad()
@pytest.mark.parametrize("repo", [OPEN_CLIP, OPEN_CLIP_BIN, OPEN_CLIP_QUICKGELU])
def test_open_clip_repos_give_open_clips_embeddings(offline, repo):
    import open_clip

    ours = vitfast.create_model(f"hf-hub:{repo}", attn_backend="eager").eval()
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{repo}")
    theirs.eval()
    assert ours.config.quick_gelu == (repo == OPEN_CLIP_QUICKGELU)
    x = _images()
    text = open_clip.get_tokenizer(f"hf-hub:{repo}")(["a photo of a dog", "two cats"])
    assert _diff(ours.encode_image(x), theirs.encode_image(x)) <= TOL
    assert _diff(ours.encode_text(text[:, :16]), theirs.encode_text(text)) <= TOL
    assert ours.preprocess["interpolation"] == "bicubic" and ours.preprocess["crop_pct"] == 1.0


@torch.no_grad()
def test_transformers_repo_gives_transformers_logits_and_labels(offline, hub):
    ours = vitfast.create_model(f"hf-hub:{HF_VIT}", attn_backend="eager").eval()
    x = _images()
    assert _diff(ours(x), hub["models"][HF_VIT](pixel_values=x).logits) <= TOL
    assert ours.class_names == [f"kind{i}" for i in range(5)]
    assert ours.preprocess["crop_mode"] == "squash" and ours.preprocess["mean"] == [0.5, 0.5, 0.5]


@torch.no_grad()
def test_transformers_clip_repo_brings_its_tokenizer(offline, hub):
    from vitfast.convert.repos import repo_tokenizer, resolve

    source = resolve(f"hf-hub:{HF_CLIP}")
    model, tok = hub["models"][HF_CLIP]
    ours = vitfast.create_model(f"hf-hub:{HF_CLIP}", attn_backend="eager").eval()
    tokenizer = repo_tokenizer(source)
    assert tokenizer.vocab_size == tok.vocab_size
    texts = ["a red bird on the car", "one dog"]
    ids = tokenizer(texts)
    assert torch.equal(ids, tok(texts))
    x = _images()
    out = model(input_ids=ids, pixel_values=x, attention_mask=(ids > 0).long())
    assert _diff(ours.encode_image(x, normalize=True), out.image_embeds) <= TOL
    assert ours.preprocess["crop_pct"] == 1.0 and ours.preprocess["interpolation"] == "bicubic"


@torch.no_grad()
def test_timm_name_and_tag_read_timms_repo_for_the_tag(offline, hub):
    """timm's spelling (name.tag, or the name with pretrained=True for its default tag) reads timm/<name>.<tag>."""
    x = _images()
    expected = hub["models"][TAGGED](x)
    for name, pretrained in [("vit_base_patch16_224.augreg2_in21k_ft_in1k", True),
                             ("vit_base_patch16_224", True), ("vit_base_patch16_224", "augreg2_in21k_ft_in1k"),
                             (f"hf-hub:{TAGGED}", None)]:
        ours = vitfast.create_model(name, pretrained=pretrained, attn_backend="eager").eval()
        assert _diff(ours(x), expected) <= TOL, name
        assert ours.model_name == "vit_base_patch16_224"
        assert len(ours.class_names) == 1000 and ours.class_names[0] == "tench"  # timm: 1000 classes are ImageNet's


def test_a_tag_alone_builds_random_weights_as_timm_does():
    model = vitfast.create_model("vit_micro_patch4_32.anything")
    assert model.model_name == "vit_micro_patch4_32"


@torch.no_grad()
def test_revision_picks_the_repos_other_commit(offline, hub):
    x = _images()
    main = vitfast.create_model(f"hf-hub:{TIMM_VIT}", attn_backend="eager").eval()
    other = vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True, revision=REVISION, attn_backend="eager").eval()
    at = vitfast.create_model(f"hf-hub:{TIMM_VIT}@{REVISION}", attn_backend="eager").eval()
    assert main.config.depth == 2 and other.config.depth == 1 and at.config.depth == 1
    assert _diff(other(x), hub["models"][f"{TIMM_VIT}@{REVISION}"](x)) <= TOL


@torch.no_grad()
def test_fine_tune_new_head_and_image_size_match_timm(offline):
    """Another class count re-initializes the head only; another size resamples the position embedding as
    timm's checkpoint filter does, so the features equal timm's fine-tuning model's."""
    import timm

    ours = vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True, num_classes=3, img_size=48,
                                attn_backend="eager").eval()
    theirs = timm.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True, num_classes=3, img_size=48).eval()
    x = _images(size=48)
    assert ours.head.weight.shape == (3, 32) and ours.class_names is None
    assert _diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                 theirs.forward_head(theirs.forward_features(x), pre_logits=True)) <= TOL
    assert ours.preprocess["input_size"] == [3, 48, 48]
    same = vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True)
    assert torch.equal(same.head.weight, timm.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True).head.weight)


@torch.no_grad()
@pytest.mark.parametrize("size", [40, 44])
def test_swin_at_another_image_size_matches_timm(offline, size):
    """timm keeps the window and pads the maps that it does not divide; so does vitfast."""
    import timm

    ours = vitfast.create_model(f"hf-hub:{TIMM_SWIN}", pretrained=True, img_size=size, attn_backend="eager").eval()
    theirs = timm.create_model(f"hf-hub:{TIMM_SWIN}", pretrained=True, img_size=size).eval()
    x = _images(size=size)
    assert _diff(ours(x), theirs(x)) <= TOL


@torch.no_grad()
def test_swin_fine_tune_at_another_window_matches_timm(offline):
    import timm

    ours = vitfast.create_model(f"hf-hub:{TIMM_SWIN}", pretrained=True, num_classes=2, img_size=64, window_size=8,
                                attn_backend="eager").eval()
    theirs = timm.create_model(f"hf-hub:{TIMM_SWIN}", pretrained=True, num_classes=2, img_size=64,
                               window_size=8).eval()
    x = _images(size=64)
    assert _diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                 theirs.forward_head(theirs.forward_features(x), pre_logits=True)) <= TOL


@torch.no_grad()
def test_clip_at_another_image_size_resamples_like_open_clip(offline):
    import open_clip

    ours = vitfast.create_model(f"hf-hub:{OPEN_CLIP}", pretrained=True, image_size=48, attn_backend="eager").eval()
    theirs = open_clip.create_model(f"hf-hub:{OPEN_CLIP}", force_image_size=48).eval()
    x = _images(size=48)
    assert _diff(ours.encode_image(x), theirs.encode_image(x)) <= TOL


def test_what_the_weights_fix_cannot_be_overridden(offline):
    with pytest.raises(ValueError, match=r"embed_dim cannot differ .*what a fine-tune may change: img_size, "
                                         r"num_classes"):
        vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True, embed_dim=64)
    with pytest.raises(ValueError, match="unknown vit config field"):
        vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True, widths=3)


def test_saved_pretrained_model_keeps_preprocess_classes_and_origin(offline, tmp_path):
    model = vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True)
    vitfast.save(model, tmp_path / "m")
    again = vitfast.load(tmp_path / "m")
    assert again.preprocess == model.preprocess and again.class_names == model.class_names
    assert again.pretrained_from == model.pretrained_from


@pytest.mark.parametrize("name, pretrained, words", [
    ("vit_base_patch16_224", "nope", ["unknown pretrained tag 'nope' for vit_base_patch16_224", "augreg_in1k"]),
    ("ViT-B-32", True, ["ViT-B-32 needs a pretrained tag", "laion2b_s34b_b79k"]),
    ("vit_micro_patch4_32", True, ["no pretrained weights are known for 'vit_micro_patch4_32'"]),
    ("vit_base_patch16_224.a", "b", ["names the tag 'a' and pretrained= names 'b'"]),
    ("hf-hub:justaname", None, ["is not a Hub repo: write hf-hub:ORG/NAME"]),
])
def test_bad_names_and_tags_say_what_is_known(offline, name, pretrained, words):
    with pytest.raises(ValueError) as info:
        vitfast.create_model(name, pretrained=pretrained)
    for word in words:
        assert word in str(info.value)


def test_offline_without_the_files_names_the_repo_the_files_and_the_fix(offline):
    with pytest.raises(HubError) as info:
        vitfast.create_model("vit_small_patch16_224", pretrained=True)  # its default tag's repo is not cached
    text = str(info.value)
    assert "timm/vit_small_patch16_224.augreg_in21k_ft_in1k" in text and "model.safetensors" in text
    assert "HF_HUB_OFFLINE" in text and "\n" not in text
    with pytest.raises(HubError, match="laion/CLIP-ViT-B-32-laion2B-s34B-b79K .*open_clip_model.safetensors.*"
                                       "open_clip_pytorch_model.bin"):
        vitfast.create_model("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_a_repo_of_another_kind_is_named(offline, hub, tmp_path):
    (tmp_path / "config.json").write_text('{"architecture": "resnet50", "num_classes": 10}')
    with pytest.raises(ConvertError, match="timm's 'resnet50'; vitfast reads timm's ViT"):
        vitfast.create_model("vit_micro_patch4_32", pretrained=str(tmp_path))
    (tmp_path / "config.json").write_text('{"foo": 1}')
    with pytest.raises(ConvertError, match="neither timm's 'architecture' nor transformers' 'model_type'"):
        vitfast.create_model("vit_micro_patch4_32", pretrained=str(tmp_path))


def test_a_pickle_in_a_bin_is_never_run(offline, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran!",))

    (tmp_path / "open_clip_config.json").write_text(
        '{"model_cfg": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}}')
    with open(tmp_path / "open_clip_pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(ConvertError, match="nothing in the file ran"):
        vitfast.create_model("vit_micro_patch4_32", pretrained=str(tmp_path))


def test_local_folder_of_a_hub_layout_loads_like_the_repo(offline, hub):
    snapshot = hub["cache"] / f"models--{TIMM_VIT.replace('/', '--')}" / "snapshots" / hub["commits"][TIMM_VIT]
    local = vitfast.create_model("vit_tiny_patch16_224", pretrained=str(snapshot), attn_backend="eager").eval()
    x = _images()
    with torch.no_grad():
        assert _diff(local(x), hub["models"][TIMM_VIT](x)) <= TOL


def test_list_models_pretrained_spells_tags_as_the_peers():
    names = vitfast.list_models(pretrained=True)
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in names
    assert "ViT-B-32.laion2b_s34b_b79k" in names and "ViT-B-32.openai" in names
    assert vitfast.list_models("swin_tiny", pretrained=True)[0] == "swin_tiny_patch4_window7_224.ms_in1k"


@torch.no_grad()
def test_a_cache_timm_filled_needs_no_config_json(offline, hub):
    """timm downloads only model.safetensors for a named model; the tag's pretrained_cfg comes from vitfast's
    copy of timm's table, and the head counts from the named config, as timm builds it."""
    import timm

    ours = vitfast.create_model("vit_tiny_patch16_224", pretrained=True, attn_backend="eager").eval()
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True).eval()
    x = _images(n=2, size=224)
    assert _diff(ours(x), theirs(x)) <= TOL
    assert ours.config.num_heads == 3 and len(ours.class_names) == 1000
    assert ours.preprocess["crop_pct"] == theirs.pretrained_cfg["crop_pct"]
    assert ours.preprocess["mean"] == list(theirs.pretrained_cfg["mean"])


def test_a_name_that_is_not_the_repos_architecture_is_refused(offline):
    with pytest.raises(ConvertError, match="holds vit_base_patch16_224 weights, not vit_small_patch16_224"):
        vitfast.create_model("vit_small_patch16_224", pretrained=f"hf-hub:{TAGGED}")


def test_revision_twice_must_agree(offline):
    with pytest.raises(ConvertError, match="give one"):
        vitfast.create_model(f"hf-hub:{TIMM_VIT}@{REVISION}", pretrained=True, revision="main")


def test_open_clips_table_preprocessing_wins_over_the_repos(offline):
    """open_clip merges its own table's preprocess_cfg for a named tag (e.g. ViT-L-14 laion2b_s32b_b82k: mean
    and std 0.5; ViT-H-14 dfn5b: squash)."""
    from vitfast.convert.repos import hub_files, read_repo

    published = {"preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}}
    source = read_repo(hub_files(OPEN_CLIP), layout="open_clip", published=published)
    assert source.preprocess["mean"] == [0.5] * 3 and source.preprocess["crop_mode"] == "squash"
    assert read_repo(hub_files(OPEN_CLIP)).preprocess["crop_mode"] == "center"


def _error(cls, text="boom"):
    exc = cls.__new__(cls)  # the HTTP errors want a response object; the text is what vitfast reads
    Exception.__init__(exc, text)
    return exc


@pytest.mark.parametrize("name, words", [
    ("GatedRepoError", ["is gated", "hf auth login", "HF_TOKEN"]),
    ("RepositoryNotFoundError", ["does not exist (or is private)"]),
    ("RevisionNotFoundError", ["no such revision"]),
    ("EntryNotFoundError", ["has none of the files", "config.json (not in the repo)"]),
    ("HfHubHTTPError", ["the Hub refused", "429 Too Many Requests"]),
])
def test_each_hub_failure_is_one_line_with_its_fix(monkeypatch, tmp_path, name, words):
    import huggingface_hub
    import huggingface_hub.utils as hub_utils

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cls = getattr(hub_utils, name)

    def fail(*args, **kwargs):
        raise _error(cls, "429 Too Many Requests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(HubError) as info:
        vitfast.create_model(f"hf-hub:{TIMM_VIT}")
    for word in words:
        assert word in str(info.value)
    assert "\n" not in str(info.value)


def test_without_open_clip_a_clip_takes_the_repos_own_tokenizer_or_says_what_to_install(offline, monkeypatch):
    import vitfast.convert.repos as repos

    def no_open_clip(*args, **kwargs):
        raise FileNotFoundError("CLIP's BPE merges file bpe_simple_vocab_16e6.txt.gz was not found")

    monkeypatch.setattr(repos, "clip_bpe_tokenizer", no_open_clip)
    with_files = repos.resolve(f"hf-hub:{HF_CLIP}")
    assert repos.repo_tokenizer(with_files) is with_files.tokenizer
    bare = repos.resolve(f"hf-hub:{OPEN_CLIP}")
    assert bare.tokenizer is None
    with pytest.raises(ConvertError, match="ships no tokenizer files.*install open_clip_torch"):
        repos.repo_tokenizer(bare)
