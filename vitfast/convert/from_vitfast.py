"""`export`: a vitfast model folder out to timm or Hugging Face transformers, written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from safetensors.torch import save_file

from vitfast.checkpoint import read_state_dict
from vitfast.choices import EXPORT_TARGETS
from vitfast.convert.hf import vitfast_to_hf
from vitfast.convert.infer import ConvertError
from vitfast.convert.write import check_destination, staged
from vitfast.models import build_config
from vitfast.tokenizer import load_tokenizer, write_hf_tokenizer


def export(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str, max_shard_size: int | str = "5GB",
           force: bool = False) -> dict:
    """Write the vitfast folder `src` as a timm checkpoint folder (timm's keys in model.safetensors, and a
    config.json with the architecture and model_args) or a Hugging Face folder (config.json +
    model.safetensors that transformers' from_pretrained loads, and for CLIP the tokenizer's
    vocab.json + merges.txt that its AutoTokenizer loads); returns a report."""
    src, dst = Path(src), Path(dst)
    if to not in EXPORT_TARGETS:
        raise ConvertError(f"unknown --to {to!r}; choose {' or '.join(EXPORT_TARGETS)}.")
    check_destination(dst, force)
    meta, state = read_state_dict(src)
    family = meta["family"]
    config = build_config(family, meta["config"])
    if to == "timm":  # timm's config.json: the architecture's name and the model_args that build it
        if family == "clip":
            raise ConvertError("timm has no CLIP text tower; export CLIP with --to hf (or use the folder with "
                               "open_clip, whose keys vitfast already uses).")
        if getattr(config, "norm_eps", 1e-6) != 1e-6:
            raise ConvertError(f"this ViT's layer norms use eps={config.norm_eps}, and timm's ViT fixes 1e-6; "
                               "export it with --to hf, which keeps the epsilon.")
        args = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("attn_backend", "drop_rate", "drop_path_rate", "norm_eps")}
        arch = meta.get("model_name") or ("vit_base_patch16_224" if family == "vit" else "swin_tiny_patch4_window7_224")
        out_config, out_state = {"architecture": arch, "num_classes": config.num_classes, "model_args": args}, state
    else:
        try:
            out_config, out_state = vitfast_to_hf(family, config, state)
        except ValueError as exc:
            raise ConvertError(f"{src}: {exc}") from None
    tokenizer = load_tokenizer(src) if to == "hf" and family == "clip" and (src / "tokenizer.json").is_file() else None
    with staged(dst, force) as tmp:
        save_file({k: v.contiguous() for k, v in out_state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp)
    return {"target": to, "family": family, "tensors": len(out_state), "output": str(dst),
            "tokenizer": tokenizer is not None}

