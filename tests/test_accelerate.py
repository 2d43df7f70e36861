"""vitfast.accelerate on timm's and open_clip's own models: the same outputs and gradients as unpatched (the
Triton kernels under the interpreter, fp32), in training and eval mode, compiled and under DDP; state_dict
byte-identical; the peers' own savers and loaders still work; what cannot be served is left and reported;
restore undoes it. open_clip's losses through accelerate_loss and the drop-in classes."""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import vitfast
from vitfast.models import named_config
from vitfast.models.peers import peer_model


def _peer(name: str, **overrides):
    family, config = named_config(name)
    return peer_model(family, dataclasses.replace(config, **overrides))


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _same_results(model, run, *, atol=2e-5) -> None:
    """`run(model)` before and after accelerate: outputs and every gradient (training mode, then eval)."""
    reference = copy.deepcopy(model)
    before = safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})
    vitfast.accelerate(model, backend="triton")
    assert safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()}) == before
    for mode in (True, False):
        model.train(mode), reference.train(mode)
        model.zero_grad(set_to_none=True), reference.zero_grad(set_to_none=True)
        got, want = run(model), run(reference)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
        if mode:
            got.square().sum().backward()
            want.square().sum().backward()
            g, w = _grads(model), _grads(reference)
            assert g.keys() == w.keys() and g
            for k in w:
                torch.testing.assert_close(g[k], w[k], atol=atol * 5, rtol=1e-3, msg=k)


def _timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**{"patch_size": 8, "depth": 2, "num_classes": 10, **kw})


def _timm_named(name: str, **kw):
    import timm

    return timm.create_model(name, **kw)


@pytest.mark.parametrize("build, img_size", [
    (lambda: _peer("vit_micro_patch4_32", drop_path_rate=0.0, img_size=16), 16),  # vitfast's twin in timm
    (lambda: _timm_vit(img_size=24, embed_dim=64, num_heads=4, class_token=False, global_pool="avg"), 24),
    (lambda: _timm_vit(img_size=40, embed_dim=96, num_heads=3, reg_tokens=2, no_embed_class=True), 40),
    (lambda: _timm_named("deit_tiny_patch16_224", img_size=48, depth=3), 48),
], ids=["micro", "no-class-token-head-dim-16", "registers-head-dim-32", "deit-tiny-at-48"])
def test_timm_vit(build, img_size):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 3, img_size, img_size)
    _same_results(model, lambda m: m(x))
    report = vitfast.accelerate_report(model)
    assert len(report.patched) == len(model.blocks) and not report.left


@pytest.mark.parametrize("img_size, window", [(20, 4), (16, 7)], ids=[
    "window4-maps-10-and-5-padded-and-shifted",  # 10×10 → 12×12 and 5×5 → 8×8 with the shift mask
    "window7-maps-8-and-4-shrunk",  # maps no larger than the window: timm shrinks it and drops the shift
])
def test_timm_swin(img_size, window):
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=img_size, patch_size=2, window_size=window, embed_dim=32, depths=(2, 2),
                            num_heads=(2, 4), num_classes=10, drop_path_rate=0.0)
    x = torch.randn(2, 3, img_size, img_size)
    _same_results(model, lambda m: m(x))
    report = vitfast.accelerate_report(model)
    assert {what for _, what in report.patched} == {"window_attention"} and not report.left
    assert len(report.patched) == sum(len(layer.blocks) for layer in model.layers)


