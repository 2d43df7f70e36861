"""Other projects' checkpoints read and understood without running them: checkpoint files and Hugging
Face folders into plain state dicts, which layout a state dict is in, and the vitfast family and config.

Pickles are read with ``torch.load(weights_only=True)`` and TorchScript archives only through
``torch.jit.load`` on the CPU, so nothing a checkpoint carries ever runs. The weights fix patch size,
widths, depths, heads where they carry them, image size, classes, context length and vocabulary. Where
they leave a choice (a ViT's head count, QuickGELU), a named config with the same shapes decides, or
``--model``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitfast.models import mlp_ratio_for
from vitfast.models.clip import CLIP_CONFIGS
from vitfast.models.siglip import SIGLIP_CONFIGS
from vitfast.models.swin import SWIN_CONFIGS
from vitfast.models.vit import VIT_CONFIGS

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")


class ConvertError(ValueError):
    """A source that cannot be converted: the message names the file and the fix."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, whether it came from a TorchScript archive) of a checkpoint file, unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist (or is not a file).")
    if path.suffix == ".safetensors":
        try:
            return _unwrap(load_file(str(path)), path), False
        except Exception as exc:  # the library raises its own error type for truncated headers
            raise ConvertError(f"{path} is not a readable safetensors file ({exc}); it may be truncated.") from None
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ConvertError(f"cannot read the TorchScript archive {path} ({type(exc).__name__}: {exc}).") from None
        return _unwrap(dict(module.state_dict()), path), True
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for foreign objects, RuntimeError for truncated zips
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"refused or could not read {path}: only tensors and plain containers are unpickled, "
                           f"and nothing in the file ran ({first[:200]}).") from None
    return _unwrap(obj, path), False


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside timm/open_clip training checkpoints, without DDP/compile prefixes."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path} holds no state dict of tensors (found {type(obj).__name__}).")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read {path} ({exc}).") from None


def read_hf_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a Hugging Face model folder, single-file or sharded."""
    config = read_json(path / "config.json")
    name = next((n for n in HF_WEIGHTS if (path / n).is_file()), None)
    if name is None:
        raise ConvertError(f"{path} has no weights: expected one of {', '.join(HF_WEIGHTS)}.")
    shards = [name]
    if name.endswith(".index.json"):
        weight_map = read_json(path / name).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"the shard index {path / name} has no weight_map.")
        shards = sorted(set(weight_map.values()))
    return config, {k: v for shard in shards for k, v in read_state(path / shard)[0].items()}


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
        if _SIGLIP_KEYS <= set(state):
            return "open_clip"
        raise ConvertError("this is an open_clip model with a timm image tower other than SigLIP's (visual.trunk: "
                           "EVA, ConvNeXt and the like), which vitfast does not convert: it converts open_clip's "
                           "SigLIP (ViT-*-SigLIP) and CLIPs with open_clip's own ViT towers.")
    if "text.cls_emb" in state or any(k.startswith("text_decoder.") for k in state):
        raise ConvertError("this is an open_clip CoCa model (a captioning decoder beside CLIP), which vitfast does "
                           "not convert.")
    raise ConvertError("the checkpoint's keys match no known layout (timm ViT/Swin, OpenAI CLIP, open_clip); "
                       f"first keys: {', '.join(list(state)[:5])}. Pass --from.")


def infer_config(state: dict[str, torch.Tensor], source: str, model: str | None):
    """(family, config, matched named config or None) of a state dict in `source`'s layout."""
    if source == "open_clip" and any(k.startswith("visual.trunk.") for k in state):
        return siglip_config(state, model)
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
    if name is None and family in ("vit", "clip", "siglip"):
        width, heads = ((config.embed_dim, config.num_heads) if family == "vit"
                        else (config.vision_width, config.vision_heads))
        warnings.append(f"no named config has these shapes and the weights do not fix the head count: {heads} "
                        f"heads of {width // heads} were assumed for width {width}; pass --model NAME (a config "
                        "with the same heads) if the source used others")
    if source == "open_clip" and family == "clip" and model is None:
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


