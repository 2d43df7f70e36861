"""The kernels' torch.library registrations, checked by torch.library.opcheck: schema, fake (meta)
implementations against the real outputs' shapes, strides and dtypes, autograd registration, and
AOT dispatch with dynamic shapes. This is what lets torch.compile take each kernel as one op."""

from __future__ import annotations

import pytest
import torch

from vitfast.kernels import flash_attention, similarity_ce, swin_attention
from vitfast.kernels import window_geometry as geo


def _randn(*shape, seed=0, grad=True):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_ops(causal):
    q, k, v = (_randn(1, 2, 19, 32, seed=i) for i in range(3))
    torch.library.opcheck(flash_attention._forward_op, (q, k, v, causal, 32 ** -0.5, "ieee"))
    out, lse = flash_attention._forward_op(q, k, v, causal, 32 ** -0.5, "ieee")
    do = _randn(1, 2, 19, 32, seed=3, grad=False)
    torch.library.opcheck(flash_attention._backward_op, (do, q.detach(), k.detach(), v.detach(), out.detach(),
                                                         lse.detach(), causal, 32 ** -0.5, "ieee"))


@pytest.mark.parametrize("causal", [False, True])
def test_packed_flash_attention_ops(causal):
    qkv = _randn(2, 19, 3 * 64)
    args = (2, causal, 32 ** -0.5, "ieee")
    torch.library.opcheck(flash_attention._packed_forward_op, (qkv, *args))
    out, lse = flash_attention._packed_forward_op(qkv, *args)
    dout = _randn(2, 19, 64, seed=3, grad=False)
    torch.library.opcheck(flash_attention._packed_backward_op, (dout, qkv.detach(), out.detach(), lse.detach(), *args))


@pytest.mark.parametrize("with_bias", [True, False])
def test_window_attention_ops(with_bias):
    qkv, table = _randn(1, 5, 6, 3 * 32), _randn(49, 2, seed=1)
    bias = _randn(96, seed=2) if with_bias else None
    g = swin_attention._pack(geo.window_geometry(qkv, table, 4, 2, shrink_window=False))
    torch.library.opcheck(swin_attention._forward_op, (qkv, table, bias, g, 2, 0.25, "ieee"))
    out, lse = swin_attention._forward_op(qkv, table, bias, g, 2, 0.25, "ieee")
    torch.library.opcheck(swin_attention._backward_op, (_randn(*out.shape, seed=3, grad=False), qkv.detach(),
                                                        table.detach(), None if bias is None else bias.detach(),
                                                        out.detach(), lse.detach(), g, 2, 0.25, "ieee"))


@pytest.mark.parametrize("use_triton", [True, False], ids=["triton", "chunked"])
def test_clip_loss_ops(use_triton):
    image, text = (torch.nn.functional.normalize(_randn(9, 32, seed=i, grad=False), dim=-1).requires_grad_()
                   for i in range(2))
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    torch.library.opcheck(similarity_ce._forward_op, (image, text, None, None, scale, bias, use_triton, "ieee"))
    loss, row, col, diag = similarity_ce._forward_op(image, text, None, None, scale, bias, use_triton, "ieee")
    torch.library.opcheck(similarity_ce._backward_op, (torch.tensor(1.0), image.detach(), text.detach(), None, None,
                                                       scale.detach(), bias.detach(), row.detach(), col.detach(),
                                                       diag.detach(), use_triton,
                                                       "ieee", False))
