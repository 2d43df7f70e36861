"""Attention forward and forward+backward: Triton against torch's SDPA at the ViT-B/16 training shape
and a long-sequence head-dim-128 shape (the calls `vitfast bench attention` times)."""

from __future__ import annotations

import pytest
from bench_common import DEVICE, DTYPE, backends, gpu_or

from vitfast.bench import attention as ab

SHAPES = {"vitb16": gpu_or((64, 12, 197, 64), (1, 2, 33, 16)), "long_d128": gpu_or((4, 16, 4096, 128), (1, 1, 64, 32))}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", backends("triton", "sdpa"))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(run, shape, backend, mode):
    run(ab.make_call(backend, mode, SHAPES[shape], DTYPE, False, DEVICE))
