"""Shifted-window attention forward+backward (qkv and bias-table gradients) at Swin-T's stages, B=64,
window 7, shift 3, beside FlexAttention and timm's WindowAttention (the calls `vitfast bench window` times)."""

from __future__ import annotations

import pytest
from bench_common import DEVICE, DTYPE, backends, gpu_or

from vitfast.bench import window as bw


@pytest.mark.parametrize("backend", backends("triton", "sdpa", "flex", "timm"))
@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_window_attention_fwd_bwd(run, stage, backend):
    shape = gpu_or(bw.STAGES[stage], bw.WindowStage(14, 14, 32, 2))
    run(bw.make_call(backend, "fwd+bwd", gpu_or(64, 1), shape, 7, 3, DTYPE, DEVICE))
