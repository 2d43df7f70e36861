"""Pretrained repos as the peers publish them, on the Hugging Face Hub or in a local folder, read into a
vitfast family, config and state dict, with the preprocessing and class names they were published with.

Three layouts are read, each the way its own library reads it:

- **timm** (``timm/<name>.<tag>``): ``config.json`` with ``architecture``, ``model_args`` and
  ``pretrained_cfg`` (input size, mean/std, crop percentage, interpolation), and ``model.safetensors``
  (or ``pytorch_model.bin``).
- **open_clip** (``laion/CLIP-*``, ``timm/*_clip_*.openai`` ...): ``open_clip_config.json`` with
  ``model_cfg`` and ``preprocess_cfg``, and ``open_clip_model.safetensors`` (or
  ``open_clip_pytorch_model.bin``).
- **transformers** (``google/vit-*``, ``microsoft/swin-*``, ``openai/clip-*``): ``config.json`` with
  ``model_type``, the weights as ``save_pretrained`` writes them (sharded or not),
  ``preprocessor_config.json`` and, for CLIP, the tokenizer files.

Safetensors are preferred wherever a repo has both; a ``.bin`` is read with ``weights_only=True``
(``infer.read_state``), so nothing a file carries runs.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Callable

import torch

from vitfast import hub
from vitfast.convert.hf import hf_to_vitfast
from vitfast.convert.infer import _SHAPE_FIELDS, ConvertError, clip_config, infer_config, read_state, siglip_config
from vitfast.data import preprocess_from_hf, preprocess_from_open_clip, preprocess_from_timm
from vitfast.imagenet import IMAGENET_CLASSNAMES
from vitfast.models import named_config, pretrained_entry
from vitfast.models.siglip import SIGLIP_CONFIGS
from vitfast.models.swin import SWIN_CONFIGS
from vitfast.models.vit import VIT_CONFIGS
from vitfast.tokenizer import (ClipTokenizer, SiglipTokenizer, TokenizerError, clip_bpe_tokenizer, read_hf_tokenizer,
                               read_siglip_tokenizer)

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json")


@dataclasses.dataclass
class Pretrained:
    """What a pretrained repo holds, in vitfast's terms."""

    family: str
    config: object
    state: dict[str, torch.Tensor]
    source: str  # "timm", "open_clip" or "hf" (transformers)
    where: str  # "hf-hub:ORG/NAME" (with @revision) or the local folder
    folder: Path  # the files' folder (a snapshot of the Hub cache, or the local folder)
    model_name: str | None = None
    preprocess: dict | None = None  # timm's pretrained_cfg vocabulary (vitfast.data.eval_transform_config)
    class_names: list[str] | None = None
    warning: str | None = None
    tokenizer: ClipTokenizer | SiglipTokenizer | None = None  # CLIP, SigLIP: the repo's own, when it ships one

    def info(self) -> dict:
        """What a model folder records about where its weights came from."""
        return {"source": self.source, "from": self.where}


# --------------------------------------------------------------------------------------------------
# Where the files are: a Hub repo at a revision, or a local folder
# --------------------------------------------------------------------------------------------------


class Files:
    """A repo's files by name: `get` a file's local path (None when the repo has no such file)."""

    def __init__(self, get: Callable[[str], Path | None], where: str, first: Callable) -> None:
        self._get, self.where, self._first = get, where, first
        self.folder: Path | None = None  # where the files fetched so far are (a Hub cache snapshot)

    def get(self, name: str) -> Path | None:
        found = self._get(name)
        self.folder = found.parent if found is not None else self.folder
        return found

    def first(self, names) -> Path:
        """The first of `names` the repo has; ConvertError/HubError naming each one tried."""
        found = self._first(names)
        self.folder = found.parent
        return found


