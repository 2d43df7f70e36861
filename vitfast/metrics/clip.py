"""CLIP metrics: zero-shot classification and image–text retrieval.

Zero-shot follows open_clip: each class name is put into every prompt template, the text embeddings
are normalized, averaged over the templates and normalized again; an image's prediction is the class
whose averaged embedding is nearest. Retrieval ranks, for every image, all texts of the table by
similarity (and the reverse) and reports recall at 1, 5 and 10 of the image's own caption.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitfast.data import DataError
from vitfast.runtime import autocast

# vitfast's prompts: short, generic, and valid English for object and pattern class names.
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a photo of the {}.",
             "a close-up photo of a {}.", "a drawing of a {}.", "a rendering of a {}.")
RECALL_AT = (1, 5, 10)


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, tokenizer, names: Sequence[str], templates: Sequence[str] = TEMPLATES,
                         *, device: torch.device, amp: torch.dtype | None = None) -> torch.Tensor:
    """(D, classes) normalized text embeddings, each the mean over the templates (format strings with
    one `{}`) of one class; a class's prompts are encoded as one batch."""
    weights = []
    for name in names:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        with autocast(device, amp):
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
        with autocast(device, amp):
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
        with autocast(device, amp):
            images_out.append(model.encode_image(images.to(device), normalize=True).float())
            texts_out.append(model.encode_text(tokens.to(device), normalize=True).float())
    if not images_out:
        raise DataError("no readable image-text pairs to evaluate.")
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
    """What a CLIP is evaluated on: an ImageFolder val split with its class names and the prompt
    templates they are put into (zero-shot; vitfast's short `TEMPLATES` unless told otherwise, e.g.
    OpenAI's 80 for ImageNet), and/or image-text pairs (retrieval); `description` says what and where, for logs."""

    zero_shot_loader: DataLoader | None = None
    names: list[str] | None = None
    pairs_loader: DataLoader | None = None
    description: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = TEMPLATES


def evaluate_clip(model: nn.Module, tokenizer, data: ClipEvalData, device: torch.device,
                  amp: torch.dtype | None = None) -> dict[str, float]:
    """Zero-shot top-1/top-5 (when `data` has an ImageFolder loader) and retrieval recalls (when it has pairs)."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    try:
        if data.zero_shot_loader is not None:
            classifier = zero_shot_classifier(model, tokenizer, data.names, data.templates, device=device, amp=amp)
            metrics |= zero_shot_accuracy(model, data.zero_shot_loader, classifier, device, amp)
        if data.pairs_loader is not None:
            image_emb, text_emb = encode_pairs(model, data.pairs_loader, device, amp)
            metrics |= retrieval_metrics(image_emb, text_emb)
            metrics["pairs"] = len(image_emb)
    finally:
        model.train(was_training)
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics
