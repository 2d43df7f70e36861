"""CLIP (Radford et al., 2021): a ViT image tower and a causal text tower, laid out like open_clip's CLIP.

Parameter names and shapes match ``open_clip.model.CLIP`` for the same model name, so an open_clip
state dict loads with ``strict=True`` and gives the same embeddings. open_clip's causal ``attn_mask``
buffer is non-persistent (absent from its state dict); here the text tower asks the attention op for
``causal=True`` instead of materializing a mask. Every attention goes through
``vitfast.kernels.packed_attention`` with the backend from the config.

Images must be ``config.image_size`` square, as in open_clip: the position embedding is not resampled
for other sizes, because CLIP's preprocessing always resizes to the trained size.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import InProjAttention, check_attn_backend, init_text_blocks, run_blocks


@dataclass
class CLIPConfig:
    """Hyper-parameters of a CLIP; `vitfast.create_model(name, **overrides)` starts from a named one.

    Flat on purpose: it is written to config.json and rebuilt with ``CLIPConfig(**fields)``.
    """

    embed_dim: int = 512  # size of the shared image/text embedding
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12  # open_clip derives it: vision_width // head_width (64, or 80 for ViT-H)
    vision_mlp_ratio: float = 4.0
    context_length: int = 77  # longest text in tokens; shorter text is fine
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    text_mlp_ratio: float = 4.0
    eot_token_id: int = 49407  # the text embedding is read at the first token with this id
    quick_gelu: bool = False  # x·sigmoid(1.702x), as OpenAI's original weights were trained with
    attn_backend: str = "auto"  # vitfast.choices.ATTENTION_BACKENDS; see vitfast.kernels.attention
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100)  # clamp_logit_scale() keeps exp(logit_scale) ≤ 100

    def validate(self) -> None:
        """Raise ValueError naming the inconsistent fields and how to fix them."""
        for name in ("embed_dim", "image_size", "patch_size", "in_chans", "vision_width", "vision_layers",
                     "vision_heads", "context_length", "vocab_size", "text_width", "text_heads", "text_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}.")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if width % heads:
                raise ValueError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}; "
                                 f"pick a head count that divides it.")
            if getattr(self, f"{tower}_mlp_ratio") <= 0:
                raise ValueError(f"{tower}_mlp_ratio must be positive; got {getattr(self, f'{tower}_mlp_ratio')}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
        if not 0 <= self.eot_token_id < self.vocab_size:
            raise ValueError(f"eot_token_id {self.eot_token_id} is outside the vocabulary [0, {self.vocab_size}); "
                             "set eot_token_id (and vocab_size) from the tokenizer.")
        if self.max_logit_scale < 0:
            raise ValueError(f"max_logit_scale must be ≥ 0 (exp(0) = 1); got {self.max_logit_scale}.")
        if not 0 <= self.init_logit_scale <= self.max_logit_scale:
            raise ValueError(f"init_logit_scale {self.init_logit_scale} is outside [0, max_logit_scale "
                             f"{self.max_logit_scale}]; clamp_logit_scale() would move it on the first step.")
        check_attn_backend(self.attn_backend)


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation; needed to reproduce weights trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, act: type[nn.Module], backend: str,
                 causal: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = InProjAttention(dim, num_heads, backend, causal)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(dim, hidden)),
            ("gelu", act()),
            ("c_proj", nn.Linear(hidden, dim)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks (``resblocks``), optionally checkpointed block by block while training."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: type[nn.Module],
                 backend: str, causal: bool):
        super().__init__()
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([
            ResidualAttentionBlock(width, heads, mlp_ratio, act, backend, causal) for _ in range(layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.resblocks, x, self.grad_checkpointing and self.training)


class VisionTransformer(nn.Module):
    """The image tower: patchify, class token, blocks, then the class token projected to embed_dim."""

    def __init__(self, config: CLIPConfig, act: type[nn.Module]):
        super().__init__()
        width = config.vision_width
        self.image_size = config.image_size
        self.in_chans = config.in_chans
        self.conv1 = nn.Conv2d(config.in_chans, width, config.patch_size, stride=config.patch_size, bias=False)
        grid = config.image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads, config.vision_mlp_ratio,
                                       act, config.attn_backend, causal=False)
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(width, config.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"images must be (batch, {self.in_chans}, height, width); "
                             f"got shape {tuple(images.shape)}.")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images are {images.shape[-2]}×{images.shape[-1]} but this model takes "
                             f"{self.image_size}×{self.image_size} (config.image_size); resize or crop them "
                             "to that size.")
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, grid², width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with open_clip's names: ``visual.*`` for the image tower, the text tower at the top level."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        config.validate()
        self.config = config
        act = QuickGELU if config.quick_gelu else nn.GELU
        self.visual = VisionTransformer(config, act)
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads,
                                       config.text_mlp_ratio, act, config.attn_backend, causal=True)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.text_width))
        self.ln_final = nn.LayerNorm(config.text_width, eps=1e-5)
        self.text_projection = nn.Parameter(torch.zeros(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's init; modules not named here keep their PyTorch default init, as in open_clip."""
        cfg = self.config
        vision_std = cfg.vision_width ** -0.5
        nn.init.normal_(self.visual.class_embedding, std=vision_std)
        nn.init.normal_(self.visual.positional_embedding, std=vision_std)
        nn.init.normal_(self.visual.proj, std=vision_std)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        # Only the text tower gets GPT-2-style scaled inits; open_clip leaves the vision blocks at default.
        attn_std = init_text_blocks(self.transformer.resblocks, cfg.text_width, cfg.text_layers)
        nn.init.normal_(self.text_projection, std=attn_std)
        self.logit_scale.fill_(cfg.init_logit_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only) to save memory."""
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp logit_scale in place to [0, max_logit_scale]; call after each optimizer step."""
        self.logit_scale.clamp_(0, self.config.max_logit_scale)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, C, S, S) images, S = config.image_size, to (B, embed_dim) embeddings (L2-normalized if asked)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def _check_text(self, text: torch.Tensor, need_eot: bool) -> None:
        cfg = self.config
        if text.dim() != 2 or text.dtype.is_floating_point or text.dtype == torch.bool:
            raise ValueError(f"text must be a (batch, length) tensor of integer token ids; got {text.dtype} "
                             f"of shape {tuple(text.shape)}.")
        if text.shape[1] > cfg.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens but the model takes at most {cfg.context_length} "
                             "(config.context_length); tokenize with that context length.")
        if torch.compiler.is_compiling():  # the value checks need a host sync, which would break the graph
            return
        in_range = ((text >= 0) & (text < cfg.vocab_size)).all()
        has_eot = (text == cfg.eot_token_id).any(dim=1)
        ok = in_range & has_eot.all() if need_eot else in_range
        if bool(ok):  # one host sync for all the checks
            return
        if not bool(in_range):
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}) (config.vocab_size); got ids from "
                             f"{int(text.min())} to {int(text.max())}. Use the model's tokenizer.")
        rows = (~has_eot).nonzero().flatten().tolist()
        raise ValueError(f"text row(s) {rows[:8]} have no end-of-text token (id {cfg.eot_token_id}, "
                         "config.eot_token_id); the text embedding is read there. Tokenize with the "
                         "model's tokenizer, which appends it (truncating long text before it).")

    def _text_hidden(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        return self.ln_final(self.transformer(x))

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, L ≤ context_length, to (B, L, text_width) hidden states after ln_final.

        Causal: position i depends only on tokens 0..i.
        """
        self._check_text(text, need_eot=False)
        return self._text_hidden(text)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids, L ≤ context_length, to (B, embed_dim) embeddings (L2-normalized if asked).

        Each row is read at its first ``config.eot_token_id``; for open_clip's tokenizer (EOT = the
        largest id) that is open_clip's argmax pooling. Tokens after it do not matter.
        """
        self._check_text(text, need_eot=True)
        x = self._text_hidden(text)
        eot = (text == self.config.eot_token_id).int().argmax(dim=1)  # argmax gives the first maximum
        features = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalized image embeddings, normalized text embeddings, logit_scale.exp()), as open_clip's CLIP."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        return image_features, text_features, self.logit_scale.exp()


