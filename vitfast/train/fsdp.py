"""FSDP2 for vitfast's models: every transformer block and the root sharded with PyTorch's ``fully_shard``.

Each rank keeps 1/world of every sharded parameter, its gradient and its optimizer state; a block's
parameters are all-gathered just before its forward (and again before its backward) and freed after,
and gradients are reduce-scattered. What the trainer needs beside that lives here:

- **Which blocks**: the family's residual blocks (ViT's ``blocks``, Swin's stages' blocks, both towers of
  CLIP and SigLIP), each its own FSDP unit, then the root for what is left (embeddings, norms, heads).
- **Scalars**: ``fully_shard`` refuses 0-dim parameters, and CLIP's ``logit_scale`` and SigLIP's
  ``logit_bias`` are 0-dim in open_clip's layout, which vitfast keeps. They stay ordinary replicated
  parameters (``ignored_params``), and :func:`sync_scalar_grads` averages their gradients across ranks,
  as DDP would.
- **Mixed precision**: with ``--amp-dtype`` bf16/fp16 the parameters are cast to it for compute and the
  gradients reduced in float32 (FSDP2's ``MixedPrecisionPolicy``); the master weights stay float32.
- **State**: the model folder holds gathered, unsharded tensors (a collective: every rank calls
  :func:`full_model_state`, rank 0 writes), so ``eval``, ``convert`` and ``load`` read it as any other;
  the training state is a distributed checkpoint of the shards (vitfast.train.state), which a run on
  another number of processes reads back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from vitfast.models import model_family


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of `model`, each an FSDP unit of its own."""
    family = model_family(model)
    if family == "vit":
        return list(model.blocks)
    if family == "swin":
        return [block for layer in model.layers for block in layer.blocks]
    if family == "clip":
        return [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    return [*model.visual.trunk.blocks, *model.text.transformer.resblocks]  # siglip


def shard(model: nn.Module, amp: torch.dtype | None, device: torch.device) -> list[nn.Parameter]:
    """Shard `model` (on the CPU) in place over the default process group and onto `device`; returns its
    replicated 0-dim parameters. ``fully_shard`` moves each unit's parameters and buffers to the process
    group's device as it shards them, one block at a time, so the whole model never sits on the device."""
    policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    scalars = [p for p in model.parameters() if p.dim() == 0]
    fully_shard(model, mp_policy=policy, ignored_params=set(scalars))
    with torch.no_grad():
        for p in scalars:  # FSDP leaves what it ignores where it was
            p.data = p.data.to(device)
    return scalars


def sync_scalar_grads(scalars: list[nn.Parameter], world: int) -> None:
    """Average the replicated scalars' gradients over the ranks (FSDP reduces only what it shards)."""
    grads = [p.grad for p in scalars if p.grad is not None]
    if not grads:
        return
    flat = torch.stack([g.float() for g in grads])  # on the parameters' device, as the backend needs
    dist.all_reduce(flat)
    for g, value in zip(grads, flat / world):
        g.copy_(value)


@contextlib.contextmanager
def root_gathered(model: nn.Module) -> Iterator[None]:
    """The root's own parameters (embeddings, final norms, projections) all-gathered for the duration, so that
    methods other than forward (CLIP's encode_image / encode_text in validation) can run; the blocks gather
    their own in their forward as always."""
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU (rank 0's is complete; a collective: every rank calls it)."""
    return get_model_state_dict(model, options=_FULL)


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter shard on every rank is finite (a collective)."""
    local = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                for p in model.parameters() if p.is_floating_point())
    flag = torch.tensor(1.0 if local else 0.0, device=next(model.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most `max_norm` (as torch's clip_grad_norm_)
    over the sharded gradients of every rank and the replicated scalars' (counted once); returns the norm."""
    sharded, plain = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if hasattr(p.grad, "full_tensor") else plain).append(p.grad)
    squares = torch.zeros((), device=next(model.parameters()).device)
    for g in sharded:
        squares = squares + g.to_local().float().pow(2).sum()
    dist.all_reduce(squares)  # the shards' sum over the ranks
    for g in plain:
        squares = squares + g.float().pow(2).sum()
    norm = squares.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in sharded:
        g.to_local().mul_(scale.to(g.dtype))
    for g in plain:
        g.mul_(scale.to(g.dtype))
    return norm
