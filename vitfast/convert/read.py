"""Other projects' checkpoint files and Hugging Face folders into plain state dicts, without running them.

Pickles are read with ``torch.load(weights_only=True)`` and TorchScript archives only through
``torch.jit.load`` on the CPU, so nothing a checkpoint carries ever runs.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")
_PREFIXES = ("module.", "_orig_mod.")


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
        for prefix in _PREFIXES:
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
    for name in HF_WEIGHTS:
        if (path / name).is_file():
            break
    else:
        raise ConvertError(f"{path} has no weights: expected one of {', '.join(HF_WEIGHTS)}.")
    if name.endswith(".index.json"):
        weight_map = read_json(path / name).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"the shard index {path / name} has no weight_map.")
        shards = sorted(set(weight_map.values()))
    else:
        shards = [name]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_state(path / shard)[0])
    return config, state

