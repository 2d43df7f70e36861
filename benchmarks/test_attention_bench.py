"""Attention forward and forward+backward: Triton against torch's SDPA and FlexAttention at the ViT-B/16
training shape and a long-sequence head-dim-128 shape, and the whole attention layer at the ViT-B/16 shape
beside timm's (the calls `vitfast bench attention` and `--module` time)."""

from __future__ import annotations

import pytest
from bench_common import DEVICE, DTYPE, backends, gpu_or

from vitfast.bench import attention as ab

SHAPES = {"vitb16": gpu_or((64, 12, 197, 64), (1, 2, 33, 16)), "long_d128": gpu_or((4, 16, 4096, 128), (1, 1, 64, 32))}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", backends("triton", "sdpa", "flex"))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(run, shape, backend, mode):
    run(ab.make_call(backend, mode, SHAPES[shape], DTYPE, False, DEVICE))


@pytest.mark.parametrize("backend", backends("triton", "sdpa", "flex", "timm"))
def test_attention_module_fwd_bwd(run, backend):
    run(ab.make_module_call(backend, "fwd+bwd", SHAPES["vitb16"], DTYPE, False, DEVICE))
