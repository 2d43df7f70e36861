"""siglip_loss against the float64 oracle (the full N×N logits) and open_clip's SigLipLoss: the loss and
its four gradients, Triton in the interpreter and the chunked path, at odd batch sizes and dims, fp32 and
fp16 (bf16: tests/kernels/test_bf16.py), with strided inputs, many chunks, split grids and bad input."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F

from vitfast.choices import SIGLIP_LOSS_BACKENDS
from vitfast.kernels import siglip_loss, similarity
from vitfast.kernels import similarity_sigmoid as ssg

NAMES = ("loss", "d_image", "d_text", "d_scale", "d_bias")


def _pairs(n, d, dtype, device, seed, correlated=True):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(image + (0.8 if correlated else 5.0) * torch.randn(n, d, generator=g), dim=-1)
    return image.to(device=device, dtype=dtype), text.to(device=device, dtype=dtype)


def _loss_and_grads(op, image, text, scale, bias, cast=None):
    leaves = [x.detach().clone().to(cast or x.dtype).requires_grad_() for x in (image, text, scale, bias)]
    loss = op(*leaves)
    return [loss, *torch.autograd.grad(loss, leaves)]


def _backend(name):
    return lambda i, t, s, b: siglip_loss(i, t, s, b, backend=name)


def assert_matches_oracle(backend, image, text, scale, bias):
    got = _loss_and_grads(_backend(backend), image, text, scale, bias)
    ref = _loss_and_grads(_backend("eager"), image, text, scale, bias, cast=torch.float64)
    eager = _loss_and_grads(_backend("eager"), image, text, scale, bias)
    # The float32 loss sums N² softplus terms of logits as large as the scale, divided by N.
    loss_floor = 4 * torch.finfo(torch.float32).eps * float(scale.abs().max()) * image.shape[0] + oracle.FLOOR
    oracle.assert_matches_oracle(NAMES, got, ref, eager, likes=(None, image, text, scale, bias),
                                 floors={"loss": loss_floor})


@pytest.mark.parametrize("backend", ["triton", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n, d", [(1, 64), (3, 64), (130, 32), (1000, 16), (3, 512), (65, 48), (70, 768)])
def test_matches_oracle(n, d, dtype, backend, device):
    image, text = _pairs(n, d, dtype, device, n * 7 + d)
    assert_matches_oracle(backend, image, text, torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device))


@pytest.mark.parametrize("backend", ["triton", "chunked", "eager"])
@pytest.mark.parametrize("n", [1, 3, 130])
def test_equals_open_clips_siglip_loss(n, backend, device):
    """open_clip's SigLipLoss (one process): the loss and the gradients of both embeddings, scale and bias."""
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image, text = _pairs(n, 32, torch.float32, device, n)
    scale, bias = torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device)
    got = _loss_and_grads(_backend(backend), image, text, scale, bias)
    want = _loss_and_grads(open_clip_loss.SigLipLoss(), image, text, scale, bias, cast=torch.float64)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_strides_large_scale_and_uncorrelated_pairs(backend, device):
    image, text = _pairs(97, 64, torch.float32, device, 5)
    wide = torch.cat([text, text], dim=1)[:, 64:]
    assert not wide.is_contiguous()
    assert_matches_oracle(backend, image, wide, torch.tensor([12.0], device=device), torch.tensor(-3.0, device=device))
    image, text = _pairs(50, 32, torch.float32, device, 6, correlated=False)
    assert_matches_oracle(backend, image, text, torch.tensor(100.0, device=device), torch.tensor(5.0, device=device))


def test_chunked_splits_rows(monkeypatch):
    monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", 3 * 40)  # 3 rows a chunk, a ragged last one
    image, text = _pairs(40, 32, torch.float32, "cpu", 7)
    assert_matches_oracle("chunked", image, text, torch.tensor(20.0), torch.tensor(-4.0))


