"""`vitfast bench clip-loss` and vitfast.bench.clip_loss: FLOP counts, a tiny sweep, memory, the largest-batch
search, the CLI end to end and its errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from vitfast.bench import clip_loss as bc
from vitfast.bench import largest_batch
from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA
from vitfast.cli import app
from vitfast.kernels import similarity

CPU = torch.device("cpu")
TINY = ["--device", "cpu", "--batch-sizes", "32,64", "--dim", "16", "--rep", "1", "--warmup", "1"]


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", "clip-loss", *args])


def test_clip_loss_flops():
    fwd = 4 * 8 * 8 * 16  # two N×N×D similarity products
    assert bc.clip_loss_flops(batch=8, dim=16, mode="fwd") == fwd
    assert bc.clip_loss_flops(batch=8, dim=16, mode="fwd+bwd") == 3 * fwd
    with pytest.raises(ValueError, match="mode"):
        bc.clip_loss_flops(batch=8, dim=16, mode="bwd")


def test_sweep_rows_on_cpu():
    rows = bc.bench_clip_loss(dtype=torch.float32, batch_sizes=[32, 48], dim=16, device=CPU, warmup=1, rep=1)
    assert [(r.mode, r.case, r.backend) for r in rows][:3] == [("fwd", 32, "triton"), ("fwd", 32, "chunked"),
                                                                ("fwd", 32, "eager")]
    assert len(rows) == 2 * 2 * 3
    for r in rows:
        if r.backend == "triton":  # conftest sets TRITON_INTERPRET=1; the bench still skips it
            assert r.status == TRITON_NEEDS_CUDA
            assert r.time_ms is r.tflops is r.peak_mem_bytes is None
        else:
            assert r.ok and r.time_ms > 0 and r.peak_mem_bytes > 0
            flops = bc.clip_loss_flops(batch=r.case, dim=16, mode=r.mode)
            assert r.tflops == pytest.approx(flops / (r.time_ms * 1e-3) / 1e12)


def test_chunked_needs_less_memory_than_eager(monkeypatch):
    # The chunked path's default chunk is 2^24 logits (64 MiB), which holds the whole matrix for every
    # N ≤ 4096: there it materializes as much as eager does. A chunk of 32 rows shows, at a size that
    # runs in a second, the O(N·D + chunk) memory the default chunk gives at N ≫ 4096 (measured: chunked
    # 0.8 MiB, eager 24 MiB).
    monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", 1 << 15)
    n = 1024
    rows = bc.bench_clip_loss(dtype=torch.float32, batch_sizes=[n], dim=16, backends=["chunked", "eager"],
                              modes=["fwd+bwd"], device=CPU, warmup=1, rep=1)
    peak = {r.backend: r.peak_mem_bytes for r in rows}
    logits = n * n * 4
    assert peak["eager"] >= 2 * logits  # logits per image and per text, both kept for the backward
    assert peak["chunked"] < logits / 2  # not even one matrix


def test_max_batch_fits_and_twice_does_not():
    limit = 4 * 2**20
    result = bc.max_batch("eager", "fwd", 16, torch.float32, CPU, limit, start=64)
    assert result.status == "ok" and result.memory_limit_bytes == limit
    assert result.batch is not None and result.batch > 64 and result.peak_mem_bytes <= limit
    # Measured again, independently of the search: the batch fits, twice it does not.
    size = dict(dim=16, dtype=torch.float32, device=CPU)
    assert bc.measure_footprint("eager", "fwd", batch=result.batch, **size) <= limit
    assert bc.measure_footprint("eager", "fwd", batch=2 * result.batch, **size) > limit
    # The search ended with a failing N within 5% above the answer.
    failed = [t.batch for t in result.tried if t.status == largest_batch.OVER_LIMIT]
    assert 0 < min(failed) - result.batch <= result.batch / 20
    assert [t for t in result.tried if t.batch == result.batch] == [
        largest_batch.MaxBatchTry(result.batch, result.peak_mem_bytes, "ok")]


def test_max_batch_cap_start_and_skips():
    capped = bc.max_batch("chunked", "fwd+bwd", 16, torch.float32, CPU, 2**30, start=64, cap=200)
    assert (capped.batch, capped.status) == (200, largest_batch.REACHED_CAP)
    assert [t.batch for t in capped.tried] == [64, 128, 200]
    nothing = bc.max_batch("eager", "fwd", 16, torch.float32, CPU, 1024, start=64)
    assert nothing.batch is None and nothing.status == f"does not fit at N=64: {largest_batch.OVER_LIMIT}"
    triton = bc.max_batch("triton", "fwd", 16, torch.float32, CPU, 2**20)
    assert triton.status == TRITON_NEEDS_CUDA and triton.tried == ()
    with pytest.raises(ValueError, match="needs a memory limit"):
        bc.max_batch("eager", "fwd", 16, torch.float32, CPU)


def test_max_batch_out_of_memory_bounds_the_search_and_errors_stop_it(monkeypatch):
    # What a GPU does: no limit is passed over, the call itself runs out of memory.
    def fake(backend, mode, *, batch, dim, dtype, device):
        if batch > 300:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if batch == 256 and backend == "chunked":
            raise ZeroDivisionError("boom")
        return batch

    monkeypatch.setattr(bc, "measure_footprint", fake)
    result = bc.max_batch("eager", "fwd", 16, torch.float32, CPU, 2**30, start=64)
    assert result.status == "ok" and 285 <= result.batch <= 300
    assert OUT_OF_MEMORY in {t.status for t in result.tried}
    broken = bc.max_batch("chunked", "fwd", 16, torch.float32, CPU, 2**30, start=64)
    assert broken.batch == 128 and broken.status == "error: ZeroDivisionError: boom"


def test_cli_sweep_and_max_batch_write_json_and_csv(tmp_path):
    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    result = run_cli(*TINY, "--max-batch", "--memory-limit", "2MiB", "--json", str(out_json), "--csv", str(out_csv))
    assert result.exit_code == 0, result.output

    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "clip_loss" and doc["fields"] == bc.FIELDS
    params = doc["parameters"]
    assert (params["batch_sizes"], params["dim"], params["dtype"]) == ([32, 64], 16, "float32")
    assert params["memory_limit"] == 2**20 * 2 and params["modes"] == ["fwd", "fwd+bwd"]
    rows = doc["rows"]
    assert [(r["mode"], r["batch"], r["backend"]) for r in rows] == [
        (m, n, b) for m in ("fwd", "fwd+bwd") for n in (32, 64) for b in ("triton", "chunked", "eager")]
    assert all((r["status"] == "ok") == (r["backend"] != "triton") for r in rows)

    searches = {(s["mode"], s["backend"]): s for s in doc["max_batch"]}
    assert len(searches) == 6 and doc["max_batch_fields"] == bc.MAX_BATCH_FIELDS
    assert searches["fwd", "triton"]["status"] == TRITON_NEEDS_CUDA
    for (mode, backend), s in searches.items():
        if backend != "triton":
            assert s["status"] == "ok" and s["batch"] > 0 and 0 < s["peak_mem_bytes"] <= 2 * 2**20
            assert s["tried"][0]["batch"] == 32  # the search doubles from the sweep's smallest N

    with out_csv.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["backend"], r["batch"], r["status"]) for r in table] == [
        (r["backend"], str(r["batch"]), r["status"]) for r in rows]

    # Results on stdout, logs on stderr.
    assert "vs eager" in result.stdout and "largest batch" in result.stdout
    assert "largest batch, eager fwd: N=32 ok" in result.stderr and "TFLOP/s" not in result.stderr


def test_cli_open_clip_backend_is_the_baseline():
    pytest.importorskip("open_clip")
    result = run_cli(*TINY, "--backends", "eager,open_clip", "--mode", "fwd+bwd")
    assert result.exit_code == 0, result.output
    assert "vs open_clip" in result.stdout and "open_clip" in result.stdout
    assert result.stdout.count(" ok") == 4


@pytest.mark.parametrize("bad, message", [
    (["--backends", "chunked,flash"], "unknown backend 'flash'"),
    (["--dim", "24"], "backend triton needs an embedding dim that is a multiple of 16; got 24"),
    (["--batch-sizes", "0,64"], "batch sizes must be positive integers"),
    (["--batch-sizes", "1k"], "--batch-sizes takes comma-separated integers"),
    (["--max-batch"], "on a CPU the largest-batch search needs a memory limit"),
    (["--max-batch", "--memory-limit", "lots"], "cannot read the size 'lots'"),
    (["--max-batch", "--memory-limit", "1GiB", "--max-batch-cap", "0"], "--max-batch-cap must be at least 1"),
])
def test_cli_bad_input_is_one_line_error(bad, message):
    result = run_cli(*TINY, *bad)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in result.stderr and result.stdout == ""


@pytest.mark.parametrize("flag, value", [("--mode", "bwd"), ("--dtype", "fp8")])
def test_typos_in_typed_choices_are_refused_by_the_parser(flag, value):
    result = run_cli(*TINY, flag, value)
    assert result.exit_code == 2 and result.stdout == ""
    assert f"'{value}' is not one of" in " ".join(result.stderr.replace("│", "").split())


def test_open_clip_missing_is_a_row_that_says_so(monkeypatch, bench_json):
    # The GPU machines lack open_clip: its rows say so, and the sweep goes on.
    monkeypatch.setattr(bc, "open_clip_available", lambda: False)
    doc = bench_json("clip-loss", *TINY, "--backends", "eager,open_clip,open_clip-amp", "--mode", "fwd")
    status = {r["backend"]: r["status"] for r in doc["rows"]}
    assert status == {"eager": "ok", "open_clip": bc.OPEN_CLIP_MISSING, "open_clip-amp": bc.OPEN_CLIP_MISSING}
    assert "pip install open_clip_torch" in bc.OPEN_CLIP_MISSING


@pytest.mark.gpu
def test_cli_sweep_and_max_batch_on_gpu(bench_json):
    doc = bench_json("clip-loss", "--device", "cuda", "--batch-sizes", "256,1024", "--dim", "64", "--rep", "2",
                     "--warmup", "1", "--max-batch", "--memory-limit", "64MiB")
    assert all(r["status"] == "ok" and r["time_ms"] > 0 and r["peak_mem_bytes"] > 0 for r in doc["rows"])
    assert all(s["status"] == "ok" and s["peak_mem_bytes"] <= 64 * 2**20 for s in doc["max_batch"])
