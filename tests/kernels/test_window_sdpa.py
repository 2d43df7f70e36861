"""Window attention's SDPA backend: the windows folded into the heads dimension, so SDPA gets 4-D inputs and
can take its fused kernels (a 5-D call goes to its math path), against the float64 oracle, forward and every
gradient. Also: the folding leaves the oracle itself unchanged.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vitfast.kernels import reference, window_attention
from vitfast.kernels import window_geometry as geo

NAMES = ("out", "dqkv", "dtable", "dqkv_bias")


class _OpLog(TorchDispatchMode):
    """The ATen ops a block of code runs, as the dispatcher sees them (after SDPA chose its kernel)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def _inputs(batch, height, width, heads, head_dim, window, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    C = heads * head_dim
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return make(batch, height, width, 3 * C), make((2 * window - 1) ** 2, heads), make(3 * C), make(batch, height,
                                                                                                  width, C)


def _forward_backward(backend, qkv, table, qkv_bias, dout, cast=None, **kw):
    leaves = [(t if cast is None else t.to(cast)).detach().clone().requires_grad_() for t in (qkv, table, qkv_bias)]
    out = window_attention(*leaves[:2], qkv_bias=leaves[2], backend=backend, **kw)
    grads = torch.autograd.grad(out, leaves, dout if cast is None else dout.to(cast), allow_unused=True)
    return [out, *(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))]


def test_sdpa_gets_4d_windows_and_one_mask_for_the_batch(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.shape, k.shape, v.shape, attn_mask.shape, attn_mask.stride()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    qkv, table, _, _ = _inputs(3, 14, 21, 2, 16, 7, torch.float32, 0)
    window_attention(qkv, table, num_heads=2, window_size=7, shift_size=3, backend="sdpa")
    windows = 2 * 3
    (q, k, v, mask, stride), = seen
    assert q == k == v == (3, windows * 2, 49, 16)
    # One (windows·heads, M, M) mask, broadcast over the batch: no batch-sized copy.
    assert mask == (1, windows * 2, 49, 49) and stride[1] == 49 * 49


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shift", [0, 3])
def test_sdpa_takes_a_fused_kernel_on_cpu(dtype, shift):
    qkv, table, _, _ = _inputs(2, 14, 14, 3, 32, 7, dtype, 1)
    with torch.no_grad(), _OpLog() as log:
        window_attention(qkv, table.float(), num_heads=3, window_size=7, shift_size=shift, backend="sdpa")
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in log.ops
    assert "aten::bmm" not in log.ops  # SDPA's math path is batched matmuls


@pytest.mark.parametrize(
    "batch, height, width, window, shift, heads",
    [
        (2, 7, 7, 7, 3, 3),  # map = window: no shift
        (2, 14, 14, 7, 3, 3),
        (1, 28, 28, 7, 0, 2),
        (2, 12, 20, 7, 3, 2),  # non-square, padded: the qkv_bias path
        (2, 5, 11, 7, 3, 2),  # window shrinks to 5×7, shift (0, 3)
        (1, 30, 17, 12, 6, 2),
    ],
)
def test_sdpa_matches_oracle(batch, height, width, window, shift, heads):
    qkv, table, bias, dout = _inputs(batch, height, width, heads, 32, window, torch.float32, height * width)
    kw = dict(num_heads=heads, window_size=window, shift_size=shift)
    got = _forward_backward("sdpa", qkv, table, bias, dout, **kw)
    ref = _forward_backward("eager", qkv, table, bias, dout, cast=torch.float64, **kw)
    eager = _forward_backward("eager", qkv, table, bias, dout, **kw)
    oracle.assert_matches_oracle(NAMES, got, ref, eager, likes=(dout, qkv, table, bias))


def test_folding_is_a_relayout():
    """fold_windows and window_merge only move elements: the oracle's 5-D windows, folded, merge to the same
    map, and its bias folds to the mask SDPA gets."""
    qkv, table, bias, _ = _inputs(2, 12, 20, 2, 16, 7, torch.float64, 5)
    q, k, v, mask, g = geo.window_partition_qkv(qkv, table, num_heads=2, window_size=7, shift_size=3, qkv_bias=bias)
    fq, fk, fv, fmask = geo.fold_windows(q, k, v, mask)
    assert fq.shape == (2, g.num_windows * 2, 49, 16) and fmask.shape == (1, g.num_windows * 2, 49, 49)
    torch.testing.assert_close(geo.window_merge(fv, g), geo.window_merge(v, g), rtol=0, atol=0)
    torch.testing.assert_close(fmask[0].view_as(mask), mask, rtol=0, atol=0)
    folded = torch.softmax(fq @ fk.transpose(-2, -1) * 16**-0.5 + fmask, -1) @ fv
    torch.testing.assert_close(geo.window_merge(folded, g),
                               reference.window_attention(qkv, table, num_heads=2, window_size=7, shift_size=3,
                                                          qkv_bias=bias))
