"""Model folders (config.json + model.safetensors): save, load, read the config and the weights.

A saved model is a directory: ``config.json`` and ``model.safetensors``, or, past ``max_shard_size``,
``model-00001-of-0000N.safetensors`` shards with ``model.safetensors.index.json``. The config is
also in each safetensors file's ``__metadata__``, so a lone file is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from vitfast.files import atomic_write, parse_size
from vitfast.models import build_config, build_model, model_family

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_METADATA_KEY = "vitfast_config"
# Optional config.json entries, kept as model attributes of the same names: the eval preprocessing the
# weights were published with (timm's pretrained_cfg vocabulary) and where they came from.
_PRETRAINED_KEYS = ("preprocess", "pretrained_from")


class CheckpointError(ValueError):
    """A model folder or file that cannot be read: the message names the file and the fix."""


def save(model: nn.Module, directory: str | os.PathLike[str], *, max_shard_size: int | str = "5GB",
         class_names: list[str] | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save `model` as a model folder (config.json + safetensors weights, sharded past max_shard_size);
    `class_names` (a classifier's label of each output index; default: ``model.class_names``) go into
    config.json as "class_names", and a pretrained model's ``preprocess`` and ``pretrained_from``
    (vitfast.pretrained) beside them. `state_dict` replaces ``model.state_dict()`` (a sharded model's
    gathered weights)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # What config.json holds: the family, the model name it was created from, and every config field.
    config = {"family": model_family(model), "model_name": getattr(model, "model_name", None),
              "config": dataclasses.asdict(model.config)}
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    if class_names is not None:
        config["class_names"] = list(class_names)
    for key in _PRETRAINED_KEYS:  # what vitfast.pretrained records: eval's transforms, the weights' origin
        if getattr(model, key, None) is not None:
            config[key] = getattr(model, key)
    metadata = {_METADATA_KEY: json.dumps(config)}
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    limit = parse_size(max_shard_size)

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes

    # One shard is model.safetensors; more are numbered, with an index of which file holds each tensor.
    n = len(shards)
    names = [WEIGHTS_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for name, shard in zip(names, shards):
        atomic_write(directory / name, lambda p, s=shard: save_file(s, str(p), metadata=metadata))
    if n > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        atomic_write(directory / INDEX_NAME, lambda p: p.write_text(json.dumps(index, indent=2)))
    (directory / (INDEX_NAME if n == 1 else WEIGHTS_NAME)).unlink(missing_ok=True)  # the other layout's, if saved over
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}. Re-save the model or restore the file.") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing. Re-save the model.") from None
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}). "
                              "It may be truncated or corrupt; re-save or re-convert it.") from None


def read_config(path: str | os.PathLike[str]) -> dict:
    """The config.json contents of a model folder (or a lone .safetensors file's metadata), without the weights."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return _read_json(path / CONFIG_NAME)
    return read_state_dict(path)[0]  # a lone file, or a folder whose error read_state_dict words


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of a model folder or a lone .safetensors file."""
    path = Path(path)
    if path.is_file():
        state, metadata = _read_safetensors(path)
        if _METADATA_KEY not in metadata:
            raise CheckpointError(f"{path} has no vitfast config in its metadata; load its folder instead.")
        return json.loads(metadata[_METADATA_KEY]), state
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist.")
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}; is it a vitfast model folder (see `vitfast.save`)?")
    config = _read_json(path / CONFIG_NAME)
    index = path / INDEX_NAME
    shards = sorted(set(_read_json(index).get("weight_map", {}).values())) if index.is_file() else [WEIGHTS_NAME]
    return config, {k: v for shard in shards for k, v in _read_safetensors(path / shard)[0].items()}


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", **overrides) -> nn.Module:
    """Load a model folder (or a lone safetensors file) saved by :func:`save`.

    `overrides` replace config fields that do not change the weights (e.g. ``attn_backend="sdpa"``).
    """
    config, state = read_state_dict(path)
    try:
        family, fields = config["family"], {**config["config"], **overrides}
        model = build_model(family, build_config(family, fields))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the config in {path} is not a valid vitfast config ({exc}).") from None
    model.model_name = config.get("model_name")
    model.class_names = config.get("class_names")
    for key in _PRETRAINED_KEYS:
        setattr(model, key, config.get(key))
    try:
        result = model.load_state_dict(state, strict=False)
        problems = [f"{what} {', '.join(keys[:5])}" for what, keys in [("missing", result.missing_keys),
                                                                       ("unexpected", result.unexpected_keys)] if keys]
    except RuntimeError as exc:  # shape mismatches
        problems = [" ".join(str(exc).split())[:300]]
    if problems:
        raise CheckpointError(f"{path}: the weights do not match config.json ({'; '.join(problems)}).")
    return model.to(map_location)
