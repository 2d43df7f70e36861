"""`vitfast bench model` / `bench all` and vitfast.bench.model / suite: FLOPs counted from the config against
torch's own counter, a tiny sweep beside timm and open_clip, out-of-memory retries, the CLI end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from vitfast.bench import model as bm, suite
from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA
from vitfast.cli import app
from vitfast.models import build_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, overrides", [
    ("vit_micro_patch4_32", {}),
    ("vit_micro_patch4_32", {"class_token": False, "global_pool": "avg", "num_classes": 0}),
    ("vit_small_patch16_224", {"img_size": 64}),
    ("swin_micro_patch2_window4_32", {}),
    ("swin_micro_patch2_window4_32", {"img_size": 40}),  # 20x20 patches: stage maps 20, 10, 5 pad to windows
    ("clip_tiny", {}),
])
def test_flops_from_the_config_match_torch_flop_counter(name, overrides):
    import dataclasses

    family, config = bm.model_config(name, backend="eager")
    config = dataclasses.replace(config, **overrides)
    model = build_model(family, config).eval()
    size = config.image_size if family == "clip" else config.img_size
    images = torch.randn(2, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if family == "clip":
            text = torch.randint(0, config.vocab_size - 2, (2, config.context_length))
            text[:, -1] = config.vocab_size - 1
            model(images, text)
        else:
            model(images)
    assert bm.count_flops(family, config) == counter.get_total_flops() / 2  # per sample
    assert bm.count_flops(family, config, mode="train") == 3 * bm.count_flops(family, config)


def test_named_model_flops_are_the_published_ones():
    # timm's model cards: ViT-B/16 17.6 GMACs, Swin-T 4.5 GMACs at 224 (ours count FLOPs = 2 x MACs).
    assert bm.count_flops(*bm.model_config("vit_base_patch16_224")) / 2e9 == pytest.approx(17.56, abs=0.01)
    assert bm.count_flops(*bm.model_config("swin_tiny_patch4_window7_224")) / 2e9 == pytest.approx(4.5, abs=0.1)


def test_sweep_beside_timm_on_cpu():
    pytest.importorskip("timm")
    rows = bm.bench_model(name="vit_micro_patch4_32", modes=["infer", "train"], backends=["triton", "sdpa"],
                          batch=2, device=CPU, compare=["timm", "open_clip"], warmup=1, rep=1)
    assert [(r.mode, r.label) for r in rows] == [(m, b) for m in ("infer", "train")
                                                 for b in ("triton", "sdpa", "timm", "open_clip")]
    by = {(r.mode, r.label): r for r in rows}
    assert by["infer", "triton"].status == TRITON_NEEDS_CUDA
    assert by["infer", "open_clip"].status.startswith("skipped: open_clip has no vit model")
    for mode in ("infer", "train"):
        ours, timm = by[mode, "sdpa"], by[mode, "timm"]
        assert ours.ok and timm.ok and ours.params == timm.params == 1205898  # each counted on its own model
        assert ours.samples_per_s == pytest.approx(2 / (ours.step_ms * 1e-3))
        assert ours.peak_mem_bytes > 0
    # state: fp32 weights, and in training SGD's momentum too
    assert by["train", "sdpa"].state_bytes == 2 * by["infer", "sdpa"].state_bytes
    assert bm.speedups(rows, "timm")[rows.index(by["train", "timm"])] == 1.0


def test_accelerate_rows_beside_the_peers(monkeypatch):
    """--accelerate: a row per peer for its own model patched by vitfast.accelerate (Triton: on a CPU the row says
    it needs CUDA); its measurement patches the peer's model, which then runs the kernels (the interpreter here)."""
    pytest.importorskip("timm")
    rows = bm.bench_model(name="vit_micro_patch4_32", modes=["infer"], backends=["sdpa"], batch=1, device=CPU,
                          compare=["timm"], accelerate=True, warmup=0, rep=1)
    assert [r.label for r in rows] == ["sdpa", "timm", "timm+vitfast"]
    assert rows[1].ok and rows[2].status == TRITON_NEEDS_CUDA
    patched = []
    real = bm.patching.accelerate
    monkeypatch.setattr(bm.patching, "accelerate", lambda model, **kw: patched.append(kw) or real(model, **kw))
    family, config = bm.model_config("vit_micro_patch4_32")
    step_ms, peak, state, params = bm._measure_step(family, config, "timm+vitfast", "infer", 1, CPU, "fp32", False, 0,
                                                    1)
    assert patched == [{"backend": "triton"}] and step_ms > 0 and params == rows[1].params
    with pytest.raises(ValueError, match="--accelerate times the --compare library's model"):
        bm.validate_model_bench(name="vit_micro_patch4_32", modes=["infer"], backends=["sdpa"], compare=[], batch=1,
                                img_size=None, amp_dtype="fp32", accelerate=True)


