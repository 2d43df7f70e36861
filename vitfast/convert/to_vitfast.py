"""Other projects' weights into vitfast model folders, and back: timm ViT and Swin checkpoints, Hugging
Face transformers folders (ViT, Swin, CLIP; key tables in vitfast.convert_hf), OpenAI CLIP and
open_clip checkpoints; export to timm and Hugging Face.

Nothing a checkpoint carries ever runs: pickles are read with ``torch.load(weights_only=True)`` and
TorchScript archives only through ``torch.jit.load`` on the CPU. The architecture comes from the
weights (patch size, widths, depths, heads where the weights fix them, image size, classes, context
length, vocabulary); where the weights leave a choice (a ViT's head count, QuickGELU), a named config
with the same shapes decides, or ``--model``. The folder is written under a temporary name and
renamed into place, then reloaded and compared with the source library's model when it is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import torch

from vitfast.checkpoint import load, save
from vitfast.models import build_config, build_model, mlp_ratio_for
from vitfast.models.clip import CLIP_CONFIGS
from vitfast.models.swin import SWIN_CONFIGS
from vitfast.models.vit import VIT_CONFIGS
from vitfast.models.peers import peer_model

SOURCES = ("auto", "timm", "hf", "openai", "open_clip")
TARGETS = ("timm", "hf")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_PREFIXES = ("module.", "_orig_mod.")
# Buffers OpenAI's TorchScript CLIP keeps beside the weights (open_clip drops them too), and the text
# tower's causal mask, which TorchScript archives carry and vitfast's causal kernel makes unnecessary.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class ConvertError(ValueError):
    """A source that cannot be converted: the message names the file and the fix."""


# --------------------------------------------------------------------------------------------------
# Reading checkpoints safely
# --------------------------------------------------------------------------------------------------


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
        from safetensors.torch import load_file

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


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read {path} ({exc}).") from None


def read_hf_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a Hugging Face model folder, single-file or sharded."""
    config = _json(path / "config.json")
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            break
    else:
        raise ConvertError(f"{path} has no weights: expected one of {', '.join(_HF_WEIGHTS)}.")
    if name.endswith(".index.json"):
        weight_map = _json(path / name).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"the shard index {path / name} has no weight_map.")
        shards = sorted(set(weight_map.values()))
    else:
        shards = [name]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_state(path / shard)[0])
    return config, state


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
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def detect_source(state: dict[str, torch.Tensor], torchscript: bool = False) -> str:
    """'timm' (ViT or Swin), 'openai' or 'open_clip', from the keys."""
    if "visual.conv1.weight" in state and "token_embedding.weight" in state:
        return "openai" if torchscript or any(k in state for k in _OPENAI_EXTRAS) else "open_clip"
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


