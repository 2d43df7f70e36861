"""CLIP metrics: zero-shot classification on an ImageFolder and image–text retrieval on a pair table.

Zero-shot follows open_clip: each class name is put into every prompt template, the text embeddings
are normalized, averaged over the templates and normalized again; an image's prediction is the class
whose averaged embedding is nearest. Retrieval ranks, for every image, all texts of the table by
similarity (and the reverse) and reports recall at 1, 5 and 10 of the image's own caption.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitfast import data as vdata

# vitfast's prompts: short, generic, and valid English for object and pattern class names.
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a photo of the {}.",
             "a close-up photo of a {}.", "a drawing of a {}.", "a rendering of a {}.")
RECALL_AT = (1, 5, 10)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_transform_config(image_size: int) -> vdata.TransformConfig:
    """open_clip's preprocessing: crops of 90–100% of the area for training (no flip: captions may say
    left or right), resize + centre crop of the whole image for eval, OpenAI's mean and std."""
    return vdata.TransformConfig(image_size, scale=(0.9, 1.0), crop_pct=1.0, mean=OPENAI_MEAN, std=OPENAI_STD,
                                 hflip=False)


def class_names(split_root: str | os.PathLike[str], classes: Sequence[str]) -> list[str]:
    """Readable class names: `classnames.txt` beside the split folders (one per line, in class-folder
    order) when present, else the folder names with underscores as spaces."""
    path = Path(split_root).parent / vdata.CLASSNAMES_FILE
    if not path.is_file():
        return [c.replace("_", " ") for c in classes]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(classes):
        raise vdata.DataError(f"{path} lists {len(names)} class names but {Path(split_root)} has {len(classes)} "
                              "class folders; give one name per folder, in sorted folder order.")
    return names


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, tokenizer, names: Sequence[str], templates: Sequence[str] = TEMPLATES,
                         *, device: torch.device, amp: torch.dtype | None = None) -> torch.Tensor:
    """(D, classes) normalized text embeddings, each the mean over the templates of one class."""
    weights = []
    for name in names:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            emb = model.encode_text(tokens, normalize=True).float()
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights, dim=1)


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, loader: DataLoader, classifier: torch.Tensor, device: torch.device,
                       amp: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 and top-5 (%) of the zero-shot classifier on (images, labels, skipped) batches."""
    hits1 = hits5 = n = 0
    for images, labels, _ in loader:
        if images.numel() == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            features = model.encode_image(images, normalize=True).float()
        top = (features @ classifier).topk(min(5, classifier.shape[1]), dim=1).indices
        hits1 += int((top[:, 0] == labels).sum())
        hits5 += int((top == labels[:, None]).any(1).sum())
        n += len(labels)
    n = max(n, 1)
    return {"zeroshot_top1": 100 * hits1 / n, "zeroshot_top5": 100 * hits5 / n}


@torch.no_grad()
def encode_pairs(model: nn.Module, loader: DataLoader, device: torch.device,
                 amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized (N, D) image and text embeddings of the (images, tokens, skipped) batches."""
    images_out, texts_out = [], []
    for images, tokens, _ in loader:
        if images.numel() == 0:
            continue
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            images_out.append(model.encode_image(images.to(device), normalize=True).float())
            texts_out.append(model.encode_text(tokens.to(device), normalize=True).float())
    if not images_out:
        raise vdata.DataError("no readable image-text pairs to evaluate.")
    return torch.cat(images_out), torch.cat(texts_out)


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Recall@k (%) of image→text and text→image retrieval where pair i matches only pair i.

    Ranks are counted a block of rows at a time, so memory stays at chunk × N similarities.
    """
    out = {}
    for name, queries, keys in (("image_to_text", image_emb, text_emb), ("text_to_image", text_emb, image_emb)):
        ranks = []
        for start in range(0, len(queries), chunk):
            sims = queries[start:start + chunk] @ keys.t()
            own = sims.gather(1, torch.arange(start, start + len(sims), device=sims.device)[:, None])
            ranks.append((sims > own).sum(1))  # how many keys beat the true one
        ranks = torch.cat(ranks)
        for k in RECALL_AT:
            out[f"{name}_R@{k}"] = 100 * (ranks < k).double().mean().item()
    return out


@dataclass
class ClipEvalData:
    """What a CLIP is evaluated on: an ImageFolder val split with its class names (zero-shot), and/or
    image-text pairs (retrieval); `description` says what and where, for logs."""

    zero_shot_loader: DataLoader | None = None
    names: list[str] | None = None
    pairs_loader: DataLoader | None = None
    description: list[str] = field(default_factory=list)


def clip_eval_data(data_dir, val_data, transform, tokenize, fmt, *, batch_size: int, workers: int,
                   skip_bad_images: bool = False) -> ClipEvalData:
    """Loaders over the val split of the ImageFolder `data_dir` and over the `val_data` table or shards
    (either may be None), with `transform` for the images and `tokenize` for the captions."""
    from vitfast.pairs import pairs_dataset

    out = ClipEvalData()
    if val_data is not None:
        pairs = pairs_dataset(val_data, transform, fmt, skip_bad_images)
        pairs.tokenize = tokenize
        out.pairs_loader = vdata.build_loader(pairs, batch_size=batch_size, workers=workers)
        out.description.append(f"{len(pairs)} val pairs from {val_data}")
    if data_dir is not None:
        val_root = vdata.find_split(data_dir, "val")
        images = vdata.ImageFolderDataset(val_root, transform, skip_bad_images)
        out.names = class_names(val_root, images.classes)
        out.zero_shot_loader = vdata.build_loader(images, batch_size=batch_size, workers=workers)
        out.description.append(f"zero-shot on {len(images)} images of {len(out.names)} classes in {val_root}")
    return out


def evaluate_clip(model: nn.Module, tokenizer, data: ClipEvalData, device: torch.device,
                  amp: torch.dtype | None = None) -> dict[str, float]:
    """Zero-shot top-1/top-5 (when `data` has an ImageFolder loader) and retrieval recalls (when it has pairs)."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    try:
        if data.zero_shot_loader is not None:
            classifier = zero_shot_classifier(model, tokenizer, data.names, device=device, amp=amp)
            metrics |= zero_shot_accuracy(model, data.zero_shot_loader, classifier, device, amp)
        if data.pairs_loader is not None:
            image_emb, text_emb = encode_pairs(model, data.pairs_loader, device, amp)
            metrics |= retrieval_metrics(image_emb, text_emb)
            metrics["pairs"] = len(image_emb)
    finally:
        model.train(was_training)
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics


def evaluate_clip_folder(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
                         val_data: str | os.PathLike[str] | None = None, *, batch_size: int = 256, workers: int = 2,
                         amp_dtype: str = "auto", attn_backend: str = "auto", skip_bad_images: bool = False,
                         csv_format=None) -> dict[str, float]:
    """Load a CLIP model folder (weights + tokenizer.json) and evaluate it: zero-shot on the val split of
    `data_dir` and retrieval on the `val_data` table or shards. With neither given, both run on the built-in data."""
    from vitfast.checkpoint import load
    from vitfast.pairs import CaptionTokens, CsvFormat, default_pairs
    from vitfast.tokenizer import load_tokenizer
    from vitfast.train import amp_dtype_for

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(model_dir, map_location=device, attn_backend=attn_backend)
    tokenizer = load_tokenizer(model_dir)
    if data_dir is None and val_data is None:
        data_dir, val_data = vdata.default_data_dir(), default_pairs("val")
    transform = vdata.build_transform(clip_transform_config(model.config.image_size), False)
    data = clip_eval_data(data_dir, val_data, transform, CaptionTokens(tokenizer), csv_format or CsvFormat(),
                          batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images)
    return evaluate_clip(model, tokenizer, data, device, amp_dtype_for(amp_dtype, device))
