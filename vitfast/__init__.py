"""vitfast: vision transformers (ViT, Swin, CLIP) on fused Triton kernels.

The names below (``create_model`` with ``pretrained=`` loads published weights) load on first
use (PEP 562), so that importing a torch-free module such as
``vitfast.choices`` (all that `vitfast --help` needs) does not import torch.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["ClipLoss", "SigLipLoss", "accelerate", "accelerate_loss", "accelerate_report", "create_model",
           "list_models", "load", "restore", "save"]
_HOME = {"create_model": "vitfast.pretrained", "list_models": "vitfast.models", "load": "vitfast.checkpoint",
         "save": "vitfast.checkpoint", "accelerate": "vitfast.patching", "restore": "vitfast.patching",
         "accelerate_report": "vitfast.patching", "accelerate_loss": "vitfast.losses", "ClipLoss": "vitfast.losses",
         "SigLipLoss": "vitfast.losses"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'vitfast' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_HOME[name]), name)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
