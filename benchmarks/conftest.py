"""pytest-benchmark suites at GPU shapes: `pytest benchmarks --benchmark-enable` on a CUDA machine.

Without CUDA every case skips, unless VITFAST_BENCH_SMOKE=1: then each suite runs once on the CPU at
tiny shapes (no Triton), which checks the suites themselves, not the kernels' speed.
"""

from __future__ import annotations

import pytest
import torch
from bench_common import DEVICE, SMOKE, gpu_or


def pytest_collection_modifyitems(config, items):
    if DEVICE.type == "cuda" or SMOKE:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (VITFAST_BENCH_SMOKE=1 runs tiny CPU shapes)")
    for item in items:
        if "benchmarks" in str(item.fspath):
            item.add_marker(skip)


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
