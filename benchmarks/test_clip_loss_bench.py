"""The fused CLIP loss forward+backward at N=32768, D=512 against the chunked path and the materialized
N×N logits, and open_clip's ClipLoss both ways it is called (the calls `vitfast bench clip-loss` times)."""

from __future__ import annotations

import pytest
import torch
from bench_common import DEVICE, DTYPE, backends, gpu_or

from vitfast.bench import clip_loss as bc


@pytest.mark.parametrize("backend", backends("triton", "chunked", "eager"))
def test_clip_loss_fwd_bwd(run, backend):
    n, d = gpu_or((32768, 512), (256, 64))
    run(bc.make_call(backend, "fwd+bwd", *bc.make_inputs(n, d, DTYPE, DEVICE, "fwd+bwd")), rounds=gpu_or(20, 1))


@pytest.mark.parametrize("backend", ["open_clip", "open_clip-amp"])
def test_open_clip_loss_fwd_bwd(run, backend):
    # open_clip's ClipLoss on bf16 embeddings, and as its training loop calls it (float32 under bf16 autocast).
    pytest.importorskip("open_clip")
    n, d = gpu_or((32768, 512), (256, 64))
    run(bc.make_case(backend, "fwd+bwd", n, d, torch.bfloat16, DEVICE), rounds=gpu_or(20, 1))
