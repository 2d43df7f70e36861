"""vitfast's kernels in a timm or open_clip model, in place, in one call: ``vitfast.accelerate(model)``
(this module's :func:`accelerate`; ``vitfast.restore``, ``vitfast.accelerate_report`` beside it).

What it patches (each module's own parameters are read where they are: nothing is copied, added or
re-registered, so ``state_dict()`` keys and values stay as they were, and timm's and open_clip's savers and
loaders keep working):

- timm's ``Attention`` (timm.layers.attention: ViT, DeiT and the other VisionTransformer variants; the packed
  ``qkv`` Linear, ``proj``) →
  ``vitfast.kernels.packed_attention`` on the qkv projection as it is;
- timm's ``SwinTransformerBlock`` → ``vitfast.kernels.window_attention``: the block's roll, pad, partition,
  shift mask and reverse, and its attention's bias table and qkv bias, in one fused call;
- open_clip's ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` inside; CLIP's towers, the text
  tower's causal mask included) → ``packed_attention`` on its in_proj.

A patch is an instance attribute (the module's ``forward``, the Swin block's ``_attn``, the open_clip
block's ``attention``) bound to the module, so ``copy.deepcopy`` carries it to the copy. Each patched call
falls back to the module's own code for what the kernels do not do (an attention mask other than CLIP's
causal one, attention dropout in training). A module that cannot be served at all (q/k norms, a head dim
the kernels do not take, an unknown block type holding attention) is left as it was and named in the
report. ``restore(model)`` removes every patch.

Losses: ``accelerate_loss(loss)`` turns open_clip's ``ClipLoss`` / ``SigLipLoss`` into vitfast's
(``vitfast.losses``), which have the same constructor arguments and call.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vitfast.choices import ATTENTION_BACKENDS
from vitfast.kernels import packed_attention, window_attention
from vitfast.losses import accelerate_loss

log = logging.getLogger("vitfast")

# Head dims the Triton kernels take (kernels/flash_attention.py, kernels/swin_attention.py): multiples of 8.
HEAD_DIMS = range(16, 129, 8)
_PATCHED = "_vitfast_patch"  # the instance attribute holding (the patched method's name, the backend)


@dataclass
class Report:
    """What ``accelerate`` patched and what it left, by module name."""

    patched: list[tuple[str, str]] = field(default_factory=list)  # (name, what it runs now)
    left: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for _, what in self.patched:
            kinds[what] = kinds.get(what, 0) + 1
        lines = [f"vitfast.accelerate: patched {len(self.patched)} module(s)"
                 + (f" ({', '.join(f'{n} × {w}' for w, n in kinds.items())})" if kinds else "")]
        lines += [f"  left {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


# The classes served, by (module path, class name): timm and open_clip stay optional, and only these exact
# classes (timm has a dozen other classes named Attention, each with its own forward).
TIMM_ATTENTION = {("timm.layers.attention", "Attention"), ("timm.models.vision_transformer", "Attention")}
TIMM_SWIN_BLOCK = {("timm.models.swin_transformer", "SwinTransformerBlock")}
TIMM_WINDOW_ATTENTION = {("timm.models.swin_transformer", "WindowAttention")}
OPEN_CLIP_BLOCK = {("open_clip.transformer", "ResidualAttentionBlock")}
OPEN_CLIP_LOSSES = {("open_clip.loss", "ClipLoss"), ("open_clip.loss", "SigLipLoss")}


def _is(module: nn.Module, classes: set[tuple[str, str]]) -> bool:
    return (type(module).__module__, type(module).__name__) in classes


# ----------------------------------------------------------------------------------------------- timm ViT


def _timm_attention_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                            is_causal: bool = False) -> torch.Tensor:
    if attn_mask is not None or (self.training and self.attn_drop.p > 0):
        extra = {"is_causal": True} if is_causal else {}
        return type(self).forward(self, x, attn_mask=attn_mask, **extra)
    out = packed_attention(self.qkv(x), self.num_heads, causal=is_causal, scale=self.scale,
                           backend=getattr(self, _PATCHED)[1])
    return self.proj_drop(self.proj(self.norm(out)))


def _timm_attention_left(module: nn.Module) -> str | None:
    if not (isinstance(module.q_norm, nn.Identity) and isinstance(module.k_norm, nn.Identity)):
        return "q/k normalization (qk_norm) is not in the kernels"
    if getattr(module, "gate", None) is not None:
        return "a gated attention output is not in the kernels"
    if module.head_dim not in HEAD_DIMS:
        return f"head dim {module.head_dim}: the kernels take multiples of 8 from 16 to 128"
    return None


# ---------------------------------------------------------------------------------------------- timm Swin


def _timm_swin_attn(self, x: torch.Tensor) -> torch.Tensor:
    attn = self.attn
    if self.training and attn.attn_drop.p > 0:
        return type(self)._attn(self, x)
    # timm's block: roll by −shift, zero-pad to whole windows, partition, attention with the bias table and
    # the shift mask, reverse, crop, roll back. The kernel does all of it on the (B, H, W, 3·C) projection,
    # padded tokens' q, k, v being the qkv bias (timm pads before the projection).
    out = window_attention(attn.qkv(x), attn.relative_position_bias_table, num_heads=attn.num_heads,
                           window_size=self.window_size, shift_size=self.shift_size, qkv_bias=attn.qkv.bias,
                           scale=attn.scale, shrink_window=False, backend=getattr(self, _PATCHED)[1])
    return attn.proj_drop(attn.proj(out))


def _timm_swin_left(block: nn.Module) -> str | None:
    attn = block.attn
    if not _is(attn, TIMM_WINDOW_ATTENTION):
        return f"its attention is {type(attn).__name__}, not timm's WindowAttention"
    head_dim = attn.qkv.out_features // 3 // attn.num_heads
    if head_dim not in HEAD_DIMS:
        return f"head dim {head_dim}: the kernels take multiples of 8 from 16 to 128"
    if any(s >= w for s, w in zip(block.shift_size, block.window_size)):
        return f"shift {block.shift_size} is not below window {block.window_size}"
    return None


# ------------------------------------------------------------------------------------------------ open_clip


def _causal(mask: torch.Tensor) -> bool:
    """Whether `mask` is CLIP's additive causal mask: 0 on and below the diagonal, -inf above."""
    n = mask.shape[-1]
    if mask.dim() != 2 or mask.shape[0] != n or not mask.is_floating_point():
        return False
    upper = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def _open_clip_attention(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                         attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    mha = self.attn
    causal = attn_mask is not None
    own = k_x is not None or v_x is not None or (self.training and mha.dropout > 0)
    if causal and not torch.compiler.is_compiling():
        own = own or not _causal(attn_mask)  # under torch.compile: the tower's mask, checked when patched
    if own:
        return type(self).attention(self, q_x, k_x=k_x, v_x=v_x, attn_mask=attn_mask)
    x = q_x if mha.batch_first else q_x.transpose(0, 1)
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    out = mha.out_proj(packed_attention(qkv, mha.num_heads, causal=causal, backend=getattr(self, _PATCHED)[1]))
    return out if mha.batch_first else out.transpose(0, 1)


def _open_clip_left(block: nn.Module, tower_mask: torch.Tensor | None) -> str | None:
    mha = block.attn
    if not isinstance(mha, nn.MultiheadAttention):
        return f"its attention is {type(mha).__name__}, not nn.MultiheadAttention"
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return "nn.MultiheadAttention with separate q/k/v projections, bias_k/v or add_zero_attn"
    if mha.head_dim not in HEAD_DIMS:
        return f"head dim {mha.head_dim}: the kernels take multiples of 8 from 16 to 128"
    if hasattr(block, "ln_1_kv"):
        return "cross-attention"
    if tower_mask is not None and not _causal(tower_mask):
        return "its tower's attention mask is not CLIP's causal mask"
    return None


def _towers(model: nn.Module) -> dict[int, torch.Tensor | None]:
    """id(block) → the attention mask its tower passes (a buffer named attn_mask on the tower), for open_clip's
    text towers; absent: None."""
    masks: dict[int, torch.Tensor | None] = {}
    for tower in model.modules():
        mask = getattr(tower, "attn_mask", None)
        if isinstance(mask, torch.Tensor) and not isinstance(tower, nn.MultiheadAttention):
            for block in tower.modules():
                masks.setdefault(id(block), mask)
    return masks


# -------------------------------------------------------------------------------------------------- the call


def _patch(module: nn.Module, method: str, fn, backend: str) -> None:
    setattr(module, method, types.MethodType(fn, module))
    setattr(module, _PATCHED, (method, backend))


def accelerate(model: nn.Module, *, attention: bool = True, window_attention: bool = True, loss: bool = True,
               backend: str = "auto") -> nn.Module:
    """Patch `model` (timm's or open_clip's, or anything holding their modules) in place to run vitfast's
    kernels; returns it. `attention`: timm's ViT attention and open_clip's attention blocks;
    `window_attention`: timm's Swin blocks; `loss`: open_clip's ClipLoss / SigLipLoss modules inside `model`
    (replaced by vitfast's, see accelerate_loss); `backend`: the kernels' backend ("auto": Triton where
    measured, SDPA otherwise). A second call re-patches with the new settings. What was patched and what was
    left is logged once and kept: ``accelerate_report(model)``."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {backend!r}.")
    if _is(model, OPEN_CLIP_LOSSES):
        return accelerate_loss(model, backend=_loss_backend(backend)) if loss else model
    restore(model)
    result = Report()
    masks = _towers(model) if attention else {}
    # (on, classes, why it cannot be served or None, the method patched, the patch, what it runs)
    kinds = [(attention, TIMM_ATTENTION, _timm_attention_left, "forward", _timm_attention_forward, "packed_attention"),
             (window_attention, TIMM_SWIN_BLOCK, _timm_swin_left, "_attn", _timm_swin_attn, "window_attention"),
             (attention, OPEN_CLIP_BLOCK, lambda m: _open_clip_left(m, masks.get(id(m))), "attention",
              _open_clip_attention, "packed_attention")]
    for name, module in list(model.named_modules()):
        name = name or type(model).__name__
        kind = next((k for k in kinds if k[0] and _is(module, k[1])), None)
        if kind is not None:
            _, _, left, method, fn, runs = kind
            why = left(module)
            if why is None:
                _patch(module, method, fn, backend)
                result.patched.append((name, runs))
            else:
                result.left.append((name, why))
        elif _unknown_attention(module):
            result.left.append((name, f"{type(module).__module__}.{type(module).__name__}: an attention vitfast "
                                      "does not know"))
    if loss:
        _replace_losses(model, result, backend)
    model._vitfast_report = result
    log.info("%s", result)
    return model


_KNOWN = TIMM_ATTENTION | TIMM_SWIN_BLOCK | TIMM_WINDOW_ATTENTION | OPEN_CLIP_BLOCK


def _unknown_attention(module: nn.Module) -> bool:
    """A timm or open_clip attention module of a kind accelerate does not patch (named in the report)."""
    cls = type(module)
    package = cls.__module__.split(".")[0]
    return package in ("timm", "open_clip") and "Attention" in cls.__name__ and not _is(module, _KNOWN)


def _replace_losses(model: nn.Module, result: Report, backend: str, prefix: str = "") -> None:
    for name, child in list(model.named_children()):
        if _is(child, OPEN_CLIP_LOSSES):
            new = accelerate_loss(child, backend=_loss_backend(backend))
            if new is child:
                result.left.append((prefix + name, "these settings have no vitfast equivalent (see vitfast.losses)"))
            else:
                setattr(model, name, new)
                result.patched.append((prefix + name, f"vitfast.losses.{type(new).__name__}"))
        else:
            _replace_losses(child, result, backend, f"{prefix}{name}.")


def _loss_backend(backend: str) -> str:
    """The losses' backend for the attention backend asked for: "sdpa" is the losses' "chunked"."""
    return {"sdpa": "chunked"}.get(backend, backend)


def restore(model: nn.Module) -> nn.Module:
    """Undo ``accelerate(model)``: every patched module runs its own code again, and open_clip's losses
    come back in place of vitfast's. Returns `model`."""
    for module in model.modules():
        patch = module.__dict__.pop(_PATCHED, None)
        if patch is not None:
            module.__dict__.pop(patch[0], None)
    _put_back_losses(model)
    model.__dict__.pop("_vitfast_report", None)
    return model


def _put_back_losses(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        original = child.__dict__.get("original")
        if original is not None and type(child).__module__ == "vitfast.losses":
            setattr(model, name, original)
        else:
            _put_back_losses(child)


def accelerate_report(model: nn.Module) -> Report | None:
    """What the last ``accelerate(model)`` patched and left (None: not accelerated)."""
    return model.__dict__.get("_vitfast_report")
