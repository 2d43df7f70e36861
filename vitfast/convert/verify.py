"""A converted folder reloaded and compared with the source library's model on a random input (fp32,
CPU): timm or open_clip rebuilt from the inferred config, or transformers from the source folder. Each
answer is the max absolute difference, or None when that library is not installed."""

from __future__ import annotations

from pathlib import Path

import torch

from vitfast.checkpoint import load
from vitfast.models.peers import peer_model


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def verify_against_source(dst: Path, family: str, config, state: dict[str, torch.Tensor]) -> float | None:
    """Max |vitfast − timm or open_clip| with `state` loaded into both."""
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    try:
        reference = peer_model(family, config)
    except ImportError:
        return None
    reference.load_state_dict(state, strict=True)
    reference = reference.float().eval()
    with torch.no_grad():
        if family == "clip":
            image = torch.randn(2, config.in_chans, config.image_size, config.image_size, generator=g)
            text = torch.randint(0, config.vocab_size - 2, (2, config.context_length), generator=g)
            text[:, -1] = config.vocab_size - 1  # the end token, so both pool at the same place
            return max(_diff(ours.encode_image(image), reference.encode_image(image)),
                       _diff(ours.encode_text(text), reference.encode_text(text)))
        image = torch.randn(2, config.in_chans, config.img_size, config.img_size, generator=g)
        return _diff(ours(image), reference(image))


def verify_against_transformers(src: Path, dst: Path, family: str, config) -> float | None:
    """Max |vitfast − transformers| for the Hugging Face folder `src`: logits of classifiers, the normalized
    tokens of headless ViT/Swin (and Swin's pooled features), CLIP's normalized embeddings."""
    try:
        import transformers
    except ImportError:
        return None
    ours = load(dst, attn_backend="eager").float().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if family == "clip":
            reference = transformers.CLIPModel.from_pretrained(src).float().eval()
            image = torch.randn(2, config.in_chans, config.image_size, config.image_size, generator=g)
            text = torch.randint(0, config.vocab_size - 1, (2, config.context_length), generator=g)
            text[:, -1] = config.vocab_size - 1
            out = reference(input_ids=text, pixel_values=image)
            return max(_diff(ours.encode_image(image, normalize=True), out.image_embeds),
                       _diff(ours.encode_text(text, normalize=True), out.text_embeds))
        image = torch.randn(2, config.in_chans, config.img_size, config.img_size, generator=g)
        if config.num_classes == 0:  # a headless model: its normalized tokens
            if family == "vit":
                reference = transformers.ViTModel.from_pretrained(src, add_pooling_layer=False).float().eval()
                return _diff(ours.forward_features(image), reference(pixel_values=image).last_hidden_state)
            reference = transformers.SwinModel.from_pretrained(src).float().eval()
            out, tokens = reference(pixel_values=image), ours.forward_features(image)
            return max(_diff(tokens.flatten(1, 2), out.last_hidden_state),
                       _diff(ours.forward_head(tokens, pre_logits=True), out.pooler_output))
        cls = transformers.ViTForImageClassification if family == "vit" else transformers.SwinForImageClassification
        reference = cls.from_pretrained(src).float().eval()
        return _diff(ours(image), reference(pixel_values=image).logits)
