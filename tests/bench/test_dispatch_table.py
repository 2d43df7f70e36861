"""benchmarks/dispatch_table.py on `vitfast bench` JSON files in their real format (made on the CPU,
then given GPU times by hand): a run of sizes where Triton wins becomes one row, a loss splits it, a
failed tile check or a CPU run gives no row, and the table written is the one backend="auto" reads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from vitfast.cli import app
from vitfast.kernels import dispatch, tables

H100 = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "device_capability": "9.0"}
SOURCE = "benchmarks/results/test.json"


@pytest.fixture
def dispatch_table(bench_script):
    return bench_script("dispatch_table")


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory) -> dict[str, dict]:
    """One real sweep of each benchmark, on the CPU at tiny shapes (Triton's rows say it was skipped)."""
    folder = tmp_path_factory.mktemp("bench")
    common = ["--device", "cpu", "--warmup", "1", "--rep", "1", "--quiet"]
    commands = {
        "attention": ["attention", "--backends", "triton,sdpa,sdpa-flash", "--seq-lens", "17,33,65,129", "--heads", "1",
                      "-b", "1", "--head-dim", "32", "--modes", "fwd+bwd"],
        "window": ["window", "--stages", "stage4", "--backends", "triton,sdpa", "--modes", "fwd+bwd", "-b", "1"],
        "clip": ["clip-loss", "--batch-sizes", "64,128", "--dim", "32", "--backends", "triton,chunked",
                 "--mode", "fwd+bwd"],
    }
    docs = {}
    for name, args in commands.items():
        path = folder / f"{name}.json"
        result = CliRunner().invoke(app, ["bench", *args, *common, "--json", str(path)])
        assert result.exit_code == 0, result.output
        docs[name] = json.loads(path.read_text())
    return docs


def on_gpu(doc: dict, times: dict[str, list[float | None]]) -> dict:
    """`doc` as if run on an H100: each backend's fwd+bwd times in case order (None: it failed)."""
    doc = copy.deepcopy(doc)
    doc["environment"].update(H100)
    for backend, values in times.items():
        rows = [r for r in doc["rows"] if r["backend"] == backend and r["mode"] == "fwd+bwd"]
        assert len(rows) == len(values), backend
        for row, ms in zip(rows, values):
            row.update(time_ms=ms, status="ok" if ms is not None else "out of memory")
    return doc


def tile_check(arch="sm_90", failed=(), head_dims=None, failed_family="sm_90") -> dict:
    """A benchmarks/check_tiles.py document of an sm_90-family GPU: a passing float32 row per kernel, and
    for each of `failed` a failing one too, of a tile of `failed_family`."""
    rows = []
    for op, dim in {"attention": 32, "window_attention": 32, "clip_loss": 32, **(head_dims or {})}.items():
        for family, ok in [("sm_90", True)] + [(failed_family, False)] * (op in failed):
            rows.append({"op": op, "kernel": f"{op}.k", "config": "BLOCK=64 w4 s2", "families": [family],
                         "dtype": "float32", "case": "odd", "head_dim": dim, "size": 17, "output": "out",
                         "error": 1e-6 if ok else 1.0, "bound": 1e-5, "passed": ok,
                         "status": "ok" if ok else "out: max error 1 > bound 1e-05"})
    failures = sum(not r["passed"] for r in rows)
    return {"check": "tiles", "arch": arch, "family": "sm_90", "passed": not failures, "failed": failures,
            "total": len(rows), "rows": rows}


def decide(module, docs: dict[str, dict], check: dict, margin: float = 0.05) -> tuple[list[dict], str]:
    found = []
    for name, doc in docs.items():
        found += module.measurements(doc, name)[0]
    rows, lines = module.decide(found, module.passed_checks([check]), margin, SOURCE)
    return rows, "\n".join(lines)


def test_triton_ahead_on_a_contiguous_range_gives_one_row(dispatch_table, cpu_runs):
    # sdpa-flash is the best fallback; speedups 1.8, 1.5, 1.29 and 1.125.
    doc = on_gpu(cpu_runs["attention"], {"triton": [0.5, 0.6, 0.7, 0.8], "sdpa": [1.0] * 4, "sdpa-flash": [0.9] * 4})
    rows, summary = decide(dispatch_table, {"a.json": doc}, tile_check())
    assert rows == [{"kernel": "attention", "arch": "sm_90", "dtype": "float32", "head_dim": [32, 32],
                     "size": [17, 129], "speedup": 1.125, "source": SOURCE}]
    assert "sdpa-flash" in summary and "→ row: N 17–129" in summary


@pytest.mark.parametrize("at_33", [0.88, None], ids=["slower", "failed"])
def test_a_size_where_triton_loses_splits_the_range(at_33, dispatch_table, cpu_runs):
    # At N=33 Triton is ahead by only 2% (under the 5% margin), or did not run.
    doc = on_gpu(cpu_runs["attention"], {"triton": [0.5, at_33, 0.7, 0.8], "sdpa": [1.0] * 4,
                                         "sdpa-flash": [0.9] * 4})
    rows, _ = decide(dispatch_table, {"a.json": doc}, tile_check())
    assert [(r["size"], r["speedup"]) for r in rows] == [([17, 17], 1.8), ([65, 129], 1.125)]
    if at_33 is not None:  # a smaller margin takes it
        rows, _ = decide(dispatch_table, {"a.json": doc}, tile_check(), margin=0.01)
        assert [r["size"] for r in rows] == [[17, 129]]


def test_every_measurement_of_a_size_must_win(dispatch_table, cpu_runs):
    # A second sweep at the same sizes (say, causal) where Triton loses at N=129 ends the row at 65.
    ahead = on_gpu(cpu_runs["attention"], {"triton": [0.5] * 4, "sdpa": [1.0] * 4, "sdpa-flash": [1.0] * 4})
    behind = on_gpu(cpu_runs["attention"], {"triton": [0.5, 0.5, 0.5, 2.0], "sdpa": [1.0] * 4,
                                            "sdpa-flash": [1.0] * 4})
    rows, summary = decide(dispatch_table, {"a.json": ahead, "b.json": behind}, tile_check())
    assert [r["size"] for r in rows] == [[17, 65]]
    assert "b.json 129" in summary


def test_window_and_clip_rows_use_window_tokens_and_batch(dispatch_table, cpu_runs):
    window = on_gpu(cpu_runs["window"], {"triton": [1.0], "sdpa": [2.0]})
    clip = on_gpu(cpu_runs["clip"], {"triton": [1.0, 2.0], "chunked": [1.5, 3.0]})
    rows, _ = decide(dispatch_table, {"w.json": window, "c.json": clip}, tile_check())
    # Swin-T stage 4 with window 7: a 7×7 map, one window of 49 tokens, 768 channels in 24 heads of 32.
    assert [(r["kernel"], r["head_dim"], r["size"], r["speedup"]) for r in rows] == [
        ("clip_loss", [32, 32], [64, 128], 1.5), ("window_attention", [32, 32], [49, 49], 2.0)]


def test_a_failed_tile_check_gives_no_row(dispatch_table, cpu_runs):
    attention = on_gpu(cpu_runs["attention"], {"triton": [0.5] * 4, "sdpa": [1.0] * 4, "sdpa-flash": [1.0] * 4})
    clip = on_gpu(cpu_runs["clip"], {"triton": [1.0, 2.0], "chunked": [1.5, 3.0]})
    docs = {"a.json": attention, "c.json": clip}
    rows, summary = decide(dispatch_table, docs, tile_check(failed=("attention",)))
    assert [r["kernel"] for r in rows] == ["clip_loss"]
    assert "no row: the tile check failed" in summary
    # A failed tile of another family (checked with --all-families) does not count: this GPU never runs it.
    rows, _ = decide(dispatch_table, docs, tile_check(failed=("attention",), failed_family="sm_86"))
    assert [r["kernel"] for r in rows] == ["attention", "clip_loss"]
    # No row where the check ran another head dim, or on another GPU, or not at all.
    for check in (tile_check(head_dims={"attention": 64}), tile_check(arch="sm_80"), {"rows": []}):
        rows, _ = decide(dispatch_table, {"a.json": attention}, check)
        assert rows == []


def test_cpu_results_give_no_row(dispatch_table, cpu_runs):
    doc = copy.deepcopy(cpu_runs["attention"])  # the CPU run itself, Triton's rows given times anyway
    for row in doc["rows"]:
        row.update(time_ms=0.1 if row["backend"] == "triton" else 1.0, status="ok")
    found, why = dispatch_table.measurements(doc, "cpu.json")
    assert found == [] and "not a GPU run" in why


def test_main_writes_the_table_auto_reads(dispatch_table, cpu_runs, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    attention = on_gpu(cpu_runs["attention"], {"triton": [0.5, 0.6, 0.7, 0.8], "sdpa": [1.0] * 4,
                                               "sdpa-flash": [0.9] * 4})
    (folder / "attention.json").write_text(json.dumps(attention))
    (folder / "cpu.json").write_text(json.dumps(cpu_runs["clip"]))
    (folder / "other.json").write_text(json.dumps({"about": "not a sweep", "rows": []}))
    (tmp_path / "check.json").write_text(json.dumps(tile_check()))
    out = tmp_path / "dispatch.json"
    assert dispatch_table.main([str(folder), "--checks", str(tmp_path / "check.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 row(s)" in printed and "skipped cpu.json: not a GPU run" in printed
    doc = json.loads(out.read_text())
    shipped = json.loads((tables.HERE / "dispatch.json").read_text())
    assert doc["about"] == shipped["about"] and len(doc["rows"]) == 1
    # The source defaults to the name benchmarks/collect.py gives the merged run.
    date = attention["environment"]["date"][:10]
    assert doc["rows"][0]["source"] == f"benchmarks/results/nvidia-h100-80gb-hbm3-{date}.json"
    monkeypatch.setenv(tables.DISPATCH_ENV, str(out))
    dispatch.reset()
    row = tables.dispatch_row("attention", "sm_90", torch.float32, 32, 100)
    assert row is not None and row.speedup == 1.125 and row.size == (17, 129)
    assert tables.dispatch_row("attention", "sm_90", torch.float32, 32, 130) is None
    assert tables.dispatch_row("attention", "sm_90", torch.bfloat16, 32, 100) is None
    dispatch.reset()
