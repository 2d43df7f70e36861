"""vitfast/models/pretrained.json names the repos timm's and open_clip's own tables name for each of
vitfast's models and tags (checked against the installed peers; an upgrade that adds tags shows here)."""

import pytest

from vitfast.models import _pretrained_table, list_models, pretrained_entry


def test_timm_tags_and_repos_are_timms():
    timm = pytest.importorskip("timm")
    table = _pretrained_table()["timm"]
    for name, tags in table.items():
        assert next(iter(tags)) == timm.models.get_pretrained_cfg(name).tag, name  # the default tag first
        for tag, entry in tags.items():
            cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}").to_dict()
            assert cfg["hf_hub_id"].strip("/") == entry["hub"]
            for key, value in entry["pretrained_cfg"].items():
                assert value == (list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]), (name, tag, key)
    timm_names = {n for n in list_models() if n.startswith(("vit_", "swin_")) and timm.list_pretrained(n + ".*")}
    assert timm_names - set(table) <= {n for n in timm_names if not any(
        timm.models.get_pretrained_cfg(t).hf_hub_id for t in timm.list_pretrained(n + ".*"))}


def test_open_clip_tags_repos_and_activations_are_open_clips():
    open_clip = pytest.importorskip("open_clip")
    table = _pretrained_table()["open_clip"]
    for name, tags in table.items():
        for tag, entry in tags.items():
            cfg = open_clip.get_pretrained_cfg(name, tag)
            assert cfg["hf_hub"].strip("/") == entry["hub"]
            assert bool(cfg.get("quick_gelu", False)) == entry["quick_gelu"]
            for key in ("mean", "std", "interpolation", "resize_mode"):
                assert entry["preprocess_cfg"].get(key) == (list(cfg[key]) if isinstance(cfg.get(key), tuple)
                                                            else cfg.get(key)), (name, tag, key)


def test_entries_resolve_default_tags_and_refuse_unknown_ones():
    entry = pretrained_entry("vit_base_patch16_224", None)
    assert (entry["source"], entry["tag"], entry["hub"]) == (
        "timm", "augreg2_in21k_ft_in1k", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert entry["pretrained_cfg"]["crop_pct"] == 0.9
    assert pretrained_entry("ViT-B-32", "openai")["quick_gelu"] is True
    with pytest.raises(ValueError, match="Did you mean augreg_in1k"):
        pretrained_entry("vit_base_patch16_224", "augreg_in1")
