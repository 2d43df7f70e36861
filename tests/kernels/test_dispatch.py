"""backend="auto": the dispatch table decides, the self-check guards, failures fall back with a warning.

The interpreter is an architecture of its own ("interpreter"), so a row for it, injected through
VITFAST_DISPATCH, sends "auto" to the real Triton kernels on the CPU, self-check included.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from vitfast.kernels import arch, attention, clip_loss, dispatch, flash_attention, ops, similarity_ce, \
    swin_attention, tables, window_attention
from vitfast.kernels._triton import KERNEL_ERRORS

ROW = {"arch": "interpreter", "dtype": "float32", "head_dim": [16, 1024], "size": [1, 1 << 20], "speedup": 1.5,
       "source": "test"}


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    monkeypatch.delenv(dispatch.ENV, raising=False)
    monkeypatch.delenv(tables.DISPATCH_ENV, raising=False)
    dispatch.reset()
    yield
    dispatch.reset()


def _table(tmp_path, monkeypatch, *kernels: str) -> None:
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps({"rows": [{"kernel": k, **ROW} for k in kernels]}))
    monkeypatch.setenv(tables.DISPATCH_ENV, str(path))
    dispatch.reset()


class Spy:
    """Counts calls of a module function and forwards them (or raises `error`)."""

    def __init__(self, monkeypatch, module, name: str, error: Exception | None = None):
        self.calls, self.error, self.fn = 0, error, getattr(module, name)
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.fn(*args, **kwargs)


def _qkv(n=33, d=32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, d, generator=g) for _ in range(3)]


def _window_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 9, 11, 3 * 64, generator=g), torch.randn(169, 2, generator=g), torch.randn(192, generator=g)


def _pairs(n=40, d=32):
    g = torch.Generator().manual_seed(0)
    return [F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(2)]


def test_without_a_row_auto_runs_sdpa_and_says_why(caplog, monkeypatch):
    spy = Spy(monkeypatch, flash_attention, "triton_attention")
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="vitfast.kernels"):
        out = attention(q, k, v)
        attention(q, k, v)
    assert spy.calls == 0
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1, notes  # once, not per call
    assert "attention on interpreter, float32, head dim 32, size 33: sdpa (no measured row in dispatch.json" in notes[0]


@pytest.mark.parametrize("kernel", ["attention", "window_attention", "clip_loss"])
def test_a_row_sends_auto_to_triton_after_a_passing_self_check(kernel, tmp_path, monkeypatch, caplog):
    _table(tmp_path, monkeypatch, kernel)
    if kernel == "attention":
        spy = Spy(monkeypatch, flash_attention, "triton_attention")
        q, k, v = _qkv()
        run, want = (lambda: attention(q, k, v)), attention(q, k, v, backend="triton")
    elif kernel == "window_attention":
        spy = Spy(monkeypatch, swin_attention, "triton_window_attention")
        qkv, table, bias = _window_inputs()
        args = dict(num_heads=2, window_size=7, shift_size=3, qkv_bias=bias)
        run, want = (lambda: window_attention(qkv, table, **args)), window_attention(qkv, table, backend="triton",
                                                                                      **args)
    else:
        spy = Spy(monkeypatch, similarity_ce, "tiled_clip_loss")
        image, text = _pairs()
        run, want = (lambda: clip_loss(image, text, 10.0)), clip_loss(image, text, 10.0, backend="triton")
    before = spy.calls
    with caplog.at_level(logging.INFO, logger="vitfast.kernels"), warnings.catch_warnings():
        warnings.simplefilter("error")  # the self-check passes: no warning
        got = run()
    assert torch.equal(got, want)  # bit-identical to the explicit Triton backend
    assert spy.calls > before
    assert any(f"{kernel} on interpreter" in r.getMessage() and ": triton (measured 1.50× faster (test))"
               in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autocast"])
def test_the_self_check_runs_in_any_caller_mode(mode, tmp_path, monkeypatch):
    """Evaluation loops call the ops under no_grad or inference_mode, training under autocast: the
    self-check still differentiates and compares like with like, and passes."""
    _table(tmp_path, monkeypatch, "attention")
    spy = Spy(monkeypatch, flash_attention, "triton_attention")
    q, k, v = _qkv()
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
               "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[mode]
    with context, warnings.catch_warnings():
        warnings.simplefilter("error")
        # precision="ieee": float32 products under autocast, so the float32 row applies and the check
        # must not let autocast turn its SDPA reference into bf16.
        attention(q, k, v, precision="ieee")
    assert spy.calls >= 2  # the self-check's call and the real one


def test_causal_attention_has_rows_of_its_own(tmp_path, monkeypatch):
    """A causal call (CLIP's text tower) is another kernel variant: a non-causal row does not cover it."""
    spy = Spy(monkeypatch, flash_attention, "triton_attention")
    q, k, v = _qkv()
    _table(tmp_path, monkeypatch, "attention")
    attention(q, k, v, causal=True)
    assert spy.calls == 0
    _table(tmp_path, monkeypatch, "causal_attention")
    out = attention(q, k, v, causal=True)
    assert spy.calls >= 2  # the causal self-check's call and the real one
    assert torch.equal(out, attention(q, k, v, causal=True, backend="triton"))


def test_a_failing_self_check_warns_once_and_falls_back(tmp_path, monkeypatch):
    _table(tmp_path, monkeypatch, "attention")
    monkeypatch.setattr(ops, "_attention_self_check", lambda *args: 0.5)
    spy = Spy(monkeypatch, flash_attention, "triton_attention")
    q, k, v = _qkv()
    with pytest.warns(RuntimeWarning, match="failed its self-check .* differs from the fallback by 0.5"):
        out = attention(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v)  # decided: no second warning, no second check
    assert spy.calls == 0
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("error", KERNEL_ERRORS[:1], ids=lambda e: e.__name__)
def test_a_kernel_that_fails_to_build_falls_back(error, tmp_path, monkeypatch):
    """Out of shared memory, a compiler or ptxas error: a warning and the fallback, never a crash."""
    _table(tmp_path, monkeypatch, "clip_loss")
    exc = error("shared memory", 232448, 300000) if error.__name__ == "OutOfResources" else error("boom")
    monkeypatch.setattr(ops, "_clip_self_check", lambda *args: None)
    spy = Spy(monkeypatch, similarity_ce, "tiled_clip_loss")
    fails = Spy(monkeypatch, similarity_ce, "_triton_lse", error=exc)
    image, text = _pairs()
    with pytest.warns(RuntimeWarning, match="the Triton clip_loss kernel failed on interpreter"):
        loss = clip_loss(image, text, 10.0)
    assert fails.calls == 1 and spy.calls == 2  # the Triton try, then the chunked fallback
    torch.testing.assert_close(loss, clip_loss(image, text, 10.0, backend="chunked"), rtol=0, atol=0)
    clip_loss(image, text, 10.0)
    assert fails.calls == 1  # recorded: Triton is not tried again in this process


def test_explicit_triton_lets_a_kernel_error_out(monkeypatch):
    error = KERNEL_ERRORS[0]("shared memory", 232448, 300000)
    Spy(monkeypatch, similarity_ce, "_triton_lse", error=error)
    image, text = _pairs()
    with pytest.raises(KERNEL_ERRORS[0]):
        clip_loss(image, text, 10.0, backend="triton")


def test_environment_override(tmp_path, monkeypatch):
    spy = Spy(monkeypatch, flash_attention, "triton_attention")
    q, k, v = _qkv()
    monkeypatch.setenv(dispatch.ENV, "1")  # Triton wherever it runs, without a row
    attention(q, k, v)
    calls = spy.calls  # the self-check's and the call's
    assert calls >= 1
    attention(q, k, v)
    assert spy.calls == calls + 1
    _table(tmp_path, monkeypatch, "attention")
    monkeypatch.setenv(dispatch.ENV, "0")  # never, despite the row
    attention(q, k, v)
    assert spy.calls == calls + 1
    monkeypatch.setenv(dispatch.ENV, "yes")
    with pytest.raises(ValueError, match="VITFAST_TRITON='yes' is not understood; set it to 0"):
        attention(q, k, v)


def test_rows_match_arch_dtype_head_dim_and_size(tmp_path, monkeypatch):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"rows": [{"kernel": "attention", "arch": "sm_90", "dtype": "bfloat16",
                                          "head_dim": [64, 64], "size": [197, 577], "speedup": 1.2,
                                          "source": "h100.json"}]}))
    monkeypatch.setenv(tables.DISPATCH_ENV, str(path))
    dispatch.reset()
    hit = tables.dispatch_row("attention", "sm_90", torch.bfloat16, 64, 257)
    assert hit is not None and hit.source == "h100.json"
    for miss in [("sm_80", torch.bfloat16, 64, 257), ("sm_90", torch.float16, 64, 257),
                 ("sm_90", torch.bfloat16, 128, 257), ("sm_90", torch.bfloat16, 64, 1025)]:
        assert tables.dispatch_row("window_attention", *miss) is None
        assert tables.dispatch_row("attention", *miss) is None