def test_open_clip_clip_both_towers_and_the_causal_mask(tmp_path):
    torch.manual_seed(0)
    model = _peer("clip_tiny")
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(0, 400, (3, model.context_length))

    def run(m):
        image, text, scale = m(images, tokens)
        return torch.cat([image, text]) * scale

    _same_results(model, run)
    patched = [name for name, _ in vitfast.accelerate_report(model).patched]
    assert any(n.startswith("visual.") for n in patched) and any(n.startswith("transformer.") for n in patched)
    # open_clip's own loader reads what the patched model saves
    import open_clip

    torch.save({"state_dict": model.state_dict()}, tmp_path / "clip.pt")
    fresh = _peer("clip_tiny")
    open_clip.load_checkpoint(fresh, str(tmp_path / "clip.pt"))
    model.eval(), fresh.eval()
    torch.testing.assert_close(run(fresh), run(model), atol=2e-5, rtol=1e-4)


def test_what_cannot_be_served_is_left_and_reported(caplog):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=60, depth=1, num_heads=6)  # head dim 10
    qk = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, qk_norm=True)
    with caplog.at_level(logging.INFO, logger="vitfast"):
        vitfast.accelerate(model)
        vitfast.accelerate(qk)
    assert "head dim 10" in vitfast.accelerate_report(model).left[0][1]
    assert "qk_norm" in vitfast.accelerate_report(qk).left[0][1]
    assert "left blocks.0.attn" in caplog.text
    # timm has other classes named Attention, each with its own forward: named in the report, never patched
    from timm.models.metaformer import Attention as MetaFormerAttention

    other = torch.nn.Sequential(MetaFormerAttention(dim=64, head_dim=32))
    vitfast.accelerate(other)
    assert vitfast.accelerate_report(other).left == [
        ("0", "timm.models.metaformer.Attention: an attention vitfast does not know")]
    assert "forward" not in other[0].__dict__
    x = torch.randn(1, 3, 32, 32)
    reference = copy.deepcopy(qk)
    vitfast.restore(reference)
    torch.testing.assert_close(qk(x), reference(x))


def test_restore_and_deepcopy_and_the_peers_own_save_and_load(tmp_path):
    import timm

    torch.manual_seed(0)
    model = _peer("vit_micro_patch4_32", drop_path_rate=0.0)
    vitfast.accelerate(model, backend="sdpa")
    assert "forward" in model.blocks[0].attn.__dict__
    twin = copy.deepcopy(model)  # the copy's patched forward is bound to the copy
    assert twin.blocks[0].attn.forward.__self__ is twin.blocks[0].attn
    torch.save(model.state_dict(), tmp_path / "w.pth")
    fresh = _peer("vit_micro_patch4_32", drop_path_rate=0.0)
    timm.models.load_checkpoint(fresh, str(tmp_path / "w.pth"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=1e-4)
    vitfast.restore(model)
    assert "forward" not in model.blocks[0].attn.__dict__ and vitfast.accelerate_report(model) is None


def test_compiles_fullgraph_when_patched():
    torch.manual_seed(0)
    model = vitfast.accelerate(_peer("vit_micro_patch4_32", drop_path_rate=0.0, img_size=16).eval(), backend="triton")
    x = torch.randn(2, 3, 16, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-4)


def test_under_ddp_and_autocast():
    import torch.distributed as dist

    torch.manual_seed(0)
    model = _timm_vit(img_size=32, embed_dim=64, num_heads=2)
    reference = copy.deepcopy(model)
    vitfast.accelerate(model, backend="sdpa")
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the kernels' operands follow autocast, as timm's do
        torch.testing.assert_close(model(x).float(), reference(x).float(), atol=3e-2, rtol=3e-2)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ours, theirs = torch.nn.parallel.DistributedDataParallel(model), \
            torch.nn.parallel.DistributedDataParallel(reference)
        ours(x).square().sum().backward()
        theirs(x).square().sum().backward()
        for (k, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=k)
    finally:
        dist.destroy_process_group()


def test_open_clip_compiles_fullgraph_when_patched():
    """The text tower's causal mask is taken as checked when patched: no data-dependent branch in the graph."""
    torch.manual_seed(0)
    model = vitfast.accelerate(_peer("clip_tiny").eval(), backend="triton")
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 400, (2, model.context_length))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(images, tokens), model(images, tokens)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
