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
import numbers
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


# Eval preprocessing is described, as in a model folder, by a "preprocess" dict in timm's
# pretrained_cfg vocabulary:
#   {"input_size": [3, H, W], "interpolation": "bicubic", "mean": [r, g, b], "std": [r, g, b],
#    "crop_pct": 0.9, "crop_mode": "center"}
# plus, for crop_mode "border" only, an optional vitfast key "fill": [r, g, b] (0-255), the colour the
# border is padded with (timm pads with round(255 * mean); open_clip's "longest" mode with its fill_color).
# The preprocess_from_* functions below translate timm's, open_clip's and transformers' own configs into
# it, and eval_transform_config() turns it into a TransformConfig whose eval transform gives the very
# tensor timm's transforms_imagenet_eval gives (PIL resize and crop, then to_tensor and normalize).

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's names of PIL's filters
CROP_MODES = ("center", "squash", "border")
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "fill")
TIMM_DEFAULTS = {"interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875,
                 "crop_mode": "center"}  # what timm.data.resolve_data_config fills in for missing or empty keys
_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # PIL.Image.Resampling


@dataclass(frozen=True)
class TransformConfig:
    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range, as timm
    crop_pct: float = 0.875  # eval: resize to floor(img_size / crop_pct) (as crop_mode says), then crop img_size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hflip: bool = True  # random horizontal flips in training
    interpolation: str = "bilinear"  # eval resize filter, one of INTERPOLATIONS (training's random crops stay bilinear)
    crop_mode: str = "center"  # eval, one of CROP_MODES, as timm (see EvalTransform.resized_hw)
    input_hw: tuple[int, int] | None = None  # eval (height, width) when not img_size × img_size
    fill: tuple[int, int, int] | None = None  # crop_mode border's padding colour; None: timm's round(255 * mean)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {self.interpolation!r}: accepted are {', '.join(INTERPOLATIONS)}.")
        if self.crop_mode not in CROP_MODES:
            raise DataError(f"unknown crop_mode {self.crop_mode!r}: accepted are {', '.join(CROP_MODES)}.")
        if not (isinstance(self.crop_pct, numbers.Real) and 0 < self.crop_pct < math.inf):
            raise DataError(f"crop_pct {self.crop_pct!r} is not a positive number.")
        hw = self.eval_hw
        if not all(isinstance(s, numbers.Integral) and s > 0 for s in hw):
            raise DataError(f"image size {hw} must be positive integers.")
        if min(math.floor(s / self.crop_pct) for s in hw) < 1:
            raise DataError(f"crop_pct {self.crop_pct} is too large for image size {hw}: nothing is left to resize to.")

    @property
    def eval_hw(self) -> tuple[int, int]:
        """The (height, width) of eval images."""
        return tuple(self.input_hw) if self.input_hw is not None else (self.img_size, self.img_size)