def test_a_broken_table_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "tiles.json"
    path.write_text("{not json")
    monkeypatch.setenv(tables.TILES_ENV, str(path))
    dispatch.reset()
    with pytest.raises(ValueError, match=r"cannot read the kernel table .*tiles.json.*unset VITFAST_TILES/"):
        attention(*_qkv(), backend="triton")


@pytest.mark.parametrize("name, shared, family", [
    ("sm_75", None, None), ("sm_80", None, "sm_80"), ("sm_86", None, "sm_86"), ("sm_89", None, "sm_86"),
    ("sm_90", None, "sm_90"), ("sm_100", None, "sm_90"), ("sm_120", None, "sm_86"), ("sm_87", None, "sm_80"),
    ("sm_110", 227 * 1024, "sm_90"), ("sm_110", 99 * 1024, "sm_86"), ("sm_110", 48 * 1024, None),
    ("rocm", None, None), ("interpreter", None, "interpreter"),
])
def test_tile_families(name, shared, family):
    """Every GPU gets the tiles of the family whose shared memory it has; nothing before sm_80 or on ROCm."""
    assert arch.family_of(name, shared) == family


def test_rocm_and_old_gpus_are_refused_with_a_reason(monkeypatch):
    device = torch.device("cuda", 0)
    monkeypatch.setattr(arch, "_cuda_arch", lambda index: ("rocm", 0))
    assert "NVIDIA GPUs only; this is a ROCm GPU" in arch.unsupported_device(device)
    monkeypatch.setattr(arch, "_cuda_arch", lambda index: ("sm_75", 64 * 1024))
    assert "compute capability 8.0 (Ampere) or newer; this GPU is sm_75" in arch.unsupported_device(device)
    monkeypatch.setattr(arch, "_cuda_arch", lambda index: ("sm_90", 227 * 1024))
    assert arch.unsupported_device(device) is None


