"""What `vitfast train` optimizes: image classification (ViT, Swin) or image–text contrastive learning
(CLIP). A task builds the model and its data, gives the loss of a batch, runs the validation, and
says what else the model folder holds; loop.py owns the loop, the checkpoints and the processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vitfast import data as vdata
from vitfast.convert.repos import Pretrained, repo_tokenizer, resolve
from vitfast.kernels import clip_loss, siglip_loss
from vitfast.metrics import evaluate, evaluate_clip
from vitfast.models import create_model, named_config
from vitfast.pretrained import from_pretrained
from vitfast.pairs import CaptionTokens, CsvFormat, default_pairs, pairs_dataset
from vitfast.runtime import Runtime
from vitfast.tokenizer import TOKENIZER_NAME, clip_bpe_tokenizer, load_tokenizer, train_bpe
from vitfast.train.evaluate import clip_eval_data


class _Checked:
    """A loader that calls `check` before yielding each batch: the training loop's stop check, which
    raises to end the validation early."""

    def __init__(self, loader, check: Callable[[], None]) -> None:
        self.loader, self.check = loader, check

    def __iter__(self):
        for batch in self.loader:
            self.check()
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


class ClassificationTask:
    """ImageFolder classes; cross-entropy; top-1/top-5 on the val split; the best epoch is the one with
    the highest val top-1, ties going to the lower val loss."""

    def __init__(self, cfg, rt: Runtime, source: Pretrained | None = None) -> None:
        default_data = cfg.data_dir is None
        self.root = vdata.default_data_dir() if default_data else Path(cfg.data_dir)
        if rt.world > 1:
            dist.barrier()  # rank 0 may have generated the default data; others wait until it is there
        train_root, val_root = vdata.find_split(self.root, "train"), vdata.find_split(self.root, "val")
        classes = vdata.ImageFolderDataset(train_root).classes
        self.class_names = classes  # saved in config.json, so a prediction's index maps to its folder name
        overrides = {"num_classes": len(classes), "attn_backend": cfg.attn_backend, "img_size": cfg.img_size,
                     "drop_path_rate": cfg.drop_path}  # None: the model's default
        overrides = {k: v for k, v in overrides.items() if v is not None}
        # published weights: a new head for another class count, position tables resampled for another size
        self.model = from_pretrained(source, **overrides) if source else create_model(cfg.model, **overrides)
        scale = cfg.scale or ((0.35, 1.0) if default_data else (0.08, 1.0))
        preprocess = getattr(self.model, "preprocess", None)
        if preprocess:  # fine-tuning: the weights' own normalization and eval transforms, as timm's train.py
            eval_cfg = vdata.eval_transform_config(preprocess)
            tcfg = dataclasses.replace(eval_cfg, scale=scale)
        else:
            tcfg = eval_cfg = vdata.TransformConfig(self.model.config.img_size, scale=scale)
        self.train_set = vdata.ImageFolderDataset(train_root, vdata.build_transform(tcfg, True), cfg.skip_bad_images)
        val_set = vdata.ImageFolderDataset(val_root, vdata.build_transform(eval_cfg, False), cfg.skip_bad_images)
        if val_set.classes != classes:
            raise vdata.DataError(f"the train and val splits of {self.root} have different class folders.")
        sampler = vdata.EpochSampler(len(val_set), shuffle=False, seed=0, rank=rt.rank, world=rt.world)
        self.val_loader = vdata.build_loader(val_set, batch_size=cfg.batch_size, workers=cfg.workers, sampler=sampler)
        self.distributed = rt.world > 1
        self.description = (f"{len(classes)} classes, {len(self.train_set)} train / {len(val_set)} val images "
                            f"from {self.root}")

    def loss(self, run_model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(run_model(images), labels)

    def after_step(self) -> None:
        pass

    def evaluate(self, device: torch.device, amp: torch.dtype | None, check: Callable[[], None]) -> dict:
        return evaluate(self.model, _Checked(self.val_loader, check), device, amp, distributed=self.distributed)

    def save_extra(self, output: Path) -> None:
        pass

    @staticmethod
    def best_key(val: dict) -> tuple[float, ...]:
        """What best/ keeps the epoch of the highest (compared as a tuple)."""
        return (val["top1"], -val["loss"])

    @staticmethod
    def summary(val: dict) -> str:
        return f"val top-1 {val['top1']:.2f}%, top-5 {val['top5']:.2f}%"


def choose_tokenizer(cfg, base, captions: list[str], output: Path, log: Callable[[str], None]):
    """The run's tokenizer: the one saved in --output when resuming; else --tokenizer (a tokenizer.json,
    or "clip" for CLIP's BPE); else CLIP's BPE for models with CLIP's 49408-token vocabulary, and a BPE
    trained on the training captions (of the model's vocab_size) for models trained from scratch."""
    if cfg.resume and (output / TOKENIZER_NAME).is_file():
        return load_tokenizer(output / TOKENIZER_NAME)
    choice = cfg.tokenizer or ("clip" if base.vocab_size == 49408 else "train")
    if choice == "clip":
        return clip_bpe_tokenizer(cfg.bpe_path, base.context_length)
    if choice == "train":
        tokenizer = train_bpe(captions, vocab_size=base.vocab_size, context_length=base.context_length)
        log(f"trained a {tokenizer.vocab_size}-token BPE on {len(captions)} captions")
        return tokenizer
    if not Path(choice).exists():
        raise ValueError(f"--tokenizer {choice!r} is neither 'clip', 'train' nor an existing tokenizer.json "
                         "(or a model folder holding one).")
    return load_tokenizer(choice)


class ClipTask:
    """Image–text pairs from a CSV/TSV table or tar shards; CLIP's symmetric contrastive loss through
    vitfast.kernels.clip_loss, or for SigLIP models the pairwise sigmoid loss through
    vitfast.kernels.siglip_loss (either gathered across ranks under DDP); zero-shot accuracy on an ImageFolder's
    val split and retrieval recall on the val pairs. Every rank runs the whole validation, so no
    collective is needed there; the figures are the same on all ranks. The best epoch is the one with
    the highest zero-shot top-1 when the run measures it, else the highest mean of the image→text
    and text→image R@1 (CLIP's validation computes no loss), else (no validation data) the last."""

    class_names = None

    def __init__(self, cfg, rt: Runtime, output: Path, log: Callable[[str], None],
                 source: Pretrained | None = None) -> None:
        if cfg.drop_path is not None:
            raise ValueError("--drop-path applies to ViT and Swin classifiers; CLIP models have no stochastic depth.")
        default_data = cfg.train_data is None
        train_spec = default_pairs("train") if default_data else cfg.train_data
        val_spec = cfg.val_data if cfg.val_data else default_pairs("val") if default_data else None
        folder = vdata.default_data_dir() if default_data and cfg.data_dir is None else cfg.data_dir
        if rt.world > 1:
            dist.barrier()  # rank 0 may have generated the default data; others wait until it is there
        family, base = (source.family, source.config) if source else named_config(cfg.model)
        self.sigmoid = family == "siglip"
        tcfg = vdata.clip_transform_config(cfg.img_size or base.image_size)
        preprocess = source.preprocess if source else None
        if preprocess:  # the published normalization (the eval transform follows the model's own record)
            tcfg = dataclasses.replace(tcfg, mean=tuple(preprocess["mean"]), std=tuple(preprocess["std"]))
        fmt = CsvFormat(cfg.csv_img_key, cfg.csv_caption_key, cfg.csv_separator)
        self.train_set = pairs_dataset(train_spec, vdata.build_transform(tcfg, True), fmt, cfg.skip_bad_images)
        if source and not cfg.tokenizer and not (cfg.resume and (output / TOKENIZER_NAME).is_file()):
            self.tokenizer = repo_tokenizer(source, cfg.bpe_path)  # the one the weights were trained with
        else:
            self.tokenizer = choose_tokenizer(cfg, base, self.train_set.captions, output, log)
        overrides = {"vocab_size": self.tokenizer.vocab_size, "context_length": self.tokenizer.context_length,
                     "attn_backend": cfg.attn_backend, "image_size": tcfg.img_size}
        if not self.sigmoid:  # CLIP pools at the end token; SigLIP's text tower reads the last position
            overrides["eot_token_id"] = self.tokenizer.eot_token_id
        elif source:  # a SigLIP's embedding table may hold more rows than its tokenizer's vocabulary
            if self.tokenizer.vocab_size > base.vocab_size:
                raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the pretrained SigLIP "
                                 f"{base.vocab_size}; pass the model's own tokenizer with --tokenizer.")
            del overrides["vocab_size"]
        self.model = from_pretrained(source, **overrides) if source else create_model(cfg.model, **overrides)
        self.train_set.tokenize = CaptionTokens(self.tokenizer)
        parts = [f"{len(self.train_set)} train pairs from {train_spec}"]
        if getattr(self.train_set, "incomplete", 0):
            parts.append(f"{self.train_set.incomplete} shard samples without an image or caption left out")
        self.eval_data = clip_eval_data(folder, val_spec, tcfg.img_size, self.tokenizer, fmt,
                                        batch_size=cfg.batch_size, workers=cfg.workers,
                                        skip_bad_images=cfg.skip_bad_images,
                                        preprocess=getattr(self.model, "preprocess", None))
        parts += self.eval_data.description
        self.group = dist.group.WORLD if rt.world > 1 else None
        self.description = "; ".join(parts)

    def loss(self, run_model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:
            image_emb, text_emb, scale, bias = run_model(images, tokens)
            return siglip_loss(image_emb, text_emb, scale, bias, group=self.group)
        image_emb, text_emb, scale = run_model(images, tokens)
        return clip_loss(image_emb, text_emb, scale, group=self.group)

    def after_step(self) -> None:
        self.model.clamp_logit_scale()

    def evaluate(self, device: torch.device, amp: torch.dtype | None, check: Callable[[], None]) -> dict:
        data = dataclasses.replace(self.eval_data, **{
            name: _Checked(loader, check) for name in ("zero_shot_loader", "pairs_loader")
            if (loader := getattr(self.eval_data, name)) is not None})
        metrics = evaluate_clip(self.model, self.tokenizer, data, device, amp)
        extra = {"logit_bias": self.model.logit_bias.item()} if self.sigmoid else {}
        return {**metrics, "logit_scale": self.model.logit_scale.exp().item(), **extra}

    def save_extra(self, output: Path) -> None:
        self.tokenizer.save(output)

    @staticmethod
    def best_key(val: dict) -> tuple[float, ...]:
        """What best/ keeps the epoch of the highest (compared as a tuple)."""
        if "zeroshot_top1" in val:
            return (val["zeroshot_top1"],)
        if "image_to_text_R@1" in val:
            return ((val["image_to_text_R@1"] + val["text_to_image_R@1"]) / 2,)
        return ()  # no validation data: best/ follows the last epoch

    @staticmethod
    def summary(val: dict) -> str:
        parts = []
        if "zeroshot_top1" in val:
            parts.append(f"val zero-shot top-1 {val['zeroshot_top1']:.2f}%, top-5 {val['zeroshot_top5']:.2f}%")
        if "image_to_text_R@1" in val:
            parts.append(f"image→text R@1 {val['image_to_text_R@1']:.2f}%, "
                         f"text→image R@1 {val['text_to_image_R@1']:.2f}%")
        return ", ".join(parts) + f", logit scale {val['logit_scale']:.1f}"


def build_task(cfg, rt: Runtime, output: Path, log: Callable[[str], None]):
    """The task for cfg.model's family; with cfg.pretrained, its model starts from the published weights
    (vitfast.pretrained: a new head for another class count, resampled positions for another size)."""
    first = cfg.pretrained and rt.world > 1
    if first and rt.rank != 0:
        dist.barrier()  # rank 0 downloads first; the others then read its files from the cache
    source = resolve(cfg.model, cfg.pretrained) if cfg.pretrained else None
    if first and rt.rank == 0:
        dist.barrier()
    if source is not None:
        log(f"pretrained weights: {source.where} ({source.source} layout)")
    family = source.family if source else named_config(cfg.model)[0]
    if family in ("clip", "siglip"):
        return ClipTask(cfg, rt, output, log, source)
    clip_only = [flag for flag, value in (("--train-data", cfg.train_data), ("--val-data", cfg.val_data),
                                          ("--tokenizer", cfg.tokenizer), ("--bpe-path", cfg.bpe_path)) if value]
    if clip_only:
        raise ValueError(f"{', '.join(clip_only)} apply to CLIP models; {cfg.model} is an image classifier, "
                         "trained on the ImageFolder given with --data-dir.")
    return ClassificationTask(cfg, rt, source)
