"""Classification metrics on a loader: top-1, top-5, mean loss, images/s (summed over DDP ranks)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader


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
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(),
            hits[:, 0].sum().double(), hits.any(dim=1).sum().double(), torch.tensor(float(len(labels)), device=device, dtype=torch.float64),
        ])
    if distributed:
        dist.all_reduce(totals)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n,
            "images": int(n), "images_per_s": n / max(elapsed, 1e-9)}


def evaluate_folder(model_dir, data_dir=None, *, batch_size: int = 256, workers: int = 2, amp_dtype: str = "auto",
                    attn_backend: str = "auto", skip_bad_images: bool = False, val_data=None,
                    csv_format=None) -> dict[str, float]:
    """Load a model folder and evaluate it on the val split of `data_dir` (default: the built-in set).

    A CLIP folder is evaluated by vitfast.evaluate_clip (zero-shot on `data_dir`, retrieval on the
    `val_data` table); `val_data` and `csv_format` apply to CLIP only.
    """
    from vitfast import data as vdata
    from vitfast.checkpoint import load, read_config
    from vitfast.train import amp_dtype_for

    if read_config(model_dir).get("family") == "clip":
        from vitfast.evaluate_clip import evaluate_clip_folder

        return evaluate_clip_folder(model_dir, data_dir, val_data, batch_size=batch_size, workers=workers,
                                    amp_dtype=amp_dtype, attn_backend=attn_backend, skip_bad_images=skip_bad_images,
                                    csv_format=csv_format)
    if val_data is not None:
        raise ValueError("--val-data (an image-text table) applies to CLIP models; this folder holds a classifier.")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(model_dir, map_location=device, attn_backend=attn_backend)
    root = vdata.default_data_dir() if data_dir is None else data_dir
    val = vdata.ImageFolderDataset(vdata.find_split(root, "val"),
                                   vdata.build_transform(vdata.TransformConfig(model.config.img_size), False),
                                   skip_bad_images)
    if len(val.classes) != model.config.num_classes:
        raise vdata.DataError(f"{root} has {len(val.classes)} classes but the model in {model_dir} predicts "
                              f"{model.config.num_classes}; evaluate it on the data it was trained for.")
    loader = vdata.build_loader(val, batch_size=batch_size, workers=workers)
    return evaluate(model, loader, device, amp_dtype_for(amp_dtype, device))
