"""The fused CLIP loss forward+backward at N=32768, D=512 against the chunked path and the materialized
N×N logits (the calls `vitfast bench clip-loss` times)."""

from __future__ import annotations

import pytest
from bench_common import DEVICE, DTYPE, backends, gpu_or

from vitfast.bench import clip_loss as bc


@pytest.mark.parametrize("backend", backends("triton", "chunked", "eager"))
def test_clip_loss_fwd_bwd(run, backend):
    n, d = gpu_or((32768, 512), (256, 64))
    run(bc.make_call(backend, "fwd+bwd", *bc.make_inputs(n, d, DTYPE, DEVICE, "fwd+bwd")), rounds=gpu_or(20, 1))
