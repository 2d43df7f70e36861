"""Which GPU a tensor is on, in the terms the tile and dispatch tables use.

An architecture is named as CUDA names it ("sm_90" for compute capability 9.0); CPU tensors under the
Triton interpreter are "interpreter", other CPU tensors "cpu", and AMD GPUs (ROCm builds of torch
report them as device type "cuda") "rocm", which vitfast's kernels have never been built for.

Tiles are chosen per *family*, by how much shared memory one block may use, since that is what
decides whether a tile fits: "sm_90" (227 KiB: H100, H200, and B200's sm_100), "sm_80" (163 KiB:
A100, A30, Orin) and "sm_86" (99 KiB: RTX 30/40/50, A6000, L40S). The compile gate builds every
family's tiles for each of its architectures and checks them against that limit.
"""

from __future__ import annotations

import functools

import torch

from ._triton import interpreting

# Shared memory one block may opt in to, per compute capability (CUDA programming guide, "Technical
# Specifications per Compute Capability").
SHARED_MEMORY_PER_BLOCK = {
    75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
    100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024,
}
# The oldest architecture the kernels target: bf16 tensor-core MMA begins with Ampere.
MIN_CAPABILITY = 80
FAMILIES = ("sm_80", "sm_86", "sm_90")
# Each family's shared-memory limit per block: the least of its members', so every member fits.
FAMILY_SHARED_MEMORY = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_90": 227 * 1024}


def capability_arch(major: int, minor: int) -> str:
    return f"sm_{major}{minor}"


def arch_capability(arch: str) -> int:
    """The compute capability in an arch name: "sm_90" → 90, "sm_120" → 120."""
    return int(arch.removeprefix("sm_"))


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> tuple[str, int]:
    props = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        return "rocm", 0
    smem = getattr(props, "shared_memory_per_block_optin", 0) or SHARED_MEMORY_PER_BLOCK.get(
        props.major * 10 + props.minor, 48 * 1024)
    return capability_arch(props.major, props.minor), int(smem)


def device_arch(device: torch.device) -> str:
    """"sm_XY" for an NVIDIA GPU, "rocm", "interpreter" (CPU under TRITON_INTERPRET=1) or "cpu"."""
    if device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())[0]
    return "interpreter" if device.type == "cpu" and interpreting() else device.type


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one block may use on `device` (as the driver reports it)."""
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())[1]


def family_of(arch: str, shared_memory: int | None = None) -> str | None:
    """The tile family of an architecture, or None where the kernels do not run (before sm_80, ROCm,
    plain CPU). The interpreter is its own family. A GPU newer than the tables is placed by its
    shared memory, so it never gets a tile larger than it can hold."""
    if arch == "interpreter":
        return "interpreter"
    if not arch.startswith("sm_") or arch_capability(arch) < MIN_CAPABILITY:
        return None
    if shared_memory is None:
        shared_memory = SHARED_MEMORY_PER_BLOCK.get(arch_capability(arch), 99 * 1024)
    for family in ("sm_90", "sm_80", "sm_86"):
        if shared_memory >= FAMILY_SHARED_MEMORY[family]:
            return family
    return None


def device_family(device: torch.device) -> str | None:
    """`device`'s tile family (see family_of); None where the Triton kernels cannot run."""
    arch = device_arch(device)
    return family_of(arch, shared_memory_limit(device) if arch.startswith("sm_") else None)


def unsupported_device(device: torch.device) -> str | None:
    """Why vitfast's Triton kernels cannot run on `device` (None: they can, given a tile that fits)."""
    name = device_arch(device)
    if name == "interpreter":
        return None
    if not name.startswith("sm_") and name != "rocm":
        return (f"the Triton kernels run on NVIDIA GPUs, or on CPU tensors under TRITON_INTERPRET=1; "
                f"got a {device.type} tensor")
    if name == "rocm":
        return "the Triton kernels are built and checked for NVIDIA GPUs only; this is a ROCm GPU"
    if device_family(device) is None:
        return f"the Triton kernels need compute capability 8.0 (Ampere) or newer; this GPU is {name}"
    return None