def _rgb_pil(image):
    """A PIL RGB image from a PIL image of any mode (as torchvision's ImageFolder loader converts), an HWC
    uint8 array or a CHW uint8 tensor."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise TypeError(f"eval transforms take PIL images or CHW uint8 tensors, not a {image.dtype} tensor "
                            f"of shape {tuple(image.shape)}")
        image = image.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _center_crop_or_pad(image, hw: tuple[int, int], fill: tuple[int, int, int]):
    """Crop the centre `hw` of a PIL image, first padding it with `fill` (left/top get the smaller half)
    where it is smaller; the crop's offset rounds half to even, as torchvision's center_crop."""
    from PIL import Image

    crop_h, crop_w = hw
    if crop_h > image.height or crop_w > image.width:
        pad_w, pad_h = max(crop_w - image.width, 0), max(crop_h - image.height, 0)
        padded = Image.new(image.mode, (image.width + pad_w, image.height + pad_h), tuple(fill))
        padded.paste(image, (pad_w // 2, pad_h // 2))
        image = padded
        if (image.height, image.width) == (crop_h, crop_w):
            return image
    top, left = int(round((image.height - crop_h) / 2.0)), int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


class EvalTransform:
    """Eval preprocessing as timm's transforms_imagenet_eval: convert to RGB, resize the PIL image to
    floor(size / crop_pct) as crop_mode says, centre-crop (padding where needed) to size, then a float
    tensor scaled by 1/255 (a division, as to_tensor) and normalized."""

    def __init__(self, cfg: TransformConfig):
        self.hw = tuple(int(s) for s in cfg.eval_hw)
        self.scale_hw = tuple(math.floor(s / float(cfg.crop_pct)) for s in self.hw)  # timm's scale_size
        self.crop_mode, self.interpolation = cfg.crop_mode, cfg.interpolation
        self.fill = (tuple(cfg.fill) if cfg.fill is not None else tuple(round(255 * m) for m in cfg.mean)) \
            if cfg.crop_mode == "border" else (0, 0, 0)
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(-1, 1, 1)

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of `height` × `width` is resized to before the crop."""
        if self.crop_mode == "squash":
            return self.scale_hw
        if self.crop_mode == "center" and self.scale_hw[0] == self.scale_hw[1]:
            # torchvision's Resize(int): the shorter side to the size, the longer one in proportion, truncated
            short, long = sorted((height, width))
            new_long = int(self.scale_hw[0] * long / short)
            return (new_long, self.scale_hw[0]) if height > width else (self.scale_hw[0], new_long)
        # timm's ResizeKeepRatio: the shorter (center) or longer (border) side's ratio for both, rounded
        ratios = (height / self.scale_hw[0], width / self.scale_hw[1])
        ratio = max(ratios) if self.crop_mode == "border" else min(ratios)
        return round(height / ratio), round(width / ratio)

    def __call__(self, image) -> torch.Tensor:
        image = _rgb_pil(image)
        size = self.resized_hw(image.height, image.width)
        if size != (image.height, image.width):
            image = image.resize((size[1], size[0]), _PIL_FILTERS[self.interpolation])
        image = _center_crop_or_pad(image, self.hw, self.fill)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return pixels.to(torch.float32).div(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.hw}, resize={self.scale_hw}, crop_mode={self.crop_mode}, "
                f"interpolation={self.interpolation}, fill={self.fill})")


def build_transform(cfg: TransformConfig, train: bool = False):
    """Training: random resized crops (bilinear, on tensors) and flips. Eval: `EvalTransform`, pixel for
    pixel timm's eval transform for the same size, crop_pct, crop_mode, interpolation, mean and std."""
    from torchvision.transforms import v2

    if not train:
        return EvalTransform(cfg)
    geometry = [v2.RandomResizedCrop(cfg.img_size, scale=cfg.scale, antialias=True)]
    geometry += [v2.RandomHorizontalFlip()] if cfg.hflip else []
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(cfg.mean, cfg.std)])


def _triple(value, name: str, source: str) -> tuple[float, float, float]:
    """Three floats from a list of three (or one, or a bare number, repeated)."""
    values = [value] if isinstance(value, (int, float)) else value
    if not (isinstance(values, (list, tuple)) and len(values) in (1, 3)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise DataError(f"{source}: {name} {value!r} is not a number or a list of 3 numbers (one per RGB channel).")
    return tuple(float(v) for v in values) * (3 if len(values) == 1 else 1)


def _fill_triple(value, source: str) -> tuple[int, int, int]:
    values = [value] if isinstance(value, int) else value
    if not (isinstance(values, (list, tuple)) and len(values) in (1, 3)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)):
        raise DataError(f"{source}: fill {value!r} is not an integer 0-255 or a list of 3 of them.")
    return tuple(values) * (3 if len(values) == 1 else 1)


