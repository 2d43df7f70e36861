"""`vitfast eval` and the trainer's validation data: a saved model folder, or published weights, evaluated
on an ImageFolder or on image-text pairs, through the library's metrics (vitfast.metrics)."""

from __future__ import annotations

import os
from pathlib import Path

from vitfast import data as vdata
from vitfast.checkpoint import CheckpointError, load
from vitfast.convert.repos import repo_tokenizer, resolve
from vitfast.imagenet import IMAGENET_SYNSETS, OPENAI_IMAGENET_TEMPLATES, imagenet_class_names
from vitfast.metrics import ClipEvalData, evaluate, evaluate_clip
from vitfast.models import model_family
from vitfast.pairs import CaptionTokens, CsvFormat, default_pairs, pairs_dataset
from vitfast.pretrained import from_pretrained
from vitfast.runtime import amp_dtype_for, default_device
from vitfast.tokenizer import TOKENIZER_NAME, load_tokenizer


def evaluate_folder(model_dir=None, data_dir=None, *, batch_size: int = 256, workers: int = 2,
                    amp_dtype: str = "auto", attn_backend: str = "auto", skip_bad_images: bool = False, val_data=None,
                    csv_format=None, track=None, model: str | None = None, pretrained: str | bool | None = None,
                    revision: str | None = None) -> dict[str, float]:
    """Evaluate a model folder, or (`model` with `pretrained`) published weights as
    `vitfast.create_model(model, pretrained=...)` reads them, on the val split of `data_dir` (default: the
    built-in set), with the eval preprocessing the model was published with when it records one
    (timm's, open_clip's or transformers'), else vitfast's.

    A CLIP is evaluated by :func:`evaluate_clip_folder` (zero-shot on `data_dir`, retrieval on the
    `val_data` table); `val_data` and `csv_format` apply to CLIP only. `track(loader, what)`, when given,
    wraps each loader before it is read (the CLI's progress bar).
    """
    device = default_device()
    net, tokenizer, where = load_for_eval(model_dir, model, pretrained, revision, attn_backend, device)
    if model_family(net) in ("clip", "siglip"):
        return _evaluate_clip(net, tokenizer, data_dir, val_data, batch_size=batch_size, workers=workers,
                              amp_dtype=amp_dtype, skip_bad_images=skip_bad_images, csv_format=csv_format,
                              track=track, device=device)
    if val_data is not None:
        raise ValueError(f"--val-data (an image-text table) applies to CLIP models; {where} holds a classifier.")
    root = vdata.default_data_dir() if data_dir is None else data_dir
    preprocess = getattr(net, "preprocess", None)
    tcfg = vdata.eval_transform_config(preprocess) if preprocess else vdata.TransformConfig(net.config.img_size)
    val = vdata.ImageFolderDataset(vdata.find_split(root, "val"), vdata.build_transform(tcfg, False), skip_bad_images)
    imagenet = _imagenet_targets(val.classes, net.config.num_classes)
    if imagenet is not None:  # ImageNet-1k classes, all or some of them: labels are their ImageNet indices
        val.folder.target_transform = imagenet.__getitem__
    elif len(val.classes) != net.config.num_classes:
        raise vdata.DataError(f"{root} has {len(val.classes)} classes but the model in {where} predicts "
                              f"{net.config.num_classes}; evaluate it on the data it was trained for.")
    loader = vdata.build_loader(val, batch_size=batch_size, workers=workers)
    return evaluate(net, _tracked(loader, "eval", track), device, amp_dtype_for(amp_dtype, device))


def _imagenet_targets(folders: list[str], num_classes: int) -> dict[int, int] | None:
    """For a 1000-class model on a folder of ImageNet synsets (n01440764, ...: the full 1000 or a subset such
    as ImageNette's), each folder's ImageNet-1k index; None otherwise."""
    if num_classes != len(IMAGENET_SYNSETS) or imagenet_class_names(folders) is None:
        return None
    index = {synset: i for i, synset in enumerate(IMAGENET_SYNSETS)}
    return {i: index[name] for i, name in enumerate(folders)}