def hub_files(repo: str, revision: str | None = None) -> Files:
    """A Hub repo's files. Once the Hub proves unreachable, the rest come from the cache alone (each try would
    otherwise wait through huggingface_hub's retries), and an optional file the cache lacks counts as absent."""
    unreachable = []

    def get(name: str) -> Path | None:
        try:
            return hub.download(repo, name, revision, local_only=bool(unreachable))
        except hub.Missing:
            return None
        except hub.Unreachable:
            unreachable.append(name)
            return None

    def first(names) -> Path:
        try:
            return hub.download_first(repo, names, revision, local_only=bool(unreachable))
        except hub.Unreachable:
            unreachable.append(names[0])
            return hub.download_first(repo, names, revision, local_only=True)

    where = hub.HF_HUB_PREFIX + repo + (f"@{revision}" if revision else "")
    return Files(get, where, first)


def local_files(folder: Path) -> Files:
    def get(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    def first(names) -> Path:
        found = next((folder / n for n in names if (folder / n).is_file()), None)
        if found is None:
            raise ConvertError(f"{folder} has none of {', '.join(names)}.")
        return found

    return Files(get, str(folder), first)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read {path} ({exc}).") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path} holds {type(value).__name__}, not a JSON object.")
    return value


def _weights(files: Files, names) -> dict[str, torch.Tensor]:
    path = files.first(names)
    if path.name.endswith(".index.json"):
        weight_map = _json(path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"the shard index {path} has no weight_map.")
        shards = [files.first([name]) for name in sorted(set(weight_map.values()))]
        return {k: v for shard in shards for k, v in read_state(shard)[0].items()}
    return read_state(path)[0]


# --------------------------------------------------------------------------------------------------
# The three layouts
# --------------------------------------------------------------------------------------------------


def read_repo(files: Files, layout: str = "auto", model: str | None = None, quick_gelu: bool | None = None,
              published: dict | None = None) -> Pretrained:
    """A repo of any layout the peers publish (`layout` "auto": found from its files), or of the one named.

    `model` names the vitfast config to use where the weights leave a choice (open_clip's activation,
    a ViT's head count); `quick_gelu` forces the activation of an open_clip model. `published` is what the
    peer's own table says of a named tag (pretrained.json): timm's pretrained_cfg, which stands in for a
    config.json the cache lacks (timm itself downloads only the weights), or open_clip's preprocess_cfg,
    which wins over the repo's as in open_clip.
    """
    published = published or {}
    if layout in ("auto", "open_clip"):
        config_path = files.get(OPEN_CLIP_CONFIG)
        config = _json(config_path) if config_path is not None else {}
        if "preprocess_cfg" in published:
            config["preprocess_cfg"] = {**config.get("preprocess_cfg", {}), **published["preprocess_cfg"]}
        if config_path is not None or (layout == "open_clip" and model is not None):
            return _read_open_clip(files, config, model, quick_gelu)  # open_clip reads only weights for its names
        if layout == "open_clip":
            files.first([OPEN_CLIP_CONFIG])  # raises, naming the file and the repo
    if layout == "timm" and "pretrained_cfg" in published:
        config_path = files.get("config.json")
        config = (_json(config_path) if config_path is not None
                  else {"architecture": model, "pretrained_cfg": published["pretrained_cfg"]})
        return _read_timm(files, config, model)
    config = _json(files.first(["config.json"]))
    if "architecture" in config or layout == "timm":
        return _read_timm(files, config, model)
    if "model_type" in config:
        return _read_transformers(files, config)
    if "family" in config:
        raise ConvertError(f"{files.where} is a vitfast model folder already: load it with vitfast.load or "
                           "--model-dir.")
    raise ConvertError(f"{files.where}: config.json has neither timm's 'architecture' nor transformers' "
                       f"'model_type', and there is no {OPEN_CLIP_CONFIG}; it is not a timm, open_clip or "
                       "transformers repo.")