def _check_preprocess(preprocess: dict, source: str = "preprocess") -> dict:
    """A preprocess dict, checked and completed with timm's defaults, as plain JSON-able values."""
    if not isinstance(preprocess, dict):
        raise DataError(f"{source} must be a dict with keys {', '.join(PREPROCESS_KEYS)}, "
                        f"not {type(preprocess).__name__}.")
    unknown = sorted(set(preprocess) - set(PREPROCESS_KEYS))
    if unknown:
        raise DataError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}: "
                        f"accepted are {', '.join(PREPROCESS_KEYS)}.")
    size = preprocess.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise DataError(f"{source}: input_size {size!r} is not [3, height, width] (positive integers).")
    if size[0] != 3:
        raise DataError(f"{source}: input_size {list(size)} has {size[0]} channels; vitfast's images are RGB (3).")
    out = {"input_size": [int(s) for s in size]}
    out["interpolation"] = preprocess.get("interpolation") or TIMM_DEFAULTS["interpolation"]
    if out["interpolation"] not in INTERPOLATIONS:
        raise DataError(f"{source}: unknown interpolation {out['interpolation']!r}: "
                        f"accepted are {', '.join(INTERPOLATIONS)}.")
    out["mean"] = list(_triple(preprocess.get("mean") or TIMM_DEFAULTS["mean"], "mean", source))
    out["std"] = list(_triple(preprocess.get("std") or TIMM_DEFAULTS["std"], "std", source))
    if not all(s > 0 for s in out["std"]):
        raise DataError(f"{source}: std {out['std']} must be positive.")
    crop_pct = preprocess.get("crop_pct") or TIMM_DEFAULTS["crop_pct"]
    if not (isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0 < crop_pct < math.inf):
        raise DataError(f"{source}: crop_pct {crop_pct!r} is not a positive number.")
    out["crop_pct"] = float(crop_pct)
    out["crop_mode"] = preprocess.get("crop_mode") or TIMM_DEFAULTS["crop_mode"]
    if out["crop_mode"] not in CROP_MODES:
        raise DataError(f"{source}: unknown crop_mode {out['crop_mode']!r}: accepted are {', '.join(CROP_MODES)}.")
    if preprocess.get("fill") is not None:
        if out["crop_mode"] != "border":
            raise DataError(f"{source}: fill is only used by crop_mode 'border', not {out['crop_mode']!r}.")
        out["fill"] = list(_fill_triple(preprocess["fill"], source))
    return out


def eval_transform_config(preprocess: dict) -> TransformConfig:
    """The TransformConfig of a preprocess dict (see above; missing keys but input_size take timm's
    defaults), whose eval transform reproduces the checkpoint's own."""
    p = _check_preprocess(preprocess)
    height, width = p["input_size"][1:]
    return TransformConfig(height, crop_pct=p["crop_pct"], mean=tuple(p["mean"]), std=tuple(p["std"]),
                           interpolation=p["interpolation"], crop_mode=p["crop_mode"],
                           input_hw=None if height == width else (height, width),
                           fill=tuple(p["fill"]) if "fill" in p else None)


def preprocess_from_timm(pretrained_cfg: dict) -> dict:
    """The preprocess dict of a timm pretrained_cfg (a Hub repo's config.json["pretrained_cfg"]; the whole
    config.json is accepted too): its eval keys, with timm.data.resolve_data_config's defaults where
    missing or empty (224, bicubic, ImageNet mean/std, crop_pct 0.875, crop_mode center). The test-time
    keys (test_input_size, test_crop_pct) are ignored, as resolve_data_config does by default."""
    if isinstance(pretrained_cfg, dict) and isinstance(pretrained_cfg.get("pretrained_cfg"), dict):
        pretrained_cfg = pretrained_cfg["pretrained_cfg"]
    if not isinstance(pretrained_cfg, dict):
        raise DataError(f"timm pretrained_cfg must be a dict, not {type(pretrained_cfg).__name__}.")
    preprocess = {key: pretrained_cfg.get(key) for key in PREPROCESS_KEYS if key != "fill"}
    preprocess["input_size"] = preprocess["input_size"] or [3, 224, 224]
    return _check_preprocess(preprocess, "timm pretrained_cfg")


def _size_hw(image_size, source: str) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(isinstance(s, int) and s > 0 for s in hw)):
        raise DataError(f"{source}: image size {image_size!r} is not a positive integer or [height, width].")
    return int(hw[0]), int(hw[1])


