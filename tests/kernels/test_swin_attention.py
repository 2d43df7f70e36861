"""Shifted-window attention: the oracle and SDPA against timm's block, and the fused Triton kernels
against the float64 oracle, forward and every gradient (qkv, bias_table, qkv_bias).

Without CUDA the Triton kernels run in the interpreter (fp32 and fp16; its bf16 dot is broken, so
bf16 runs on a GPU). Tolerance as for flash attention, in oracle.py.
"""

from __future__ import annotations

import json

import oracle
import pytest
import torch

from vitfast.kernels import arch, dispatch, tables
from vitfast.kernels import swin_attention as sa
from vitfast.kernels import window_geometry as geo
from vitfast.kernels import window_attention

timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformerBlock  # noqa: E402

NAMES = ("out", "dqkv", "dtable", "dqkv_bias")


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "height, width, window, shifted, heads, dim",
    [
        (7, 7, 7, True, 3, 96),  # map = window: no shift
        (14, 14, 7, True, 3, 96),
        (28, 28, 7, False, 2, 64),
        (60, 60, 7, True, 1, 32),  # padded to 63
        (12, 20, 7, True, 2, 64),  # non-square, padded
        (5, 11, 7, True, 2, 64),  # window shrinks to 5×7, shift (0, 3)
        (24, 24, 12, True, 2, 64),
        (30, 17, 12, True, 2, 64),
    ],
)
def test_window_attention_matches_timm_block(height, width, window, shifted, heads, dim, backend):
    torch.manual_seed(height * 100 + width)
    block = SwinTransformerBlock(dim=dim, input_resolution=(height, width), num_heads=heads, window_size=window,
                                 shift_size=window // 2 if shifted else 0, dynamic_mask=True).eval()
    attn = block.attn
    # Non-trivial bias table and qkv bias: padded tokens carry the bias, so it must matter.
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    torch.nn.init.normal_(attn.qkv.bias, std=1.0)
    x = torch.randn(2, height, width, dim)
    with torch.no_grad():
        expected = block._attn(x)
        got = attn.proj(window_attention(attn.qkv(x), attn.relative_position_bias_table, num_heads=heads,
                                         window_size=window, shift_size=window // 2 if shifted else 0,
                                         qkv_bias=attn.qkv.bias, backend=backend))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_window_attention_rejects_bad_input():
    qkv = torch.randn(1, 7, 7, 3 * 32)
    table = torch.randn(13 * 13, 2)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        window_attention(qkv, table, num_heads=5, window_size=7, shift_size=3)
    with pytest.raises(ValueError, match="bias_table has 169 rows; a 5×5 window needs"):
        window_attention(qkv, table, num_heads=2, window_size=5, shift_size=2)
    with pytest.raises(ValueError, match=r"bias_table must be \(table rows, num_heads=4\)"):
        window_attention(torch.randn(1, 7, 7, 3 * 64), table, num_heads=4, window_size=7, shift_size=3)
    with pytest.raises(ValueError, match="unknown window-attention backend"):
        window_attention(qkv, table, num_heads=2, window_size=7, shift_size=3, backend="flash")
    with pytest.raises(ValueError, match="head dims that are multiples of 8"):
        window_attention(torch.randn(1, 7, 7, 3 * 24), table, num_heads=2, window_size=7, shift_size=3,
                         backend="triton")
    with pytest.raises(ValueError, match=r"qkv_bias must have shape \(96,\)"):
        window_attention(qkv, table, num_heads=2, window_size=7, shift_size=3, qkv_bias=torch.zeros(32),
                         backend="triton")


def test_auto_uses_sdpa_off_cuda(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    qkv = torch.randn(1, 7, 7, 3 * 64)
    assert "NVIDIA GPUs" in sa.unsupported_reason(32, qkv.dtype, qkv.device, 49)


# ------------------------------------------------------------------------ Triton kernels vs float64


def _case(batch, height, width, heads, head_dim, window, dtype, device, seed, qkv_bias=True, table_dtype=None):
    g = torch.Generator().manual_seed(seed)
    C = heads * head_dim
    wh, ww = (window, window) if isinstance(window, int) else window
    make = lambda *shape, dt=dtype: torch.randn(*shape, generator=g).to(device=device, dtype=dt)  # noqa: E731
    qkv = make(batch, height, width, 3 * C)
    table = make((2 * wh - 1) * (2 * ww - 1), heads, dt=table_dtype or dtype)
    bias = make(3 * C, dt=table_dtype or dtype) if qkv_bias else None
    dout = make(batch, height, width, C)
    return qkv, table, bias, dout


def _forward_backward(backend, qkv, table, qkv_bias, dout, cast=None, **kw):
    leaves = [t if t is None else (t if cast is None else t.to(cast)).detach().clone().requires_grad_()
              for t in (qkv, table, qkv_bias)]
    out = window_attention(leaves[0], leaves[1], qkv_bias=leaves[2], backend=backend, **kw)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None],
                                dout if cast is None else dout.to(cast), allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]  # unused: qkv_bias w/o pad
    return [out, *grads]


