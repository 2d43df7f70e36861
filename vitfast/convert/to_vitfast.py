"""`convert`: another project's checkpoint file or Hugging Face folder into a vitfast model folder,
written atomically and then checked against the source library."""

from __future__ import annotations

import os
from pathlib import Path

from vitfast.choices import CONVERT_SOURCES
from vitfast.convert.from_vitfast import export
from vitfast.convert.hf import hf_to_vitfast
from vitfast.convert.infer import OPENAI_EXTRAS, assumptions, detect_source, infer_config
from vitfast.convert.read import ConvertError, read_hf_folder, read_json, read_state
from vitfast.convert.verify import verify_against_source, verify_against_transformers
from vitfast.convert.write import save_converted
from vitfast.runtime import DTYPES
from vitfast.tokenizer import TokenizerError, read_hf_tokenizer


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, source: str = "auto",
            model: str | None = None, dtype: str | None = None, max_shard_size: int | str = "5GB",
            tokenizer: str | os.PathLike[str] | None = None, force: bool = False, verify: bool = True,
            to: str | None = None) -> dict:
    """Convert the checkpoint `src` into the vitfast model folder `dst`; returns a report.

    The report holds the source format, the family, the matched named config (if any), the number of
    tensors, and with `verify` the max absolute difference between vitfast's and the source
    library's outputs on a random input (None when that library is not installed). The source model is
    rebuilt from the inferred config, so the check proves the weight mapping; the head count, which
    weights do not fix, comes from the matched named config or --model. With `to`, `src` is a vitfast
    folder to :func:`export` instead.
    """
    src, dst = Path(src), Path(dst)
    if source not in CONVERT_SOURCES:
        raise ConvertError(f"unknown --from {source!r}; choose one of {', '.join(CONVERT_SOURCES)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {dtype!r}; choose fp32, fp16 or bf16.")
    if to is not None:
        return export(src, dst, to=to, max_shard_size=max_shard_size, force=force)
    if dst.exists() and not force:
        raise ConvertError(f"{dst} already exists; pass --force to replace it.")
    if src.is_dir():
        family, config, state, tokenizer = _read_hf(src, source, tokenizer)
        source, name, warning = "hf", None, None
    elif source == "hf":
        raise ConvertError(f"--from hf takes a Hugging Face model folder (config.json + weights); {src} is a file.")
    else:
        state, torchscript = read_state(src)
        source = detect_source(state, torchscript) if source == "auto" else source
        family, config, name = infer_config(state, source, model)
        if source == "openai":
            state = {k: v for k, v in state.items() if k not in OPENAI_EXTRAS}
        warning = assumptions(source, family, config, name, model)
    save_converted(family, config, state, name, dst, dtype, max_shard_size, tokenizer, force)
    report = {"source": source, "family": family, "model_name": name, "tensors": len(state), "output": str(dst)}
    if warning:
        report["warning"] = warning
    if verify:
        report["max_abs_diff"] = (verify_against_transformers(src, dst, family, config) if source == "hf"
                                  else verify_against_source(dst, family, config, state))
    return report


def _read_hf(src: Path, source: str, tokenizer):
    """(family, config, vitfast state dict, tokenizer) of the Hugging Face folder `src`; a CLIP folder's
    own tokenizer unless --tokenizer names one."""
    if (src / "config.json").is_file() and "family" in read_json(src / "config.json"):
        raise ConvertError(f"{src} is already a vitfast model folder; to export it, pass --to timm or --to hf.")
    if source not in ("auto", "hf"):
        raise ConvertError(f"{src} is a folder: only Hugging Face folders (--from hf) are read from folders.")
    hf_config, hf_state = read_hf_folder(src)
    try:
        family, config, state = hf_to_vitfast(hf_config, hf_state)
    except ValueError as exc:
        raise ConvertError(f"{src}: {exc}") from None
    if family == "clip" and tokenizer is None:  # the folder's own: tokenizer.json, or vocab.json + merges.txt
        try:
            tokenizer = read_hf_tokenizer(src, config.context_length)
        except TokenizerError as exc:
            raise ConvertError(str(exc)) from None
    return family, config, state, tokenizer
