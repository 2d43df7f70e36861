"""Layer-wise lr decay (--layer-decay): timm's groups for the same architecture, the learning rate each
group runs at, resume, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

import vitfast
from vitfast.models import model_family
from vitfast.models.peers import peer_model
from vitfast.train import TrainConfig, TrainUsageError, train
from vitfast.train.loop import STATE_NAME, build_optimizer, layer_ids, param_groups, warmup_cosine

timm_param_groups = pytest.importorskip("timm.optim._param_groups")

WD, DECAY = 0.05, 0.75
MODELS = [("vit_micro_patch4_32", {}), ("vit_micro_patch4_32", {"global_pool": "token"}),
          ("swin_micro_patch2_window4_32", {})]


def _by_name(model, groups) -> dict[str, tuple[float, float]]:
    """name -> (lr_scale, weight_decay) of the group holding it; each parameter in exactly one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in out
            out[names[id(p)]] = (g.get("lr_scale", 1.0), g["weight_decay"])
    return out


@pytest.mark.parametrize("name, overrides", MODELS, ids=["vit", "vit-token-pool", "swin"])
def test_groups_are_timms_for_the_same_architecture(name, overrides):
    ours = vitfast.create_model(name, **overrides)
    twin = peer_model(model_family(ours), ours.config)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in twin.named_parameters()]
    theirs = timm_param_groups.param_groups_layer_decay(
        twin, weight_decay=WD, layer_decay=DECAY, no_weight_decay_list=twin.no_weight_decay())
    groups = param_groups(ours, WD, DECAY)
    assert _by_name(ours, groups) == _by_name(twin, theirs)
    assert len(groups) == len(theirs)
    assert groups[0]["lr_scale"] == 1.0  # the top layer first: the lr the loop logs is the schedule's


def test_layer_ids_per_family():
    vit = layer_ids(vitfast.create_model("vit_micro_patch4_32"))  # depth 6, avg pool: fc_norm, no norm
    assert {vit[n] for n in ("cls_token", "pos_embed", "patch_embed.proj.weight")} == {0}
    assert [vit[f"blocks.{i}.attn.qkv.weight"] for i in range(6)] == [1, 2, 3, 4, 5, 6]
    assert vit["fc_norm.weight"] == vit["head.weight"] == 7
    token = layer_ids(vitfast.create_model("vit_micro_patch4_32", global_pool="token"))
    assert token["norm.weight"] == token["blocks.5.norm1.weight"] == 6 and token["head.weight"] == 7
    swin = layer_ids(vitfast.create_model("swin_micro_patch2_window4_32"))  # depths (2, 2, 2)
    assert swin["patch_embed.norm.weight"] == 0
    assert [swin[f"layers.{s}.blocks.{b}.mlp.fc1.weight"] for s in range(3) for b in range(2)] == [1, 2, 3, 4, 5, 6]
    assert swin["layers.1.downsample.reduction.weight"] == swin["layers.1.blocks.0.norm1.weight"] == 3
    assert swin["norm.weight"] == 6 and swin["head.fc.weight"] == 7


def test_without_layer_decay_the_groups_are_unchanged():
    for name in ("vit_micro_patch4_32", "swin_micro_patch2_window4_32", "clip_tiny"):
        model = vitfast.create_model(name)
        groups = param_groups(model, WD)
        assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2
        assert [g["weight_decay"] for g in groups] == [WD, 0.0]
        exempt = {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(("pos_embed", "cls_token"))}
        assert set(_by_name(model, groups)) == {n for n, _ in model.named_parameters()}
        assert {n for n, (_, wd) in _by_name(model, groups).items() if wd == 0.0} == exempt
        optimizer = build_optimizer(model, TrainConfig(model=name, lr=1e-3))
        assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "swin_micro_patch2_window4_32"])
def test_each_group_runs_at_the_schedule_times_its_scale(name):
    torch.manual_seed(0)
    model = vitfast.create_model(name, img_size=16)
    cfg = TrainConfig(model=name, lr=1e-3, min_lr=1e-5, layer_decay=DECAY)
    optimizer = build_optimizer(model, cfg)
    schedule = warmup_cosine(10, 2, cfg.lr, cfg.min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups}, reverse=True)
    assert scales == pytest.approx([DECAY ** k for k in range(len(scales))])
    for step in range(4):
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        for g in optimizer.param_groups:
            assert g["lr"] == pytest.approx(cfg.lr * schedule(step + 1) * g["lr_scale"], rel=1e-12)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, math.nan, math.inf])
def test_check_refuses_layer_decay_outside_0_1(value):
    with pytest.raises(TrainUsageError, match="--layer-decay must be .* above 0 and at most 1; got") as info:
        TrainConfig(layer_decay=value).check()
    assert "\n" not in str(info.value)


def test_check_accepts_layer_decay_in_0_1_and_refuses_it_for_clip():
    for value in (None, 0.1, 0.75, 1.0):
        TrainConfig(layer_decay=value).check()
    TrainConfig(model="clip_tiny").check()
    with pytest.raises(TrainUsageError, match="--layer-decay applies to ViT and Swin.*clip_tiny.*leave --layer-decay"):
        TrainConfig(model="clip_tiny", layer_decay=0.75).check()
    with pytest.raises(TrainUsageError, match="--layer-decay applies to ViT and Swin"):  # library callers
        param_groups(vitfast.create_model("clip_tiny"), WD, DECAY)


TINY = dict(model="vit_micro_patch4_32", img_size=16, batch_size=8, lr=3e-3, warmup_epochs=0.5, workers=0,
            attn_backend="sdpa", quiet=True, drop_path=0.1)


def test_training_saves_scaled_rates_and_a_resume_must_repeat_layer_decay(tiny_image_folder, tmp_path):
    out = tmp_path / "run"
    kw = dict(data_dir=str(tiny_image_folder), output=str(out), **TINY)
    train(TrainConfig(epochs=1, layer_decay=0.5, **kw), log=lambda m: None)
    groups = torch.load(out / STATE_NAME, weights_only=True)["optimizer"]["param_groups"]
    assert groups[0]["lr_scale"] == 1.0 and min(g["lr_scale"] for g in groups) == 0.5 ** 7
    for g in groups:
        assert g["lr"] == pytest.approx(groups[0]["lr"] * g["lr_scale"], rel=1e-12)
        assert g["initial_lr"] == pytest.approx(TINY["lr"] * g["lr_scale"], rel=1e-12)
    for changed in (0.75, None):
        with pytest.raises(TrainUsageError, match="--layer-decay was 0.5 in the saved run"):
            train(TrainConfig(epochs=2, layer_decay=changed, resume="latest", **kw), log=lambda m: None)
    train(TrainConfig(epochs=2, layer_decay=0.5, resume="latest", **kw), log=lambda m: None)