def _pick(named: dict, fields: dict, model: str | None, kind: str, **unnamed):
    """(config, name): the named config whose shape fields equal `fields` (or `model`'s), with `fields`
    applied; without one, the first named config with `fields` and `unnamed` (what the weights leave open)."""
    if model is not None:
        if model not in named:
            raise ConvertError(f"--model {model!r} is not a {kind} model; known: {', '.join(sorted(named))}.")
        return dataclasses.replace(named[model], **fields), model
    matches = [name for name, cfg in named.items()
               if all(getattr(cfg, k) == v for k, v in fields.items() if k in _SHAPE_FIELDS)]
    if matches:
        return dataclasses.replace(named[matches[0]], **fields), matches[0]
    return dataclasses.replace(next(iter(named.values())), **fields, **unnamed), None


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
    # the weights do not fix the head count: timm's for this width where no named config matches
    return "vit", *_pick(VIT_CONFIGS, fields, model, "ViT", num_heads=vision_heads(dim))


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
    return "swin", *_pick(SWIN_CONFIGS, fields, model, "Swin")


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
    # open_clip's head widths where no named config matches: the vision tower's by width, the text tower's 64
    return "clip", *_pick(named, fields, model, "CLIP", vision_heads=vision_heads(vision_width),
                          text_heads=max(1, text_width // 64), quick_gelu=quick_gelu)


# What open_clip's SigLIP (a CustomTextCLIP with timm's MAP-pooled trunk and a logit bias) always carries.
_SIGLIP_KEYS = {"visual.trunk.patch_embed.proj.weight", "visual.trunk.pos_embed", "visual.trunk.attn_pool.latent",
                "text.token_embedding.weight", "text.positional_embedding", "text.ln_final.weight",
                "text.text_projection.weight", "logit_bias"}
# timm trunk features vitfast's SigLIP does not have, by a key that only they carry (SigLIP 2's trunks are
# the same as SigLIP's; their Gemma tokenizer is read like any other tokenizer.json).
_SIGLIP_TRUNK_FEATURES = {"visual.trunk.cls_token": "a class token", "visual.trunk.reg_token": "register tokens",
                          "visual.trunk.norm_pre.weight": "a norm before the blocks",
                          "visual.trunk.blocks.0.ls1.gamma": "layer scale",
                          "visual.trunk.blocks.0.attn.q_norm.weight": "query/key normalization",
                          "visual.trunk.attn_pool.pos_embed": "a position embedding in the attention pool",
                          "visual.head.proj.weight": "a projection after the trunk (timm_proj)"}


def siglip_config(state: dict, model: str | None):
    """open_clip's SigLIP layout: the shapes from the weights, the head counts from the named config with the
    same shapes (or --model), else 64-wide heads."""
    missing = sorted(_SIGLIP_KEYS - set(state))
    if missing:
        raise ConvertError(f"this open_clip model with a timm trunk lacks SigLIP's {', '.join(missing[:4])}; "
                           "vitfast converts open_clip's SigLIP layout (ViT-*-SigLIP) only.")
    found = [what for key, what in _SIGLIP_TRUNK_FEATURES.items() if key in state]
    if found:
        raise ConvertError(f"this SigLIP's image tower has {', '.join(found)}, which vitfast's SigLIP does not "
                           "implement (it has timm's vit_*_siglip trunk: MAP pooling, no class token).")
    width, chans, patch, _ = state["visual.trunk.patch_embed.proj.weight"].shape
    text_width = state["text.ln_final.weight"].shape[0]
    fields = dict(embed_dim=width, in_chans=chans, patch_size=patch,
                  image_size=math.isqrt(state["visual.trunk.pos_embed"].shape[1]) * patch, vision_width=width,
                  vision_layers=_count(state, r"visual\.trunk\.blocks\.(\d+)\."),
                  vision_mlp_ratio=mlp_ratio_for(width, state["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0]),
                  text_width=text_width, text_layers=_count(state, r"text\.transformer\.resblocks\.(\d+)\."),
                  text_mlp_ratio=mlp_ratio_for(text_width,
                                               state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                  context_length=state["text.positional_embedding"].shape[0],
                  vocab_size=state["text.token_embedding.weight"].shape[0],
                  init_logit_bias=float(state["logit_bias"].reshape(())))
    if fields["text_layers"] == 0 or fields["vision_layers"] == 0:
        raise ConvertError("this SigLIP checkpoint has no transformer blocks in one of its towers; check the file.")
    named = {k: v for k, v in SIGLIP_CONFIGS.items() if k != "siglip_tiny" or model == k}
    return "siglip", *_pick(named, fields, model, "SigLIP", vision_heads=max(1, width // 64),
                            text_heads=max(1, text_width // 64))
