"""The peer libraries' models built from a vitfast config: timm's ViT and Swin, open_clip's CLIP and SigLIP.

They share vitfast's parameter names, so a vitfast state dict loads into them strictly. Two users:
`vitfast convert` (the source library's outputs, to verify a conversion) and `vitfast bench model
--compare` (the same architecture, timed in the library people use today). Each import raises
ImportError when the library is not installed.
"""

from __future__ import annotations

import dataclasses
import functools

import torch.nn as nn

PEERS = {"vit": "timm", "swin": "timm", "clip": "open_clip", "siglip": "open_clip"}
# The timm trunk open_clip's SigLIP jsons name the kin of; siglip_peer builds it with the config's shapes.
SIGLIP_BASE_TRUNK = "vit_base_patch16_siglip_224"


def peer_model(family: str, config) -> nn.Module:
    """timm's VisionTransformer / SwinTransformer or open_clip's CLIP with `config`'s architecture
    (random init; stochastic depth as in the config)."""
    if family not in PEERS:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(PEERS)}.")
    if family == "siglip":
        return siglip_peer(config)
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


def siglip_peer(config) -> nn.Module:
    """open_clip's SigLIP (a CustomTextCLIP, as its ViT-*-SigLIP jsons build it) with `config`'s shapes.

    open_clip's TimmModel asks timm for the trunk by name only, so for the duration of the build timm is
    asked for vit_base_patch16_siglip_224's kin with the config's image size, patch, width, depth, heads and
    MLP ratio (the same VisionTransformer class and arguments timm's vit_*_siglip_* names use).
    """
    import timm
    from open_clip.model import CustomTextCLIP

    if config.gelu_approximate != "none":
        raise ValueError("open_clip's SigLIP uses the exact GELU; this config asks for the tanh approximation "
                         "(transformers'), which open_clip cannot build.")
    trunk = {"img_size": config.image_size, "patch_size": config.patch_size, "embed_dim": config.vision_width,
             "depth": config.vision_layers, "num_heads": config.vision_heads, "mlp_ratio": config.vision_mlp_ratio,
             "in_chans": config.in_chans, "drop_path_rate": config.drop_path_rate,
             "norm_layer": functools.partial(nn.LayerNorm, eps=config.norm_eps)}
    vision = {"image_size": config.image_size, "timm_model_name": SIGLIP_BASE_TRUNK, "timm_model_pretrained": False,
              "timm_pool": "map", "timm_proj": "none"}
    text = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": config.text_width,
            "heads": config.text_heads, "layers": config.text_layers, "mlp_ratio": config.text_mlp_ratio,
            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": config.norm_eps}}
    create = timm.create_model
    timm.create_model = lambda name, **kw: create(name, **{**kw, **trunk})
    try:
        return CustomTextCLIP(config.embed_dim, vision, text, init_logit_scale=config.init_logit_scale,
                              init_logit_bias=config.init_logit_bias)
    finally:
        timm.create_model = create
