"""The precision policy (vitfast.kernels.precision): under autocast the kernels multiply 16-bit operands,
as SDPA and open_clip's matmuls do, and float32 statistics and gradients stay float32.

The review that opened issue 14 found the CLIP loss running float32 FMA matmuls under AMP, because
F.normalize returns float32 under autocast. These tests look at what reaches the Triton kernels.
CPU autocast stands in for CUDA's: the policy reads the autocast state of the tensors' device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitfast.kernels import attention, clip_loss, flash_attention, precision, similarity_ce, swin_attention, \
    window_attention

BF16 = torch.bfloat16


class Recorder:
    """Wraps a launcher and records the dtype of its first tensor argument and its precision."""

    def __init__(self, monkeypatch, module, name: str):
        self.seen: list[tuple[torch.dtype, str]] = []
        self.fn = getattr(module, name)
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        precision_arg = kwargs.get("precision", args[-1] if isinstance(args[-1], str) else None)
        self.seen.append((args[0].dtype, precision_arg))
        return self.fn(*args, **kwargs)


def _pairs(n=70, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, F.normalize(image + torch.randn(n, d, generator=g), dim=-1)


def test_operand_dtype_rules():
    f32 = torch.float32
    assert precision.operand_dtype("auto", f32, "cpu") == f32
    with torch.autocast("cpu", dtype=BF16):
        assert precision.operand_dtype("auto", f32, "cpu") == BF16
        assert precision.operand_dtype("auto", torch.float16, "cpu") == BF16  # as autocast casts for SDPA
        assert precision.operand_dtype("auto", torch.float64, "cpu") == torch.float64  # autocast leaves float64
        assert precision.operand_dtype("ieee", f32, "cpu") == f32  # an explicit float32 choice wins
        assert precision.operand_dtype("auto", f32, "cuda") == f32  # another device's autocast is not this one's
    assert precision.operand_dtype("fp16", f32, "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown precision 'int8'; choose one of 'auto', 'ieee'"):
        precision.operand_dtype("int8", f32, "cpu")


def test_float32_dot_follows_torch_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert precision.float32_dot("auto") == "ieee"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert precision.float32_dot("auto") == "tf32"
    assert precision.float32_dot("ieee") == "ieee"


@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_clip_loss_under_autocast_multiplies_bf16(backend, monkeypatch, interpreter_bf16):
    """float32 embeddings under bf16 autocast (what F.normalize returns there) reach the products as
    bf16, the loss is float32, and the gradients return as float32 to the float32 leaves."""
    lse = Recorder(monkeypatch, similarity_ce, "_triton_lse" if backend == "triton" else "_chunked_lse")
    image, text = _pairs()
    leaves = [x.clone().requires_grad_() for x in (image, text)]
    with torch.autocast("cpu", dtype=BF16):
        loss = clip_loss(*leaves, 10.0, backend=backend)
    loss.backward()
    assert {dtype for dtype, _ in lse.seen} == {BF16}
    assert loss.dtype == torch.float32 and all(x.grad.dtype == torch.float32 for x in leaves)
    # The same as casting the operands by hand: bf16 operands, float32 accumulation.
    want = clip_loss(image.to(BF16), text.to(BF16), 10.0, backend=backend)
    assert torch.equal(loss.detach(), want)
    # precision="ieee" keeps the float32 products under autocast; outside it, float32 stays float32.
    lse.seen.clear()
    with torch.autocast("cpu", dtype=BF16):
        clip_loss(image, text, 10.0, backend=backend, precision="ieee")
    clip_loss(image, text, 10.0, backend=backend)
    # One fused row-and-column pass per loss (kernels/similarity_ce.py).
    assert [dtype for dtype, _ in lse.seen] == [torch.float32] * 2


def test_clip_loss_precision_reaches_the_kernel(monkeypatch):
    lse = Recorder(monkeypatch, similarity_ce, "_triton_lse")
    image, text = _pairs()
    clip_loss(image, text, 10.0, backend="triton", precision="tf32")
    clip_loss(image, text, 10.0, backend="triton", precision="ieee")
    assert [p for _, p in lse.seen] == ["tf32", "ieee"]


def test_attention_follows_autocast_as_sdpa(monkeypatch, interpreter_bf16):
    fwd = Recorder(monkeypatch, flash_attention, "attention_forward")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 33, 32, generator=g).requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=BF16):
        out = attention(q, k, v, backend="triton")
        sdpa = attention(q, k, v, backend="sdpa")
    assert out.dtype == sdpa.dtype == F.scaled_dot_product_attention(q.to(BF16), k.to(BF16), v.to(BF16)).dtype
    assert fwd.seen[0][0] == BF16
    torch.testing.assert_close(out, sdpa, atol=2e-2, rtol=0)
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32
    assert torch.equal(out, attention(q.detach().to(BF16), k.detach().to(BF16), v.detach().to(BF16),
                                      backend="triton"))


def test_window_attention_follows_autocast(monkeypatch, interpreter_bf16):
    fwd = Recorder(monkeypatch, swin_attention, "_triton_forward")
    g = torch.Generator().manual_seed(0)
    qkv, table, bias = torch.randn(1, 9, 11, 192, generator=g), torch.randn(169, 2, generator=g), torch.randn(192)
    args = dict(num_heads=2, window_size=7, shift_size=3, qkv_bias=bias)
    with torch.autocast("cpu", dtype=BF16):
        out = window_attention(qkv, table, backend="triton", **args)
    assert out.dtype == BF16 and fwd.seen[0][0] == BF16
    # The fp32 head-dim limit does not bite under autocast: 16-bit tiles run there.
    wide = torch.randn(1, 7, 7, 3 * 256, generator=g)
    with torch.autocast("cpu", dtype=BF16):
        assert window_attention(wide, table, num_heads=2, window_size=7, shift_size=0, backend="triton").dtype == BF16
    with pytest.raises(ValueError, match="float32 is tabled up to head dim 64"):
        window_attention(wide, table, num_heads=2, window_size=7, shift_size=0, backend="triton")
