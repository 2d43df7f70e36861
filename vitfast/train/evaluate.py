"""`vitfast eval` and the trainer's validation data: a saved model folder evaluated on an ImageFolder
or on image-text pairs, through the library's metrics (vitfast.metrics)."""

from __future__ import annotations

import os
from pathlib import Path

from vitfast import data as vdata
from vitfast.checkpoint import CheckpointError, load, read_config
from vitfast.metrics import ClipEvalData, evaluate, evaluate_clip
from vitfast.pairs import CaptionTokens, CsvFormat, default_pairs, pairs_dataset
from vitfast.runtime import amp_dtype_for, default_device
from vitfast.tokenizer import TOKENIZER_NAME, load_tokenizer


def evaluate_folder(model_dir, data_dir=None, *, batch_size: int = 256, workers: int = 2, amp_dtype: str = "auto",
                    attn_backend: str = "auto", skip_bad_images: bool = False, val_data=None,
                    csv_format=None, track=None) -> dict[str, float]:
    """Load a model folder and evaluate it on the val split of `data_dir` (default: the built-in set).

    A CLIP folder is evaluated by :func:`evaluate_clip_folder` (zero-shot on `data_dir`, retrieval on
    the `val_data` table); `val_data` and `csv_format` apply to CLIP only. `track(loader, what)`, when
    given, wraps each loader before it is read (the CLI's progress bar).
    """
    if read_config(model_dir).get("family") == "clip":
        return evaluate_clip_folder(model_dir, data_dir, val_data, batch_size=batch_size, workers=workers,
                                    amp_dtype=amp_dtype, attn_backend=attn_backend, skip_bad_images=skip_bad_images,
                                    csv_format=csv_format, track=track)
    if val_data is not None:
        raise ValueError("--val-data (an image-text table) applies to CLIP models; this folder holds a classifier.")

    device = default_device()
    model = load(model_dir, map_location=device, attn_backend=attn_backend)
    root = vdata.default_data_dir() if data_dir is None else data_dir
    val = vdata.ImageFolderDataset(vdata.find_split(root, "val"),
                                   vdata.build_transform(vdata.TransformConfig(model.config.img_size), False),
                                   skip_bad_images)
    if len(val.classes) != model.config.num_classes:
        raise vdata.DataError(f"{root} has {len(val.classes)} classes but the model in {model_dir} predicts "
                              f"{model.config.num_classes}; evaluate it on the data it was trained for.")
    loader = vdata.build_loader(val, batch_size=batch_size, workers=workers)
    return evaluate(model, _tracked(loader, "eval", track), device, amp_dtype_for(amp_dtype, device))


def evaluate_clip_folder(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
                         val_data: str | os.PathLike[str] | None = None, *, batch_size: int = 256, workers: int = 2,
                         amp_dtype: str = "auto", attn_backend: str = "auto", skip_bad_images: bool = False,
                         csv_format=None, track=None) -> dict[str, float]:
    """Load a CLIP model folder (weights + tokenizer.json) and evaluate it: zero-shot on the val split of
    `data_dir` and retrieval on the `val_data` table or shards. With neither given, both run on the built-in data."""
    if not (Path(model_dir) / TOKENIZER_NAME).is_file():
        raise CheckpointError(f"{model_dir} holds a CLIP model but no {TOKENIZER_NAME}, which eval needs for the "
                              f"captions and class prompts; copy in the {TOKENIZER_NAME} it was trained or converted "
                              "with (vitfast train and convert write one).")
    device = default_device()
    model = load(model_dir, map_location=device, attn_backend=attn_backend)
    tokenizer = load_tokenizer(model_dir)
    if data_dir is None and val_data is None:
        data_dir, val_data = vdata.default_data_dir(), default_pairs("val")
    data = clip_eval_data(data_dir, val_data, model.config.image_size, tokenizer, csv_format or CsvFormat(),
                          batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images)
    data.zero_shot_loader = _tracked(data.zero_shot_loader, "zero-shot", track)
    data.pairs_loader = _tracked(data.pairs_loader, "retrieval", track)
    return evaluate_clip(model, tokenizer, data, device, amp_dtype_for(amp_dtype, device))


def _tracked(loader, what: str, track):
    return loader if loader is None or track is None else track(loader, what)


def clip_eval_data(data_dir, val_data, image_size: int, tokenizer, fmt, *, batch_size: int, workers: int,
                   skip_bad_images: bool = False) -> ClipEvalData:
    """Loaders over the val split of the ImageFolder `data_dir` and over the `val_data` table or shards
    (either may be None), with CLIP's eval preprocessing at `image_size` and `tokenizer` for the captions."""
    out = ClipEvalData()
    transform = vdata.build_transform(vdata.clip_transform_config(image_size), False)
    if val_data is not None:
        pairs = pairs_dataset(val_data, transform, fmt, skip_bad_images)
        pairs.tokenize = CaptionTokens(tokenizer)
        out.pairs_loader = vdata.build_loader(pairs, batch_size=batch_size, workers=workers)
        out.description.append(f"{len(pairs)} val pairs from {val_data}")
    if data_dir is not None:
        val_root = vdata.find_split(data_dir, "val")
        images = vdata.ImageFolderDataset(val_root, transform, skip_bad_images)
        out.names = vdata.class_names(val_root, images.classes)
        out.zero_shot_loader = vdata.build_loader(images, batch_size=batch_size, workers=workers)
        out.description.append(f"zero-shot on {len(images)} images of {len(out.names)} classes in {val_root}")
    return out
