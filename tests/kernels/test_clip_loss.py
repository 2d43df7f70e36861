"""The CLIP loss without N×N logits: Triton (interpreter here, GPU when there is one) and chunked
backends against the float64 oracle and against open_clip's ClipLoss; loss and every gradient.

Tolerance as for the attention kernels (oracle.py), with the eager full-matrix loss in the same dtype
as the yardstick.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F

from vitfast.choices import CLIP_LOSS_BACKENDS
from vitfast.kernels import clip_loss
from vitfast.kernels import similarity
from vitfast.kernels import similarity_ce as sce

NAMES = ("loss", "d_image", "d_text", "d_scale", "d_bias")


def _pairs(n, d, dtype, device, seed, correlated=True):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    # Matching texts near their images, as in training, so the diagonal matters.
    text = F.normalize(image + (0.8 if correlated else 5.0) * torch.randn(n, d, generator=g), dim=-1)
    return image.to(device=device, dtype=dtype), text.to(device=device, dtype=dtype)


def _loss_and_grads(backend, image, text, scale, bias, cast=None):
    leaves = [x.detach().clone().to(cast or x.dtype).requires_grad_() for x in (image, text, scale)]
    if bias is not None:
        leaves.append(bias.detach().clone().to(cast or bias.dtype).requires_grad_())
    loss = clip_loss(leaves[0], leaves[1], leaves[2], logit_bias=leaves[3] if bias is not None else None,
                     backend=backend)
    return [loss, *torch.autograd.grad(loss, leaves)]


def assert_matches_oracle(backend, image, text, scale, bias=None):
    got = _loss_and_grads(backend, image, text, scale, bias)
    ref = _loss_and_grads("eager", image, text, scale, bias, cast=torch.float64)
    eager = _loss_and_grads("eager", image, text, scale, bias)
    # The loss is the one output whose floor is not rounding_floor's: it is float32 whatever the inputs'
    # dtype, and a difference of log-sum-exps as large as the logits (up to the scale), so it carries
    # float32's rounding at the scale, not at its own magnitude (often far below 1).
    loss_floor = 4 * torch.finfo(torch.float32).eps * float(scale.abs().max()) + oracle.FLOOR
    oracle.assert_matches_oracle(NAMES, got, ref, eager, likes=(None, image, text, scale, bias),
                                 floors={"loss": loss_floor})


@pytest.mark.parametrize("backend", ["triton", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n, d", [(1, 64), (3, 64), (1000, 64), (1, 768), (3, 512), (65, 48), (200, 512),
                                  (130, 768), (70, 16)])
def test_matches_oracle(n, d, dtype, backend, device):
    image, text = _pairs(n, d, dtype, device, n * 7 + d)
    assert_matches_oracle(backend, image, text, torch.tensor(100.0, device=device).log().exp() * 0.5)


@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_bias_scale_shapes_and_strides(backend, device):
    image, text = _pairs(97, 64, torch.float32, device, 5)
    wide = torch.cat([text, text], dim=1)[:, 64:]  # a strided view
    assert not wide.is_contiguous()
    assert_matches_oracle(backend, image, wide, torch.tensor([12.0], device=device), torch.tensor(-3.0, device=device))
    # Uncorrelated pairs (large loss) and a large scale: the log-sum-exps must not overflow.
    image, text = _pairs(50, 32, torch.float32, device, 6, correlated=False)
    assert_matches_oracle(backend, image, text, torch.tensor(100.0, device=device))


def test_chunked_splits_rows(monkeypatch):
    # Force many chunks (3 rows each), including a ragged last one.
    monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", 3 * 40)
    image, text = _pairs(40, 32, torch.float32, "cpu", 7)
    assert_matches_oracle("chunked", image, text, torch.tensor(20.0))


@pytest.mark.parametrize("n, d, bias", [(1, 64, False), (3, 512, True), (257, 768, False), (1000, 64, True)])
def test_matches_open_clip(n, d, bias):
    open_clip_loss = pytest.importorskip("open_clip.loss").ClipLoss()
    image, text = _pairs(n, d, torch.float32, "cpu", n + d)
    scale = torch.tensor(1 / 0.07)
    b = torch.tensor(-1.5) if bias else None
    expected = open_clip_loss(image, text, scale, b)
    torch.testing.assert_close(clip_loss(image, text, scale, logit_bias=b, backend="chunked"), expected)
    torch.testing.assert_close(clip_loss(image, text, scale, logit_bias=b, backend="eager"), expected)


def test_grad_accumulator_spans_d():
    assert [sce.grad_block_d(d) for d in (16, 48, 64, 256, 512, 768, 1024)] == [16, 64, 64, 256, 512, 1024, 1024]


@pytest.mark.parametrize("wave", [4, sce.WAVE_PROGRAMS])
def test_split_grids_merge_deterministically(wave, monkeypatch, device):
    """Several row groups and column splits: the forward's partial row and column LSEs and the gradient
    passes' partial sums are merged, and a rerun is bit-identical. On the interpreter's 64×64 tiles
    (4 row and 4 column blocks), with 4 programs to aim at, the forward runs 2 row groups of 2 row
    blocks × 2 column splits of 2 blocks; at the real target, a program per tile, and the gradient
    passes 4 column splits."""
    monkeypatch.setattr(sce, "WAVE_PROGRAMS", wave)  # the forward's grid rule reads it here
    monkeypatch.setattr(similarity, "WAVE_PROGRAMS", wave)  # the splits rule, which both losses share
    if device.type == "cpu":
        assert sce.lse_grid(200, 200, 64, 64, True) == ((2, 2, 2) if wave == 4 else (4, 1, 4))
        assert sce._splits(4, 4) == ((4, 1) if wave == 4 else (1, 4))
    image, text = _pairs(200, 64, torch.float32, device, 11)
    scale, bias = torch.tensor(30.0, device=device), torch.tensor(-2.0, device=device)
    assert_matches_oracle("triton", image, text, scale, bias)
    first = _loss_and_grads("triton", image, text, scale, bias)
    again = _loss_and_grads("triton", image, text, scale, bias)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_grids_fill_two_waves():
    """The grids of the closing note: two waves of 132 SMs for n ≥ 1024 per rank against a global 8192,
    and a single GPU's 32768 (forward on 64×64 tiles; backward at D=512 on sm_90's 64×32)."""
    fwd = {n: sce.lse_grid(n, 8192, 64, 64, False) for n in (1024, 4096)}
    assert fwd == {1024: (16, 7, 19), 4096: (64, 25, 6)}
    assert sce.lse_grid(32768, 32768, 64, 64, True) == (17, 32, 16)
    assert all(g * s >= 2 * 132 for g, _, s in (*fwd.values(), sce.lse_grid(32768, 32768, 64, 64, True)))
    assert sce._splits(8192 // 32, 1024 // 64) == (15, 18)  # 16 local row blocks × 18 splits of all texts
    assert sce._splits(1024 // 32, 8192 // 64) == (10, 4)  # 128 gathered row blocks × 4 splits of the local pairs


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts the interpreter's dots")
@pytest.mark.parametrize("gathered, need_all, products", [(False, False, 5), (True, True, 10), (True, False, 6)])
def test_n2d_products(gathered, need_all, products, monkeypatch):
    """Forward plus backward multiply-adds, in units of n·N·D (N²D single process): every tl.dot the
    interpreter runs is counted, at sizes that are multiples of every tile (no padding)."""
    from triton.runtime.interpreter import InterpreterBuilder

    macs = []
    real_dot = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        macs.append(a.data.shape[-2] * a.data.shape[-1] * b.data.shape[-1])
        return real_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)
    n, d = 64, 64
    all_image, all_text = _pairs(2 * n, d, torch.float32, "cpu", 3)
    image, text = (all_image[n:], all_text[n:]) if gathered else (all_image[:n], all_text[:n])
    everything = (all_image, all_text) if gathered else (None, None)
    scale, bias = torch.tensor(10.0), torch.tensor(-1.0)
    _, row, col, diag = sce.loss_forward(image, text, *everything, scale, bias, True, "ieee")
    sce.loss_backward(torch.tensor(1.0), image, text, *everything, scale, bias, row, col, diag, True, "ieee",
                      need_all)
    assert sum(macs) == products * n * (2 * n if gathered else n) * d


def test_rejects_bad_input():
    image, text = _pairs(4, 32, torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match="same N and D"):
        clip_loss(image, text[:3], 10.0)
    with pytest.raises(ValueError, match="N = 0"):
        clip_loss(image[:0], text[:0], 10.0)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_loss(image, text, torch.ones(2))
    with pytest.raises(ValueError, match="multiple of 16"):
        clip_loss(torch.randn(4, 40), torch.randn(4, 40), 10.0, backend="triton")
    with pytest.raises(ValueError, match="unknown clip-loss backend 'sdpa'") as error:
        clip_loss(image, text, 10.0, backend="sdpa")
    assert all(repr(name) in str(error.value) for name in CLIP_LOSS_BACKENDS)
    with pytest.raises(ValueError, match="share dtype"):
        clip_loss(image, text.double(), 10.0)


def test_auto_is_chunked_off_cuda():
    image, text = _pairs(5, 32, torch.float32, "cpu", 1)
    torch.testing.assert_close(clip_loss(image, text, 10.0), clip_loss(image, text, 10.0, backend="chunked"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_triton_on_gpu(dtype, device):
    for n, d in ((4096, 512), (1000, 1024), (333, 768)):
        image, text = _pairs(n, d, dtype, device, n)
        assert_matches_oracle("triton", image, text, torch.tensor(50.0, device=device),
                              torch.tensor(-1.0, device=device))