def preprocess_from_open_clip(image_size, preprocess_cfg: dict | None = None) -> dict:
    """The preprocess dict of open_clip's eval transform, `image_transform(image_size, is_train=False,
    **preprocess_cfg)` (open_clip_config.json's "preprocess_cfg"; image_size is the model's
    vision_cfg image_size, an int or [height, width], which wins over any "size" there, as in open_clip).
    Defaults: OpenAI mean/std, bicubic, resize_mode shortest (shorter side to the size, centre crop);
    squash resizes both sides; longest resizes the longer side and pads with fill_color.
    Interpolation "random" is bicubic at eval, as in open_clip."""
    source = "open_clip preprocess_cfg"
    cfg = {k: v for k, v in (preprocess_cfg or {}).items() if v is not None}
    height, width = _size_hw(image_size, "open_clip")
    if cfg.get("mode", "RGB") != "RGB":
        raise DataError(f"{source}: mode {cfg['mode']!r} is not supported: open_clip accepts only 'RGB'.")
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise DataError(f"{source}: unknown interpolation {interpolation!r}: "
                        "open_clip accepts bicubic, bilinear, random.")
    interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
    resize_mode = cfg.get("resize_mode") or "shortest"
    if resize_mode not in ("shortest", "squash", "longest"):
        raise DataError(f"{source}: unknown resize_mode {resize_mode!r}: open_clip accepts shortest, squash, longest.")
    if resize_mode == "shortest" and height != width:
        interpolation = "bicubic"  # open_clip's non-square shortest path resizes with its ResizeKeepRatio default
    preprocess = {"input_size": [3, height, width], "interpolation": interpolation,
                  "mean": list(_triple(cfg.get("mean") or OPENAI_MEAN, "mean", source)),
                  "std": list(_triple(cfg.get("std") or OPENAI_STD, "std", source)), "crop_pct": 1.0,
                  "crop_mode": {"shortest": "center", "squash": "squash", "longest": "border"}[resize_mode]}
    if resize_mode == "longest":
        preprocess["fill"] = list(_fill_triple(cfg.get("fill_color", 0), source))
    return _check_preprocess(preprocess, source)


# transformers' processors: their class defaults, for the keys an older preprocessor_config.json leaves out
_HF_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_HF_DEFAULTS = {
    "ViT": {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2, "do_center_crop": False,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": (0.5, 0.5, 0.5),
            "image_std": (0.5, 0.5, 0.5)},
    "CLIP": {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD},
}
_HF_STEPS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")


def _hf_family(config: dict) -> str | None:
    name = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    for family in _HF_DEFAULTS:
        if re.fullmatch(rf"{family}(ImageProcessor(Fast|Pil)?|FeatureExtractor)", name):
            return family
    return None


def _crop_pct_for(crop: int, scale: int) -> float | None:
    """A crop_pct with floor(crop / crop_pct) == scale (crop / scale itself can miss by a rounding)."""
    pct = crop / scale
    for _ in range(8):
        got = math.floor(crop / pct)
        if got == scale:
            return pct
        pct = math.nextafter(pct, 0.0 if got < scale else math.inf)
    return None


