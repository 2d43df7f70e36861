"""Classification metrics on a loader: top-1, top-5, mean loss, images/s (summed over DDP ranks)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitfast.runtime import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None,
             *, distributed: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%), mean cross-entropy and throughput of `model` over `loader`.

    The loader yields (images, labels, skipped) batches as vitfast.data's collate does. Under DDP each
    rank evaluates its share and the sums are all-reduced, so every rank returns the global figures.
    """
    was_training = model.training
    model.eval()
    # [loss sum, top-1 hits, top-5 hits, images]
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for images, labels, _ in loader:
        if images.numel() == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
            torch.tensor(float(len(labels)), device=device, dtype=torch.float64),
        ])
    if distributed:
        dist.all_reduce(totals)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n,
            "images": int(n), "images_per_s": n / max(elapsed, 1e-9)}
