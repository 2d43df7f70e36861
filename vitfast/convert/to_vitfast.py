"""`convert`: another project's checkpoint file or Hugging Face folder into a vitfast model folder,
written atomically, then reloaded and compared on a random input (fp32, CPU) with the source library's
model: timm or open_clip rebuilt from the inferred config, or transformers from the source folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vitfast.checkpoint import load, save
from vitfast.choices import CONVERT_SOURCES
from vitfast.convert.from_vitfast import export
from vitfast.convert.hf import hf_to_vitfast
from vitfast.convert.infer import (OPENAI_EXTRAS, ConvertError, assumptions, detect_source, infer_config,
                                   read_hf_folder, read_json, read_state)
from vitfast.convert.repos import read_repo, hub_files, repo_tokenizer
from vitfast.convert.write import build, check_destination, staged, write_tokenizer
from vitfast.hub import HF_HUB_PREFIX, split_hub_id
from vitfast.models.peers import peer_model
from vitfast.runtime import DTYPES
from vitfast.tokenizer import TokenizerError, read_hf_tokenizer, read_siglip_tokenizer


_NO_SIGLIP_TOKENIZER = ("no tokenizer was written: a SigLIP's tokenizer comes only from its repo; pass its "
                        "tokenizer.json (or the repo folder) with --tokenizer")


def _warning(warning: str | None, family: str, tokenizer) -> str | None:
    """The report's warning: what the source left open, and that a SigLIP got no tokenizer."""
    missing = _NO_SIGLIP_TOKENIZER if family == "siglip" and tokenizer is None else None
    return "; ".join(filter(None, [warning, missing])) or None


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, source: str = "auto",
            model: str | None = None, dtype: str | None = None, max_shard_size: int | str = "5GB",
            tokenizer: str | os.PathLike[str] | None = None, force: bool = False, verify: bool = True,
            to: str | None = None, revision: str | None = None) -> dict:
    """Convert the checkpoint `src` into the vitfast model folder `dst`; returns a report.

    The report holds the source format, the family, the matched named config (if any), the number of
    tensors, and with `verify` the max absolute difference between vitfast's and the source
    library's outputs on a random input (None when that library is not installed). The source model is
    rebuilt from the inferred config, so the check proves the weight mapping; the head count, which
    weights do not fix, comes from the matched named config or --model. With `to`, `src` is a vitfast
    folder to :func:`export` instead. ``hf-hub:ORG/NAME`` reads a Hub repo (:func:`convert_hub`).
    """
    if str(src).startswith(HF_HUB_PREFIX) and to is None:
        return convert_hub(str(src), dst, revision=revision, model=model, dtype=dtype, max_shard_size=max_shard_size,
                           tokenizer=tokenizer, force=force, verify=verify)
    if revision is not None:
        raise ConvertError("--revision applies to Hub repos (hf-hub:ORG/NAME); the source is a local path.")
    src, dst = Path(src), Path(dst)
    if source not in CONVERT_SOURCES:
        raise ConvertError(f"unknown --from {source!r}; choose one of {', '.join(CONVERT_SOURCES)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {dtype!r}; choose fp32, fp16 or bf16.")
    if to is not None:
        return export(src, dst, to=to, max_shard_size=max_shard_size, force=force)
    check_destination(dst, force)
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
    net = build(family, config, state)
    if dtype is not None:
        net = net.to(DTYPES[dtype])
    net.model_name = name
    with staged(dst, force) as tmp:
        save(net, tmp, max_shard_size=max_shard_size)
        if family in ("clip", "siglip"):
            write_tokenizer(tmp, config, tokenizer, family)
    report = {"source": source, "family": family, "model_name": name, "tensors": len(state), "output": str(dst)}
    warning = _warning(warning, family, tokenizer)
    if warning:
        report["warning"] = warning
    if verify:
        report["max_abs_diff"] = (_verify_against_transformers(src, dst, family, config) if source == "hf"
                                  else _verify_against_source(dst, family, config, state))
    return report


