"""`vitfast bench siglip-loss` and vitfast.bench.siglip_loss: FLOP counts, a tiny sweep, memory, the
largest-batch search, open_clip's SigLipLoss as a peer, the CLI end to end and its errors, and its sweep in
`vitfast bench all`."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from vitfast.bench import siglip_loss as bs, suite
from vitfast.bench import largest_batch
from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA
from vitfast.cli import app
from vitfast.kernels import similarity, siglip_loss

CPU = torch.device("cpu")
TINY = ["--device", "cpu", "--batch-sizes", "32,64", "--dim", "16", "--rep", "1", "--warmup", "1"]


def run_cli(*args: str):
    return CliRunner().invoke(app, ["bench", "siglip-loss", *args])


def test_siglip_loss_flops():
    fwd = 2 * 8 * 8 * 16  # one N×N×D similarity product
    assert bs.siglip_loss_flops(batch=8, dim=16, mode="fwd") == fwd
    assert bs.siglip_loss_flops(batch=8, dim=16, mode="fwd+bwd") == 5 * fwd  # and two passes of two products
    with pytest.raises(ValueError, match="mode"):
        bs.siglip_loss_flops(batch=8, dim=16, mode="bwd")


def test_sweep_rows_on_cpu():
    rows = bs.bench_siglip_loss(dtype=torch.float32, batch_sizes=[32, 48], dim=16, device=CPU, warmup=1, rep=1)
    assert [(r.mode, r.case, r.backend) for r in rows][:3] == [("fwd", 32, "triton"), ("fwd", 32, "chunked"),
                                                                ("fwd", 32, "eager")]
    assert len(rows) == 2 * 2 * 3 and all(isinstance(r, bs.SiglipBenchRow) for r in rows)
    for r in rows:
        if r.backend == "triton":  # conftest sets TRITON_INTERPRET=1; the bench still skips it
            assert r.status == TRITON_NEEDS_CUDA
            assert r.time_ms is r.tflops is r.peak_mem_bytes is None
        else:
            assert r.ok and r.time_ms > 0 and r.peak_mem_bytes > 0
            flops = bs.siglip_loss_flops(batch=r.case, dim=16, mode=r.mode)
            assert r.tflops == pytest.approx(flops / (r.time_ms * 1e-3) / 1e12)
    assert rows[0].as_dict()["batch"] == 32 and rows[0].case_name == "N=32"


def test_the_timed_call_is_the_loss_with_every_gradient(monkeypatch):
    # What a case times computes what siglip_loss computes, and fwd+bwd reaches all four inputs.
    image, text, scale, bias = bs.make_inputs(16, 16, torch.float32, CPU, "fwd+bwd")
    assert (scale.item(), bias.item()) == (bs.LOGIT_SCALE, bs.LOGIT_BIAS)
    assert all(t.requires_grad for t in (image, text, scale, bias))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(16))
    calls, real = [], torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda out, leaves, grad: calls.append((out, leaves))
                        or real(out, leaves, grad))
    bs.make_call("chunked", "fwd+bwd", image, text, scale, bias)()
    (out, leaves), = calls
    torch.testing.assert_close(out, siglip_loss(image, text, scale, bias, backend="eager"))
    assert [t is u for t, u in zip(leaves, (image, text, scale, bias))] == [True] * 4


def test_chunked_needs_less_memory_than_eager(monkeypatch):
    # The chunked path's default chunk is 2^24 logits (64 MiB), which holds the whole matrix for every
    # N ≤ 4096: there it materializes as much as eager does. A chunk of 64 rows shows, at a size that
    # runs in a second, the O(N·D + chunk) memory the default chunk gives at N ≫ 4096 (measured: chunked
    # 0.5 MiB, eager 24 MiB).
    monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", 1 << 16)
    n = 1024
    rows = bs.bench_siglip_loss(dtype=torch.float32, batch_sizes=[n], dim=16, backends=["chunked", "eager"],
                                modes=["fwd+bwd"], device=CPU, warmup=1, rep=1)
    peak = {r.backend: r.peak_mem_bytes for r in rows}
    logits = n * n * 4
    assert peak["eager"] >= 2 * logits  # the similarities and the logits, both kept for the backward
    assert peak["chunked"] < logits / 2  # not even one matrix


def test_max_batch_fits_and_twice_does_not():
    limit = 4 * 2**20
    result = bs.max_batch("eager", "fwd", 16, torch.float32, CPU, limit, start=64)
    assert result.status == "ok" and result.memory_limit_bytes == limit
    assert result.batch is not None and result.batch > 64 and result.peak_mem_bytes <= limit
    # Measured again, independently of the search: the batch fits, twice it does not.
    size = dict(dim=16, dtype=torch.float32, device=CPU)
    assert bs.measure_footprint("eager", "fwd", batch=result.batch, **size) <= limit
    assert bs.measure_footprint("eager", "fwd", batch=2 * result.batch, **size) > limit
    # The search ended with a failing N within 5% above the answer.
    failed = [t.batch for t in result.tried if t.status == largest_batch.OVER_LIMIT]
    assert 0 < min(failed) - result.batch <= result.batch / 20
    assert [t for t in result.tried if t.batch == result.batch] == [
        largest_batch.MaxBatchTry(result.batch, result.peak_mem_bytes, "ok")]


def test_max_batch_cap_start_and_skips():
    capped = bs.max_batch("chunked", "fwd+bwd", 16, torch.float32, CPU, 2**30, start=64, cap=200)
    assert (capped.batch, capped.status) == (200, largest_batch.REACHED_CAP)
    assert [t.batch for t in capped.tried] == [64, 128, 200]
    nothing = bs.max_batch("eager", "fwd", 16, torch.float32, CPU, 1024, start=64)
    assert nothing.batch is None and nothing.status == f"does not fit at N=64: {largest_batch.OVER_LIMIT}"
    triton = bs.max_batch("triton", "fwd", 16, torch.float32, CPU, 2**20)
    assert triton.status == TRITON_NEEDS_CUDA and triton.tried == ()
    with pytest.raises(ValueError, match="needs a memory limit"):
        bs.max_batch("eager", "fwd", 16, torch.float32, CPU)


def test_max_batch_out_of_memory_bounds_the_search_and_errors_stop_it(monkeypatch):
    # What a GPU does: no limit is passed over, the call itself runs out of memory.
    def fake(backend, mode, *, batch, dim, dtype, device):
        if batch > 300:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if batch == 256 and backend == "chunked":
            raise ZeroDivisionError("boom")
        return batch

    monkeypatch.setattr(bs, "measure_footprint", fake)
    seen = []
    result = bs.max_batch("eager", "fwd", 16, torch.float32, CPU, 2**30, start=64, on_try=seen.append)
    assert result.status == "ok" and 285 <= result.batch <= 300
    assert OUT_OF_MEMORY in {t.status for t in result.tried} and tuple(seen) == result.tried
    broken = bs.max_batch("chunked", "fwd", 16, torch.float32, CPU, 2**30, start=64)
    assert broken.batch == 128 and broken.status == "error: ZeroDivisionError: boom"


def test_cli_sweep_and_max_batch_write_json_and_csv(tmp_path):
    out_json, out_csv, out_png = tmp_path / "out.json", tmp_path / "out.csv", tmp_path / "out.png"
    result = run_cli(*TINY, "--max-batch", "--memory-limit", "2MiB", "--json", str(out_json), "--csv", str(out_csv),
                     "--plot", str(out_png))
    assert result.exit_code == 0, result.output

    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "siglip_loss" and doc["fields"] == bs.FIELDS
    params = doc["parameters"]
    assert (params["batch_sizes"], params["dim"], params["dtype"]) == ([32, 64], 16, "float32")
    assert params["memory_limit"] == 2**20 * 2 and params["modes"] == ["fwd", "fwd+bwd"]
    rows = doc["rows"]
    assert [(r["mode"], r["batch"], r["backend"]) for r in rows] == [
        (m, n, b) for m in ("fwd", "fwd+bwd") for n in (32, 64) for b in ("triton", "chunked", "eager")]
    assert all((r["status"] == "ok") == (r["backend"] != "triton") for r in rows)
    assert {r["status"] for r in rows if r["backend"] == "triton"} == {TRITON_NEEDS_CUDA}
    assert all(r["time_ms"] is None for r in rows if r["backend"] == "triton")

    searches = {(s["mode"], s["backend"]): s for s in doc["max_batch"]}
    assert len(searches) == 6 and doc["max_batch_fields"] == bs.MAX_BATCH_FIELDS
    assert searches["fwd", "triton"]["status"] == TRITON_NEEDS_CUDA
    for (mode, backend), s in searches.items():
        if backend != "triton":
            assert s["status"] == "ok" and s["batch"] > 0 and 0 < s["peak_mem_bytes"] <= 2 * 2**20
            assert s["tried"][0]["batch"] == 32  # the search doubles from the sweep's smallest N

    with out_csv.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["backend"], r["batch"], r["status"]) for r in table] == [
        (r["backend"], str(r["batch"]), r["status"]) for r in rows]
    assert out_png.read_bytes()[:4] == b"\x89PNG"

    # Results on stdout, logs on stderr.
    assert "siglip loss" in result.stdout and "vs eager" in result.stdout and "largest batch" in result.stdout
    assert "largest batch, eager fwd: N=32 ok" in result.stderr and "TFLOP/s" not in result.stderr


def test_open_clip_peer_computes_the_same_loss_and_is_the_baseline():
    pytest.importorskip("open_clip")
    from open_clip.loss import SigLipLoss

    inputs = bs.make_inputs(48, 16, torch.float32, CPU, "fwd")
    torch.testing.assert_close(SigLipLoss()(*inputs), siglip_loss(*inputs, backend="eager"))
    result = run_cli(*TINY, "--backends", "eager,open_clip", "--mode", "fwd+bwd")
    assert result.exit_code == 0, result.output
    assert "vs open_clip" in result.stdout and "open_clip" in result.stdout
    assert result.stdout.count(" ok") == 4


@pytest.mark.parametrize("bad, message", [
    (["--backends", "chunked,flash"], "unknown backend 'flash'"),
    (["--backends", "open_clip-amp"], "unknown backend 'open_clip-amp'"),
    (["--dim", "24"], "backend triton needs an embedding dim that is a multiple of 16; got 24"),
    (["--batch-sizes", "0,64"], "batch sizes must be positive integers"),
    (["--batch-sizes", "1k"], "--batch-sizes takes comma-separated integers"),
    (["--rep", "0"], "--rep"),
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
    monkeypatch.setattr(bs, "open_clip_available", lambda: False)
    doc = bench_json("siglip-loss", *TINY, "--backends", "eager,open_clip", "--mode", "fwd")
    status = {r["backend"]: r["status"] for r in doc["rows"]}
    assert status == {"eager": "ok", "open_clip": bs.OPEN_CLIP_MISSING}
    assert "pip install open_clip_torch" in bs.OPEN_CLIP_MISSING


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bench_all_plans_the_siglip_sweep(dtype):
    sweeps = {s.name: s for s in suite.plan(CPU, quick=True, dtype=dtype)}
    siglip, clip = sweeps["siglip_loss"], sweeps["clip_loss"]
    assert list(sweeps).index("siglip_loss") == list(sweeps).index("clip_loss") + 1
    assert siglip.bench is bs.bench_siglip_loss and siglip.title == "siglip loss D=512"
    for key in ("batch_sizes", "dim", "dtype", "modes", "warmup", "rep"):
        assert siglip.params[key] == clip.params[key]
    peers = ["open_clip"] if bs.open_clip_available() else []
    assert siglip.params["backends"] == ["triton", "chunked", "eager", *peers]
    assert siglip.baselines == ("open_clip", "eager")


def test_bench_all_writes_the_siglip_sweep_and_its_summary_lines(tmp_path, monkeypatch):
    # `bench all --quick` less every sweep but the SigLIP loss's, at tiny sizes: a few seconds.
    real_plan = suite.plan

    def small(device, quick, dtype=None):
        return [dataclasses.replace(s, params={**s.params, "batch_sizes": [32, 64], "dim": 16})
                for s in real_plan(device, quick, dtype) if s.name == "siglip_loss"]

    monkeypatch.setattr(suite, "plan", small)
    out = tmp_path / "all"
    result = CliRunner().invoke(app, ["bench", "all", "--quick", "--output", str(out), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "siglip_loss.json").read_text())
    assert doc["benchmark"] == "siglip_loss" and doc["rows"]
    assert (out / "siglip_loss.png").read_bytes()[:4] == b"\x89PNG"
    lines = json.loads((out / "summary.json").read_text())["lines"]
    assert {x["sweep"] for x in lines} == {"siglip_loss"}
    assert {(x["case"], x["mode"]) for x in lines} == {("N=64", "fwd"), ("N=64", "fwd+bwd")}
    assert "| siglip_loss | N=64 | fwd+bwd | eager |" in (out / "summary.md").read_text()
    assert "siglip_lo" in result.stdout  # the summary's sweep column folds names past 9 characters at 80 columns


@pytest.mark.gpu
def test_cli_sweep_and_max_batch_on_gpu(bench_json):
    doc = bench_json("siglip-loss", "--device", "cuda", "--batch-sizes", "256,1024", "--dim", "64", "--rep", "2",
                     "--warmup", "1", "--max-batch", "--memory-limit", "64MiB")
    assert all(r["status"] == "ok" and r["time_ms"] > 0 and r["peak_mem_bytes"] > 0 for r in doc["rows"])
    assert all(s["status"] == "ok" and s["peak_mem_bytes"] <= 64 * 2**20 for s in doc["max_batch"])
