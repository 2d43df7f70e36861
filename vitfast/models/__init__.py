"""Model registry: timm/open_clip names to configs, and `create_model` / `list_models`."""

from __future__ import annotations

import dataclasses
import difflib
import math

import torch.nn as nn

from .clip import CLIP, CLIP_CONFIGS, CLIPConfig
from .swin import SWIN_CONFIGS, SwinConfig, SwinTransformer
from .vit import VIT_CONFIGS, ViTConfig, VisionTransformer

# family name -> (config class, model class); the family is stored in config.json.
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "vit": (ViTConfig, VisionTransformer),
    "swin": (SwinConfig, SwinTransformer),
    "clip": (CLIPConfig, CLIP),
}
_REGISTRY: dict[str, tuple[str, object]] = {
    name: (family, cfg) for family, configs in [("vit", VIT_CONFIGS), ("swin", SWIN_CONFIGS), ("clip", CLIP_CONFIGS)]
    for name, cfg in configs.items()
}


def list_models(pattern: str = "") -> list[str]:
    """Names of the models vitfast can create, sorted; those containing `pattern` if given."""
    return sorted(name for name in _REGISTRY if pattern in name)


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
    "CLIP", "CLIPConfig", "SwinConfig", "SwinTransformer", "ViTConfig", "VisionTransformer", "create_model",
    "list_models",
]
