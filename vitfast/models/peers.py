"""The peer libraries' models built from a vitfast config: timm's ViT and Swin, open_clip's CLIP.

They share vitfast's parameter names, so a vitfast state dict loads into them strictly. Two users:
`vitfast convert` (the source library's outputs, to verify a conversion) and `vitfast bench model
--compare` (the same architecture, timed in the library people use today). Each import raises
ImportError when the library is not installed.
"""

from __future__ import annotations

import dataclasses
import functools

import torch.nn as nn

PEERS = {"vit": "timm", "swin": "timm", "clip": "open_clip"}


def peer_model(family: str, config) -> nn.Module:
    """timm's VisionTransformer / SwinTransformer or open_clip's CLIP with `config`'s architecture
    (random init; stochastic depth as in the config)."""
    if family not in PEERS:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(PEERS)}.")
    if family == "clip":
        from open_clip.model import CLIP as OpenClip

        vision = {"image_size": config.image_size, "patch_size": config.patch_size, "width": config.vision_width,
                  "layers": config.vision_layers, "head_width": config.vision_width // config.vision_heads,
                  "mlp_ratio": config.vision_mlp_ratio}
        text = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": config.text_width,
                "heads": config.text_heads, "layers": config.text_layers, "mlp_ratio": config.text_mlp_ratio}
        return OpenClip(config.embed_dim, vision, text, quick_gelu=config.quick_gelu)
    # ViT's and Swin's config fields are timm's arguments of the same names, but for vitfast's own two.
    timm_args = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("attn_backend", "norm_eps")}
    if family == "vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**timm_args, norm_layer=functools.partial(nn.LayerNorm, eps=config.norm_eps))
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(**timm_args)
