"""Shapes and helpers the pytest-benchmark suites share (a module of its own name, so that a run over
tests/ and benchmarks/ together cannot import tests/conftest.py in its place)."""

from __future__ import annotations

import os

import torch

SMOKE = os.environ.get("VITFAST_BENCH_SMOKE") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def gpu_or(gpu, smoke):
    """The GPU shape, or the tiny one for a CPU smoke run."""
    return gpu if DEVICE.type == "cuda" else smoke


def backends(*names: str) -> list[str]:
    """`names` less Triton and FlexAttention where there is no GPU (the interpreter's speed means nothing, and
    flex has no CPU backward)."""
    return [n for n in names if DEVICE.type == "cuda" or n not in ("triton", "flex")]