def assert_matches_oracle(qkv, table, qkv_bias, dout, **kw):
    got = _forward_backward("triton", qkv, table, qkv_bias, dout, **kw)
    ref = _forward_backward("eager", qkv, table, qkv_bias, dout, cast=torch.float64, **kw)
    eager = _forward_backward("eager", qkv, table, qkv_bias, dout, **kw)
    oracle.assert_matches_oracle(NAMES, got, ref, eager, likes=(dout, qkv, table, qkv_bias))


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel fails to write fails the test."""
    monkeypatch.setattr(sa, "_empty", lambda *shape, **kw: torch.full(*shape, float("nan"), **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "batch, height, width, window, shift",
    [
        (2, 7, 7, 7, 3),  # map = window: no shift
        (2, 14, 14, 7, 3),
        (1, 28, 28, 7, 0),
        (1, 18, 18, 7, 3),  # padded to 21: the last 3 rows and columns, as a 60×60 map's padding to 63
        (2, 12, 20, 7, 3),  # non-square, padded
        (2, 5, 11, 7, 3),  # window shrinks to 5×7, shift (0, 3)
        (1, 24, 24, 12, 6),  # three tiles per window
        (1, 30, 17, 12, 6),  # three tiles, padded
        (2, 9, 16, 4, 2),  # small windows, 12 to an image
        (2, 13, 10, (5, 3), (2, 1)),  # non-square window
    ],
)
def test_triton_matches_oracle(batch, height, width, window, shift, dtype, device):
    heads, head_dim = 2, 32
    qkv, table, bias, dout = _case(batch, height, width, heads, head_dim, window, dtype, device, height * width)
    assert_matches_oracle(qkv, table, bias, dout, num_heads=heads, window_size=window, shift_size=shift)


def _random_geometries(n: int, seed: int = 2024):
    """Odd maps, windows and shifts (square and not), some smaller than the window, some fixed."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n):
        wh, ww = (int(x) for x in torch.randint(2, 10, (2,), generator=g))
        sh, sw = int(torch.randint(0, wh, (1,), generator=g)), int(torch.randint(0, ww, (1,), generator=g))
        h, w = (int(x) for x in torch.randint(3, 26, (2,), generator=g))
        shrink = bool(torch.randint(0, 2, (1,), generator=g))
        cases.append((h, w, (wh, ww), (sh, sw), shrink))
    return cases


def _gpu_window_blocks() -> list[int]:
    """Every block size a GPU row of tiles.json gives the window kernels."""
    return sorted({r.config["BLOCK"] for kernel in ("window.fwd", "window.bwd") for r in tables.tile_rows(kernel)
                   if r.families != ("interpreter",)})


