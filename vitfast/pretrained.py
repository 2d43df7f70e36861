"""Pretrained models by the names timm and open_clip give them, ready to evaluate or fine-tune.

``vitfast.create_model`` is :func:`create_model` here: without ``pretrained`` it is the registry's
(random weights); with it, the weights of the Hub repo (or local folder) that the name and tag stand for
(`vitfast.convert.repos.resolve`) are loaded, and what the call changes is adapted as timm adapts it when
fine-tuning: another ``num_classes`` starts a new head, another image size resamples the position
embeddings (ViT, CLIP's image tower), another Swin window resamples the relative-position tables. The
model keeps the preprocessing it was published with (``model.preprocess``, timm's pretrained_cfg
vocabulary), its class names when the head is kept (``model.class_names``), and where its weights came
from (``model.pretrained_from``); `vitfast.save` writes all three into config.json.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from vitfast import models
from vitfast.convert.repos import Pretrained, resolve
from vitfast.models.vit import resample_pos_embed

# Keys of each family's classifier, which another class count replaces.
_HEAD_KEYS = {"vit": ("head.weight", "head.bias"), "swin": ("head.fc.weight", "head.fc.bias"), "clip": (),
              "siglip": ()}
# Fields whose change the weights can follow (the adaptations above); any other shape field must match.
_ADAPTABLE = {"vit": {"num_classes", "img_size"}, "swin": {"num_classes", "img_size", "window_size"},
              "clip": {"image_size"}, "siglip": {"image_size"}}
# The two-tower models' image position embeddings, which another image_size resamples, and their prefix tokens:
# open_clip's rule for CLIP's (behind the class token), timm's for SigLIP's class-token-free trunk.
_POS_EMBED = {"clip": ("visual.positional_embedding", 1), "siglip": ("visual.trunk.pos_embed", 0)}
# Fields that never change the weights.
_FREE = {"attn_backend", "drop_rate", "drop_path_rate", "weight_init"}


def create_model(name: str, pretrained: bool | str | None = None, *, revision: str | None = None,
                 **overrides) -> nn.Module:
    """A vitfast model by timm/open_clip name, randomly initialized or (``pretrained``) with published weights.

    Examples::

        create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)
        create_model("ViT-B-32", pretrained="laion2b_s34b_b79k")
        create_model("hf-hub:timm/swin_tiny_patch4_window7_224.ms_in1k")
        create_model("vit_base_patch16_224", pretrained=True, num_classes=10, img_size=384)  # to fine-tune

    ``revision`` picks a branch, tag or commit of the Hub repo. Downloads go through huggingface_hub
    (its cache, HF_HUB_OFFLINE, HF_ENDPOINT, tokens); safetensors are preferred, a ``.bin`` is read with
    ``weights_only=True``.
    """
    hub_name = name.startswith("hf-hub:")
    if not pretrained and not hub_name:
        return models.create_model(name.partition(".")[0], **overrides)  # timm: a tag alone loads nothing
    return from_pretrained(resolve(name, pretrained if pretrained else True, revision), **overrides)


def from_pretrained(source: Pretrained, **overrides) -> nn.Module:
    """The model `source` describes, with `overrides` applied (see the module docstring)."""
    family, base = source.family, source.config
    fields = dataclasses.asdict(base)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown {family} config field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}.")
    fixed = sorted(k for k, v in overrides.items() if k not in _ADAPTABLE[family] | _FREE and v != fields[k])
    if fixed:
        raise ValueError(f"{', '.join(fixed)} cannot differ from the pretrained weights' "
                         f"({', '.join(f'{k}={fields[k]!r}' for k in fixed)}); what a fine-tune may change: "
                         f"{', '.join(sorted(_ADAPTABLE[family]))}.")
    config = dataclasses.replace(base, **overrides)
    state = dict(source.state)
    new_head = family in ("vit", "swin") and config.num_classes != base.num_classes
    if new_head:
        for key in _HEAD_KEYS[family]:
            state.pop(key, None)
    if family in _POS_EMBED and config.image_size != base.image_size:
        key, prefix = _POS_EMBED[family]
        grid = config.image_size // config.patch_size
        pe = state[key]
        batched = pe.dim() == 3  # timm's (1, N, C); open_clip's CLIP keeps (N, C)
        resampled = resample_pos_embed(pe if batched else pe[None], (grid, grid), prefix)
        state[key] = resampled if batched else resampled[0]
    if new_head:
        model = models.build_model(family, models.build_config(family, dataclasses.asdict(config)))
        kept = {k: v for k, v in model.state_dict().items() if k in _HEAD_KEYS[family]}
        state.update(kept)  # the new head keeps its fresh initialization
        _load(model, state)
    else:
        model = _build_loading(family, config, state)
    model.model_name = source.model_name
    model.preprocess = _preprocess_at(source.preprocess, config, family)
    model.class_names = None if new_head else source.class_names
    model.pretrained_from = source.info()
    return model


def _build_loading(family: str, config, state: dict[str, torch.Tensor]) -> nn.Module:
    model = models.build_model(family, models.build_config(family, dataclasses.asdict(config)))
    _load(model, state)
    return model


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict loading, through the models' own pre-hooks (ViT's position embedding, Swin's tables)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the pretrained weights do not fit this configuration ({' '.join(str(exc).split())[:400]})."
                         ) from None


def _preprocess_at(preprocess: dict | None, config, family: str) -> dict | None:
    """The published preprocessing, at the size the model now takes."""
    if preprocess is None:
        return None
    size = config.image_size if family in ("clip", "siglip") else config.img_size
    return {**preprocess, "input_size": [3, size, size]}

