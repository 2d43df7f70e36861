"""SigLIP (Zhai et al., 2023): CLIP's two towers trained with a sigmoid loss, laid out like open_clip's.

open_clip builds its SigLIP models (``ViT-B-16-SigLIP`` and its kin) as a ``CustomTextCLIP``: the image
tower is a timm ViT trunk without a class token, pooled by timm's attention-pool head (``global_pool=
"map"``: one learned latent query attends to every patch token) and not projected (``timm_proj="none"``,
so the image embedding is the trunk's width); the text tower is open_clip's ``TextTransformer`` with
bidirectional attention (``no_causal_mask``), LayerNorms of epsilon 1e-6, the last token pooled after
the final LayerNorm (``pool_type="last"``) and a text projection with a bias. Beside ``logit_scale`` the
model learns a ``logit_bias``, which the sigmoid loss adds to every logit.

Parameter names and shapes match open_clip's for the same model name (``visual.trunk.*`` in timm's
layout, including ``visual.trunk.attn_pool.*``; ``text.*``; ``logit_scale``, ``logit_bias``), so an
open_clip state dict loads with ``strict=True`` and gives the same embeddings. The self-attention of
both towers goes through ``vitfast.kernels.packed_attention`` with the config's backend; the
attention pool's single query attends through ``vitfast.kernels.attention`` with SDPA (or the eager
oracle under ``attn_backend="eager"``), because the Triton kernels take only self-attention.

Images must be ``config.image_size`` square, as timm's trunk requires; the text may be shorter than
``config.context_length`` (open_clip then reads its last given position), but SigLIP's tokenizers pad
every text to the full context, and the embedding is read at that last (padding) position.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitfast.kernels import attention

from .layers import (Attention, Block, InProjAttention, Mlp, PatchEmbed, check_attn_backend, init_linears,
                     init_text_blocks, run_blocks)


@dataclass
class SigLIPConfig:
    """Hyper-parameters of a SigLIP; `vitfast.create_model(name, **overrides)` starts from a named one.

    Flat, as CLIPConfig: it is written to config.json and rebuilt with ``SigLIPConfig(**fields)``. The
    attention-pool head takes the trunk's head count and MLP ratio, as timm builds it; its MLP and the
    blocks' have ``int(width * mlp_ratio)`` hidden units (4304 for SO400M's 1152 × 3.7362).
    """

    embed_dim: int = 768  # the shared embedding: the image trunk's width (no image projection), the text's projection
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0  # the blocks' and the attention pool's MLP
    context_length: int = 64  # longest text in tokens; SigLIP's tokenizers pad every text to it
    vocab_size: int = 32000
    text_width: int = 768
    text_heads: int = 12
    text_layers: int = 12
    text_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # every LayerNorm's epsilon, both towers (timm's and SigLIP's text config's)
    gelu_approximate: str = "none"  # every MLP's GELU: "none" (exact: timm, open_clip) or "tanh" (transformers)
    weight_init: str = "timm"  # the image trunk's init: "timm" (open_clip's) or "big_vision" (SigLIP's own code's)
    drop_path_rate: float = 0.0  # image trunk's stochastic depth, rising linearly over its blocks (timm_drop_path)
    attn_backend: str = "auto"  # vitfast.choices.ATTENTION_BACKENDS; see vitfast.kernels.attention
    init_logit_scale: float = math.log(10)  # SigLIP's t' = log 10 (open_clip's trainer passes it with --siglip)
    init_logit_bias: float = -10.0
    max_logit_scale: float = math.log(100)  # clamp_logit_scale() keeps exp(logit_scale) ≤ 100, as open_clip trains

    def validate(self) -> None:
        """Raise ValueError naming the inconsistent fields and how to fix them."""
        for name in ("embed_dim", "image_size", "patch_size", "in_chans", "vision_width", "vision_layers",
                     "vision_heads", "context_length", "vocab_size", "text_width", "text_heads", "text_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if width % heads:
                raise ValueError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}; "
                                 f"pick a head count that divides it.")
            ratio = getattr(self, f"{tower}_mlp_ratio")
            if not ratio > 0 or int(width * ratio) < 1:
                raise ValueError(f"{tower}_mlp_ratio must give at least one hidden unit; got {ratio}.")
        if self.embed_dim != self.vision_width:
            raise ValueError(f"embed_dim {self.embed_dim} differs from vision_width {self.vision_width}: SigLIP's "
                             "image embedding is the attention pool's output, with no projection "
                             "(open_clip's timm_proj='none'); set embed_dim to vision_width.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive; got {self.norm_eps}.")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' (exact GELU, as timm and open_clip) or 'tanh' "
                             f"(transformers' gelu_pytorch_tanh); got {self.gelu_approximate!r}.")
        if self.weight_init not in ("timm", "big_vision"):
            raise ValueError(f"weight_init must be 'timm' (what open_clip's timm trunk gets) or 'big_vision' "
                             f"(SigLIP's original init); got {self.weight_init!r}.")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1); got {self.drop_path_rate}.")
        if self.max_logit_scale < 0:
            raise ValueError(f"max_logit_scale must be ≥ 0 (exp(0) = 1); got {self.max_logit_scale}.")
        if not 0 <= self.init_logit_scale <= self.max_logit_scale:
            raise ValueError(f"init_logit_scale {self.init_logit_scale} is outside [0, max_logit_scale "
                             f"{self.max_logit_scale}]; clamp_logit_scale() would move it on the first step.")
        if not math.isfinite(self.init_logit_bias):
            raise ValueError(f"init_logit_bias must be finite; got {self.init_logit_bias}.")
        check_attn_backend(self.attn_backend)


def _gelu(config: SigLIPConfig) -> Callable[[], nn.Module]:
    """The MLPs' activation: exact GELU (timm, open_clip) or its tanh approximation (transformers' SigLIP)."""
    return functools.partial(nn.GELU, approximate=config.gelu_approximate)


# --- the image tower: timm's VisionTransformer with global_pool="map", class_token=False, num_classes=0 ---


class AttentionPoolLatent(nn.Module):
    """timm's ``map`` head with its names: a learned ``latent`` query (projected by ``q``) attends to the
    tokens (projected by ``kv``), ``proj``, then a residual ``mlp`` over ``norm``; (B, N, C) to (B, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, backend: str,
                 act: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.num_heads = num_heads
        # The Triton kernels take self-attention only; one query over N keys is SDPA's (or the oracle's).
        self.backend = "eager" if backend == "eager" else "sdpa"
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        # The query is the same for every image: project the latent once and broadcast it.
        q = self.q(self.latent.to(x.dtype)).view(1, 1, h, c // h).transpose(1, 2).expand(b, -1, -1, -1)
        k, v = self.kv(x).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        x = attention(q, k, v, backend=self.backend).transpose(1, 2).reshape(b, c)
        x = self.proj(x)
        return x + self.mlp(self.norm(x))


class VisionTrunk(nn.Module):
    """The trunk with timm's names: patch_embed, pos_embed (no class token), blocks, norm, attn_pool."""

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        width = config.vision_width
        self.image_size = config.image_size
        self.in_chans = config.in_chans
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, width)
        grid = config.image_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, width))
        # On the CPU even under `with torch.device("meta")`: .tolist() needs values.
        rates = torch.linspace(0, config.drop_path_rate, config.vision_layers, device="cpu").tolist()
        act = _gelu(config)
        self.blocks = nn.Sequential(*[
            Block(width, Attention(width, config.vision_heads, True, config.attn_backend), config.vision_mlp_ratio,
                  rate, config.norm_eps, act)
            for rate in rates
        ])
        self.norm = nn.LayerNorm(width, eps=config.norm_eps)
        self.attn_pool = AttentionPoolLatent(width, config.vision_heads, config.vision_mlp_ratio, config.norm_eps,
                                             config.attn_backend, act)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images to (B, (S/p)², width) tokens after the final norm."""
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"images must be (batch, {self.in_chans}, height, width); "
                             f"got shape {tuple(images.shape)}.")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images are {images.shape[-2]}×{images.shape[-1]} but this model takes "
                             f"{self.image_size}×{self.image_size} (config.image_size); resize or crop them "
                             "to that size.")
        x = self.patch_embed(images).flatten(1, 2) + self.pos_embed.to(images.dtype)
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing and self.training))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.attn_pool(self.forward_features(images))


@torch.no_grad()
def _init_big_vision(trunk: VisionTrunk, width: int) -> None:
    """big_vision's ViT init, which SigLIP was trained from: LeCun-normal patch embedding, position embedding
    normal with std width^-½, Xavier-uniform linears (attention biases zero, MLP biases normal 1e-6), the MAP
    head's probe Xavier-uniform. At small widths it trains much faster than timm's 0.02 truncated normals,
    whose position embedding is drowned by the patch tokens and whose attention pool starts nearly flat."""
    fan_in = trunk.patch_embed.proj.weight[0].numel()
    nn.init.trunc_normal_(trunk.patch_embed.proj.weight, std=(1 / fan_in) ** 0.5 / 0.87962566103423978)
    nn.init.zeros_(trunk.patch_embed.proj.bias)
    nn.init.normal_(trunk.pos_embed, std=width ** -0.5)
    mlps = {m for m in trunk.modules() if isinstance(m, Mlp)}
    mlp_linears = {lin for mlp in mlps for lin in (mlp.fc1, mlp.fc2)}
    for m in trunk.modules():
        if isinstance(m, nn.Linear):
            # packed q|k|v and k|v: each its own (width, width) kernel, as big_vision's separate projections
            for part in ([m.weight] if m in mlp_linears else m.weight.split(width)):
                nn.init.xavier_uniform_(part)
            if m in mlp_linears:
                nn.init.normal_(m.bias, std=1e-6)
            else:
                nn.init.zeros_(m.bias)
    nn.init.xavier_uniform_(trunk.attn_pool.latent.view(1, width))


class VisionTower(nn.Module):
    """open_clip's TimmModel adapter: the ``trunk``; its ``head`` is empty for ``timm_proj="none"``."""

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        self.trunk = VisionTrunk(config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


# --- the text tower: open_clip's TextTransformer, bidirectional, last token pooled, projection with bias ---


class TextBlock(nn.Module):
    """open_clip's ResidualAttentionBlock: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, backend: str,
                 act: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = InProjAttention(dim, num_heads, backend, causal=False)
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(dim, hidden)),
            ("gelu", act()),
            ("c_proj", nn.Linear(hidden, dim)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextStack(nn.Module):
    """The blocks (``resblocks``), optionally checkpointed block by block while training."""

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([
            TextBlock(config.text_width, config.text_heads, config.text_mlp_ratio, config.norm_eps,
                      config.attn_backend, _gelu(config))
            for _ in range(config.text_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.resblocks, x, self.grad_checkpointing and self.training)


class TextTower(nn.Module):
    """open_clip's TextTransformer for SigLIP: token and position embeddings, the bidirectional blocks,
    ``ln_final``, the last position read, ``text_projection`` (a Linear with bias)."""

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        width = config.text_width
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, width))
        self.transformer = TextStack(config)
        self.ln_final = nn.LayerNorm(width, eps=config.norm_eps)
        self.text_projection = nn.Linear(width, config.embed_dim)

    def check(self, text: torch.Tensor) -> None:
        """Raise ValueError unless `text` is a (B, L ≤ context_length) integer tensor of ids in the vocabulary."""
        if text.dim() != 2 or text.dtype.is_floating_point or text.dtype == torch.bool:
            raise ValueError(f"text must be a (batch, length) tensor of integer token ids; got {text.dtype} "
                             f"of shape {tuple(text.shape)}.")
        if not 1 <= text.shape[1] <= self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens but the model takes 1 to {self.context_length} "
                             "(config.context_length); tokenize with that context length.")
        if torch.compiler.is_compiling():  # the value check needs a host sync, which would break the graph
            return
        if not bool(((text >= 0) & (text < self.vocab_size)).all()):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}) (config.vocab_size); got ids from "
                             f"{int(text.min())} to {int(text.max())}. Use the model's tokenizer.")

    def hidden(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) checked ids to (B, L, width) hidden states after ln_final."""
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        return self.ln_final(self.transformer(x))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        self.check(text)
        return self.text_projection(self.hidden(text)[:, -1])


class SigLIP(nn.Module):
    """SigLIP with open_clip's names: ``visual.trunk.*`` (timm's ViT), ``text.*``, ``logit_scale``, ``logit_bias``."""

    def __init__(self, config: SigLIPConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.visual = VisionTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The peers' inits: timm's for the image trunk (truncated normal 0.02 for the linears and the
        position embedding, the latent query at width^-½), open_clip's for the text tower (normal token and
        position embeddings, GPT-2-style scaled block weights, the projection at width^-½ with zero bias)."""
        cfg = self.config
        trunk = self.visual.trunk
        if cfg.weight_init == "big_vision":
            _init_big_vision(trunk, cfg.vision_width)
        else:
            nn.init.trunc_normal_(trunk.pos_embed, std=0.02)
            init_linears(trunk)
            latent_std = cfg.vision_width ** -0.5
            nn.init.trunc_normal_(trunk.attn_pool.latent, std=latent_std, a=-2 * latent_std, b=2 * latent_std)
        text = self.text
        nn.init.normal_(text.token_embedding.weight, std=0.02)
        nn.init.normal_(text.positional_embedding, std=0.01)
        attn_std = init_text_blocks(text.transformer.resblocks, cfg.text_width, cfg.text_layers)
        nn.init.normal_(text.text_projection.weight, std=attn_std)
        nn.init.zeros_(text.text_projection.bias)
        self.logit_scale.fill_(cfg.init_logit_scale)
        self.logit_bias.fill_(cfg.init_logit_bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only) to save memory."""
        self.visual.trunk.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp logit_scale in place to [0, max_logit_scale]; call after each optimizer step."""
        self.logit_scale.clamp_(0, self.config.max_logit_scale)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, C, S, S) images, S = config.image_size, to (B, embed_dim) embeddings (L2-normalized if asked)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, L ≤ context_length, to (B, L, text_width) hidden states after ln_final.

        Bidirectional: every position depends on every token.
        """
        self.text.check(text)
        return self.text.hidden(text)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids, L ≤ context_length, to (B, embed_dim) embeddings (L2-normalized if asked).

        Read at the last position, as open_clip's ``pool_type="last"``: pad the texts to the context
        length, as SigLIP's tokenizers do (a shorter row is read at its own last token instead).
        """
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor,
                text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalized image embeddings, normalized text embeddings, logit_scale.exp(), logit_bias), as
        open_clip's CustomTextCLIP with a logit bias."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        return image_features, text_features, self.logit_scale.exp(), self.logit_bias


def _named(image_size: int, patch: int, vision: tuple[int, int, int], text: tuple[int, int, int],
           context_length: int = 64, mlp_ratio: float = 4.0, **kw) -> SigLIPConfig:
    """A config from open_clip's json and timm's trunk: vision and text as (width, layers, heads)."""
    (vw, vl, vh), (tw, tl, th) = vision, text
    return SigLIPConfig(embed_dim=vw, image_size=image_size, patch_size=patch, vision_width=vw, vision_layers=vl,
                        vision_heads=vh, vision_mlp_ratio=mlp_ratio, context_length=context_length, text_width=tw,
                        text_layers=tl, text_heads=th, text_mlp_ratio=mlp_ratio, **kw)


# open_clip's model_configs/ViT-*-SigLIP*.json with the shapes of timm's vit_*_siglip_* trunks. `siglip_tiny` is
# vitfast's own, sized for the built-in default data (32×32 images, short captions) so that training it on a
# 2-core CPU takes minutes; a trainer sets vocab_size and context_length from the tokenizer it trains.
SIGLIP_CONFIGS: dict[str, SigLIPConfig] = {
    "ViT-B-16-SigLIP": _named(224, 16, (768, 12, 12), (768, 12, 12)),
    "ViT-B-16-SigLIP-256": _named(256, 16, (768, 12, 12), (768, 12, 12)),
    "ViT-B-16-SigLIP-384": _named(384, 16, (768, 12, 12), (768, 12, 12)),
    "ViT-L-16-SigLIP-256": _named(256, 16, (1024, 24, 16), (1024, 24, 16)),
    "ViT-SO400M-14-SigLIP": _named(224, 14, (1152, 27, 16), (1152, 27, 16), context_length=16, mlp_ratio=3.7362),
    "siglip_tiny": _named(32, 8, (128, 4, 4), (128, 3, 4), context_length=24, vocab_size=1024,  # clip_tiny's
                          weight_init="big_vision"),
}