@pytest.mark.parametrize("wave", [4, similarity.WAVE_PROGRAMS])
def test_split_grids_sum_deterministically(wave, monkeypatch, device):
    monkeypatch.setattr(similarity, "WAVE_PROGRAMS", wave)
    image, text = _pairs(200, 64, torch.float32, device, 11)
    scale, bias = torch.tensor(30.0, device=device), torch.tensor(-2.0, device=device)
    first = _loss_and_grads(_backend("triton"), image, text, scale, bias)
    assert_matches_oracle("triton", image, text, scale, bias)
    again = _loss_and_grads(_backend("triton"), image, text, scale, bias)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_three_products_per_step(monkeypatch):
    """The forward computes S once (1 product) and each side's gradient pass S and G·B (2 each)."""
    from triton.runtime.interpreter import InterpreterBuilder

    macs = []
    real_dot = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        macs.append(a.data.shape[-2] * a.data.shape[-1] * b.data.shape[-1])
        return real_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)
    n, d = 64, 64
    image, text = _pairs(n, d, torch.float32, "cpu", 3)
    scale, bias = torch.tensor(10.0), torch.tensor(-1.0)
    ssg.loss_forward(image, text, scale, bias, 0, True, "ieee")
    assert sum(macs) == n * n * d
    ssg.loss_backward(torch.tensor(1.0), image, text, scale, bias, 0, True, "ieee")
    assert sum(macs) == 5 * n * n * d


@pytest.mark.parametrize("use_triton", [True, False], ids=["triton", "chunked"])
def test_ops_are_registered(use_triton):
    image, text = (F.normalize(torch.randn(9, 32, generator=torch.Generator().manual_seed(i)), dim=-1).requires_grad_()
                   for i in range(2))
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    torch.library.opcheck(ssg._forward_op, (image, text, scale, bias, 0, use_triton, "ieee"))
    torch.library.opcheck(ssg._backward_op, (torch.tensor(1.0), image.detach(), text.detach(), scale.detach(),
                                             bias.detach(), 0, use_triton, "ieee"))


def test_compiles_fullgraph():
    image, text = _pairs(12, 32, torch.float32, "cpu", 2)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    fn = torch.compile(lambda i, t, s, b: siglip_loss(i, t, s, b, backend="chunked"), fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(image, text, scale, bias), siglip_loss(image, text, scale, bias, backend="chunked"))


def test_rejects_bad_input():
    image, text = _pairs(4, 32, torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match="same N and D"):
        siglip_loss(image, text[:3], 10.0, -10.0)
    with pytest.raises(ValueError, match="siglip_loss needs at least one"):
        siglip_loss(image[:0], text[:0], 10.0, -10.0)
    with pytest.raises(ValueError, match="needs a logit_bias"):
        siglip_loss(image, text, 10.0, None)
    with pytest.raises(ValueError, match="multiple of 16"):
        siglip_loss(torch.randn(4, 40), torch.randn(4, 40), 10.0, -10.0, backend="triton")
    with pytest.raises(ValueError, match="unknown siglip-loss backend 'sdpa'") as error:
        siglip_loss(image, text, 10.0, -10.0, backend="sdpa")
    assert all(repr(name) in str(error.value) for name in SIGLIP_LOSS_BACKENDS)
    with pytest.raises(ValueError, match="init_process_group"):
        siglip_loss(image, text, 10.0, -10.0, group=object())


def test_auto_is_chunked_off_cuda():
    image, text = _pairs(5, 32, torch.float32, "cpu", 1)
    torch.testing.assert_close(siglip_loss(image, text, 10.0, -10.0),
                               siglip_loss(image, text, 10.0, -10.0, backend="chunked"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_triton_on_gpu(dtype, device):
    for n, d in ((4096, 512), (1000, 1024), (333, 768)):
        image, text = _pairs(n, d, dtype, device, n)
        assert_matches_oracle("triton", image, text, torch.tensor(10.0, device=device),
                              torch.tensor(-10.0, device=device))
