"""`vitfast bench attention` and vitfast.bench.attention: FLOP counts, a tiny sweep end to end, failures as rows."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from vitfast.bench import attention as ab
from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA
from vitfast.bench.report import speedup_over
from vitfast.cli import app

TINY = ["-b", "1", "--heads", "2", "--head-dim", "16", "--seq-lens", "17,33", "--rep", "2",
        "--warmup", "1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", "attention", *args])


def test_attention_flops():
    shape = dict(batch=2, heads=3, seq_len=5, head_dim=8)
    fwd = 4 * 2 * 3 * 5 * 5 * 8
    assert ab.attention_flops(**shape, mode="fwd") == fwd
    assert ab.attention_flops(**shape, mode="fwd+bwd") == 3.5 * fwd
    assert ab.attention_flops(**shape, mode="fwd", causal=True) == fwd / 2
    assert ab.attention_flops(**shape, mode="fwd+bwd", causal=True) == 1.75 * fwd
    with pytest.raises(ValueError, match="mode"):
        ab.attention_flops(**shape, mode="bwd")


def test_cli_sweep_writes_json_and_png(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    result = run_cli(*TINY, "--device", "cpu", "--json", str(out_json), "--plot", str(out_png))
    assert result.exit_code == 0, result.output

    doc = json.loads(out_json.read_text())
    assert doc["parameters"]["dtype"] == "float32"  # --dtype auto on a CPU
    assert doc["parameters"]["seq_lens"] == [17, 33]
    assert {"device_name", "torch", "triton", "date"} <= doc["environment"].keys()
    rows = doc["rows"]
    expected = set(itertools.product(ab.MODES, [17, 33], ab.BACKENDS))
    assert {(r["mode"], r["seq_len"], r["backend"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        if r["backend"] == "triton":  # conftest sets TRITON_INTERPRET=1; the bench still skips it
            assert r["status"] == TRITON_NEEDS_CUDA
            assert r["time_ms"] is r["tflops"] is r["peak_mem_bytes"] is None
        else:
            assert r["status"] == "ok"
            assert r["time_ms"] > 0 and r["tflops"] > 0 and r["peak_mem_bytes"] > 0

    png = out_png.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000

    # Results on stdout, logs on stderr.
    assert "TFLOP/s" in result.stdout and "eager" in result.stdout
    assert "TFLOP/s" not in result.stderr
    assert "float32" in result.stderr


def test_cli_exits_1_when_no_case_ran(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    result = run_cli(*TINY, "--device", "cpu", "--backends", "triton", "--json", str(out_json),
                     "--plot", str(out_png))
    assert result.exit_code == 1
    assert "no case ran" in result.stderr
    assert all(r["status"] != "ok" for r in json.loads(out_json.read_text())["rows"])
    assert out_png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("bad", [
    ["--seq-lens", "197,abc"],
    ["--seq-lens", "0,17"],
    ["--seq-lens", ","],
    ["--backends", "triton,flash"],
    ["--modes", "bwd"],
    ["--batch-size", "0"],
    ["--head-dim", "-8"],
    ["--device", "tpu"],
])
def test_cli_bad_input_is_one_line_error(bad):
    result = run_cli(*TINY, *bad)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_typos_in_typed_choices_are_refused_by_the_parser():
    result = run_cli(*TINY, "--dtype", "fp8")
    assert result.exit_code == 2 and result.stdout == ""
    assert "'fp8' is not one of 'auto', 'bf16', 'fp16', 'fp32'" in " ".join(result.stderr.replace("│", "").split())


def test_failures_become_rows(monkeypatch):
    real = ab.attention

    def flaky(q, k, v, *, causal, backend):
        n = q.shape[2]
        if backend == "eager" and n == 33:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                               "allocate memory: you tried to allocate 1 bytes.")
        if backend == "sdpa" and n == 17:
            raise ValueError("head dim 16 is not supported")
        if backend == "eager" and n == 17:
            raise ZeroDivisionError("boom")
        return real(q, k, v, causal=causal, backend=backend)

    monkeypatch.setattr(ab, "attention", flaky)
    rows = ab.bench_attention(batch=1, heads=2, head_dim=16, dtype=torch.float32,
                                 seq_lens=[17, 33], backends=["sdpa", "eager"], modes=["fwd"],
                                 device=torch.device("cpu"), warmup=1, rep=1)
    status = {(r.backend, r.case): r.status for r in rows}
    assert status == {
        ("sdpa", 17): "head dim 16 is not supported",
        ("eager", 17): "error: ZeroDivisionError: boom",
        ("sdpa", 33): "ok",
        ("eager", 33): OUT_OF_MEMORY,
    }


def test_cpu_peak_memory_is_measured():
    # The eager path materializes the (B, H, N, N) float32 scores; SDPA's CPU kernel does not.
    n, heads = 256, 2
    rows = ab.bench_attention(batch=1, heads=heads, head_dim=16, dtype=torch.float32,
                                 seq_lens=[n], backends=["sdpa", "eager"], modes=["fwd"],
                                 device=torch.device("cpu"), warmup=1, rep=1)
    peak = {r.backend: r.peak_mem_bytes for r in rows}
    scores = heads * n * n * 4
    assert peak["eager"] >= scores
    assert 0 < peak["sdpa"] < scores


def test_speedup_over_sdpa():
    rows = [
        ab.AttentionBenchRow("sdpa", "fwd", 17, 2.0, 1.0, 1, "ok"),
        ab.AttentionBenchRow("eager", "fwd", 17, 4.0, 1.0, 1, "ok"),
        ab.AttentionBenchRow("triton", "fwd", 17, None, None, None, "skipped"),
        ab.AttentionBenchRow("eager", "fwd", 33, 4.0, 1.0, 1, "ok"),  # no sdpa row at N=33
    ]
    assert speedup_over(rows, "sdpa") == [1.0, 0.5, None, None]


@pytest.mark.gpu
def test_cli_sweep_on_gpu(bench_json):
    rows = bench_json("attention", *TINY, "--device", "cuda")["rows"]
    assert len(rows) == 12
    assert all(r["status"] == "ok" and r["time_ms"] > 0 and r["peak_mem_bytes"] > 0 for r in rows)
