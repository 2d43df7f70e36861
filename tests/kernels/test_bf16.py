"""bfloat16 through all three Triton kernels (attention, window attention, CLIP loss) against the float64
oracle: forward and every gradient, with eager PyTorch in bf16 as the yardstick (oracle.py's rule).

Without CUDA the kernels run in the Triton interpreter, whose bf16 dot and casts are broken; the
`interpreter_bf16` fixture (bf16_shim.py) repairs them the way the GPU computes (exact bf16 products,
float32 accumulation, round-to-nearest-even casts). On a GPU the same tests run unpatched.
"""

from __future__ import annotations

import bf16_shim
import oracle
import pytest
import torch
import torch.nn.functional as F

from vitfast.kernels import attention, clip_loss, reference, siglip_loss, window_attention

BF16 = torch.bfloat16


def _randn(*shape, g, device, dtype=BF16):
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------- the shim


def _attention_inputs(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [_randn(*shape, g=g, device=device) for _ in range(4)]


def _attention_error(q, k, v) -> float:
    got = attention(q, k, v, backend="triton")
    return (got.double() - reference.attention(q.double(), k.double(), v.double())).abs().max().item()


def test_interpreter_bf16_dot_is_broken_without_the_shim(device):
    """What broken_ops() detects is what breaks a real kernel: unpatched, bf16 attention is wrong.
    On a Triton whose interpreter multiplies bf16 correctly there is nothing to show."""
    if "dot" not in bf16_shim.broken_ops():
        pytest.skip("this Triton's interpreter (or the GPU) multiplies bf16 correctly: the shim patches no dot")
    q, k, v, _ = _attention_inputs((1, 1, 17, 32), device, seed=1)
    assert _attention_error(q, k, v) > 0.1


def test_shim_repairs_what_is_broken_and_only_while_applied(device, monkeypatch):
    broken = bf16_shim.broken_ops()
    assert bf16_shim.patch(monkeypatch) == broken
    assert bf16_shim.broken_ops() == set()
    q, k, v, _ = _attention_inputs((1, 1, 17, 32), device, seed=1)
    assert _attention_error(q, k, v) < 0.02  # bf16's own rounding of outputs of magnitude < 2
    monkeypatch.undo()
    assert bf16_shim.broken_ops() == broken


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """Buffers from torch.empty start as NaN, so an element a kernel fails to write fails the test."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


# ------------------------------------------------------------------------------------------ attention


def _attention_outputs(op, q, k, v, do, causal):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = op(q, k, v, causal=causal)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


@pytest.mark.usefixtures("interpreter_bf16")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [32, 80, 128])
@pytest.mark.parametrize("seq_len", [1, 17, 197])
def test_attention(seq_len, head_dim, causal, device):
    q, k, v, do = _attention_inputs((1, 2, seq_len, head_dim), device, seed=seq_len * 1000 + head_dim)
    got = _attention_outputs(lambda *a, **kw: attention(*a, **kw, backend="triton"), q, k, v, do, causal)
    ref = _attention_outputs(reference.attention, *(x.double() for x in (q, k, v, do)), causal)
    eager = _attention_outputs(reference.attention, q, k, v, do, causal)
    oracle.assert_matches_oracle(("out", "dq", "dk", "dv"), got, ref, eager, likes=(q, q, k, v))


# ----------------------------------------------------------------------------------- window attention


def _window_outputs(op, qkv, table, qkv_bias, dout, cast=None, **kw):
    leaves = [(t if cast is None else t.to(cast)).detach().clone().requires_grad_() for t in (qkv, table, qkv_bias)]
    out = op(leaves[0], leaves[1], qkv_bias=leaves[2], **kw)
    grads = torch.autograd.grad(out, leaves, dout if cast is None else dout.to(cast), allow_unused=True)
    # qkv_bias has no gradient path when the map needs no padding.
    return [out, *(torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads))]


@pytest.mark.usefixtures("interpreter_bf16")
@pytest.mark.parametrize(
    "height, width, window, shift, param_dtype",
    [
        (9, 11, 7, 3, BF16),  # padded to 14×14
        (9, 11, 7, 3, torch.float32),  # as under autocast: bf16 qkv, float32 table and qkv_bias
        (7, 7, 7, 0, BF16),  # one window, no shift
        (13, 13, 12, 6, BF16),  # 144-token windows: three tiles each, padded to 24×24
    ],
)
def test_window_attention(height, width, window, shift, param_dtype, device):
    heads, head_dim = 2, 32
    g = torch.Generator().manual_seed(height * width + window)
    C = heads * head_dim
    qkv = _randn(2, height, width, 3 * C, g=g, device=device)
    table = _randn((2 * window - 1) ** 2, heads, g=g, device=device, dtype=param_dtype)
    qkv_bias = _randn(3 * C, g=g, device=device, dtype=param_dtype)
    dout = _randn(2, height, width, C, g=g, device=device)
    kw = dict(num_heads=heads, window_size=window, shift_size=shift)
    triton_op = lambda *a, **k: window_attention(*a, **k, backend="triton")  # noqa: E731
    got = _window_outputs(triton_op, qkv, table, qkv_bias, dout, **kw)
    ref = _window_outputs(reference.window_attention, qkv, table, qkv_bias, dout, cast=torch.float64, **kw)
    eager = _window_outputs(reference.window_attention, qkv, table, qkv_bias, dout, **kw)
    oracle.assert_matches_oracle(("out", "dqkv", "dtable", "dqkv_bias"), got, ref, eager,
                                 likes=(dout, qkv, table, qkv_bias))


# ------------------------------------------------------------------------------------------ CLIP loss


def _clip_outputs(op, image, text, scale, bias, cast=None):
    leaves = [x.detach().clone().to(cast or x.dtype).requires_grad_() for x in (image, text, scale)]
    if bias is not None:
        leaves.append(bias.detach().clone().to(cast or bias.dtype).requires_grad_())
    loss = op(leaves[0], leaves[1], leaves[2], leaves[3] if bias is not None else None)
    return [loss, *torch.autograd.grad(loss, leaves)]


@pytest.mark.usefixtures("interpreter_bf16")
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("n, d", [(1, 64), (65, 64), (300, 128)])
def test_clip_loss(n, d, with_bias, device):
    g = torch.Generator().manual_seed(n * 7 + d)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    # Matching texts near their images, as in training, so the diagonal matters.
    text = F.normalize(image + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    image, text = image.to(device=device, dtype=BF16), text.to(device=device, dtype=BF16)
    scale = torch.tensor(50.0, device=device)
    bias = torch.tensor(-3.0, device=device) if with_bias else None
    triton_op = lambda i, t, s, b: clip_loss(i, t, s, logit_bias=b, backend="triton")  # noqa: E731
    got = _clip_outputs(triton_op, image, text, scale, bias)
    ref = _clip_outputs(reference.clip_loss, image, text, scale, bias, cast=torch.float64)
    eager = _clip_outputs(reference.clip_loss, image, text, scale, bias)
    # As in test_clip_loss.py: the float32 loss, a difference of log-sum-exps as large as the logits,
    # carries float32's rounding at the scale, not at its own magnitude.
    loss_floor = 4 * torch.finfo(torch.float32).eps * float(scale) + oracle.FLOOR
    names = ("loss", "d_image", "d_text", "d_scale", "d_bias")[: 4 + with_bias]
    oracle.assert_matches_oracle(names, got, ref, eager, likes=(None, image, text, scale, bias),
                                 floors={"loss": loss_floor})


@pytest.mark.usefixtures("interpreter_bf16")
@pytest.mark.parametrize("n, d", [(1, 64), (65, 64), (300, 128)])
def test_siglip_loss(n, d, device):
    g = torch.Generator().manual_seed(n * 11 + d)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    image, text = image.to(device=device, dtype=BF16), text.to(device=device, dtype=BF16)
    scale, bias = torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device)
    triton_op = lambda i, t, s, b: siglip_loss(i, t, s, b, backend="triton")  # noqa: E731
    got = _clip_outputs(triton_op, image, text, scale, bias)
    ref = _clip_outputs(reference.siglip_loss, image, text, scale, bias, cast=torch.float64)
    eager = _clip_outputs(reference.siglip_loss, image, text, scale, bias)
    # the float32 loss sums n² terms of logits as large as the scale, divided by n
    loss_floor = 4 * torch.finfo(torch.float32).eps * float(scale) * n + oracle.FLOOR
    oracle.assert_matches_oracle(("loss", "d_image", "d_text", "d_scale", "d_bias"), got, ref, eager,
                                 likes=(None, image, text, scale, bias), floors={"loss": loss_floor})
