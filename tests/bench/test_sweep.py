"""vitfast.bench.sweep and the plans: rows keep their file format, the loop's order, baselines, and the
parameters each command records (in the order the JSON files have always had them)."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from vitfast.bench import attention, clip_loss, model, report, window
from vitfast.bench.sweep import KernelSweep, run_grid


@pytest.mark.parametrize("bench, case", [(attention, 197), (window, "stage3"), (clip_loss, 4096)])
def test_kernel_rows_name_their_case_in_the_files(bench, case, tmp_path):
    row_type = {attention: attention.AttentionBenchRow, window: window.WindowBenchRow,
                clip_loss: clip_loss.ClipBenchRow}[bench]
    row = row_type("sdpa", "fwd", case, 1.5, 2.0, 3, "ok")
    assert list(row.as_dict()) == list(bench.FIELDS)  # the JSON's keys, in the documented order
    assert row.as_dict()[row.case_field] == case and row.case_name.endswith(str(case))
    report.write_csv(tmp_path / "rows.csv", [row])
    with (tmp_path / "rows.csv").open(newline="") as f:
        assert next(csv.reader(f)) == list(bench.FIELDS)


def test_model_rows_are_their_fields():
    assert [f.name for f in dataclasses.fields(model.ModelBenchRow)] == list(model.FIELDS)


def test_run_grid_goes_mode_then_case_then_backend():
    seen = []
    rows = run_grid(["fwd", "fwd+bwd"], [1, 2], ["a", "b"], lambda m, c, b: f"{m} {c} {b}", seen.append)
    assert rows == seen == [f"{m} {c} {b}" for m in ("fwd", "fwd+bwd") for c in (1, 2) for b in ("a", "b")]


def test_baseline_is_the_first_that_ran():
    ran = clip_loss.ClipBenchRow("eager", "fwd", 8, 1.0, 1.0, 1, "ok")
    failed = clip_loss.ClipBenchRow("open_clip", "fwd", 8, None, None, None, "out of memory")
    sweep = KernelSweep(name="clip_loss", label="clip loss", bench=clip_loss.bench_clip_loss, params={},
                        benchmark="clip_loss", fields=clip_loss.FIELDS, cases=2, shape="",
                        baselines=("open_clip", "eager"))
    assert sweep.baseline([ran, failed]) == "eager"
    assert dataclasses.replace(sweep, baselines=("open_clip",)).baseline([ran, failed]) == "open_clip"


def test_plans_record_the_commands_parameters_in_order():
    cpu = torch.device("cpu")
    sweep = attention.plan(seq_lens=[17], device="cpu")
    assert list(sweep.params) == ["batch", "heads", "head_dim", "dtype", "seq_lens", "backends", "modes", "causal",
                                  "module", "device", "warmup", "rep"]
    assert (sweep.params["batch"], sweep.params["dtype"], sweep.params["warmup"], sweep.params["rep"]) == (
        1, torch.float32, 1, 3)  # a CPU's defaults
    assert sweep.cases == 2 * 3 and sweep.detail == " (--dtype auto)"
    sweep = window.plan(stages=["stage4"], dtype="fp32", device="cpu", warmup=2, rep=5)
    assert list(sweep.params) == ["batch", "stages", "window", "shift", "dtype", "backends", "modes", "warmup", "rep",
                                  "device"]
    assert (sweep.params["warmup"], sweep.params["rep"], sweep.device) == (2, 5, cpu)
    sweep = clip_loss.plan(batch_sizes=[64], dim=16, device="cpu", max_batch=True, memory_limit=2**20)
    assert list(sweep.params) == ["batch_sizes", "dim", "dtype", "backends", "modes", "warmup", "rep", "device"]
    assert sweep.recorded == {"memory_limit": 2**20} and sweep.baselines == ("eager",)
    with pytest.raises(ValueError, match="needs a memory limit"):
        clip_loss.plan(batch_sizes=[64], dim=16, device="cpu", max_batch=True)
    sweep = model.plan(name="vit_micro_patch4_32", device="cpu")
    assert list(sweep.params) == ["name", "modes", "backends", "batch", "img_size", "amp_dtype", "compare",
                                  "accelerate", "compile", "warmup", "rep", "retry_smaller", "device"]
    assert (sweep.params["batch"], sweep.shape) == (8, "vit_micro_patch4_32 B=8 fp32")  # the CPU's batch and dtype