# --------------------------------------------------------------------------------------------------
# Architecture from the weights
# --------------------------------------------------------------------------------------------------


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
    depth = _count(state, r"blocks\.(\d+)\.")
    fields = dict(img_size=grid * patch, patch_size=patch, in_chans=chans, embed_dim=dim, depth=depth,
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


def _build(family: str, config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The vitfast model with `state` loaded strictly; mismatches listed in one error."""
    model = build_model(family, build_config(family, dataclasses.asdict(config)))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if items]
    if problems:
        raise ConvertError(f"the weights do not fit the inferred {family} config ({'; '.join(problems)}); "
                           "name the architecture with --model, or check --from.")
    model.load_state_dict(state, strict=True)
    return model


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, source: str = "auto",
            model: str | None = None, dtype: str | None = None, max_shard_size: int | str = "5GB",
            tokenizer: str | os.PathLike[str] | None = None, force: bool = False, verify: bool = True,
            to: str | None = None) -> dict:
    """Convert the checkpoint `src` into the vitfast model folder `dst`; returns a report.

    The report holds the source format, the family, the matched named config (if any), the number of
    tensors, and with `verify` the max absolute difference between vitfast's and the source
    library's outputs on a random input (None when that library is not installed). The source model is
    rebuilt from the inferred config, so the check proves the weight mapping; the head count, which
    weights do not fix, comes from the matched named config or --model.
    """
    src, dst = Path(src), Path(dst)
    if source not in SOURCES:
        raise ConvertError(f"unknown --from {source!r}; choose one of {', '.join(SOURCES)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {dtype!r}; choose fp32, fp16 or bf16.")
    if to is not None:
        return export(src, dst, to, max_shard_size=max_shard_size, force=force)
    if dst.exists() and not force:
        raise ConvertError(f"{dst} already exists; pass --force to replace it.")
    if src.is_dir():
        return _convert_hf(src, dst, source, dtype, max_shard_size, tokenizer, force, verify)
    if source == "hf":
        raise ConvertError(f"--from hf takes a Hugging Face model folder (config.json + weights); {src} is a file.")
    state, torchscript = read_state(src)
    source = detect_source(state, torchscript) if source == "auto" else source
    if source == "timm":
        if any(k.startswith("layers.") and ("cpb_mlp" in k or k.endswith("logit_scale")) for k in state):
            raise ConvertError("this is a timm Swin V2 (continuous position bias, cosine attention), which vitfast "
                               "does not implement: its Swin is V1 (swin_*, not swinv2_*).")
        if not any(k.startswith(("layers.", "blocks.")) for k in state) or "patch_embed.proj.weight" not in state:
            raise ConvertError("these are not timm ViT or Swin weights (no patch_embed.proj / blocks / layers keys); "
                               "check --from.")
        family, config, name = (swin_config if "layers.0.blocks.0.attn.relative_position_bias_table" in state
                                else vit_config)(state, model)
    else:
        family, config, name = clip_config(state, model, quick_gelu=source == "openai")
    if source == "openai":
        state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRAS}
    _save_converted(family, config, state, name, dst, dtype, max_shard_size, tokenizer, force)
    report = {"source": source, "family": family, "model_name": name, "tensors": len(state),
              "output": str(dst)}
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
    if warnings:
        report["warning"] = "; ".join(warnings)
    if verify:
        report["max_abs_diff"] = verify_against_source(dst, family, config, state)
    return report


def _convert_hf(src: Path, dst: Path, source: str, dtype, max_shard_size, tokenizer, force: bool,
                verify: bool) -> dict:
    from vitfast.convert_hf import hf_to_vitfast

    if (src / "config.json").is_file() and "family" in _json(src / "config.json"):
        raise ConvertError(f"{src} is already a vitfast model folder; to export it, pass --to timm or --to hf.")
    if source not in ("auto", "hf"):
        raise ConvertError(f"{src} is a folder: only Hugging Face folders (--from hf) are read from folders.")
    hf_config, hf_state = read_hf_folder(src)
    try:
        family, config, state = hf_to_vitfast(hf_config, hf_state)
    except ValueError as exc:
        raise ConvertError(f"{src}: {exc}") from None
    if family == "clip" and tokenizer is None:
        tokenizer = _hf_tokenizer(src, config)
    _save_converted(family, config, state, None, dst, dtype, max_shard_size, tokenizer, force)
    report = {"source": "hf", "family": family, "model_name": None, "tensors": len(state), "output": str(dst)}
    if verify:
        report["max_abs_diff"] = _verify_hf(src, dst, family, config)
    return report


def _verify_hf(src: Path, dst: Path, family: str, config) -> float | None:
    """Max |vitfast − transformers| on a random input: logits of classifiers, the normalized tokens of
    headless ViT/Swin (and Swin's pooled features), CLIP's normalized embeddings; None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if family == "clip":
            reference = transformers.CLIPModel.from_pretrained(src).float().eval()
            image = torch.randn(2, 3, config.image_size, config.image_size, generator=g)
            text = torch.randint(0, config.vocab_size - 1, (2, config.context_length), generator=g)
            text[:, -1] = config.vocab_size - 1
            out = reference(input_ids=text, pixel_values=image)
            return max(_diff(ours.encode_image(image, normalize=True), out.image_embeds),
                       _diff(ours.encode_text(text, normalize=True), out.text_embeds))
        image = torch.randn(2, config.in_chans, config.img_size, config.img_size, generator=g)
        if config.num_classes == 0:  # a headless model: its normalized tokens
            if family == "vit":
                reference = transformers.ViTModel.from_pretrained(src, add_pooling_layer=False).float().eval()
                return _diff(ours.forward_features(image), reference(pixel_values=image).last_hidden_state)
            reference = transformers.SwinModel.from_pretrained(src).float().eval()
            out, tokens = reference(pixel_values=image), ours.forward_features(image)
            return max(_diff(tokens.flatten(1, 2), out.last_hidden_state),
                       _diff(ours.forward_head(tokens, pre_logits=True), out.pooler_output))
        cls = transformers.ViTForImageClassification if family == "vit" else transformers.SwinForImageClassification
        reference = cls.from_pretrained(src).float().eval()
        return _diff(ours(image), reference(pixel_values=image).logits)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def export(src: str | os.PathLike[str], dst: str | os.PathLike[str], to: str, *, max_shard_size: int | str = "5GB",
           force: bool = False) -> dict:
    """Write the vitfast folder `src` as a timm checkpoint folder (timm's keys in model.safetensors, and a
    config.json with the architecture and model_args) or a Hugging Face folder (config.json +
    model.safetensors that transformers' from_pretrained loads, and for CLIP the tokenizer's
    vocab.json + merges.txt that its AutoTokenizer loads)."""
    from safetensors.torch import save_file

    from vitfast.checkpoint import read_state_dict

    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConvertError(f"unknown --to {to!r}; choose timm or hf.")
    if dst.exists() and not force:
        raise ConvertError(f"{dst} already exists; pass --force to replace it.")
    meta, state = read_state_dict(src)
    family = meta["family"]
    config = build_config(family, meta["config"])
    if to == "timm":
        if family == "clip":
            raise ConvertError("timm has no CLIP text tower; export CLIP with --to hf (or use the folder with "
                               "open_clip, whose keys vitfast already uses).")
        if getattr(config, "norm_eps", 1e-6) != 1e-6:
            raise ConvertError(f"this ViT's layer norms use eps={config.norm_eps}, and timm's ViT fixes 1e-6; "
                               "export it with --to hf, which keeps the epsilon.")
        args = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("attn_backend", "drop_rate",
                                                                                   "drop_path_rate", "norm_eps")}
        arch = meta.get("model_name") or ("vit_base_patch16_224" if family == "vit" else "swin_tiny_patch4_window7_224")
        out_config = {"architecture": arch, "num_classes": config.num_classes, "model_args": args}
        out_state = state
    else:
        from vitfast.convert_hf import vitfast_to_hf

        try:
            out_config, out_state = vitfast_to_hf(family, config, state)
        except ValueError as exc:
            raise ConvertError(f"{src}: {exc}") from None
    tokenizer = None
    if to == "hf" and family == "clip" and (src / "tokenizer.json").is_file():
        from vitfast.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(src)
    with _staged(dst, force) as tmp:
        save_file({k: v.contiguous() for k, v in out_state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
        if tokenizer is not None:
            from vitfast.tokenizer import write_hf_tokenizer

            write_hf_tokenizer(tokenizer, tmp)
    return {"target": to, "family": family, "tensors": len(out_state), "output": str(dst),
            "tokenizer": tokenizer is not None}


@contextlib.contextmanager
def _staged(dst: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `dst`, renamed to `dst` when the block succeeds (replacing an existing
    one only with `force`) and removed when it fails, so `dst` is never half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        if dst.exists() and force:
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_converted(family: str, config, state: dict, name: str | None, dst: Path, dtype: str | None,
                    max_shard_size, tokenizer, force: bool) -> None:
    """Build the vitfast model from `state` (strictly), cast it, and write its folder (+ tokenizer.json)."""
    net = _build(family, config, state)
    if dtype is not None:
        net = net.to(DTYPES[dtype])
    net.model_name = name
    with _staged(dst, force) as tmp:
        save(net, tmp, max_shard_size=max_shard_size)
        if family == "clip":
            _write_tokenizer(tmp, config, tokenizer)


def _hf_tokenizer(src: Path, config):
    """The tokenizer a Hugging Face CLIP folder ships (tokenizer.json, or vocab.json + merges.txt), or None."""
    from vitfast.tokenizer import TokenizerError, read_hf_tokenizer

    try:
        return read_hf_tokenizer(src, config.context_length)
    except TokenizerError as exc:
        raise ConvertError(str(exc)) from None


def _write_tokenizer(folder: Path, config, tokenizer) -> None:
    """tokenizer.json: `tokenizer` (a ClipTokenizer read from the source, or --tokenizer's vitfast
    tokenizer.json), else CLIP's BPE at the model's context."""
    from vitfast.tokenizer import ClipTokenizer, clip_bpe_tokenizer, load_tokenizer

    if isinstance(tokenizer, ClipTokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        if not Path(tokenizer).exists():
            raise ConvertError(f"--tokenizer {tokenizer} does not exist; pass a vitfast tokenizer.json.")
        tok = load_tokenizer(tokenizer)
    elif config.vocab_size == 49408:
        tok = clip_bpe_tokenizer(context_length=config.context_length)
    else:
        raise ConvertError(f"the text tower has {config.vocab_size} tokens, not CLIP's 49408; pass the "
                           "matching tokenizer.json with --tokenizer.")
    if not isinstance(tok, ClipTokenizer) or tok.vocab_size != config.vocab_size:
        raise ConvertError(f"the tokenizer has {tok.vocab_size} tokens but the model {config.vocab_size}.")
    if tok.eot_token_id != config.eot_token_id:
        raise ConvertError(f"the tokenizer's end token is id {tok.eot_token_id} but the model pools at id "
                           f"{config.eot_token_id}; pass the model's own tokenizer with --tokenizer.")
    tok.save(folder)


# --------------------------------------------------------------------------------------------------
# Verification against the source library
# --------------------------------------------------------------------------------------------------


def verify_against_source(dst: Path, family: str, config, state: dict) -> float | None:
    """Max |vitfast − source library| on a random input (fp32, CPU), or None without the library."""
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    try:
        reference = peer_model(family, config)
    except ImportError:
        return None
    reference.load_state_dict(state, strict=True)
    reference = reference.float().eval()
    with torch.no_grad():
        if family == "clip":
            image = torch.randn(2, config.in_chans, config.image_size, config.image_size, generator=g)
            text = torch.randint(0, config.vocab_size - 2, (2, config.context_length), generator=g)
            text[:, -1] = config.vocab_size - 1  # the end token, so both pool at the same place
            pairs = [(ours.encode_image(image), reference.encode_image(image)),
                     (ours.encode_text(text), reference.encode_text(text))]
        else:
            size = config.img_size
            image = torch.randn(2, config.in_chans, size, size, generator=g)
            pairs = [(ours(image), reference(image))]
    return max(_diff(a, b) for a, b in pairs)