def load_for_eval(model_dir, model: str | None, pretrained, revision: str | None, attn_backend: str, device):
    """(model on `device`, its tokenizer for a CLIP else None, words naming where it came from)."""
    if (model_dir is None) == (model is None):
        raise ValueError("give the model to evaluate either as --model-dir (a vitfast model folder) or as --model "
                         "NAME with --pretrained [TAG], not both.")
    if model_dir is not None:
        if pretrained or revision:
            raise ValueError("--pretrained and --revision go with --model NAME; --model-dir is a saved folder.")
        net = load(model_dir, map_location=device, attn_backend=attn_backend)
        tokenizer = None
        if model_family(net) in ("clip", "siglip"):
            if not (Path(model_dir) / TOKENIZER_NAME).is_file():
                raise CheckpointError(f"{model_dir} holds a CLIP model but no {TOKENIZER_NAME}, which eval needs for "
                                      f"the captions and class prompts; copy in the {TOKENIZER_NAME} it was trained "
                                      "or converted with (vitfast train and convert write one).")
            tokenizer = load_tokenizer(model_dir)
        return net, tokenizer, str(model_dir)
    source = resolve(model, pretrained if pretrained else True, revision)
    net = from_pretrained(source, attn_backend=attn_backend).to(device)
    tokenizer = repo_tokenizer(source) if source.family in ("clip", "siglip") else None
    return net, tokenizer, source.where


def evaluate_clip_folder(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
                         val_data: str | os.PathLike[str] | None = None, *, batch_size: int = 256, workers: int = 2,
                         amp_dtype: str = "auto", attn_backend: str = "auto", skip_bad_images: bool = False,
                         csv_format=None, track=None) -> dict[str, float]:
    """Load a CLIP model folder (weights + tokenizer.json) and evaluate it: zero-shot on the val split of
    `data_dir` and retrieval on the `val_data` table or shards. With neither given, both run on the built-in data."""
    device = default_device()
    net, tokenizer, _ = load_for_eval(model_dir, None, None, None, attn_backend, device)
    return _evaluate_clip(net, tokenizer, data_dir, val_data, batch_size=batch_size, workers=workers,
                          amp_dtype=amp_dtype, skip_bad_images=skip_bad_images, csv_format=csv_format, track=track,
                          device=device)


def _evaluate_clip(model, tokenizer, data_dir, val_data, *, batch_size, workers, amp_dtype, skip_bad_images,
                   csv_format, track, device) -> dict[str, float]:
    if data_dir is None and val_data is None:
        data_dir, val_data = vdata.default_data_dir(), default_pairs("val")
    data = clip_eval_data(data_dir, val_data, model.config.image_size, tokenizer, csv_format or CsvFormat(),
                          batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images,
                          preprocess=getattr(model, "preprocess", None))
    data.zero_shot_loader = _tracked(data.zero_shot_loader, "zero-shot", track)
    data.pairs_loader = _tracked(data.pairs_loader, "retrieval", track)
    return evaluate_clip(model, tokenizer, data, device, amp_dtype_for(amp_dtype, device))


def _tracked(loader, what: str, track):
    return loader if loader is None or track is None else track(loader, what)


def clip_eval_data(data_dir, val_data, image_size: int, tokenizer, fmt, *, batch_size: int, workers: int,
                   skip_bad_images: bool = False, preprocess: dict | None = None) -> ClipEvalData:
    """Loaders over the val split of the ImageFolder `data_dir` and over the `val_data` table or shards
    (either may be None), with CLIP's eval preprocessing at `image_size` (or the published `preprocess`,
    see vitfast.data.eval_transform_config) and `tokenizer` for the captions.

    Zero-shot class names and prompts: a `classnames.txt` beside the split always wins (with vitfast's
    short templates); without one, a split whose class folders are all ImageNet-1k synsets (n01440764, ...;
    the full 1000 or any subset) is classified as open_clip does, with OpenAI's ImageNet class names and its
    80 templates; any other split uses its folder names and vitfast's short templates."""
    out = ClipEvalData()
    tcfg = vdata.eval_transform_config(preprocess) if preprocess else vdata.clip_transform_config(image_size)
    transform = vdata.build_transform(tcfg, False)
    if val_data is not None:
        pairs = pairs_dataset(val_data, transform, fmt, skip_bad_images)
        pairs.tokenize = CaptionTokens(tokenizer)
        out.pairs_loader = vdata.build_loader(pairs, batch_size=batch_size, workers=workers)
        out.description.append(f"{len(pairs)} val pairs from {val_data}")
    if data_dir is not None:
        val_root = vdata.find_split(data_dir, "val")
        images = vdata.ImageFolderDataset(val_root, transform, skip_bad_images)
        imagenet = imagenet_class_names(images.classes)
        prompts = ""
        if imagenet is not None and not (Path(val_root).parent / vdata.CLASSNAMES_FILE).is_file():
            out.names, out.templates = imagenet, OPENAI_IMAGENET_TEMPLATES
            prompts = f", with ImageNet class names and OpenAI's {len(out.templates)} templates"
        else:
            out.names = vdata.class_names(val_root, images.classes)
        out.zero_shot_loader = vdata.build_loader(images, batch_size=batch_size, workers=workers)
        out.description.append(f"zero-shot on {len(images)} images of {len(out.names)} classes in {val_root}"
                               + prompts)
    return out
