"""Output folders written all or nothing: staged under a temporary name beside the destination and
renamed into place; and the vitfast model a conversion writes, built strictly from the weights, with
its tokenizer.json."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from vitfast.convert.infer import ConvertError
from vitfast.models import build_config, build_model
from vitfast.tokenizer import ClipTokenizer, clip_bpe_tokenizer, load_tokenizer


@contextlib.contextmanager
def staged(dst: Path, force: bool) -> Iterator[Path]:
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


def write_tokenizer(folder: Path, config, tokenizer: ClipTokenizer | str | os.PathLike[str] | None) -> None:
    """tokenizer.json: `tokenizer` (a ClipTokenizer read from the source, or --tokenizer's vitfast
    tokenizer.json), else CLIP's BPE at the model's context."""
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
