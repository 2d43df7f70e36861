"""Model registry: timm/open_clip names to configs, and `create_model` / `list_models`."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from pathlib import Path

import torch.nn as nn

from .clip import CLIP, CLIP_CONFIGS, CLIPConfig
from .siglip import SIGLIP_CONFIGS, SigLIP, SigLIPConfig
from .swin import SWIN_CONFIGS, SwinConfig, SwinTransformer
from .vit import VIT_CONFIGS, ViTConfig, VisionTransformer

# family name -> (config class, model class); the family is stored in config.json.
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "vit": (ViTConfig, VisionTransformer),
    "swin": (SwinConfig, SwinTransformer),
    "clip": (CLIPConfig, CLIP),
    "siglip": (SigLIPConfig, SigLIP),
}
_REGISTRY: dict[str, tuple[str, object]] = {
    name: (family, cfg) for family, configs in [("vit", VIT_CONFIGS), ("swin", SWIN_CONFIGS), ("clip", CLIP_CONFIGS),
                                           ("siglip", SIGLIP_CONFIGS)]
    for name, cfg in configs.items()
}


def list_models(pattern: str = "", pretrained: bool = False) -> list[str]:
    """Names of the models vitfast can create, sorted; those containing `pattern` if given. With
    `pretrained`, the pretrained weights known for them instead, as the peers spell them: timm's
    ``name.tag`` (the default tag first) and open_clip's ``name.tag`` pairs (``ViT-B-32.laion2b_s34b_b79k``)."""
    if not pretrained:
        return sorted(name for name in _REGISTRY if pattern in name)
    table = _pretrained_table()
    return [f"{name}.{tag}" for source in ("timm", "open_clip") for name in sorted(table[source])
            for tag in table[source][name] if pattern in f"{name}.{tag}"]


@functools.cache
def _pretrained_table() -> dict:
    """pretrained.json: for each model, the Hub repo of each tag timm (``timm/<name>.<tag>``, default tag
    first, with timm's pretrained_cfg: input size, interpolation, mean/std, crop) or open_clip (its own
    table's repo, its preprocess_cfg, and whether the weights were trained with QuickGELU) publishes.
    Checked against the installed timm and open_clip by tests/models/test_pretrained_table.py."""
    return json.loads((Path(__file__).with_name("pretrained.json")).read_text(encoding="utf-8"))


def pretrained_entry(name: str, tag: str | None) -> dict:
    """{"source": "timm" | "open_clip", "hub": repo id, "tag": tag, and timm's "pretrained_cfg" or open_clip's
    "preprocess_cfg" and "quick_gelu"} of a model and tag;
    `tag` None is timm's default tag (open_clip has none, so its models need one). ValueError names the
    known tags."""
    check_model_name(name)
    table = _pretrained_table()
    source = "timm" if name in table["timm"] else "open_clip" if name in table["open_clip"] else None
    if source is None:
        raise ValueError(f"no pretrained weights are known for {name!r}; pass hf-hub:ORG/NAME or a local folder "
                         "as pretrained, or see `vitfast train --list-models --pretrained`.")
    tags = table[source][name]
    if tag is None:
        if source == "open_clip":
            raise ValueError(f"{name} needs a pretrained tag, as in open_clip: one of {', '.join(tags)}.")
        tag = next(iter(tags))
    if tag not in tags:
        close = difflib.get_close_matches(tag, tags, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown pretrained tag {tag!r} for {name}; known: {', '.join(tags)}.{hint}")
    return {"source": source, "tag": tag, **tags[tag]}


def model_family(model: nn.Module) -> str:
    for family, (_, cls) in FAMILIES.items():
        if isinstance(model, cls):
            return family
    raise ValueError(f"{type(model).__name__} is not a vitfast model.")


def build_config(family: str, fields: dict):
    """A validated config of `family` from a dict (e.g. config.json, with overrides such as
    ``attn_backend``): ValueError names unknown fields and bad values before any model is built."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}.")
    config_cls = FAMILIES[family][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {family} config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    config = config_cls(**fields)
    config.validate()
    return config


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The mlp_ratio a config needs for `hidden` MLP units at width `dim` (the models build int(dim * ratio)):
    hidden / dim, nudged up one ulp where that product rounds down (width 88, 120 units: 119 otherwise)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else math.nextafter(ratio, math.inf)


def build_model(family: str, config) -> nn.Module:
    return FAMILIES[family][1](config)


def check_model_name(name: str) -> None:
    """Raise ValueError, suggesting close names, unless `name` is a model vitfast can create."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See `vitfast.list_models()`."
        raise ValueError(f"unknown model {name!r}.{hint}")


def named_config(name: str) -> tuple[str, object]:
    """The family and a copy of the config that `name` stands for (ValueError for unknown names)."""
    check_model_name(name)
    family, base = _REGISTRY[name]
    return family, dataclasses.replace(base)


def create_model(name: str, **overrides) -> nn.Module:
    """A randomly initialized model by timm/open_clip name, with config fields overridden.

    Example: ``create_model("vit_base_patch16_224", num_classes=10, attn_backend="sdpa")``.
    """
    family, base = named_config(name)
    config = build_config(family, {**dataclasses.asdict(base), **overrides})
    model = build_model(family, config)
    model.model_name = name
    return model


__all__ = [
    "CLIP", "CLIPConfig", "SigLIP", "SigLIPConfig", "SwinConfig", "SwinTransformer", "ViTConfig", "VisionTransformer",
    "create_model",
    "list_models",
]
