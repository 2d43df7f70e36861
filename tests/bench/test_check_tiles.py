"""benchmarks/check_tiles.py, step 1 and 2 of benchmarks/run_gpu.sh, on the CPU: the smoke run (the
interpreter's tiles at tiny shapes) passes and writes its JSON; a kernel output that is wrong, or a
kernel that fails to launch, fails it; the racecheck step's verdicts from compute-sanitizer's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "check_tiles.py"
KERNELS = {"attention.fwd", "attention.bwd", "attention.dkdv", "attention.dq", "window.fwd", "window.bwd", "clip.lse",
           "clip.grad"}
OUTPUTS = {("attention", o) for o in ("out", "dq", "dk", "dv", "dq (split)", "dk (split)", "dv (split)")} | \
    {("window_attention", o) for o in ("out", "dqkv", "dtable", "dqkv_bias")} | \
    {("clip_loss", o) for o in ("loss", "d_image", "d_text", "d_scale", "d_bias")}
# What benchmarks/dispatch_table.py reads from each row and from the document.
ROW_FIELDS = {"op", "kernel", "config", "dtype", "case", "head_dim", "size", "output", "error", "bound", "passed",
              "status"}


@pytest.fixture
def check_tiles(bench_script):
    return bench_script("check_tiles")


def test_smoke_run_passes_and_writes_its_json(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout
    doc = json.loads((tmp_path / "tile_check.json").read_text())
    assert doc["passed"] and doc["failed"] == 0 and doc["total"] == len(doc["rows"])
    assert (doc["arch"], doc["family"]) == ("interpreter", "interpreter")
    assert {r["kernel"] for r in doc["rows"]} == KERNELS
    assert {(r["op"], r["output"]) for r in doc["rows"]} == OUTPUTS
    assert {r["dtype"] for r in doc["rows"]} == {"float32", "float16"}
    for row in doc["rows"]:
        assert ROW_FIELDS <= set(row)
        assert row["passed"] and row["error"] <= row["bound"], row


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the interpreter in this process")
@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_a_faulty_kernel_fails_the_check(fault, check_tiles, monkeypatch, tmp_path, capsys):
    from vitfast.kernels import flash_attention as fa

    real = fa.attention_forward

    def faulty(*args, **kwargs):
        if fault == "raises":
            raise RuntimeError("ptxas failed")
        out, lse = real(*args, **kwargs)
        out[0, 0, -1, 0] += 0.5  # one element of the last row, in every case
        return out, lse

    monkeypatch.setattr(fa, "attention_forward", faulty)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    code = check_tiles.main(["--smoke", "--kernels", "attention", "--dtypes", "fp32", "--out", str(tmp_path)])
    assert code == 1
    doc = json.loads((tmp_path / "tile_check.json").read_text())
    failed = [r for r in doc["rows"] if not r["passed"]]
    assert not doc["passed"] and doc["failed"] == len(failed)
    assert {r["output"] for r in failed} >= {"out"}
    if fault == "raises":
        assert all(r["status"].startswith("error: RuntimeError: ptxas failed") for r in failed)
        assert len(failed) == len(doc["rows"])
    assert "FAILED" in capsys.readouterr().out


def test_the_rule_is_the_oracles(check_tiles):
    oracle = check_tiles.load_oracle()
    ref = torch.randn(50, dtype=torch.float64)
    eager = (ref + 1e-3 * torch.randn(50, dtype=torch.float64)).half()
    like = eager
    ok = check_tiles.judge(oracle, "x", ref.half(), ref, eager, like)
    assert ok["passed"] and ok["error"] <= ok["bound"]
    bad = check_tiles.judge(oracle, "x", ref.half() + 0.1, ref, eager, like)
    assert not bad["passed"] and bad["error"] > bad["bound"] and "max error" in bad["status"]
    nan = check_tiles.judge(oracle, "x", torch.full((50,), float("nan")).half(), ref, eager, like)
    assert not nan["passed"] and nan["error"] is None


DONE = "racecheck case ran: window-12 backward\n"


@pytest.mark.parametrize("output, code, verdict", [
    (DONE + "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", 0, "pass"),
    (DONE + "========= RACECHECK SUMMARY: 3 hazards displayed (2 errors, 1 warning)\n", 0, "fail"),
    ("========= Error: Device not supported\n", 255, "could not run"),
    ("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", 1, "could not run"),
    (DONE + "========= ERROR SUMMARY: 0 errors\n", 0, "pass"),
    (DONE + "========= ERROR SUMMARY: 1 error\n", 0, "fail"),
])
def test_racecheck_verdicts(output, code, verdict, check_tiles):
    assert check_tiles.racecheck_verdict(output, code)["verdict"] == verdict


@pytest.mark.parametrize("hazards", [None, 0, 2])
def test_racecheck_step(hazards, check_tiles, monkeypatch, tmp_path, capsys):
    tool = None
    if hazards is not None:  # a stand-in for compute-sanitizer that prints what the real one would
        tool = tmp_path / "compute-sanitizer"
        summary = f"RACECHECK SUMMARY: {hazards} hazards displayed ({hazards} errors, 0 warnings)"
        tool.write_text(f"#!/bin/sh\necho '{DONE.strip()}'\necho '========= {summary}'\n")
        tool.chmod(0o755)
    monkeypatch.setattr(check_tiles, "find_sanitizer", lambda: None if tool is None else str(tool))
    code = check_tiles.main(["--racecheck", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "racecheck.json").read_text())
    want = {None: "not available", 0: "pass", 2: "fail"}[hazards]
    assert doc["verdict"] == want and code == (1 if hazards else 0)
    assert f"racecheck of the window-12 backward: {want}" in capsys.readouterr().out


def test_racecheck_runs_again_without_the_kernel_filter_if_refused(check_tiles, monkeypatch, tmp_path):
    tool = tmp_path / "compute-sanitizer"
    summary = "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
    tool.write_text('#!/bin/sh\ncase "$*" in *--kernel-name*) echo "unrecognised option"; exit 1;; esac\n'
                    f"echo '{DONE.strip()}'\necho '========= {summary}'\n")
    tool.chmod(0o755)
    monkeypatch.setattr(check_tiles, "find_sanitizer", lambda: str(tool))
    assert check_tiles.main(["--racecheck", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "racecheck.json").read_text())
    assert doc["verdict"] == "pass" and "--kernel-name" not in doc["command"] and "reason" not in doc
