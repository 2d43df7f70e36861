"""vitfast.ClipLoss / SigLipLoss (and accelerate_loss) against open_clip's own losses: one process, and two
gloo processes for every open_clip setting they take: the loss each rank returns and each rank's feature
gradients equal open_clip's; the logit scale's and bias's gradients equal after DDP's averaging."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import vitfast

open_clip_loss = pytest.importorskip("open_clip.loss")

WORLD, N, D = 2, 6, 32
CLIP_SETTINGS = ((True, True), (False, True), (False, False))  # (local_loss, gather_with_grad)
SIGLIP_IMPLS = ("bidir", "gather")


def _pairs(seed: int, n: int = N * WORLD) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(n, D, generator=g), dim=-1)
    return image, text


def _run(loss_fn, image, text, sigmoid: bool) -> list[torch.Tensor]:
    """loss, d image, d text, d scale (, d bias): this rank's."""
    leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(), torch.tensor(12.0, requires_grad=True)]
    if sigmoid:
        leaves.append(torch.tensor(-5.0, requires_grad=True))
    out = loss_fn(*leaves, output_dict=True)["contrastive_loss"]
    return [out.detach(), *torch.autograd.grad(out, leaves)]


@pytest.mark.parametrize("backend", ["triton", "chunked"])
def test_one_process_equals_open_clip(backend):
    image, text = _pairs(0, 9)
    for ours, theirs, sigmoid in ((vitfast.ClipLoss(backend=backend), open_clip_loss.ClipLoss(), False),
                                  (vitfast.SigLipLoss(backend=backend), open_clip_loss.SigLipLoss(), True)):
        for got, want in zip(_run(ours, image, text, sigmoid), _run(theirs, image, text, sigmoid)):
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        made = vitfast.accelerate_loss(theirs, backend=backend)
        assert type(made) is type(ours) and made.original is theirs
    assert vitfast.accelerate(open_clip_loss.ClipLoss()).__class__ is vitfast.ClipLoss
    other = torch.nn.CrossEntropyLoss()
    assert vitfast.accelerate_loss(other) is other


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        image, text = _pairs(1)
        rows = slice(rank * N, (rank + 1) * N)
        out = {}
        for local, with_grad in CLIP_SETTINGS:
            args = dict(local_loss=local, gather_with_grad=with_grad, rank=rank, world_size=WORLD)
            theirs = open_clip_loss.ClipLoss(**args)
            out[("clip", local, with_grad)] = (_run(vitfast.accelerate_loss(theirs, backend="chunked"), image[rows],
                                                    text[rows], False), _run(theirs, image[rows], text[rows], False))
        for impl in SIGLIP_IMPLS:
            theirs = open_clip_loss.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=impl)
            out[("siglip", impl)] = (_run(vitfast.accelerate_loss(theirs, backend="chunked"), image[rows],
                                          text[rows], True), _run(theirs, image[rows], text[rows], True))
        refused = open_clip_loss.ClipLoss(local_loss=True, gather_with_grad=False, rank=rank, world_size=WORLD)
        out["refused_is_kept"] = vitfast.accelerate_loss(refused) is refused
        torch.save(out, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_open_clip_in_every_setting(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert all(r.pop("refused_is_kept") for r in ranks)
    for case in ranks[0]:
        for r in ranks:  # each rank: the loss it returns, its features' gradients
            ours, theirs = r[case]
            for got, want in zip(ours[:3], theirs[:3]):
                torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5, msg=str(case))
        for i in range(3, len(ranks[0][case][0])):  # the scalars' gradients, as DDP averages them
            mean = [sum(r[case][k][i] for r in ranks) / WORLD for k in (0, 1)]
            torch.testing.assert_close(mean[0], mean[1], atol=2e-6, rtol=1e-5, msg=str(case))
