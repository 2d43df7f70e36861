"""Image–text pairs for CLIP: CSV/TSV tables read with open_clip's flags, and the built-in captions.

A table has a header row; ``--csv-img-key`` names the image-path column (default ``filepath``),
``--csv-caption-key`` the caption column (default ``title``), ``--csv-separator`` the separator (default
a tab), as open_clip. Relative image paths are read relative to the table's folder, so a dataset folder
can be moved as a whole. The built-in default data carries ``train_captions.tsv`` and
``val_captions.tsv`` in that format.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from vitfast.data import DataError, default_data_dir


@dataclass(frozen=True)
class CsvFormat:
    img_key: str = "filepath"
    caption_key: str = "title"
    separator: str = "\t"


def default_pairs(split: str) -> Path:
    """The built-in data's caption table of `split` ("train" or "val"), generated on first use."""
    return default_data_dir() / f"{split}_captions.tsv"


def read_pairs(path: str | os.PathLike[str], fmt: CsvFormat = CsvFormat()) -> tuple[list[Path], list[str]]:
    """Image paths and captions of a CSV/TSV table, with errors that name the file, column and fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image-text table {path} does not exist; pass a CSV/TSV file (--train-data/--val-data).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=fmt.separator)
        columns = reader.fieldnames or []
        missing = [key for key in (fmt.img_key, fmt.caption_key) if key not in columns]
        if missing:
            shown = ", ".join(repr(c) for c in columns) or "none"
            raise DataError(f"{path} has no column {', '.join(map(repr, missing))} (columns: {shown}; separator "
                            f"{fmt.separator!r}). Set --csv-img-key, --csv-caption-key or --csv-separator.")
        images, captions = [], []
        for line, row in enumerate(reader, start=2):
            image, text = row.get(fmt.img_key), row.get(fmt.caption_key)
            if image is None or text is None:
                raise DataError(f"{path}, line {line}: fewer fields than the header; fix or remove the line.")
            images.append(path.parent / image)
            captions.append(text)
    if not images:
        raise DataError(f"{path} holds a header but no image-text pairs.")
    return images, captions


class CaptionTokens:
    """One caption to its (context_length,) token ids; a class, so DataLoader workers can pickle it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenizer(text)[0]


class ImageTextDataset(Dataset):
    """(image tensor, token ids) pairs from a CSV/TSV table; unreadable images raise or are skipped."""

    def __init__(self, table: str | os.PathLike[str], tokenize: Callable[[str], torch.Tensor], transform=None,
                 fmt: CsvFormat = CsvFormat(), skip_bad_images: bool = False):
        self.table = Path(table)
        self.images, self.captions = read_pairs(table, fmt)
        self.tokenize, self.transform, self.skip_bad_images = tokenize, transform, skip_bad_images

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int):
        from PIL import Image

        path = self.images[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except Exception as exc:  # PIL raises several types for missing, truncated or foreign files
            if self.skip_bad_images:
                return None
            raise DataError(f"cannot read image {path}, listed in {self.table} ({type(exc).__name__}: {exc}). "
                            "Fix the path, or pass --skip-bad-images to skip unreadable images.") from None
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if image is None:
            return None
        return image, self.tokenize(self.captions[index])
