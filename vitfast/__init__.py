"""vitfast: vision transformers (ViT, Swin, CLIP) on fused Triton kernels."""

from vitfast.checkpoint import load, save
from vitfast.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load", "save"]
