"""`vitfast bench window` and vitfast.bench.window: FLOP counts, a small sweep end to end, bad flags."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitfast.bench import window as bw
from vitfast.cli import app

SMALL = ["-b", "1", "--stages", "stage3,stage4", "--rep", "1", "--warmup", "1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", "window", *args])


def test_window_flops():
    # Stage 1 of Swin-T: 64 windows of 49 tokens; a 10×10 map with window 7 pads to 2×2 windows.
    assert bw.window_flops(batch=2, stage=bw.STAGES["stage1"], window=7, mode="fwd") == 4 * 2 * 64 * 49**2 * 96
    small = bw.WindowStage(10, 10, 32, 1)
    assert bw.window_flops(batch=1, stage=small, window=7, mode="fwd+bwd") == 3.5 * 4 * 4 * 49**2 * 32
    with pytest.raises(ValueError, match="mode"):
        bw.window_flops(batch=1, stage=small, window=7, mode="bwd")


def test_cli_sweep_writes_json_and_png(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    result = run_cli(*SMALL, "--device", "cpu", "--json", str(out_json), "--plot", str(out_png))
    assert result.exit_code == 0, result.output
    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "window_attention" and doc["parameters"]["window"] == 7
    rows = doc["rows"]
    assert [(r["mode"], r["stage"], r["backend"]) for r in rows][:3] == [
        ("fwd", "stage3", "triton"), ("fwd", "stage3", "sdpa"), ("fwd", "stage3", "eager")]
    assert len(rows) == 12
    for r in rows:
        if r["backend"] == "triton":
            assert r["status"].startswith("skipped") and r["time_ms"] is None
        else:
            assert r["status"] == "ok" and r["time_ms"] > 0 and r["tflops"] > 0 and r["peak_mem_bytes"] > 0
    assert out_png.read_bytes().startswith(PNG_MAGIC)
    assert "stage3" in result.output and "vs sdpa" in result.output


@pytest.mark.parametrize("bad, message", [
    (["--stages", "stage9"], "unknown stage 'stage9'"),
    (["--shift", "7"], "--shift must be below --window (7)"),
    (["--backends", "flash"], "unknown backend 'flash'"),
    (["--dtype", "fp8"], "'fp8' is not one of"),
])
def test_cli_bad_input_is_one_line_error(bad, message):
    result = run_cli("--device", "cpu", *bad)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", "").split()) and "Traceback" not in result.output


@pytest.mark.gpu
def test_cli_sweep_on_gpu(bench_json):
    rows = bench_json("window", *SMALL, "--device", "cuda")["rows"]
    assert all(r["status"] == "ok" and r["time_ms"] > 0 and r["peak_mem_bytes"] > 0 for r in rows)
