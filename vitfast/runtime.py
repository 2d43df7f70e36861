"""Where and how vitfast runs: the device, the dtype and autocast policy, and the distributed set-up.

train, eval and bench all resolve their ``--device``, ``--dtype`` and ``--amp-dtype`` flags here, so
"auto" means the same everywhere: the GPU when there is one, bf16 autocast on CUDA and float32 on
a CPU (autocast is a CUDA feature for vitfast: CPU bf16 matmuls are slow and say nothing).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as dist

from vitfast.choices import DTYPE_NAMES

# The dtypes vitfast's flags name; keys in DTYPE_NAMES' order.
DTYPES: dict[str, torch.dtype] = {name: {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
                                  for name in DTYPE_NAMES}


def default_device() -> torch.device:
    """The GPU when torch sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """The device a name stands for: "auto" (the GPU if there is one, else the CPU), "cpu", "cuda[:N]"."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"cannot run on {name!r}; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu.")
    return device


def default_dtype_name(device: torch.device) -> str:
    """What "auto" means for a dtype flag on `device`: bf16 on CUDA, fp32 on a CPU."""
    return "bf16" if device.type == "cuda" else "fp32"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a name stands for: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" or "fp32"."""
    if name == "auto":
        name = default_dtype_name(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def amp_dtype_for(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp-dtype NAME`` on `device`, or None for no autocast (fp32)."""
    if name == "auto":
        name = default_dtype_name(device)
    if name not in DTYPES:
        raise ValueError(f"unknown --amp-dtype {name!r}; choose {', '.join(DTYPES)}.")
    if name != "fp32" and device.type != "cuda":
        raise ValueError(f"--amp-dtype {name} needs a CUDA GPU (autocast runs on CUDA); use fp32 on CPU.")
    return None if name == "fp32" else DTYPES[name]


def autocast(device: torch.device, amp: torch.dtype | None) -> ContextManager:
    """Autocast to `amp` on `device`, or nothing when `amp` is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA, as timm's and open_clip's trainers turn on
    (and the Triton kernels' float32 products follow; vitfast.kernels.precision). No-op without CUDA."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@dataclass
class Runtime:
    """This process's device and its place among torchrun's processes (rank 0 of 1 alone)."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(group: bool = False) -> Runtime:
    """One process, or one of torchrun's: NCCL on CUDA, gloo on CPU. With `group`, one process alone gets a
    process group of its own too (a one-rank group in memory), for what needs one at any size (FSDP)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or group:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if world > 1:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return Runtime(device, dist.get_rank(), world)
    return Runtime(default_device())
