"""open_clip's losses on vitfast's kernels: ``ClipLoss`` and ``SigLipLoss`` take open_clip's constructor
arguments and call (``loss(image_features, text_features, logit_scale[, logit_bias], output_dict=False)``)
and give its loss values and gradients, without the N×N logits (vitfast.kernels.clip_loss / siglip_loss);
``accelerate_loss(loss)`` turns an open_clip loss object into one of them.

Across ranks (``world_size`` > 1, under torch.distributed): open_clip's settings map onto vitfast's gathered
loss as follows.
- ``gather_with_grad=True``: exact (``local_loss=True`` is vitfast's own semantics; with ``local_loss=False``
  open_clip reports the global loss on every rank, which the returned value is, the gradients being the same).
- ``gather_with_grad=False, local_loss=False`` (open_clip's default): every rank's gradient reaches only its own
  features, which is the gathered gradient divided by the world size; the features' gradients are scaled so.
- ``gather_with_grad=False, local_loss=True`` has no such relation and is refused (accelerate_loss leaves it).
SigLIP: every ``dist_impl`` of open_clip computes the same loss and gradients as vitfast's gathered one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from vitfast.kernels import clip_loss, siglip_loss


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def _world(rank: int, world_size: int, use_horovod: bool, name: str):
    if use_horovod:
        raise ValueError(f"{name}: horovod is not supported; use torch.distributed (torchrun).")
    if world_size > 1:
        if not dist.is_initialized():
            raise ValueError(f"{name}(world_size={world_size}) needs torch.distributed initialized (torchrun).")
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(f"{name}: rank {rank} of world_size {world_size} differs from torch.distributed's "
                             f"rank {dist.get_rank()} of {dist.get_world_size()}.")
        return dist.group.WORLD
    return None


class ClipLoss(nn.Module):
    """open_clip's ``ClipLoss`` (same arguments, values and gradients) on ``vitfast.kernels.clip_loss``."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.use_horovod, self.backend = rank, world_size, use_horovod, backend
        self.group = _world(rank, world_size, use_horovod, "ClipLoss")
        if self.group is not None and local_loss and not gather_with_grad:
            raise ValueError("ClipLoss(local_loss=True, gather_with_grad=False): each rank's gradient is a different "
                             "function from the gathered loss's; pass gather_with_grad=True (the same loss, exact "
                             "gradients) or keep open_clip's ClipLoss.")

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias=None, output_dict: bool = False):
        if self.group is not None and not self.gather_with_grad:
            image_features = _ScaleGrad.apply(image_features, 1 / self.world_size)
            text_features = _ScaleGrad.apply(text_features, 1 / self.world_size)
        loss = clip_loss(image_features, text_features, logit_scale, logit_bias=logit_bias, group=self.group,
                         backend=self.backend)
        if self.group is not None and not self.local_loss:  # open_clip reports the global loss on every rank
            total = loss.detach().clone()
            dist.all_reduce(total, group=self.group)
            loss = loss + (total / self.world_size - loss.detach())
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(nn.Module):
    """open_clip's ``SigLipLoss`` (same arguments, values and gradients) on ``vitfast.kernels.siglip_loss``."""

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl: str | None = None,
                 use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        if dist_impl not in (None, "bidir", "shift", "reduce", "gather"):
            raise ValueError(f"SigLipLoss: dist_impl must be bidir, shift, reduce or gather; got {dist_impl!r}.")
        self.cache_labels, self.rank, self.world_size, self.backend = cache_labels, rank, world_size, backend
        self.dist_impl = dist_impl or "bidir"
        self.group = _world(rank, world_size, use_horovod, "SigLipLoss")

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias,
                output_dict: bool = False):
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias, group=self.group,
                           backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


def accelerate_loss(loss: nn.Module, *, backend: str = "auto") -> nn.Module:
    """vitfast's equivalent of open_clip's `loss` (a ClipLoss or SigLipLoss, its settings kept), or `loss` itself
    where vitfast has none (another loss, or ClipLoss(local_loss=True, gather_with_grad=False) across ranks)."""
    name = type(loss).__name__
    if type(loss).__module__ != "open_clip.loss" or name not in ("ClipLoss", "SigLipLoss"):
        return loss
    try:
        if name == "ClipLoss":
            new = ClipLoss(loss.local_loss, loss.gather_with_grad, loss.cache_labels, loss.rank, loss.world_size,
                           loss.use_horovod, backend=backend)
        else:
            new = SigLipLoss(loss.cache_labels, loss.rank, loss.world_size, getattr(loss, "dist_impl", None),
                             getattr(loss, "use_horovod", False), backend=backend)
    except ValueError:
        return loss
    new.__dict__["original"] = loss  # not a submodule: vitfast.restore puts it back
    return new
