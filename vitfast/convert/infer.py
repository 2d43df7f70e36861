"""The architecture from the weights: which layout a state dict is in, and the vitfast family and config.

The weights fix patch size, widths, depths, heads where they carry them, image size, classes, context
length and vocabulary. Where they leave a choice (a ViT's head count, QuickGELU), a named config with
the same shapes decides, or ``--model``.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from vitfast.convert.read import ConvertError
from vitfast.models import mlp_ratio_for
from vitfast.models.clip import CLIP_CONFIGS
from vitfast.models.swin import SWIN_CONFIGS
from vitfast.models.vit import VIT_CONFIGS

# Buffers OpenAI's TorchScript CLIP keeps beside the weights (open_clip drops them too), and the text
# tower's causal mask, which TorchScript archives carry and vitfast's causal kernel makes unnecessary.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def detect_source(state: dict[str, torch.Tensor], torchscript: bool = False) -> str:
    """'timm' (ViT or Swin), 'openai' or 'open_clip', from the keys."""
    if "visual.conv1.weight" in state and "token_embedding.weight" in state:
        return "openai" if torchscript or any(k in state for k in OPENAI_EXTRAS) else "open_clip"
    if "patch_embed.proj.weight" in state:
        return "timm"
    if any(k.startswith("visual.trunk.") for k in state):
        raise ConvertError("this is an open_clip model with a timm image tower (visual.trunk: SigLIP, EVA, ConvNeXt "
                           "and the like), which vitfast does not convert: its CLIP has open_clip's own ViT towers.")
    if "text.cls_emb" in state or any(k.startswith("text_decoder.") for k in state):
        raise ConvertError("this is an open_clip CoCa model (a captioning decoder beside CLIP), which vitfast does "
                           "not convert.")
    raise ConvertError("the checkpoint's keys match no known layout (timm ViT/Swin, OpenAI CLIP, open_clip); "
                       f"first keys: {', '.join(list(state)[:5])}. Pass --from.")


def infer_config(state: dict[str, torch.Tensor], source: str, model: str | None):
    """(family, config, matched named config or None) of a state dict in `source`'s layout."""
    if source != "timm":
        return clip_config(state, model, quick_gelu=source == "openai")
    if any(k.startswith("layers.") and ("cpb_mlp" in k or k.endswith("logit_scale")) for k in state):
        raise ConvertError("this is a timm Swin V2 (continuous position bias, cosine attention), which vitfast "
                           "does not implement: its Swin is V1 (swin_*, not swinv2_*).")
    if not any(k.startswith(("layers.", "blocks.")) for k in state) or "patch_embed.proj.weight" not in state:
        raise ConvertError("these are not timm ViT or Swin weights (no patch_embed.proj / blocks / layers keys); "
                           "check --from.")
    swin = "layers.0.blocks.0.attn.relative_position_bias_table" in state
    return (swin_config if swin else vit_config)(state, model)


def assumptions(source: str, family: str, config, name: str | None, model: str | None) -> str | None:
    """What the weights left open and was assumed, as the report's warning (None when nothing was)."""
    warnings = []
    if name is None and family in ("vit", "clip"):
        width, heads = ((config.embed_dim, config.num_heads) if family == "vit"
                        else (config.vision_width, config.vision_heads))
        warnings.append(f"no named config has these shapes and the weights do not fix the head count: {heads} "
                        f"heads of {width // heads} were assumed for width {width}; pass --model NAME (a config "
                        "with the same heads) if the source used others")
    if source == "open_clip" and model is None:
        warnings.append("open_clip checkpoints do not record the activation: GELU was assumed; for weights trained "
                        "with QuickGELU (OpenAI's, and open_clip's *-quickgelu models) pass --from openai or "
                        "--model NAME-quickgelu")
    return "; ".join(warnings) or None


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# Fields the weights fix; named configs are matched on these.
_SHAPE_FIELDS = {"patch_size", "embed_dim", "depth", "depths", "num_heads", "window_size", "vision_width",
                 "vision_layers", "text_width", "text_layers", "image_size", "img_size"}


def _pick(named: dict, fields: dict, model: str | None, kind: str):
    """The named config whose shape fields equal `fields` (or `model`'s), with `fields` applied."""
    if model is not None:
        if model not in named:
            raise ConvertError(f"--model {model!r} is not a {kind} model; known: {', '.join(sorted(named))}.")
        return dataclasses.replace(named[model], **fields), model
    matches = [name for name, cfg in named.items()
               if all(getattr(cfg, k) == v for k, v in fields.items() if k in _SHAPE_FIELDS)]
    base = named[matches[0]] if matches else next(iter(named.values()))
    return dataclasses.replace(base, **fields), matches[0] if matches else None


# Vision-tower widths whose heads are not 64 wide, in timm and open_clip alike: ViT-H (80-wide heads),
# ViT-g (88) and ViT-bigG / gigantic (104), each with 16 heads.
_WIDE_HEADS = {1280: 16, 1408: 16, 1664: 16}


