"""siglip_loss(group=...) across two gloo processes on the CPU: each rank scores its images against every
rank's texts (gathered with gradient); the losses and gradients must equal the float64 oracle of the global
batch, open_clip's SigLipLoss(rank, world_size) (its neighbour exchange) at equal batch sizes, and, averaged
as DDP averages them, the single-process loss over the global batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vitfast.kernels import reference, siglip_loss

WORLD = 2
D = 32
SCALE, BIAS = 10.0, -5.0
CASES = (("equal", (5, 5)), ("ragged", (3, 70)))
BACKENDS = ("triton", "chunked", "eager")
NAMES = ("loss", "d_image", "d_text", "d_scale", "d_bias")


def _global_pairs(total: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(total, D, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(total, D, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def _leaves(image, text):
    return [image.float().requires_grad_(), text.float().requires_grad_(), torch.tensor(SCALE, requires_grad=True),
            torch.tensor(BIAS, requires_grad=True)]


def _rank_results(rank: int, sizes: tuple[int, ...], seed: int) -> dict:
    image, text = _global_pairs(sum(sizes), seed)
    offset = sum(sizes[:rank])
    rows = slice(offset, offset + sizes[rank])
    out = {}
    for backend in BACKENDS:
        leaves = _leaves(image[rows], text[rows])
        loss = siglip_loss(*leaves, backend=backend, group=dist.group.WORLD)
        out[backend] = [loss.detach(), *torch.autograd.grad(loss, leaves)]
    if len(set(sizes)) == 1:
        from open_clip.loss import SigLipLoss

        leaves = _leaves(image[rows], text[rows])
        loss = SigLipLoss(rank=rank, world_size=len(sizes))(*leaves)
        out["open_clip"] = [loss.detach(), *torch.autograd.grad(loss, leaves)]
    return out


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {name: _rank_results(rank, sizes, seed) for seed, (name, sizes) in enumerate(CASES)}
        torch.save(results, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _oracle(sizes: tuple[int, ...], seed: int) -> list[list[torch.Tensor]]:
    """Per rank, in float64: its loss, the gradient of the sum of all ranks' losses for its own pairs (what
    the gather's backward delivers), and its own loss's scale and bias gradients."""
    image, text = [x.requires_grad_() for x in _global_pairs(sum(sizes), seed)]
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    losses = [reference.siglip_loss(image[o:o + n], text[o:o + n], scale, bias, all_text=text, offset=o)
              for o, n in zip(offsets, sizes)]
    d_image, d_text = torch.autograd.grad(sum(losses), (image, text), retain_graph=True)
    expected = []
    for loss, o, n in zip(losses, offsets, sizes):
        d_scale, d_bias = torch.autograd.grad(loss, (scale, bias), retain_graph=True)
        expected.append([loss.detach(), d_image[o:o + n], d_text[o:o + n], d_scale, d_bias])
    return expected


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("siglip-loss-gloo")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("backend", BACKENDS + ("open_clip",))
@pytest.mark.parametrize("case", range(len(CASES)), ids=[name for name, _ in CASES])
def test_ranks_match_global_oracle(rank_results, case, backend):
    name, sizes = CASES[case]
    if backend not in rank_results[0][name]:
        pytest.skip("open_clip's SigLipLoss exchanges equal batches between neighbours")
    for rank, expected in enumerate(_oracle(sizes, case)):
        got = rank_results[rank][name][backend]
        for what, g, e in zip(NAMES, got, expected):
            torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=2e-6, msg=f"rank {rank} {what}")


def test_equal_batches_average_to_single_process_loss(rank_results):
    """What DDP sees: the mean of the ranks' losses and gradients is the global batch's loss and gradient
    (the loss divides by the local batch, so one process on the global batch is the ranks' mean)."""
    name, sizes = CASES[0]
    image, text = _global_pairs(sum(sizes), 0)
    leaves = _leaves(image, text)
    loss = siglip_loss(*leaves, backend="chunked")
    grads = torch.autograd.grad(loss, leaves)
    for backend in ("triton", "open_clip"):
        ranks = [r[name][backend] for r in rank_results]
        torch.testing.assert_close(sum(r[0] for r in ranks) / WORLD, loss.detach())
        torch.testing.assert_close(torch.cat([r[1] for r in ranks]) / WORLD, grads[0])
        torch.testing.assert_close(torch.cat([r[2] for r in ranks]) / WORLD, grads[1])
        torch.testing.assert_close(sum(r[3] for r in ranks) / WORLD, grads[2])
        torch.testing.assert_close(sum(r[4] for r in ranks) / WORLD, grads[3], atol=1e-6, rtol=1e-5)
