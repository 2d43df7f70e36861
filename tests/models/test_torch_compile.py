"""torch.compile(model, fullgraph=True) with the Triton kernels: one graph, no break, equal to eager.

The kernels are torch.library custom ops with fake implementations and registered autograd, and
the checks that pick a backend are constants of the graph, so Dynamo traces a whole ViT, Swin or CLIP
(its loss included) without a graph break; Inductor then calls the kernels (the Triton interpreter
here, the GPU there). Forward and every parameter's gradient must equal eager's.
"""

from __future__ import annotations

import logging

import pytest
import torch

import vitfast
from vitfast.kernels import clip_loss, dispatch


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _check(model, run, backend: str, again=None) -> None:
    """`run(model)` compiled equals eager, forward and every gradient; then `again(model)` (another batch
    size: Dynamo recompiles with a dynamic batch) equals eager too."""
    eager_out = run(model)
    eager_out.sum().backward()
    eager_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = run(compiled)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    grads = _grads(model)
    assert len(grads) == len(eager_grads) > 0
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if again is not None:
        with torch.no_grad():
            torch.testing.assert_close(again(compiled), again(model), rtol=1e-5, atol=1e-5)


# Inductor's C++ code generation takes about half a minute per model on 2 cores, so one model runs
# through it (a ViT cut to two blocks: the generated code still runs one block's output into the next);
# the other through "aot_eager", which traces the same full graph (Dynamo, the fake implementations,
# AOT autograd's joint graph) and runs it without code generation.
# The Swin takes attn_backend="auto" with VITFAST_TRITON=1: the dispatch decision and its self-check run
# while Dynamo traces, and their answer (Triton) is a constant of the graph. Built at 24, its three stages
# cover every window geometry the kernels take under compile: a 12×12 map, nine 4×4 windows (plain and
# shifted blocks); a 6×6 map padded to 8 (the padded tokens' qkv_bias path, shifted); a 3×3 map that the
# window shrinks to (no shift).
@pytest.mark.parametrize("name, img_size, backend, attn, overrides", [
    pytest.param("vit_micro_patch4_32", 32, "inductor", "triton", {"depth": 2}, id="vit_micro-32-inductor-triton"),
    pytest.param("swin_micro_patch2_window4_32", 24, "aot_eager", "auto", {}, id="swin_micro-24-aot_eager-auto"),
])
def test_image_models_compile_fullgraph(name, img_size, backend, attn, overrides, monkeypatch, caplog):
    monkeypatch.setenv(dispatch.ENV, "1")
    dispatch.reset()
    torch.manual_seed(0)
    model = vitfast.create_model(name, attn_backend=attn, img_size=img_size, **overrides).eval()
    x, x2 = torch.randn(1, 3, img_size, img_size), torch.randn(2, 3, img_size, img_size)
    with caplog.at_level(logging.INFO, logger="vitfast.kernels"):
        # One case also takes another batch size (a dynamic-batch recompile): enough to show the graph
        # constants hold for a symbolic batch, without a second Inductor build on 2 cores.
        _check(model, lambda m: m(x), backend, again=(lambda m: m(x2)) if attn == "auto" else None)
    if attn == "auto":
        assert any(": triton (VITFAST_TRITON=1)" in r.getMessage() for r in caplog.records)
        assert not any(": sdpa (" in r.getMessage() for r in caplog.records)  # no window shape fell back
    dispatch.reset()


def test_clip_and_its_loss_compile_fullgraph():
    torch.manual_seed(0)
    # One layer per tower: the vision attention, the text tower's causal attention and the loss are each
    # traced and run once either way.
    model = vitfast.create_model("clip_tiny", attn_backend="triton", vision_layers=1, text_layers=1).eval()
    images = torch.randn(4, 3, 32, 32)
    text = torch.randint(0, 1023, (4, 24))
    text[:, 10] = 1023  # the end-of-text token the text tower pools

    def step(m):
        image_emb, text_emb, scale = m(images, text)
        return clip_loss(image_emb, text_emb, scale, backend="triton").reshape(1)

    _check(model, lambda m: step(m), "aot_eager")
