"""vitfast: vision transformers (ViT, Swin, CLIP) on fused Triton kernels."""

__version__ = "0.1.0"
