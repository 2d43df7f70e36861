"""The peer libraries' models built from a vitfast config: timm's ViT and Swin, open_clip's CLIP.

They share vitfast's parameter names, so a vitfast state dict loads into them strictly. Two users:
`vitfast convert` (the source library's outputs, to verify a conversion) and `vitfast bench model
--compare` (the same architecture, timed in the library people use today). Each import raises
ImportError when the library is not installed.
"""

from __future__ import annotations

import functools

import torch.nn as nn

PEERS = {"vit": "timm", "swin": "timm", "clip": "open_clip"}


def peer_model(family: str, config) -> nn.Module:
    """timm's VisionTransformer / SwinTransformer or open_clip's CLIP with `config`'s architecture
    (random init; stochastic depth as in the config)."""
    if family == "clip":
        from open_clip.model import CLIP as OpenClip

        vision = {"image_size": config.image_size, "patch_size": config.patch_size, "width": config.vision_width,
                  "layers": config.vision_layers, "head_width": config.vision_width // config.vision_heads,
                  "mlp_ratio": config.vision_mlp_ratio}
        text = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": config.text_width,
                "heads": config.text_heads, "layers": config.text_layers, "mlp_ratio": config.text_mlp_ratio}
        return OpenClip(config.embed_dim, vision, text, quick_gelu=config.quick_gelu)
    if family == "vit":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                                 num_classes=config.num_classes, embed_dim=config.embed_dim, depth=config.depth,
                                 num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                                 class_token=config.class_token, global_pool=config.global_pool,
                                 drop_rate=config.drop_rate, drop_path_rate=config.drop_path_rate,
                                 norm_layer=functools.partial(nn.LayerNorm, eps=config.norm_eps))
    if family == "swin":
        from timm.models.swin_transformer import SwinTransformer

        return SwinTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                               num_classes=config.num_classes, embed_dim=config.embed_dim, depths=config.depths,
                               num_heads=config.num_heads, window_size=config.window_size,
                               mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, drop_rate=config.drop_rate,
                               drop_path_rate=config.drop_path_rate)
    raise ValueError(f"unknown model family {family!r}; known: {', '.join(PEERS)}.")