def test_clip_trains_beside_open_clip():
    pytest.importorskip("open_clip")
    rows = bm.bench_model(name="clip_tiny", modes=["train"], backends=["eager"], batch=4, device=CPU,
                          compare=["open_clip"], warmup=1, rep=1)
    assert all(r.ok for r in rows) and rows[0].params == rows[1].params  # same architecture, counted apart


def test_out_of_memory_halves_the_batch(monkeypatch):
    real = bm._measure_step
    tried = []

    def tight(family, config, impl, mode, batch, *args):
        tried.append(batch)
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(family, config, impl, mode, batch, *args)

    monkeypatch.setattr(bm, "_measure_step", tight)
    kwargs = dict(name="vit_micro_patch4_32", modes=["infer"], backends=["eager"], batch=8, device=CPU, rep=1)
    row, = bm.bench_model(**kwargs, retry_smaller=True)
    assert tried == [8, 4, 2] and row.ok and (row.batch, row.requested_batch) == (2, 8)
    row, = bm.bench_model(**kwargs)
    assert row.status == OUT_OF_MEMORY and row.samples_per_s is None


def test_bad_arguments_are_named():
    base = dict(name="vit_micro_patch4_32", modes=["train"], backends=["sdpa"], compare=[], batch=2, img_size=None,
                amp_dtype="fp32")
    for change, message in [({"name": "vit_nope"}, "unknown model 'vit_nope'"), ({"modes": ["bwd"]}, "unknown mode"),
                            ({"backends": ["flash"]}, "unknown attention backend 'flash'"),
                            ({"compare": ["hf"]}, "unknown --compare 'hf'"), ({"batch": 0}, "at least 1"),
                            ({"amp_dtype": "fp8"}, "unknown AMP dtype")]:
        with pytest.raises(ValueError, match=message):
            bm.validate_model_bench(**{**base, **change})


def test_cli_model_table_json_and_plot(tmp_path):
    pytest.importorskip("timm")
    result = CliRunner().invoke(app, ["bench", "model", "-m", "vit_micro_patch4_32", "--compare", "timm", "-b", "2",
                                      "--attn-backend", "sdpa,eager", "--device", "cpu", "--rep", "1",
                                      "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    assert "vs timm" in result.stdout and "1.21M params" in result.stdout
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["benchmark"] == "model" and doc["environment"]["torch"] == torch.__version__
    assert [r["impl"] for r in doc["rows"]] == ["vitfast", "vitfast", "timm"] * 2
    assert set(doc["fields"]) == set(doc["rows"][0])
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["bench", "model", "-m", "vit_micro_patch4_32", "--mode", "fwd"])
    assert bad.exit_code == 2 and "'fwd' is not one of 'infer', 'train', 'both'" in " ".join(
        bad.output.replace("│", "").split())


def test_bench_all_writes_every_sweep_and_a_summary(tmp_path, monkeypatch):
    # The real --quick plan less two of its three models, so it runs in half a minute.
    real_plan = suite.plan

    def small(device, quick, dtype=None):
        assert quick
        sweeps = real_plan(device, quick, dtype)
        # Less FlexAttention too, whose compiles would double the time (test_bench_peers.py runs it).
        sweeps = [dataclasses.replace(s, params={**s.params, "backends": [b for b in s.params["backends"]
                                                                          if b != "flex"]}) for s in sweeps]
        return [s for s in sweeps if not s.name.startswith("model_") or s.name == "model_swin_micro_patch2_window4_32"]

    monkeypatch.setattr(suite, "plan", small)
    result = CliRunner().invoke(app, ["bench", "all", "--quick", "--output", str(tmp_path / "all"), "--device", "cpu",
                                      "-q"])
    assert result.exit_code == 0, result.output
    names = ["attention", "attention_module", "window", "clip_loss", "siglip_loss",
             "model_swin_micro_patch2_window4_32"]
    for name in names:
        assert json.loads((tmp_path / "all" / f"{name}.json").read_text())["rows"]
        assert (tmp_path / "all" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "all" / "summary.md").read_text()
    assert "| attention | N=197 | fwd+bwd | sdpa |" in summary and "| model_swin_micro_patch2_window4_32 |" in summary
    lines = json.loads((tmp_path / "all" / "summary.json").read_text())["lines"]
    assert {x["sweep"] for x in lines} == set(names)
    assert "clip_loss" in result.stdout and "skipped: Triton kernels need a CUDA GPU" in result.stdout
    window_rows = json.loads((tmp_path / "all" / "window.json").read_text())["rows"]
    assert {r["backend"] for r in window_rows if r["status"] == "ok"} == {"sdpa", "timm", "eager"}
