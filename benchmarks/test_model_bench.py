"""A whole training step (forward, loss, backward, SGD) of ViT-B/16 and Swin-T per attention backend,
beside timm's same architecture, bf16 autocast, B=64 (the step `vitfast bench model` times)."""

from __future__ import annotations

import pytest
import torch
from bench_common import DEVICE, backends, gpu_or

from vitfast.bench import model as bm
from vitfast.models import build_model
from vitfast.models.peers import peer_model

MODELS = gpu_or(["vit_base_patch16_224", "swin_tiny_patch4_window7_224"],
                ["vit_micro_patch4_32", "swin_micro_patch2_window4_32"])


@pytest.mark.parametrize("impl", backends("triton", "sdpa") + ["timm"])
@pytest.mark.parametrize("name", MODELS)
def test_train_step(run, name, impl):
    if impl == "timm":
        pytest.importorskip("timm")
    family, config = bm.model_config(name, backend=None if impl == "timm" else impl)
    model = (peer_model(family, config) if impl == "timm" else build_model(family, config)).to(DEVICE)
    amp = torch.bfloat16 if DEVICE.type == "cuda" else None
    run(bm.make_step(family, config, model, "train", gpu_or(64, 2), DEVICE, amp, compile=False), rounds=gpu_or(20, 1))