def _read_timm(files: Files, config: dict, model: str | None) -> Pretrained:
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch.startswith(("vit_", "swin_")):
        raise ConvertError(f"{files.where} holds timm's {arch!r}; vitfast reads timm's ViT (vit_*) and Swin V1 "
                           "(swin_*) repos.")
    state = _weights(files, TIMM_WEIGHTS)
    known = {**VIT_CONFIGS, **SWIN_CONFIGS}
    if model is not None and arch in known and model != arch and _shape(known[model]) != _shape(known[arch]):
        raise ConvertError(f"{files.where} holds {arch} weights, not {model}: pass --model {arch} (or leave the "
                           "name out), or the repo of the model you meant.")
    name = arch if arch in known else model  # the repo's own architecture decides what the weights leave open
    family, vconfig, matched = infer_config(state, "timm", name)
    args = config.get("model_args") or {}
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    changes = {}
    if "num_heads" in args:  # the weights do not fix a ViT's head count; the repo's arguments do
        heads = args["num_heads"]
        changes["num_heads"] = tuple(heads) if isinstance(heads, list) else heads
    if family == "swin" and pretrained_cfg.get("input_size"):
        changes["img_size"] = int(pretrained_cfg["input_size"][-1])  # Swin's weights do not fix it either
    if family == "vit" and args.get("global_pool") in ("token", "avg"):
        changes["global_pool"] = args["global_pool"]
    vconfig = dataclasses.replace(vconfig, **changes)
    preprocess = preprocess_from_timm(pretrained_cfg)
    labels = config.get("label_names")
    classes = vconfig.num_classes
    names = (list(labels) if isinstance(labels, list) and len(labels) == classes
             else list(IMAGENET_CLASSNAMES) if classes == 1000 else None)  # timm's rule: 1000 classes are ImageNet's
    return Pretrained(family, vconfig, state, "timm", files.where, _folder(files), model_name=matched or arch,
                      preprocess=preprocess, class_names=names)


# open_clip model_cfg entries vitfast's CLIP does not implement, with what they are.
_OPEN_CLIP_FEATURES = {
    "timm_model_name": "a timm image tower (SigLIP, EVA, ConvNeXt and the like)",
    "hf_model_name": "a Hugging Face text tower",
    "attentional_pool": "attentional pooling",
    "ls_init_value": "layer scale",
    "patch_dropout": None,  # training only: harmless
    "no_ln_pre": "no norm before the image tower",
    "final_ln_after_pool": "the final norm after pooling",
    "proj_bias": "a biased projection",
    "embed_cls": "a text class token (CoCa)",
    "no_causal_mask": "a text tower without the causal mask",
    "act_kwargs": "custom activations",
    "norm_kwargs": "custom norms",
    "pool_type": "a pooling other than CLIP's",
    "output_tokens": None,
    "hf_tokenizer_name": "a Hugging Face tokenizer instead of CLIP's BPE",
}
_OPEN_CLIP_DEFAULT_POOL = {"vision": ("tok",), "text": ("argmax",)}


def _open_clip_unsupported(model_cfg: dict) -> list[str]:
    found = []
    for tower in ("vision", "text"):
        cfg = model_cfg.get(f"{tower}_cfg") or {}
        for key, what in _OPEN_CLIP_FEATURES.items():
            value = cfg.get(key)
            if what is None or value in (None, False, 0, {}, ""):
                continue
            if key == "pool_type" and value in _OPEN_CLIP_DEFAULT_POOL[tower]:
                continue
            found.append(f"{what} ({tower}_cfg.{key}={value!r})")
    if model_cfg.get("init_logit_bias") is not None or model_cfg.get("custom_text"):
        found.append("a custom text tower or logit bias (SigLIP-style)")
    return found


def _shape(config) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k in _SHAPE_FIELDS}