def vision_heads(width: int) -> int:
    """The head count timm and open_clip give a ViT of `width` (16 for ViT-H/g/bigG, else 64-wide heads)."""
    return _WIDE_HEADS.get(width, max(1, width // 64))


# timm ViT features vitfast's ViT does not have, by a key that only they carry.
_VIT_FEATURES = {
    "dist_token": "a distillation token (DeiT distilled)",
    "reg_token": "register tokens",
    "norm_pre.weight": "a norm before the blocks (timm's pre_norm, as CLIP-style ViTs)",
    "blocks.0.ls1.gamma": "layer scale (as DINOv2, DeiT III)",
    "attn_pool.latent": "attention pooling (MAP head, as SigLIP)",
    "blocks.0.attn.q_norm.weight": "query/key normalization",
    "blocks.0.mlp.fc1_g.weight": "a gated MLP (SwiGLU)",
    "blocks.0.mlp.w12.weight": "a gated MLP (SwiGLU)",
}


def vit_config(state: dict, model: str | None):
    features = sorted({text for key, text in _VIT_FEATURES.items() if key in state})
    if "cls_token" not in state and "fc_norm.weight" not in state and "attn_pool.latent" not in state:
        features.append("average pooling after the final norm (timm's fc_norm=False)")
    if features:
        raise ConvertError(f"this timm ViT has {' and '.join(features)}, which vitfast's ViT does not implement; "
                           "vitfast converts plain ViTs (class token or fc_norm average pooling).")
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    prefix = 1 if "cls_token" in state else 0
    grid = math.isqrt(state["pos_embed"].shape[1] - prefix)
    fields = dict(img_size=grid * patch, patch_size=patch, in_chans=chans, embed_dim=dim,
                  depth=_count(state, r"blocks\.(\d+)\."),
                  mlp_ratio=mlp_ratio_for(dim, state["blocks.0.mlp.fc1.weight"].shape[0]),
                  qkv_bias="blocks.0.attn.qkv.bias" in state,
                  class_token=bool(prefix), global_pool="avg" if "fc_norm.weight" in state else "token",
                  num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
    config, name = _pick(VIT_CONFIGS, fields, model, "ViT")
    if name is None:  # the weights do not fix the head count
        config = dataclasses.replace(config, num_heads=vision_heads(dim))
    return "vit", config, name


def swin_config(state: dict, model: str | None):
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    stages = _count(state, r"layers\.(\d+)\.")
    depths = tuple(_count(state, rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    heads = tuple(state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(stages))
    window = (math.isqrt(state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    fields = dict(patch_size=patch, in_chans=chans, embed_dim=dim, depths=depths, num_heads=heads, window_size=window,
                  img_size=window * patch * 2 ** (stages - 1),  # the maps the named Swins were trained at
                  mlp_ratio=mlp_ratio_for(dim, state["layers.0.blocks.0.mlp.fc1.weight"].shape[0]),
                  num_classes=state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0)
    config, name = _pick(SWIN_CONFIGS, fields, model, "Swin")
    return "swin", config, name


def clip_config(state: dict, model: str | None, quick_gelu: bool):
    if "visual.conv1.weight" not in state and "token_embedding.weight" not in state:
        raise ConvertError("these are not OpenAI or open_clip CLIP weights (no visual.conv1 / token_embedding "
                           "keys); check --from.")
    if "visual.positional_embedding" not in state or "visual.transformer.resblocks.0.ln_1.weight" not in state:
        tower = "a ResNet (ModifiedResNet, as RN50)" if "visual.layer1.0.conv1.weight" in state else "no ViT"
        raise ConvertError(f"this CLIP has {tower} image tower; vitfast's CLIP has a ViT image tower only "
                           "(open_clip ViT-* models and OpenAI's ViT-B/32, ViT-B/16, ViT-L/14).")
    missing = [k for k in ("text_projection", "ln_final.weight", "positional_embedding") if k not in state]
    if missing:
        raise ConvertError(f"this CLIP checkpoint lacks {', '.join(missing)}: its text tower is not CLIP's "
                           "transformer (a custom or Hugging Face text tower?); vitfast converts open_clip's "
                           "and OpenAI's layouts only.")
    vision_width, chans, patch, _ = state["visual.conv1.weight"].shape
    text_width = state["ln_final.weight"].shape[0]
    fields = dict(embed_dim=state["text_projection"].shape[1], in_chans=chans, patch_size=patch,
                  image_size=math.isqrt(state["visual.positional_embedding"].shape[0] - 1) * patch,
                  vision_width=vision_width, vision_layers=_count(state, r"visual\.transformer\.resblocks\.(\d+)\."),
                  text_width=text_width, text_layers=_count(state, r"transformer\.resblocks\.(\d+)\."),
                  context_length=state["positional_embedding"].shape[0],
                  vocab_size=state["token_embedding.weight"].shape[0],
                  vision_mlp_ratio=mlp_ratio_for(vision_width,
                                                 state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                  text_mlp_ratio=mlp_ratio_for(text_width, state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]))
    fields["eot_token_id"] = fields["vocab_size"] - 1  # CLIP's end token is its last id
    named = {k: v for k, v in CLIP_CONFIGS.items() if v.quick_gelu == quick_gelu or model is not None}
    config, name = _pick(named, fields, model, "CLIP")
    if name is None:  # open_clip's head widths: the vision tower's by width, the text tower's always 64
        config = dataclasses.replace(config, vision_heads=vision_heads(vision_width),
                                     text_heads=max(1, text_width // 64), quick_gelu=quick_gelu)
    return "clip", config, name