@pytest.mark.parametrize("block", _gpu_window_blocks())
def test_every_gpu_block_size(block, tmp_path, monkeypatch, device):
    """Each block size the GPU tiles use, run here through a table holding only it: a 7×7 window is one
    64-token tile but two 32-token ones (the multi-tile backward), a 12×12 window three or five (on a
    13×12 map: two windows, shifted along the height, the second padded)."""
    doc = json.loads(tables.tiles_path().read_text())
    for kernel in ("window.fwd", "window.bwd"):
        doc["tiles"][kernel] = [{"families": [*arch.FAMILIES, "interpreter"], "dtype": "any", "max_head_dim": None,
                                 "max_size": None, "config": {"BLOCK": block}, "num_warps": 4, "num_stages": 1}]
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv(tables.TILES_ENV, str(path))
    dispatch.reset()
    try:
        for height, width, window, shift in ((9, 11, 7, 3), (13, 12, 12, 6)):
            qkv, table, bias, dout = _case(1, height, width, 2, 32, window, torch.float32, device, height + block)
            assert_matches_oracle(qkv, table, bias, dout, num_heads=2, window_size=window, shift_size=shift)
    finally:
        monkeypatch.delenv(tables.TILES_ENV)
        dispatch.reset()


@pytest.mark.parametrize("height, width, window, shift, shrink", _random_geometries(8))
def test_triton_random_geometries(height, width, window, shift, shrink, device):
    # One image: these cases vary the geometry (up to 40 windows); the batch is every other test's.
    qkv, table, bias, dout = _case(1, height, width, 2, 16, window, torch.float32, device, height * 31 + width)
    assert_matches_oracle(qkv, table, bias, dout, num_heads=2, window_size=window, shift_size=shift,
                          shrink_window=shrink)


@pytest.mark.parametrize("head_dim", [16, 64, 80, 128])
def test_triton_head_dims(head_dim, device):
    qkv, table, bias, dout = _case(2, 11, 9, 1, head_dim, 7, torch.float16, device, head_dim)
    assert_matches_oracle(qkv, table, bias, dout, num_heads=1, window_size=7, shift_size=3)


def test_triton_without_qkv_bias_and_with_fp32_parameters(device):
    # Padding without qkv_bias is zeros (timm with qkv_bias=False); under autocast the table and the
    # bias stay float32 parameters while qkv is float16.
    qkv, table, _, dout = _case(2, 10, 12, 2, 32, 7, torch.float32, device, 1, qkv_bias=False)
    assert_matches_oracle(qkv, table, None, dout, num_heads=2, window_size=7, shift_size=3)
    qkv, table, bias, dout = _case(2, 10, 12, 2, 32, 7, torch.float16, device, 2, table_dtype=torch.float32)
    assert_matches_oracle(qkv, table, bias, dout, num_heads=2, window_size=7, shift_size=3)


def test_triton_reads_strided_inputs_and_fixed_windows(device):
    heads = 3
    wide, table, bias, dout = _case(2, 10, 13, 2 * heads, 32, 7, torch.float32, device, 3)
    qkv = wide[..., : 3 * heads * 32]  # channel stride 1, row strides of the wide tensor
    dout = dout.transpose(1, 2).contiguous().transpose(1, 2)[..., : heads * 32]  # a transposed, sliced view
    assert not qkv.is_contiguous() and not dout.is_contiguous()
    # Fixed windows (shrink_window=False); on this 10×13 map, larger than the window both ways, the
    # default (shrink_window=True) gives the same geometry, so one run covers both.
    assert_matches_oracle(qkv, table[:, :heads], bias[: 3 * heads * 32], dout, num_heads=heads,
                          window_size=7, shift_size=3, shrink_window=False)