def convert_hub(src: str, dst: str | os.PathLike[str], *, revision: str | None = None, model: str | None = None,
                dtype: str | None = None, max_shard_size: int | str = "5GB",
                tokenizer: str | os.PathLike[str] | None = None, force: bool = False, verify: bool = True) -> dict:
    """Convert the Hub repo ``hf-hub:ORG/NAME`` (timm's, open_clip's or transformers' layout, found from its
    files) at `revision` into the vitfast model folder `dst`, with the preprocessing and class names it was
    published with; checked like :func:`convert` against the library the layout belongs to."""
    dst = Path(dst)
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"unknown --dtype {dtype!r}; choose fp32, fp16 or bf16.")
    check_destination(dst, force)
    repo, rev = split_hub_id(src)
    pretrained = read_repo(hub_files(repo, revision or rev), model=model)
    family, config = pretrained.family, pretrained.config
    net = build(family, config, pretrained.state)
    if dtype is not None:
        net = net.to(DTYPES[dtype])
    net.model_name = pretrained.model_name
    net.preprocess, net.class_names, net.pretrained_from = (pretrained.preprocess, pretrained.class_names,
                                                            pretrained.info())
    if tokenizer is None and family == "clip":
        tokenizer = repo_tokenizer(pretrained)
    elif tokenizer is None and family == "siglip":
        tokenizer = pretrained.tokenizer  # the repo's own; without one, the report says none was written
    with staged(dst, force) as tmp:
        save(net, tmp, max_shard_size=max_shard_size)
        if family in ("clip", "siglip"):
            write_tokenizer(tmp, config, tokenizer, family)
    report = {"source": f"{pretrained.source} ({pretrained.where})", "family": family,
              "model_name": pretrained.model_name, "tensors": len(pretrained.state), "output": str(dst)}
    warning = _warning(pretrained.warning, family, tokenizer)
    if warning:
        report["warning"] = warning
    if verify:
        report["max_abs_diff"] = (_verify_against_transformers(pretrained.folder, dst, family, config)
                                  if pretrained.source == "hf" else _verify_against_source(dst, family, config,
                                                                                            pretrained.state))
    return report


def _read_hf(src: Path, source: str, tokenizer):
    """(family, config, vitfast state dict, tokenizer) of the Hugging Face folder `src`; a CLIP or SigLIP
    folder's own tokenizer unless --tokenizer names one."""
    if (src / "config.json").is_file() and "family" in read_json(src / "config.json"):
        raise ConvertError(f"{src} is already a vitfast model folder; to export it, pass --to timm or --to hf.")
    if source not in ("auto", "hf"):
        raise ConvertError(f"{src} is a folder: only Hugging Face folders (--from hf) are read from folders.")
    hf_config, hf_state = read_hf_folder(src)
    try:
        family, config, state = hf_to_vitfast(hf_config, hf_state)
    except ValueError as exc:
        raise ConvertError(f"{src}: {exc}") from None
    # the folder's own: CLIP's tokenizer.json, or vocab.json + merges.txt; a SigLIP's tokenizer.json
    if family in ("clip", "siglip") and tokenizer is None:
        try:
            tokenizer = (read_hf_tokenizer if family == "clip" else read_siglip_tokenizer)(src, config.context_length)
        except TokenizerError as exc:
            raise ConvertError(str(exc)) from None
    return family, config, state, tokenizer


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _image_and_text(config, family: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random images and texts of the full context: a CLIP's end with its end token (the last id) and hold
    no other, so that every implementation pools at the same place; a SigLIP reads the last position anyway."""
    image = torch.randn(2, config.in_chans, config.image_size, config.image_size, generator=g)
    if family == "siglip":
        return image, torch.randint(0, config.vocab_size, (2, config.context_length), generator=g)
    text = torch.randint(0, config.vocab_size - 1, (2, config.context_length), generator=g)
    text[:, -1] = config.vocab_size - 1
    return image, text


def _verify_against_source(dst: Path, family: str, config, state: dict[str, torch.Tensor]) -> float | None:
    """Max |vitfast − timm or open_clip| with `state` loaded into both."""
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    try:
        reference = peer_model(family, config)
    except ImportError:
        return None
    reference.load_state_dict(state, strict=True)
    reference = reference.float().eval()
    with torch.no_grad():
        if family in ("clip", "siglip"):
            image, text = _image_and_text(config, family, g)
            return max(_diff(ours.encode_image(image), reference.encode_image(image)),
                       _diff(ours.encode_text(text), reference.encode_text(text)))
        image = torch.randn(2, config.in_chans, config.img_size, config.img_size, generator=g)
        return _diff(ours(image), reference(image))


def _verify_against_transformers(src: Path, dst: Path, family: str, config) -> float | None:
    """Max |vitfast − transformers| for the Hugging Face folder `src`: logits of classifiers, the normalized
    tokens of headless ViT/Swin (and Swin's pooled features), CLIP's and SigLIP's normalized embeddings."""
    try:
        import transformers
    except ImportError:
        return None
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if family in ("clip", "siglip"):
            cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
            reference = cls.from_pretrained(src).float().eval()
            image, text = _image_and_text(config, family, g)
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
