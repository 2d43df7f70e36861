"""The benches' peers, what a user would run instead of vitfast today: FlexAttention (compiled) in `bench attention`
and `bench window`, timm's WindowAttention in `bench window`, timm's Attention in `bench attention --module`, and
open_clip's ClipLoss on its autocast path in `bench clip-loss`. Each computes what our rows compute, on the same
weights; a row that cannot run on a CPU says why; the names are bench-only, never kernel backends.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vitfast import choices
from vitfast.bench import attention as ab, clip_loss as bc, suite, window as bw
from vitfast.bench.harness import TRITON_NEEDS_CUDA
from vitfast.bench.sweep import FLEX_BACKWARD_NEEDS_CUDA
from vitfast.cli import app
from vitfast.kernels import attention, window_attention

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformerBlock  # noqa: E402

CPU = torch.device("cpu")


def _window_inputs(batch, height, width, heads, head_dim, window, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, height, width, 3 * heads * head_dim, generator=g),
            torch.randn((2 * window - 1) ** 2, heads, generator=g))


# ----------------------------------------------------------------------------------------------- bench window


@pytest.mark.parametrize("height, width, window, shift", [
    (14, 14, 7, 3),
    (12, 20, 7, 0),  # padded, no shift
    (7, 7, 12, 6),  # the window shrinks to the map: timm's table is the centre of ours
    (10, 17, 4, 2),  # padded and shifted
])
def test_timm_peer_computes_our_window_attention(height, width, window, shift):
    qkv, table = _window_inputs(2, height, width, 2, 16, window)
    _, forward = bw.timm_window_attention(qkv, table, 2, window, shift)
    for backend in ("eager", "sdpa"):
        want = window_attention(qkv, table, num_heads=2, window_size=window, shift_size=shift, backend=backend)
        torch.testing.assert_close(forward(), want, atol=2e-5, rtol=1e-5)


def test_timm_peer_is_timms_block_attention_on_its_weights():
    """On a timm block's own weights, the projections around the peer give back the block's ``_attn``."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=32, input_resolution=(14, 21), num_heads=2, window_size=7, shift_size=3).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 14, 21, 32)
    with torch.no_grad():
        qkv = block.attn.qkv(x)
        _, forward = bw.timm_window_attention(qkv, block.attn.relative_position_bias_table, 2, 7, 3)
        torch.testing.assert_close(block.attn.proj(forward()), block._attn(x), atol=2e-5, rtol=1e-5)


def test_timm_peer_trains_the_bias_table_as_ours_does():
    qkv, table = _window_inputs(1, 14, 14, 2, 16, 7, seed=1)
    grad = torch.randn(1, 14, 14, 32)
    block, forward = bw.timm_window_attention(qkv.requires_grad_(), table, 2, 7, 3)
    theirs = torch.autograd.grad(forward(), (qkv, block.attn.relative_position_bias_table), grad)
    ours = torch.autograd.grad(window_attention(qkv, table.requires_grad_(), num_heads=2, window_size=7, shift_size=3,
                                                backend="eager"), (qkv, table), grad)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height, width, window, shift", [(14, 14, 7, 3), (7, 11, 12, 6)])
def test_flex_peer_matches_sdpa(height, width, window, shift):
    qkv, table = _window_inputs(2, height, width, 3, 16, window, seed=2)
    with torch.no_grad():
        got = bw.flex_window_attention(qkv, table, 3, window, shift, "fwd")()
    want = window_attention(qkv, table, num_heads=3, window_size=window, shift_size=shift, backend="sdpa")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_window_sweep_with_every_peer(bench_json):
    doc = bench_json("window", "--device", "cpu", "-b", "1", "--stages", "stage4", "--rep", "1", "--warmup", "1",
                     "--backends", "triton,sdpa,flex,timm,eager")
    status = {(r["mode"], r["backend"]): r["status"] for r in doc["rows"]}
    assert status == {**{(m, "triton"): TRITON_NEEDS_CUDA for m in choices.KERNEL_MODES},
                      **{(m, b): "ok" for m in choices.KERNEL_MODES for b in ("sdpa", "timm", "eager")},
                      ("fwd", "flex"): "ok", ("fwd+bwd", "flex"): FLEX_BACKWARD_NEEDS_CUDA}
    assert set(doc["rows"][0]) == {"backend", "mode", "stage", "time_ms", "tflops", "peak_mem_bytes", "status"}
    assert "flex" in doc["fields"]["backend"] and "timm" in doc["fields"]["backend"]


# -------------------------------------------------------------------------------------------- bench attention