def preprocess_from_hf(preprocessor_config: dict) -> dict:
    """The preprocess dict closest to a transformers preprocessor_config.json of a ViTImageProcessor-like
    (resize to height × width: squash) or CLIPImageProcessor-like (shortest edge, then centre crop: center
    with crop_pct = crop / shortest_edge) processor; ViT/CLIP class defaults fill missing keys. transformers
    resizes and crops its own way (tensors, a floored crop offset), so results agree closely, not exactly."""
    source = "preprocessor_config.json"
    if not isinstance(preprocessor_config, dict):
        raise DataError(f"{source} must be a dict, not {type(preprocessor_config).__name__}.")
    family = _hf_family(preprocessor_config)
    cfg = {**_HF_DEFAULTS.get(family, {}), **{k: v for k, v in preprocessor_config.items() if v is not None}}
    odd = sorted(k for k, v in cfg.items() if (k.startswith("do_") and k not in _HF_STEPS and v) or k == "crop_pct")
    if odd:
        raise DataError(f"{source}: {', '.join(odd)} cannot be reproduced; vitfast follows only "
                        f"{', '.join(_HF_STEPS)}, size, crop_size, resample, rescale_factor, image_mean, image_std.")
    missing = [k for k in ("do_resize", "size", "resample", "do_rescale") if k not in cfg]
    if missing:
        raise DataError(f"{source} of processor type {family or 'unknown'} lacks {', '.join(missing)} "
                        "(and vitfast knows the defaults of only ViT and CLIP processors).")
    if not cfg["do_resize"]:
        raise DataError(f"{source}: do_resize is false; vitfast needs a resize to a fixed size.")
    if cfg["resample"] not in _HF_PIL_FILTERS:
        raise DataError(f"{source}: unknown resample {cfg['resample']!r}: accepted are PIL's filter numbers "
                        + ", ".join(f"{k} ({v})" for k, v in _HF_PIL_FILTERS.items()) + ".")
    if not cfg.get("do_rescale", False) or not math.isclose(cfg.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6):
        raise DataError(f"{source}: vitfast scales pixels by 1/255 but do_rescale is {cfg.get('do_rescale')!r} "
                        f"with rescale_factor {cfg.get('rescale_factor')!r}.")
    size = cfg["size"]
    if isinstance(size, int):
        if family is None:
            raise DataError(f"{source}: a bare size {size} is ambiguous for an unknown processor type: "
                            'give {"height": H, "width": W} or {"shortest_edge": S}.')
        size = {"height": size, "width": size} if family == "ViT" else {"shortest_edge": size}
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if crop is not None and not (isinstance(crop, dict) and set(crop) == {"height", "width"}):
        raise DataError(f"{source}: crop_size {crop!r} is not {{'height': H, 'width': W}}.")
    if cfg.get("do_center_crop") and crop is None:
        raise DataError(f"{source}: do_center_crop is set without a crop_size.")
    if isinstance(size, dict) and set(size) == {"height", "width"}:
        scale, mode = _size_hw([size["height"], size["width"]], source), "squash"
        hw = scale if crop is None else _size_hw([crop["height"], crop["width"]], source)
    elif isinstance(size, dict) and set(size) == {"shortest_edge"}:
        if crop is None:
            raise DataError(f"{source}: size {size} without a centre crop gives images of varying size; "
                            "vitfast needs a fixed size (do_center_crop with crop_size).")
        hw = _size_hw([crop["height"], crop["width"]], source)
        if hw[0] != hw[1]:
            raise DataError(f"{source}: a shortest_edge resize with a non-square crop_size {crop} is not supported.")
        scale, mode = _size_hw([size["shortest_edge"]] * 2, source), "center"
    else:
        raise DataError(f"{source}: size {size!r} is not supported: accepted are {{'height': H, 'width': W}} "
                        "and {'shortest_edge': S}.")
    crop_pct = _crop_pct_for(hw[0], scale[0])
    if crop_pct is None or math.floor(hw[1] / crop_pct) != scale[1]:
        raise DataError(f"{source}: crop_size {list(hw)} is not the same fraction of size {list(scale)} on both sides.")
    if cfg.get("do_normalize", False):
        if "image_mean" not in cfg or "image_std" not in cfg:
            raise DataError(f"{source}: do_normalize is set without image_mean and image_std.")
        mean, std = cfg["image_mean"], cfg["image_std"]
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    preprocess = {"input_size": [3, *hw], "interpolation": _HF_PIL_FILTERS[cfg["resample"]],
                  "mean": list(_triple(mean, "image_mean", source)), "std": list(_triple(std, "image_std", source)),
                  "crop_pct": crop_pct, "crop_mode": mode}
    return _check_preprocess(preprocess, source)


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
    left or right; bilinear, as vitfast's training crops), and for eval exactly open_clip's
    `image_transform(image_size, is_train=False)`: bicubic resize of the shorter side, centre crop,
    OpenAI's mean and std."""
    return TransformConfig(image_size, scale=(0.9, 1.0), crop_pct=1.0, mean=OPENAI_MEAN, std=OPENAI_STD,
                           hflip=False, interpolation="bicubic")


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
