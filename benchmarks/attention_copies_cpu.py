"""Copies around attention: the copy, clone, stack and cat ops in one ViT block's and one CLIP text
block's forward+backward, per attention backend, read from the CPU profiler (Triton in the interpreter).

    python benchmarks/attention_copies_cpu.py            # table
    python benchmarks/attention_copies_cpu.py --list     # each counted op with its shapes and callers

Attention at ViT lengths is memory-bound, so a copy of q, k, v, the output or their gradients costs
about as much as the kernel reading them. Two kinds of op are set apart, not counted, and reported:
- inside a linear layer (addmm/mm and their backward): the CPU BLAS path's own output and operand
  copies, the same for every backend;
- the Triton interpreter's write-back of each launch's arguments (a 1-D copy of a storage onto
  itself, under the vitfast:: op that launched): the interpreter's, absent on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: CPU tensors need the interpreter

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

COPY_OPS = ("aten::copy_", "aten::clone", "aten::stack", "aten::cat", "aten::_to_copy", "aten::_reshape_copy")
LINEAR_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear")


def _callers(event) -> list[str]:
    names = []
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def kind(event) -> str | None:
    """"layout" for a copy the block makes, "linear" or "interpreter" for the two kinds set apart
    (module docstring), None for an op that copies nothing (or a 0-dim scalar)."""
    if event.name not in COPY_OPS:
        return None
    if event.name in ("aten::copy_", "aten::_to_copy") and not any(event.input_shapes):
        return None  # a Python number made a 0-dim tensor (QuickGELU's 1.702): nothing is laid out
    callers = _callers(event)
    if any(name in LINEAR_OPS or name.startswith("AddmmBackward") or name.startswith("MmBackward")
           for name in callers):
        return "linear"
    direct = callers[0] if callers else ""
    if event.name == "aten::copy_" and (direct.startswith("vitfast::") or "vitfast_" in direct) \
            and all(len(shape) <= 1 for shape in event.input_shapes if shape):
        return "interpreter"
    return "layout"


def profile_step(step) -> list:
    step()  # warm-up: first calls compile, register and allocate
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    return [e for e in prof.events() if kind(e)]


def blocks(backend: str):
    """(name, block, input) for a ViT-B-like block and a causal CLIP text block, both tiny."""
    from vitfast.models import layers
    from vitfast.models.clip import QuickGELU, ResidualAttentionBlock

    torch.manual_seed(0)
    vit = layers.Block(64, layers.Attention(64, 2, True, backend), 4.0, 0.0)
    text = ResidualAttentionBlock(64, 2, 4.0, QuickGELU, backend, True)
    return [("ViT block", vit, torch.randn(2, 17, 64)), ("CLIP text block (causal)", text, torch.randn(2, 11, 64))]


def count(backend: str) -> dict[str, collections.Counter]:
    """Per block: counts of "layout", "linear" and "interpreter" copy ops in one forward+backward."""
    out = {}
    for name, block, x in blocks(backend):
        x = x.requires_grad_()

        def step(block=block, x=x):
            block(x).sum().backward()

        out[name] = collections.Counter(kind(e) for e in profile_step(step))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="triton,sdpa,eager")
    parser.add_argument("--list", action="store_true", help="print each counted op with its shapes and callers")
    args = parser.parse_args()
    print(f"{'block':28s}{'backend':9s}{'layout copies':>14s}{'linear (BLAS)':>15s}{'interpreter':>13s}")
    for backend in args.backends.split(","):
        for name, counts in count(backend).items():
            print(f"{name:28s}{backend:9s}{counts['layout']:14d}{counts['linear']:15d}{counts['interpreter']:13d}")
        if args.list:
            for name, block, x in blocks(backend):
                x = x.requires_grad_()
                for e in profile_step(lambda block=block, x=x: block(x).sum().backward()):
                    if kind(e) == "layout":
                        print(f"  {name} {backend}: {e.name} {e.input_shapes[:2]} < {' < '.join(_callers(e)[:3])}")


if __name__ == "__main__":
    main()
