"""The model registry's configs: a bad `attn_backend` is refused where the model is made (create_model,
build_config, vitfast.load), naming the value and the choices, not at the first forward pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vitfast
from vitfast.checkpoint import CheckpointError
from vitfast.choices import ATTENTION_BACKENDS
from vitfast.models import build_config, named_config

# The smallest model of each family, shrunk further where a test builds it.
SMALLEST = {"vit": ("vit_micro_patch4_32", {"depth": 1}),
            "swin": ("swin_micro_patch2_window4_32", {"depths": (1, 1, 1)}),
            "clip": ("clip_tiny", {"vision_layers": 1, "text_layers": 1}),
            "siglip": ("siglip_tiny", {"vision_layers": 1, "text_layers": 1})}
CHOICES = ", ".join(ATTENTION_BACKENDS)


@pytest.mark.parametrize("family", SMALLEST)
def test_create_model_refuses_unknown_attn_backend(family):
    name, small = SMALLEST[family]
    with pytest.raises(ValueError, match=f"unknown attn_backend 'bogus'; choose one of {CHOICES}"):
        vitfast.create_model(name, attn_backend="bogus", **small)


@pytest.mark.parametrize("family", SMALLEST)
def test_build_config_refuses_unknown_attn_backend(family):
    name, _ = SMALLEST[family]
    _, config = named_config(name)
    fields = {**dataclasses.asdict(config), "attn_backend": "flash"}
    with pytest.raises(ValueError, match="unknown attn_backend 'flash'"):
        build_config(family, fields)


@pytest.mark.parametrize("family", SMALLEST)
def test_every_backend_choice_builds(family):
    name, small = SMALLEST[family]
    for backend in ATTENTION_BACKENDS:
        assert vitfast.create_model(name, attn_backend=backend, **small).config.attn_backend == backend


@pytest.mark.parametrize("family", SMALLEST)
def test_load_refuses_unknown_attn_backend(family, tmp_path):
    name, small = SMALLEST[family]
    vitfast.save(vitfast.create_model(name, attn_backend="sdpa", **small), tmp_path)
    with pytest.raises(CheckpointError, match=f"unknown attn_backend 'bogus'; choose one of {CHOICES}"):
        vitfast.load(tmp_path, attn_backend="bogus")
    assert vitfast.load(tmp_path, attn_backend="eager").config.attn_backend == "eager"


def test_backend_set_after_creation_is_still_checked_by_the_op():
    # The config check guards construction; an attribute changed later still meets the op's own check.
    model = vitfast.create_model("vit_micro_patch4_32", depth=1).eval()
    model.blocks[0].attn.backend = "bogus"
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        model(torch.randn(1, 3, 32, 32))