@pytest.mark.parametrize("window, height, width", [(7, 9, 15), (12, 13, 12)])
def test_triton_backward_sums_chunks(window, height, width, monkeypatch, device):
    # On a GPU the backward splits the (image, window) items into chunks (backward_chunks); each
    # chunk's bias and qkv_bias gradients are partial sums, and a chunk may span two images. The chunk
    # count changes only the backward, so one forward (and one oracle) serves 2, 3 and 7 chunks of the
    # 3 images' items (6 windows each of one tile, or 2 each of three tiles): 2 span images, 3 are whole
    # images, 7 are 3 items each (window 7) or more than the 6 items (window 12: one each).
    qkv, table, bias, dout = _case(3, height, width, 2, 32, window, torch.float32, device, window)
    kw = dict(num_heads=2, window_size=window, shift_size=window // 2)
    ref = _forward_backward("eager", qkv, table, bias, dout, cast=torch.float64, **kw)
    eager = _forward_backward("eager", qkv, table, bias, dout, **kw)
    leaves = [t.detach().clone().requires_grad_() for t in (qkv, table, bias)]
    out = window_attention(leaves[0], leaves[1], qkv_bias=leaves[2], backend="triton", **kw)
    for chunks in (2, 3, 7):
        monkeypatch.setattr(sa, "backward_chunks", lambda items, heads, sm_count, n=chunks: n)
        grads = torch.autograd.grad(out, leaves, dout, retain_graph=True)
        oracle.assert_matches_oracle(NAMES, [out, *grads], ref, eager, likes=(dout, qkv, table, bias))


@pytest.mark.parametrize("groups", [2, 3])
def test_triton_forward_splits_heads(groups, monkeypatch, device):
    # A program walks a group of a window's heads; on a GPU with few windows the heads split into
    # groups (forward_head_groups), the last one short when they do not divide evenly (3 heads in 2).
    # The groups are per program, whatever the batch: the 12×12 window (three tiles) takes one image.
    monkeypatch.setattr(sa, "forward_head_groups", lambda programs, heads, sm_count: groups)
    for batch, window, height, width in ((2, 7, 9, 15), (1, 12, 13, 12)):
        qkv, table, bias, dout = _case(batch, height, width, 3, 16, window, torch.float32, device, window + groups)
        assert_matches_oracle(qkv, table, bias, dout, num_heads=3, window_size=window, shift_size=window // 2)


def test_forward_head_groups():
    assert sa.forward_head_groups(4096, 3, None) == 1  # the interpreter: every head in one program
    assert sa.forward_head_groups(4096, 3, 132) == 1  # Swin-T stage 1, batch 64: windows fill the GPU
    assert sa.forward_head_groups(64, 24, 132) == 17  # stage 4, batch 64: 17 groups asked, 12 of 2 heads run
    assert sa.forward_head_groups(1, 2, 132) == 2  # never more groups than heads


def test_triton_backward_is_deterministic(device):
    qkv, table, bias, dout = _case(3, 14, 14, 2, 32, 7, torch.float16, device, 4)
    first = _forward_backward("triton", qkv, table, bias, dout, num_heads=2, window_size=7, shift_size=3)
    second = _forward_backward("triton", qkv, table, bias, dout, num_heads=2, window_size=7, shift_size=3)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("window, table_window", [((7, 7), (7, 7)), ((5, 7), (7, 7)), ((12, 12), (12, 12)),
                                                  ((2, 3), (2, 3)), ((1, 4), (3, 4))])
def test_table_gradient_sums_each_pair_into_its_row(window, table_window):
    """The diagonal sums equal a scatter of every (query, key) pair into its relative-position row."""
    M = window[0] * window[1]
    per_pair = torch.randn(3, M, M, dtype=torch.float64, generator=torch.Generator().manual_seed(M))
    index = geo.relative_position_index(*window, table_window).flatten()
    rows = (2 * table_window[0] - 1) * (2 * table_window[1] - 1)
    want = torch.zeros(rows, 3, dtype=torch.float64).index_add_(0, index, per_pair.flatten(1).t())
    torch.testing.assert_close(sa.table_gradient(per_pair, window, table_window), want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_triton_swin_stage_shapes_on_gpu(dtype, device):
    # Swin-T's four stages at 224 (window 7), then Swin-B 384's first and last (window 12); the batch
    # is large enough that the backward splits its (image, window) items into many chunks.
    for batch, height, heads, window in ((16, 56, 3, 7), (16, 28, 6, 7), (16, 14, 12, 7), (16, 7, 24, 7),
                                         (4, 96, 4, 12), (16, 12, 32, 12)):
        qkv, table, bias, dout = _case(batch, height, height, heads, 32, window, dtype, device, height,
                                       table_dtype=torch.float32)
        assert_matches_oracle(qkv, table, bias, dout, num_heads=heads, window_size=window, shift_size=window // 2)