def _read_open_clip(files: Files, config: dict, model: str | None, quick_gelu: bool | None) -> Pretrained:
    model_cfg = config.get("model_cfg", {k: v for k, v in config.items() if k != "preprocess_cfg"})
    named_only = not model_cfg and model is not None  # no open_clip_config.json: the named model's architecture
    if _is_siglip(model_cfg) or (named_only and model in SIGLIP_CONFIGS):
        return _read_open_clip_siglip(files, config, model_cfg, model)
    if not named_only and (not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg
                           or "text_cfg" not in model_cfg):
        raise ConvertError(f"{OPEN_CLIP_CONFIG} of {files.where} has no model_cfg with vision_cfg and text_cfg.")
    unsupported = _open_clip_unsupported(model_cfg)
    if unsupported:
        raise ConvertError(f"{files.where} is an open_clip model with {'; '.join(unsupported)}, which vitfast's "
                           "CLIP does not implement (it has open_clip's own ViT towers).")
    state = _weights(files, OPEN_CLIP_WEIGHTS)
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    _, vconfig, matched = clip_config(state, model, quick_gelu=quick_gelu)
    changes = {"quick_gelu": quick_gelu}
    if model_cfg:  # the repo's own architecture decides the head counts the weights leave open
        vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
        changes.update(vision_heads=max(1, vconfig.vision_width // int(vision.get("head_width", 64))),
                       text_heads=int(text.get("heads", 8)))
    vconfig = dataclasses.replace(vconfig, **changes)
    preprocess = preprocess_from_open_clip(vconfig.image_size, config.get("preprocess_cfg"))
    tokenizer = None
    if files.get("tokenizer.json") is not None or files.get("vocab.json") is not None:
        for name in HF_TOKENIZER_FILES[1:]:
            files.get(name)
        tokenizer = _hf_tokenizer(files, vconfig.context_length)
    return Pretrained("clip", vconfig, state, "open_clip", files.where, _folder(files), model_name=model or matched,
                      preprocess=preprocess, tokenizer=tokenizer)


# open_clip SigLIP model_cfg entries and the values vitfast's SigLIP implements (timm's MAP-pooled trunk, no
# projection; a bidirectional text tower pooling the last token into a biased projection).
_SIGLIP_VISION = {"timm_pool": ("map",), "timm_proj": ("none",)}
_SIGLIP_TEXT = {"no_causal_mask": (True,), "proj_bias": (True,), "pool_type": ("last",)}
_SIGLIP_IGNORED = {"image_size", "timm_model_name", "timm_model_pretrained", "timm_drop", "timm_drop_path",
                   "patch_dropout", "context_length", "vocab_size", "hf_tokenizer_name", "tokenizer_kwargs", "width",
                   "heads", "layers", "mlp_ratio", "norm_kwargs", "output_tokens"}


def _is_siglip(model_cfg: dict) -> bool:
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    return isinstance(vision, dict) and vision.get("timm_pool") == "map" and "init_logit_bias" in model_cfg


def _read_open_clip_siglip(files: Files, config: dict, model_cfg: dict, model: str | None) -> Pretrained:
    """open_clip's SigLIP (``ViT-*-SigLIP*``): weights, shapes and head counts, preprocessing, and the repo's
    own tokenizer.json (SigLIP's SentencePiece), as open_clip's HFTokenizer reads it."""
    if model is not None and model not in SIGLIP_CONFIGS:
        raise ConvertError(f"{files.where} holds an open_clip SigLIP, not {model}; pass a SigLIP name "
                           f"({', '.join(n for n in SIGLIP_CONFIGS if n != 'siglip_tiny')}) or leave the name out.")
    found = []
    for tower, allowed in (("vision", _SIGLIP_VISION), ("text", _SIGLIP_TEXT)):
        cfg = model_cfg.get(f"{tower}_cfg") or {}
        for key, value in cfg.items():
            if key in allowed and value not in allowed[key] or key not in allowed and key not in _SIGLIP_IGNORED:
                found.append(f"{tower}_cfg.{key}={value!r}")
    text_cfg = model_cfg.get("text_cfg") or {}
    if (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "canonicalize") != "canonicalize":
        found.append(f"text_cfg.tokenizer_kwargs={text_cfg['tokenizer_kwargs']!r}")
    if found:
        raise ConvertError(f"{files.where} is an open_clip SigLIP with {', '.join(found)}, which vitfast's SigLIP does "
                           "not implement (SigLIP 2's tanh-GELU text tower is one such); it reads the ViT-*-SigLIP "
                           "layout.")
    state = _weights(files, OPEN_CLIP_WEIGHTS)
    _, vconfig, matched = siglip_config(state, model)
    changes = {}
    if text_cfg.get("heads"):
        changes["text_heads"] = int(text_cfg["heads"])
    eps = (text_cfg.get("norm_kwargs") or {}).get("eps", vconfig.norm_eps)
    if eps != vconfig.norm_eps:
        raise ConvertError(f"{files.where}'s text tower uses LayerNorm eps {eps} and its timm trunk "
                           f"{vconfig.norm_eps}; vitfast's SigLIP uses one epsilon for both towers.")
    vconfig = dataclasses.replace(vconfig, **changes)
    preprocess = preprocess_from_open_clip(vconfig.image_size, config.get("preprocess_cfg"))
    try:
        tokenizer = _siglip_tokenizer(files, vconfig.context_length)
    except TokenizerError as exc:
        raise ConvertError(f"{files.where}: {exc}") from None
    return Pretrained("siglip", vconfig, state, "open_clip", files.where, _folder(files),
                      model_name=model or matched, preprocess=preprocess, tokenizer=tokenizer)


def _read_transformers(files: Files, config: dict) -> Pretrained:
    state = _weights(files, HF_WEIGHTS)
    try:
        family, vconfig, vstate = hf_to_vitfast(config, state)
    except ValueError as exc:
        raise ConvertError(f"{files.where}: {exc}") from None
    processor = files.get("preprocessor_config.json")
    preprocess = preprocess_from_hf(_json(processor)) if processor is not None else None
    labels = config.get("id2label") or {}
    names = None
    if family in ("vit", "swin") and len(labels) == vconfig.num_classes and vconfig.num_classes:
        names = [str(labels.get(str(i), labels.get(i, f"LABEL_{i}"))) for i in range(vconfig.num_classes)]
        if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
            names = None  # transformers' placeholders
    tokenizer = None
    if family == "clip":
        for name in HF_TOKENIZER_FILES:
            files.get(name)
        tokenizer = _hf_tokenizer(files, vconfig.context_length)
    elif family == "siglip":
        try:
            tokenizer = _siglip_tokenizer(files, vconfig.context_length)
        except TokenizerError:
            tokenizer = None
    return Pretrained(family, vconfig, vstate, "hf", files.where, _folder(files), preprocess=preprocess,
                      class_names=names, tokenizer=tokenizer)


def _folder(files: Files) -> Path:
    return files.folder if files.folder is not None else Path(files.where)


def _hf_tokenizer(files: Files, context_length: int) -> ClipTokenizer | None:
    folder = _folder(files)
    try:
        return read_hf_tokenizer(folder, context_length)
    except TokenizerError:
        return None


def _siglip_tokenizer(files: Files, context_length: int) -> SiglipTokenizer | None:
    """The repo's own tokenizer.json with the configs naming its special tokens (None without one)."""
    if files.get("tokenizer.json") is None:
        return None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        files.get(name)
    return read_siglip_tokenizer(_folder(files), context_length)


def repo_tokenizer(pretrained: Pretrained, bpe_path=None) -> ClipTokenizer | SiglipTokenizer:
    """A pretrained SigLIP's tokenizer: the repo's own tokenizer.json. A pretrained CLIP's tokenizer:
    open_clip's (CLIP's BPE at the model's context length) for open_clip
    repos, as open_clip itself uses; the repo's own tokenizer files otherwise, or when open_clip's BPE file
    is not at hand."""
    config = pretrained.config
    if pretrained.family == "siglip":  # SigLIP's SentencePiece (or SigLIP 2's Gemma) lives only in its repo
        if pretrained.tokenizer is None:
            raise ConvertError(f"{pretrained.where} ships no tokenizer.json; pass the SigLIP's own tokenizer.json "
                               "(or a folder holding it) with --tokenizer.")
        return pretrained.tokenizer
    if pretrained.source == "open_clip" or pretrained.tokenizer is None:
        try:
            return clip_bpe_tokenizer(bpe_path, config.context_length)
        except (TokenizerError, OSError) as exc:  # no open_clip to take CLIP's BPE file from
            if pretrained.tokenizer is None:
                raise ConvertError(f"{pretrained.where} ships no tokenizer files, and CLIP's BPE is not at hand "
                                   f"({exc}); pass CLIP's bpe_simple_vocab_16e6.txt.gz (--bpe-path / --tokenizer) "
                                   "or install open_clip_torch.") from None
    return pretrained.tokenizer


# --------------------------------------------------------------------------------------------------
# Names: timm's name.tag, open_clip's model + tag, hf-hub:ORG/NAME, a local folder
# --------------------------------------------------------------------------------------------------


def resolve(name: str, pretrained: str | bool | None = True, revision: str | None = None) -> Pretrained:
    """The pretrained weights `name` and `pretrained` stand for, as timm and open_clip spell them:

    - ``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` (or the name alone with ``pretrained=True``, timm's
      default tag; or ``pretrained="augreg_in1k"``): the repo ``timm/<name>.<tag>``;
    - ``"ViT-B-32"`` with ``pretrained="laion2b_s34b_b79k"`` (or ``"openai"``): the repo open_clip's table
      names for that pair;
    - ``"hf-hub:ORG/NAME"`` (with ``@REVISION``), as both accept, or ``pretrained="hf-hub:ORG/NAME"``;
    - a local folder of any of the three layouts, as `pretrained`.
    """
    if isinstance(pretrained, str) and pretrained.startswith(hub.HF_HUB_PREFIX):
        name_given = None if name.startswith(hub.HF_HUB_PREFIX) else name
        repo, rev = hub.split_hub_id(pretrained)
        return read_repo(hub_files(repo, _one_revision(rev, revision)), model=_known(name_given))
    if name.startswith(hub.HF_HUB_PREFIX):
        if isinstance(pretrained, str) and not _default(pretrained):
            raise ConvertError(f"{name} is a Hub repo already; pretrained={pretrained!r} (a tag or another "
                               "source) does not apply to it.")
        repo, rev = hub.split_hub_id(name)
        return read_repo(hub_files(repo, _one_revision(rev, revision)))
    if isinstance(pretrained, str) and not _default(pretrained) and Path(pretrained).is_dir():
        if revision is not None:
            raise ConvertError(f"revision {revision!r} applies to Hub repos; {pretrained} is a local folder.")
        return read_repo(local_files(Path(pretrained)), model=_known(name))
    base, tag = split_tag(name, pretrained)
    entry = pretrained_entry(base, tag)
    if entry["source"] == "timm":
        return read_repo(hub_files(entry["hub"], revision), layout="timm", model=base, published=entry)
    result = read_repo(hub_files(entry["hub"], revision), layout="open_clip", model=base,
                       quick_gelu=getattr(named_config(base)[1], "quick_gelu", None), published=entry)
    if entry.get("quick_gelu") and not getattr(result.config, "quick_gelu", True):
        message = (f"{base} with {tag!r} weights: these were trained with QuickGELU but {base} uses GELU, as "
                   f"open_clip builds it; use {base}-quickgelu for the activation they were trained with.")
        warnings.warn(message, stacklevel=2)
        result.warning = message
    return result


def _one_revision(in_name: str | None, given: str | None) -> str | None:
    if in_name and given and in_name != given:
        raise ConvertError(f"the repo names revision {in_name!r} (@{in_name}) and --revision names {given!r}; "
                           "give one.")
    return in_name or given


def split_tag(name: str, pretrained: str | bool | None) -> tuple[str, str | None]:
    """(model name, tag) of timm's 'name.tag' or of a name with `pretrained` as the tag (True or "default":
    the tag in the name, else timm's default tag)."""
    base, dot, tag = name.partition(".")
    if dot and isinstance(pretrained, str) and not _default(pretrained) and pretrained != tag:
        raise ConvertError(f"{name!r} names the tag {tag!r} and pretrained= names {pretrained!r}; give one.")
    if not dot:
        tag = pretrained if isinstance(pretrained, str) and not _default(pretrained) else None
    return base, tag


def _default(pretrained: str) -> bool:
    """Whether a `pretrained` string means "the default weights" (the CLI's bare --pretrained: "default")."""
    return pretrained in ("", "default", "true", "True")


def _known(name: str | None) -> str | None:
    """`name` when it is a model vitfast knows (its config then decides what the weights leave open)."""
    if name is None:
        return None
    try:
        named_config(name)
    except ValueError:
        return None
    return name
