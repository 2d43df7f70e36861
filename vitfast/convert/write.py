"""Output folders written all or nothing: staged under a temporary name beside the destination and
renamed into place; and the vitfast model a conversion writes, built strictly from the weights, with
its tokenizer.json."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch

from vitfast.convert.infer import ConvertError
from vitfast.files import staging_dir
from vitfast.models import build_config, build_model
from vitfast.tokenizer import (CLIP_MERGES_NAME, ClipTokenizer, SiglipTokenizer, TokenizerError, clip_bpe_tokenizer,
                               load_tokenizer, read_siglip_tokenizer)


# What a model folder holds: vitfast's (config.json, weights, tokenizer.json) and a Hugging Face
# folder's (weights as safetensors or PyTorch bins, tokenizer and preprocessor files).
_MODEL_FILES = re.compile(r"config\.json|model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors|"
                          r"pytorch_model\.bin(\.index\.json)?|pytorch_model-\d+-of-\d+\.bin|tokenizer\.json|"
                          r"vocab\.json|merges\.txt|tokenizer_config\.json|special_tokens_map\.json|"
                          r"preprocessor_config\.json|generation_config\.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_destination(dst: Path, force: bool) -> None:
    """Refuse a `dst` that exists unless `force` is given and it is a model folder (config.json and
    weights, and nothing but model files): anything else there is the user's, and never deleted."""
    if not dst.exists() and not dst.is_symlink():
        return
    if dst.is_symlink() or not dst.is_dir():
        raise ConvertError(f"{dst} exists and is not a folder; choose another DST or remove it.")
    names = sorted(p.name for p in dst.iterdir())
    others = [name for name in names if not _MODEL_FILES.fullmatch(name)]
    if names and (others or "config.json" not in names or not any(name in names for name in _WEIGHTS)):
        held = (f"files that are not a model's ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                if others else "no config.json and weights")
        raise ConvertError(f"{dst} exists and holds {held}, so it is not a model folder to replace; choose "
                           "another DST or remove it.")
    if not force:
        raise ConvertError(f"{dst} already exists; pass --force to replace it.")


@contextlib.contextmanager
def staged(dst: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `dst` (vitfast.files.staging_dir), renamed to `dst` when the block
    succeeds and removed when it fails, so `dst` is never half-written. An existing `dst` is replaced
    only with `force` and only when it is a model folder (:func:`check_destination`)."""
    with staging_dir(dst) as tmp:
        yield tmp
        check_destination(dst, force)
        if dst.exists():
            with staging_dir(dst) as old:
                os.replace(dst, old / dst.name)
                try:
                    os.replace(tmp, dst)
                except BaseException:
                    os.replace(old / dst.name, dst)
                    raise
                shutil.rmtree(old)
        else:
            os.rename(tmp, dst)


def build(family: str, config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
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


def write_tokenizer(folder: Path, config, tokenizer: ClipTokenizer | SiglipTokenizer | str | os.PathLike[str] | None,
                    family: str = "clip") -> None:
    """tokenizer.json: `tokenizer` (a ClipTokenizer or SiglipTokenizer read from the source, or --tokenizer: a
    vitfast tokenizer.json, a SigLIP repo folder's, CLIP's ``bpe_simple_vocab_16e6.txt.gz`` as open_clip ships
    it, or "clip" for that file inside an installed open_clip), else CLIP's BPE at the model's context. A SigLIP
    has no default: without its own tokenizer none is written, and the report says so."""
    if family == "siglip":
        if tokenizer is None:
            return
        if not isinstance(tokenizer, SiglipTokenizer | ClipTokenizer):
            if not Path(tokenizer).exists():
                raise ConvertError(f"--tokenizer {tokenizer} does not exist; pass the SigLIP's tokenizer.json or "
                                   "the folder holding it.")
            try:
                found = read_siglip_tokenizer(tokenizer, config.context_length)  # a tokenizer.json or its folder
            except TokenizerError as exc:
                raise ConvertError(str(exc)) from None
            if found is None:
                raise ConvertError(f"--tokenizer {tokenizer} holds no tokenizer.json; pass the SigLIP's tokenizer.json "
                                   "or the folder holding it.")
            tokenizer = found
        if tokenizer.vocab_size > config.vocab_size:
            raise ConvertError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size}.")
        if isinstance(tokenizer, SiglipTokenizer) and tokenizer.context_length != config.context_length:
            tokenizer = tokenizer.with_context_length(config.context_length)
        tokenizer.save(folder)
        return
    if isinstance(tokenizer, ClipTokenizer):
        tok = tokenizer
    elif tokenizer is not None and str(tokenizer) == "clip":
        tok = clip_bpe_tokenizer(context_length=config.context_length)
    elif tokenizer is not None:
        if not Path(tokenizer).exists():
            raise ConvertError(f"--tokenizer {tokenizer} does not exist; pass a vitfast tokenizer.json, CLIP's "
                               f"{CLIP_MERGES_NAME} or the word clip.")
        tok = (clip_bpe_tokenizer(tokenizer, config.context_length) if _is_gzip(Path(tokenizer))
               else load_tokenizer(tokenizer))
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


def _is_gzip(path: Path) -> bool:
    """Whether `path` is a gzip file (CLIP's merges), by its magic bytes, whatever its name."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
