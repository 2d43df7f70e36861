"""Image data: ImageFolder splits, transforms, loaders, the deterministic sample order and
augmentation seeds the trainer uses, and the built-in default set.

User data follows timm's layout, ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (with
the usual synonyms). With no data dir, :func:`default_data_dir` generates vitfast's own set once
into a cache folder as a real ImageFolder (with a caption per image for CLIP, see vitfast.pairs), so
it goes through exactly the same code.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
import weakref
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

TRAIN_SYNONYMS = ("train", "training")
VAL_SYNONYMS = ("val", "valid", "validation", "eval", "evaluation", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's preprocessing
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class DataError(ValueError):
    """Data that cannot be used: the message names the folder or file and the fix."""


def worker_message(message: str) -> str:
    """The message an error had in a DataLoader worker, from the one the main process sees.

    torch re-raises a worker's exception in the main process as the same type holding, as its
    message, "Caught TYPE in DataLoader worker process N." and the worker's whole traceback, whose
    last entry is "module.TYPE: the original message". Other messages are returned as they are.
    """
    head = re.match(r"Caught (\w+) in DataLoader worker process \d+\.\n", message)
    if head is None:
        return message
    ends = list(re.finditer(rf"^(?:[\w.]+\.)?{head.group(1)}: ", message, re.MULTILINE))
    return message[ends[-1].end():].strip() if ends else message


# --------------------------------------------------------------------------------------------------
# The built-in default data
# --------------------------------------------------------------------------------------------------

DEFAULT_CLASSES = ("circle", "square", "triangle", "cross", "ring",
                   "hstripes", "vstripes", "checker", "dots", "diamond")
DEFAULT_IMAGE_SIZE = 32
DEFAULT_PER_CLASS = {"train": 600, "val": 100}
_DEFAULT_VERSION = 2  # bump when the generator changes, so caches regenerate (2: captions added)
_DEFAULT_SEED = 1  # the images' seed, unchanged since version 1
CLASSNAMES_FILE = "classnames.txt"  # optional in any ImageFolder root: one readable name per class folder


def cache_dir() -> Path:
    """Where vitfast keeps generated data: $VITFAST_CACHE, else $XDG_CACHE_HOME/vitfast, else ~/.cache/vitfast."""
    if os.environ.get("VITFAST_CACHE"):
        return Path(os.environ["VITFAST_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vitfast"


def _render(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """One 8-bit RGB image of a shape class (random colours, position, scale, plus noise) and the
    attributes a caption can describe."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    bg = rng.uniform(0, 255, 3)
    fg = rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 180:  # keep the shape visible
        fg = rng.uniform(0, 255, 3)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.22, 0.38) * size
    dx, dy = xx - cx, yy - cy
    period = rng.uniform(0.18, 0.3) * size
    phase = rng.uniform(0, period)
    if kind == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif kind == "square":
        mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif kind == "triangle":
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif kind == "cross":
        w = r * 0.3
        mask = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    elif kind == "ring":
        d2 = dx**2 + dy**2
        mask = (d2 <= r**2) & (d2 >= (r * 0.6) ** 2)
    elif kind == "hstripes":
        mask = ((yy + phase) % period) < period / 2
    elif kind == "vstripes":
        mask = ((xx + phase) % period) < period / 2
    elif kind == "checker":
        mask = (((xx + phase) // period + (yy + phase) // period) % 2) == 0
    elif kind == "dots":
        mask = (((xx + phase) % period - period / 2) ** 2 + ((yy + phase) % period - period / 2) ** 2
                <= (period * 0.28) ** 2)
    elif kind == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= r
    else:
        raise ValueError(f"unknown default-data class {kind!r}")
    img = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    attributes = {"fg": fg, "bg": bg, "x": cx / size, "y": cy / size, "radius": r / size}
    return np.clip(img, 0, 255).astype(np.uint8), attributes


# Captions name what the generator drew: the shape (as CLASS_PHRASES says it), the colours (the
# nearest of these names), and for single shapes their size and place.
CLASS_PHRASES = {"circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross", "ring": "ring",
                 "hstripes": "horizontal stripes", "vstripes": "vertical stripes", "checker": "checkerboard",
                 "dots": "polka dots", "diamond": "diamond"}
_PATTERNS = ("hstripes", "vstripes", "checker", "dots")
_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "red": (220, 30, 30), "green": (40, 170, 60),
            "blue": (40, 60, 220), "yellow": (240, 220, 40), "cyan": (40, 210, 220), "magenta": (210, 40, 200),
            "orange": (245, 140, 30), "purple": (120, 50, 160), "grey": (128, 128, 128), "brown": (130, 80, 40),
            "pink": (250, 160, 190), "navy": (20, 30, 100), "olive": (120, 130, 40), "teal": (30, 120, 120)}
_COLOUR_NAMES = list(_COLOURS)
_COLOUR_TABLE = np.array(list(_COLOURS.values()), dtype=np.float32)


def colour_name(rgb: np.ndarray) -> str:
    """The nearest named colour (squared RGB distance)."""
    return _COLOUR_NAMES[int(((_COLOUR_TABLE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(1).argmin())]


def caption(kind: str, attributes: dict, rng: np.random.Generator) -> str:
    """A one-line description of a rendered image, phrased one of several ways (drawn from `rng`)."""
    fg, bg, thing = colour_name(attributes["fg"]), colour_name(attributes["bg"]), CLASS_PHRASES[kind]
    if kind in _PATTERNS:
        forms = (f"{fg} {thing} on a {bg} background", f"a pattern of {fg} and {bg} {thing}",
                 f"{thing} in {fg} over {bg}", f"an image of {fg} {thing}")
    else:
        size = "small" if attributes["radius"] < 0.27 else "large" if attributes["radius"] > 0.33 else "medium"
        row = "top" if attributes["y"] < 0.45 else "bottom" if attributes["y"] > 0.55 else "middle"
        col = "left" if attributes["x"] < 0.45 else "right" if attributes["x"] > 0.55 else "centre"
        place = "the centre" if (row, col) == ("middle", "centre") else f"the {row} {col}"
        forms = (f"a {fg} {thing} on a {bg} background", f"a {size} {fg} {thing} near {place}",
                 f"a photo of a {size} {thing}, {fg} on {bg}", f"{bg} background with a {fg} {thing}")
    return forms[int(rng.integers(len(forms)))]


def write_shapes_dataset(folder: str | os.PathLike[str], *, per_class: dict[str, int],
                         classes: tuple[str, ...] = DEFAULT_CLASSES, size: int = DEFAULT_IMAGE_SIZE,
                         seed: int = _DEFAULT_SEED) -> Path:
    """Render the shapes set as an ImageFolder (`folder/<split>/<class>/NNNNN.png`), deterministically,
    with a caption per image in `folder/<split>_captions.tsv` (columns filepath, title: open_clip's
    default CSV keys and separator) and the class phrases in `folder/classnames.txt`."""
    from PIL import Image

    folder = Path(folder)
    for split_index, (split, count) in enumerate(per_class.items()):
        rng = np.random.default_rng([seed, split_index])
        words = np.random.default_rng([seed, split_index, 1])  # separate, so images do not depend on captions
        rows = []
        for kind in classes:
            out = folder / split / kind
            out.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image, attributes = _render(kind, rng, size)
                Image.fromarray(image).save(out / f"{i:05d}.png")
                rows.append(f"{split}/{kind}/{i:05d}.png\t{caption(kind, attributes, words)}")
        (folder / f"{split}_captions.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    (folder / CLASSNAMES_FILE).write_text("\n".join(CLASS_PHRASES.get(c, c) for c in sorted(classes)) + "\n")
    return folder


def default_data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The built-in set, generated on first use: 10 shape classes, 32×32 PNGs, 600/100 per class,
    each image with a caption (``train_captions.tsv``, ``val_captions.tsv``) for CLIP.

    Generation is deterministic (fixed seeds); a completed folder carries a ``vitfast_data.json``
    stamp, and an interrupted one is regenerated.
    """
    folder = Path(root) if root is not None else cache_dir() / f"default-shapes-v{_DEFAULT_VERSION}"
    stamp = folder / "vitfast_data.json"
    if stamp.is_file():
        return folder
    write_shapes_dataset(folder, per_class=DEFAULT_PER_CLASS)
    stamp.write_text(json.dumps({"classes": list(DEFAULT_CLASSES), "image_size": DEFAULT_IMAGE_SIZE,
                                 "per_class": DEFAULT_PER_CLASS, "version": _DEFAULT_VERSION}) + "\n")
    return folder


# --------------------------------------------------------------------------------------------------
# ImageFolder splits
# --------------------------------------------------------------------------------------------------


def find_split(root: str | os.PathLike[str], split: str) -> Path:
    """The folder of `split` ("train" or "val") under `root`, accepting timm's synonyms."""
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {problem}: --data-dir takes an ImageFolder root holding train/ and val/.")
    names = TRAIN_SYNONYMS if split == "train" else VAL_SYNONYMS
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has no {split} split: expected a sub-folder named one of {', '.join(names)}, "
                    f"each holding one folder of images per class.")


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder with errors that name the bad file (or skip it, when asked)."""

    def __init__(self, root: Path, transform=None, skip_bad_images: bool = False):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), transform=transform)
        except FileNotFoundError as exc:
            raise DataError(f"{root}: {exc}. Each class folder needs at least one image "
                            "(.jpg, .png, ...).") from None
        self.skip_bad_images = skip_bad_images
        self.classes: list[str] = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        path = self.folder.samples[index][0]
        try:
            return self.folder[index]
        except Exception as exc:  # PIL raises several types for truncated or foreign files
            if self.skip_bad_images:
                return None
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}). Remove or replace "
                            "it, or pass --skip-bad-images to skip unreadable images.") from None


def collate_skipping_bad(batch):
    """Stack a batch, dropping samples that came back None (unreadable, skipped); returns the count."""
    good = [s for s in batch if s is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return (*torch.utils.data.default_collate(good), skipped)


# --------------------------------------------------------------------------------------------------
# Deterministic data order and augmentation
# --------------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """DistributedSampler's order (permutation seeded by seed + epoch, rank r takes every world-th
    index), resumable from a given number of samples into the epoch."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.set_epoch(0)
        self.per_rank = n // world if shuffle else math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()[: self.per_rank * self.world]
        else:
            order = list(range(self.n))
        mine = order[self.rank:: self.world]
        return iter(mine[self.skip:])

    def __len__(self) -> int:
        mine = self.per_rank if self.shuffle else len(range(self.rank, self.n, self.world))
        return max(0, mine - self.skip)


class SeededAugment(Dataset):
    """Wraps a dataset so sample i of epoch e is augmented with the RNG seeded by (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        # fork_rng: with workers=0 this runs in the training process, whose RNG drives dropout.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.dataset[index]


@dataclass(frozen=True)
class TransformConfig:
    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range, as timm
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, then center-crop img_size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hflip: bool = True  # random horizontal flips in training


def build_transform(cfg: TransformConfig, train: bool):
    from torchvision.transforms import v2

    if train:
        geometry = [v2.RandomResizedCrop(cfg.img_size, scale=cfg.scale, antialias=True)]
        geometry += [v2.RandomHorizontalFlip()] if cfg.hflip else []
    else:
        geometry = [v2.Resize(int(math.floor(cfg.img_size / cfg.crop_pct)), antialias=True),
                    v2.CenterCrop(cfg.img_size)]
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(cfg.mean, cfg.std)])


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM (a terminal's Ctrl-C, `timeout` and SLURM signal
    the whole process group): the training process decides, saves, and stops them. Without this, a
    worker prints a traceback or dies mid-step, and the loader raises in the middle of the save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Iterators with live workers. Workers that ignore SIGTERM would hang the interpreter's exit whenever an
# iterator outlives its loop (an exception kept with its traceback): multiprocessing's exit handler
# SIGTERMs daemonic children and joins them. The hook below, registered after multiprocessing's and so
# run before it, asks each such iterator's workers to finish, as the iterator's own cleanup does.
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_workers_at_exit() -> None:
    for iterator in list(_LIVE_ITERATORS):
        iterator._shutdown_workers()


class _Loader(DataLoader):
    """A DataLoader whose multi-process iterators are stopped at interpreter exit (see above)."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _LIVE_ITERATORS.add(iterator)
        return iterator


def build_loader(dataset: Dataset, *, batch_size: int, workers: int, sampler=None, drop_last: bool = False,
                 seed: int = 0) -> DataLoader:
    """A DataLoader over an ImageFolderDataset: skipped-image collation, pinned memory on CUDA hosts,
    workers that leave stop signals to the training process.

    Worker seeds come from the loader's own generator, never from the global RNG that drives
    dropout, so starting an iterator mid-epoch (after a resume) changes nothing downstream.
    """
    return _Loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                   pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                   collate_fn=collate_skipping_bad, generator=torch.Generator().manual_seed(seed),
                   worker_init_fn=_ignore_stop_signals)


def clip_transform_config(image_size: int) -> TransformConfig:
    """open_clip's preprocessing: crops of 90–100% of the area for training (no flip: captions may say
    left or right), resize + centre crop of the whole image for eval, OpenAI's mean and std."""
    return TransformConfig(image_size, scale=(0.9, 1.0), crop_pct=1.0, mean=OPENAI_MEAN, std=OPENAI_STD,
                           hflip=False)


def class_names(split_root: str | os.PathLike[str], classes: Sequence[str]) -> list[str]:
    """Readable class names: `classnames.txt` beside the split folders (one per line, in class-folder
    order) when present, else the folder names with underscores as spaces."""
    path = Path(split_root).parent / CLASSNAMES_FILE
    if not path.is_file():
        return [c.replace("_", " ") for c in classes]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(classes):
        raise DataError(f"{path} lists {len(names)} class names but {Path(split_root)} has {len(classes)} "
                        "class folders; give one name per folder, in sorted folder order.")
    return names