def _named(embed_dim: int, patch: int, vision: tuple[int, int, int], text: tuple[int, int, int],
           **kw) -> CLIPConfig:
    """A config from open_clip's json: vision and text as (width, layers, heads)."""
    (vw, vl, vh), (tw, tl, th) = vision, text
    return CLIPConfig(embed_dim=embed_dim, patch_size=patch, vision_width=vw, vision_layers=vl, vision_heads=vh,
                      text_width=tw, text_layers=tl, text_heads=th, **kw)


# open_clip's model_configs/*.json, each also "-quickgelu"; vision heads = width // head_width (64, or 80 for ViT-H-14).
# `clip_tiny` is vitfast's own, sized for the built-in default data (32×32 images, short captions)
# so that training it on a 2-core CPU takes minutes; the trainer sets vocab_size and eot_token_id
# from the tokenizer it trains.
CLIP_CONFIGS: dict[str, CLIPConfig] = {
    **{name + suffix: _named(dim, patch, vision, text, quick_gelu=suffix == "-quickgelu")
       for suffix in ("", "-quickgelu")
       for name, dim, patch, vision, text in [("ViT-B-32", 512, 32, (768, 12, 12), (512, 12, 8)),
                                              ("ViT-B-16", 512, 16, (768, 12, 12), (512, 12, 8)),
                                              ("ViT-L-14", 768, 14, (1024, 24, 16), (768, 12, 12)),
                                              ("ViT-H-14", 1024, 14, (1280, 32, 16), (1024, 24, 16))]},
    "clip_tiny": _named(128, 8, (128, 4, 4), (128, 3, 4), image_size=32, context_length=24, vocab_size=1024,
                        eot_token_id=1023),
}