def test_tiles_are_chosen_by_family_dtype_head_dim_and_size():
    fwd = "attention.fwd"
    short = tables.tile_for(fwd, "sm_90", torch.bfloat16, 64, 197)
    long = tables.tile_for(fwd, "sm_90", torch.bfloat16, 64, 4096)
    assert short != long and short["BLOCK_M"] <= long["BLOCK_M"]
    assert tables.tile_for(fwd, "sm_90", torch.bfloat16, 64, 197) == tables.tile_for(fwd, "sm_90", torch.float16,
                                                                                      64, 197)
    assert tables.tile_for(fwd, None, torch.bfloat16, 64, 197) is None
    # float32 Swin windows are tabled up to head dim 64 only: wider ones do not run, with a reason.
    assert tables.tile_for("window.bwd", "sm_80", torch.float32, 128, 49) is None
    reason = swin_attention.unsupported_reason(128, torch.float32, torch.device("cpu"), 49)
    assert "no tile of window.bwd" in reason and "float32 is tabled up to head dim 64" in reason


def test_every_tile_row_is_well_formed():
    """Rows name known families and dtype classes; attention's BLOCK_M is a multiple of BLOCK_N."""
    for kernel in ("attention.fwd", "attention.dkdv", "attention.dq", "window.fwd", "window.bwd", "clip.lse",
                   "clip.grad"):
        rows = tables.tile_rows(kernel)
        assert rows, kernel
        for row in rows:
            assert set(row.families) <= {*arch.FAMILIES, "interpreter"}, row
            assert row.dtype in ("16bit", "fp32", "any"), row
            if kernel in ("attention.fwd", "attention.dq"):
                assert row.config["BLOCK_M"] % row.config["BLOCK_N"] == 0, row
        # Every family can run the kernel in every dtype at the head dims the op accepts, or says why not.
        for family in (*arch.FAMILIES, "interpreter"):
            assert tables.tile_for(kernel, family, torch.bfloat16, 64, 197) is not None, (kernel, family)


def test_opt_in_tuning_times_each_candidate_once_and_records_the_winner(tmp_path, monkeypatch):
    """VITFAST_AUTOTUNE=FILE: on a GPU family the launcher times every candidate tile of the family once
    per key, runs the fastest from then on, and writes winner and times to FILE (merged across processes)."""
    import triton.testing

    record = tmp_path / "tuned.json"
    monkeypatch.setenv(tables.AUTOTUNE_ENV, str(record))
    ran: list = []

    def fake_bench(fn, warmup, rep):  # a tile's "time" is its BLOCK_M: the smallest wins
        fn()
        return float(ran[-1]["BLOCK_M"])

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(tables, "_TUNED", tables._Tuned())
    candidates = tables.candidates("attention.fwd", "sm_90", torch.bfloat16, 64)
    assert len(candidates) > 1
    used = tables.launch("attention.fwd", "sm_90", torch.bfloat16, 64, 197, ran.append, tune_key=(24,))
    assert used == min(candidates, key=lambda c: c["BLOCK_M"])
    assert ran[:len(candidates)] == candidates and ran[-1] == used
    ran.clear()
    tables.launch("attention.fwd", "sm_90", torch.bfloat16, 64, 197, ran.append, tune_key=(24,))
    assert ran == [used]  # decided: no second timing
    written = json.loads(record.read_text())["winners"]
    assert len(written) == 1 and written[0]["config"] == dict(used.params) and written[0]["size"] == 197
    assert set(written[0]["times_ms"]) == {str(c) for c in candidates}
    monkeypatch.delenv(tables.AUTOTUNE_ENV)
    ran.clear()
    assert tables.launch("attention.fwd", "sm_90", torch.bfloat16, 64, 197, ran.append) == \
        tables.tile_for("attention.fwd", "sm_90", torch.bfloat16, 64, 197)  # off: the table's tile
