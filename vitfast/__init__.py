"""vitfast: vision transformers (ViT, Swin, CLIP) on fused Triton kernels.

``vitfast.create_model``, ``list_models``, ``load`` and ``save`` are loaded on first use (PEP 562), so
that importing a torch-free module such as ``vitfast.choices`` (what the CLI needs for ``--help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "save"]

_LAZY = {"create_model": "vitfast.models", "list_models": "vitfast.models", "load": "vitfast.checkpoint",
         "save": "vitfast.checkpoint"}

if TYPE_CHECKING:
    from vitfast.checkpoint import load, save
    from vitfast.models import create_model, list_models


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