@pytest.mark.parametrize("causal", [False, True])
def test_flex_peer_matches_sdpa_on_the_op(causal):
    q, k, v = torch.randn(3, 1, 2, 40, 16, generator=torch.Generator().manual_seed(3)).unbind(0)
    with torch.no_grad():
        got = ab.flex_call("fwd", 40, causal, CPU)(q, k, v)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_module_rows_compute_one_layer(causal):
    """Every module row is the same layer on the same weights: timm's Attention and flex included."""
    x = torch.randn(2, 33, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, weights = ab.attention_layer("eager", "fwd", 2, 16, 33, causal, CPU)
        want = want(x)
        for backend in ("sdpa", "sdpa-math", "flex", "timm"):
            layer, theirs = ab.attention_layer(backend, "fwd", 2, 16, 33, causal, CPU)
            torch.testing.assert_close(layer(x), want, atol=2e-5, rtol=1e-5, msg=backend)
            assert [w.shape for w in theirs] == [w.shape for w in weights]


def test_module_flops_add_the_projections():
    shape = dict(batch=2, heads=3, seq_len=5, head_dim=8)
    attn, proj = 4 * 2 * 3 * 5 * 5 * 8, 8 * 2 * 5 * 24**2
    assert ab.attention_flops(**shape, mode="fwd", module=True) == attn + proj
    assert ab.attention_flops(**shape, mode="fwd+bwd", causal=True, module=True) == 1.75 * attn + 3 * proj


def test_attention_sweeps_with_peers(bench_json):
    tiny = ["--device", "cpu", "-b", "1", "--heads", "2", "--head-dim", "16", "--seq-lens", "33", "--rep", "1",
            "--warmup", "1"]
    doc = bench_json("attention", *tiny, "--backends", "triton,sdpa,flex")
    assert {(r["mode"], r["backend"]): r["status"] for r in doc["rows"]} == {
        ("fwd", "triton"): TRITON_NEEDS_CUDA, ("fwd+bwd", "triton"): TRITON_NEEDS_CUDA, ("fwd", "sdpa"): "ok",
        ("fwd+bwd", "sdpa"): "ok", ("fwd", "flex"): "ok", ("fwd+bwd", "flex"): FLEX_BACKWARD_NEEDS_CUDA}
    module = bench_json("attention", *tiny, "--module", "--modes", "fwd+bwd", "--dtype", "bf16",
                        "--backends", "sdpa,timm,eager")
    assert module["benchmark"] == "attention_module" and module["parameters"]["module"] is True
    rows = {r["backend"]: r for r in module["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert "timm.layers.Attention" in module["fields"]["backend"] and "8·B·N·C²" in module["fields"]["tflops"]


def test_timm_is_a_module_row_only():
    result = CliRunner().invoke(app, ["bench", "attention", "--device", "cpu", "--backends", "sdpa,timm"])
    assert result.exit_code == 2 and "add --module" in result.stderr


# ------------------------------------------------------------------------------------------- bench clip-loss


def test_open_clip_amp_is_open_clips_training_call():
    """float32 features, the loss under bf16 autocast: open_clip's bf16 logits, close to the float32 loss."""
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image, text, scale = bc.make_inputs(64, 32, bc.input_dtype("open_clip-amp", torch.bfloat16), CPU, "fwd")
    assert image.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = open_clip_loss.ClipLoss()(image, text, scale)
    seen = []
    call = bc.make_call("open_clip-amp", "fwd", image, text, scale, amp_dtype=torch.bfloat16)
    original = open_clip_loss.ClipLoss.forward

    def spy(self, *args, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        out = original(self, *args, **kw)
        seen.append(out)
        return out

    open_clip_loss.ClipLoss.forward = spy
    try:
        call()
    finally:
        open_clip_loss.ClipLoss.forward = original
    assert seen[0] is True and torch.equal(seen[1], want)
    torch.testing.assert_close(want.float(), bc.clip_loss(image, text, scale, backend="eager"), atol=0.1, rtol=0.05)


def test_open_clip_amp_needs_a_16_bit_sweep(bench_json):
    pytest.importorskip("open_clip")
    doc = bench_json("clip-loss", "--device", "cpu", "--batch-sizes", "32", "--dim", "16", "--rep", "1", "--warmup",
                     "1", "--mode", "fwd", "--backends", "eager,open_clip,open_clip-amp")
    assert [r["status"] for r in doc["rows"]] == ["ok", "ok", bc.AMP_NEEDS_16_BIT]
    doc = bench_json("clip-loss", "--device", "cpu", "--batch-sizes", "32", "--dim", "16", "--rep", "1", "--warmup",
                     "1", "--mode", "both", "--dtype", "bf16", "--backends", "open_clip,open_clip-amp")
    assert [r["status"] for r in doc["rows"]] == ["ok"] * 4


# --------------------------------------------------------------------------------------------- names and plans


def test_peers_are_bench_names_not_kernel_backends():
    for peer in {*choices.ATTENTION_PEERS, *choices.WINDOW_PEERS, *choices.CLIP_LOSS_PEERS}:
        assert peer not in choices.ATTENTION_BACKENDS and peer not in choices.CLIP_LOSS_BACKENDS
    assert set(ab.KNOWN_BACKENDS) >= set(choices.ATTENTION_PEERS)
    assert set(bw.KNOWN_BACKENDS) >= set(choices.WINDOW_PEERS) and set(bc.BACKENDS) >= set(choices.CLIP_LOSS_PEERS)
    q = torch.randn(1, 1, 4, 8)
    qkv, table = _window_inputs(1, 7, 7, 1, 8, 7)
    for peer in ("flex", "timm"):
        with pytest.raises(ValueError, match="unknown attention backend"):
            attention(q, q, q, backend=peer)
        with pytest.raises(ValueError, match="unknown window-attention backend"):
            window_attention(qkv, table, num_heads=1, window_size=7, shift_size=3, backend=peer)


@pytest.mark.parametrize("command, backends", [("attention", "flexx"), ("window", "timm2")])
def test_unknown_backends_name_the_peers(command, backends):
    result = CliRunner().invoke(app, ["bench", command, "--device", "cpu", "--backends", backends])
    assert result.exit_code == 2 and "flex" in result.stderr and "timm" in result.stderr


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bench_all_runs_every_peer(dtype):
    sweeps = {s.name: s.params for s in suite.plan(CPU, quick=True, dtype=dtype)}
    assert "flex" in sweeps["attention"]["backends"] and "timm" not in sweeps["attention"]["backends"]
    assert sweeps["attention_module"]["module"] and {"flex", "timm"} <= set(sweeps["attention_module"]["backends"])
    assert {"flex", "timm"} <= set(sweeps["window"]["backends"])
    if bc.open_clip_available():
        assert ("open_clip-amp" in sweeps["clip_loss"]["backends"]) == (dtype == "bf16")
