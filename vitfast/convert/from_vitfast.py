"""`export`: a vitfast model folder out to timm or Hugging Face transformers, written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from vitfast.checkpoint import read_state_dict
from vitfast.choices import EXPORT_TARGETS
from vitfast.convert.hf import vitfast_to_hf
from vitfast.convert.infer import ConvertError
from vitfast.convert.write import check_destination, staged
from vitfast.models import build_config
from vitfast.tokenizer import TOKENIZER_NAME, SiglipTokenizer, TokenizerError, load_tokenizer, write_hf_tokenizer


def export(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str, max_shard_size: int | str = "5GB",
           force: bool = False) -> dict:
    """Write the vitfast folder `src` as a timm checkpoint folder (timm's keys in model.safetensors, and a
    config.json with the architecture and model_args) or a Hugging Face folder (config.json +
    model.safetensors that transformers' from_pretrained loads, and the folder's tokenizer in files its
    AutoTokenizer loads: CLIP's vocab.json + merges.txt, a SigLIP's tokenizer.json beside a
    tokenizer_config.json naming PreTrainedTokenizerFast, which needs no sentencepiece); returns a report.

    transformers does not clean SigLIP's texts as vitfast does: give its tokenizer
    ``vitfast.tokenizer.canonicalize(text)`` with ``padding="max_length"`` and ``truncation=True`` for
    vitfast's ids."""
    src, dst = Path(src), Path(dst)
    if to not in EXPORT_TARGETS:
        raise ConvertError(f"unknown --to {to!r}; choose {' or '.join(EXPORT_TARGETS)}.")
    check_destination(dst, force)
    meta, state = read_state_dict(src)
    family = meta["family"]
    config = build_config(family, meta["config"])
    if to == "timm":  # timm's config.json: the architecture's name and the model_args that build it
        if family in ("clip", "siglip"):
            name = "CLIP" if family == "clip" else "SigLIP"
            raise ConvertError(f"timm has no {name} text tower; export {name} with --to hf (or use the folder with "
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
    tokenizer = None
    if to == "hf" and family in ("clip", "siglip") and (src / TOKENIZER_NAME).is_file():
        try:
            tokenizer = load_tokenizer(src)
        except TokenizerError as exc:
            raise ConvertError(str(exc)) from None
    if family == "siglip" and tokenizer is not None:  # the ids the text config names, as the Hub's SigLIP configs do
        out_config["text_config"] |= {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eot_token_id}
    with staged(dst, force) as tmp:
        save_file({k: v.contiguous() for k, v in out_state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
        if isinstance(tokenizer, SiglipTokenizer):
            _write_hf_siglip_tokenizer(src / TOKENIZER_NAME, tokenizer, tmp)
        elif tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp)
            if family == "siglip":  # a SigLIP trained with a CLIP-style BPE: see _pad_like_vitfast
                _pad_like_vitfast(tokenizer, tmp)
    return {"target": to, "family": family, "tensors": len(out_state), "output": str(dst),
            "tokenizer": tokenizer is not None}


def _write_hf_siglip_tokenizer(file: Path, tokenizer: SiglipTokenizer, folder: Path) -> None:
    """The vitfast `file` (tokenizer.json) copied unchanged, and a tokenizer_config.json with which
    transformers' AutoTokenizer loads it as a PreTrainedTokenizerFast (no sentencepiece needed; HF's
    SiglipTokenizer and T5Tokenizer would rebuild it from spiece.model or add T5's 100 extra ids)."""
    shutil.copyfile(file, folder / TOKENIZER_NAME)
    specials = {"pad_token": tokenizer.pad_token, **({"eos_token": tokenizer.eos_token} if tokenizer.eos_token else {})}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tokenizer.context_length,
              "padding_side": "right", "truncation_side": "right", **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def _pad_like_vitfast(tokenizer, folder: Path) -> None:
    """Make HF's CLIPTokenizer pad with vitfast's pad id (0) instead of the end token. SigLIP reads the last
    position, which is padding for every text shorter than the context, so the pad id changes the embedding
    (CLIP, which reads the end token, does not care)."""
    pad = tokenizer._tokenizer.id_to_token(tokenizer.pad_token_id)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text(encoding="utf-8"))
        (folder / name).write_text(json.dumps(config | {"pad_token": pad}, indent=2) + "\n", encoding="utf-8")
