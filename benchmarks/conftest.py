"""pytest-benchmark suites at GPU shapes: `pytest benchmarks --benchmark-enable` on a CUDA machine.

Without CUDA every case skips, unless VITFAST_BENCH_SMOKE=1: then each suite runs once on the CPU at
tiny shapes (no Triton), which checks the suites themselves, not the kernels' speed.
"""

from __future__ import annotations

import os

import pytest
import torch

SMOKE = os.environ.get("VITFAST_BENCH_SMOKE") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def pytest_collection_modifyitems(config, items):
    if DEVICE.type == "cuda" or SMOKE:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (VITFAST_BENCH_SMOKE=1 runs tiny CPU shapes)")
    for item in items:
        item.add_marker(skip)


def gpu_or(gpu, smoke):
    """The GPU shape, or the tiny one for a CPU smoke run."""
    return gpu if DEVICE.type == "cuda" else smoke


def backends(*names: str) -> list[str]:
    """`names` less Triton where there is no GPU (the interpreter's speed means nothing)."""
    return [n for n in names if DEVICE.type == "cuda" or n != "triton"]


@pytest.fixture
def run(benchmark):
    """benchmark(fn) with CUDA synchronized after each call, a few warm-up calls (the first compiles)."""
    def go(fn, rounds: int = gpu_or(50, 1)):
        def synced():
            fn()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
        benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                    torch=torch.__version__)
        return benchmark.pedantic(synced, rounds=rounds, warmup_rounds=gpu_or(5, 1), iterations=1)
    return go
