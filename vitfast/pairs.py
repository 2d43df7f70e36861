"""Image–text pairs for CLIP: CSV/TSV tables read with open_clip's flags, webdataset tar shards, and
the built-in captions.

A table has a header row; ``--csv-img-key`` names the image-path column (default ``filepath``),
``--csv-caption-key`` the caption column (default ``title``), ``--csv-separator`` the separator (default
a tab), as open_clip. Relative image paths are read relative to the table's folder, so a dataset folder
can be moved as a whole. The built-in default data carries ``train_captions.tsv`` and
``val_captions.tsv`` in that format.

Shards (``--train-data "shards/{00000..00099}.tar"``, brace ranges as webdataset writes them, several
sources joined with ``::``) hold samples as files sharing a key: ``KEY.jpg`` (or png, jpeg, webp) and
``KEY.txt``. They are indexed once when the dataset is built (the tar headers and captions are read,
the images are not) and then read by position, so shards get the same seeded sample order, DDP split
and exact mid-epoch resume as a table.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tarfile
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

    def __post_init__(self) -> None:
        if len(self.separator) != 1:
            raise DataError(f"--csv-separator must be one character (a tab, written '\\t', or ',' ...); got "
                            f"{self.separator!r}.")


_log = logging.getLogger(__name__)
_MAX_FIELD = 2**31 - 1  # csv's own limit, 131,072 characters, would refuse long captions (the tokenizer cuts them)


def default_pairs(split: str) -> Path:
    """The built-in data's caption table of `split` ("train" or "val"), generated on first use."""
    return default_data_dir() / f"{split}_captions.tsv"


def read_pairs(path: str | os.PathLike[str], fmt: CsvFormat = CsvFormat()) -> tuple[list[Path], list[str]]:
    """Image paths and captions of a UTF-8 CSV/TSV table, with errors that name the file, line and fix.

    Captions of any length are read (the tokenizer keeps their first tokens, as CLIP's); empty ones are
    counted in a warning on the "vitfast.pairs" logger.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image-text table {path} does not exist; pass a CSV/TSV file (--train-data/--val-data).")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the table as "
                        "UTF-8.") from None
    limit = csv.field_size_limit(_MAX_FIELD)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=fmt.separator)
        columns = reader.fieldnames or []
        missing = [key for key in (fmt.img_key, fmt.caption_key) if key not in columns]
        if missing:
            shown = ", ".join(repr(c) for c in columns) or "none"
            raise DataError(f"{path} has no column {', '.join(map(repr, missing))} (columns: {shown}; separator "
                            f"{fmt.separator!r}). Set --csv-img-key, --csv-caption-key or --csv-separator.")
        images, captions = [], []
        for row in reader:
            image, caption = row.get(fmt.img_key), row.get(fmt.caption_key)
            if image is None or caption is None:
                raise DataError(f"{path}, line {reader.line_num}: fewer fields than the header; fix or remove "
                                "the line.")
            images.append(path.parent / image)
            captions.append(caption)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: {exc}; fix or remove the line.") from None
    finally:
        csv.field_size_limit(limit)
    if not images:
        raise DataError(f"{path} holds a header but no image-text pairs.")
    empty = sum(not caption.strip() for caption in captions)
    if empty:
        _log.warning(f"warning: {empty} of {len(captions)} captions in {path} are empty; those images train "
                     "against empty text.")
    return images, captions


class CaptionTokens:
    """One caption to its (context_length,) token ids; a class, so DataLoader workers can pickle it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenizer(text)[0]


class ImageTextDataset(Dataset):
    """(image tensor, token ids) pairs from a CSV/TSV table; unreadable images raise or are skipped.

    `tokenize` may be set after construction (the captions can train the tokenizer first).
    """

    def __init__(self, table: str | os.PathLike[str], tokenize: Callable[[str], torch.Tensor] | None = None,
                 transform=None, fmt: CsvFormat = CsvFormat(), skip_bad_images: bool = False):
        self.table = Path(table)
        self.images, self.captions = read_pairs(table, fmt)
        self.tokenize, self.transform, self.skip_bad_images = tokenize, transform, skip_bad_images

    def __len__(self) -> int:
        return len(self.images)

    def _open(self, index: int):
        return open(self.images[index], "rb")

    def _where(self, index: int) -> str:
        return f"image {self.images[index]}, listed in {self.table}"

    def load_image(self, index: int):
        from PIL import Image

        try:
            with self._open(index) as f, Image.open(f) as image:
                image = image.convert("RGB")
        except Exception as exc:  # PIL raises several types for missing, truncated or foreign files
            if self.skip_bad_images:
                return None
            raise DataError(f"cannot read {self._where(index)} ({type(exc).__name__}: {exc}). "
                            "Fix it, or pass --skip-bad-images to skip unreadable images.") from None
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if image is None:
            return None
        return image, self.tokenize(self.captions[index])


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_shards(spec: str) -> list[Path]:
    """The shard paths of a spec such as ``a/{000..009}.tar::b/{00..03}.tar``, all checked to exist."""
    paths: list[str] = []
    for part in spec.split("::"):
        if "{" in part:
            try:
                from braceexpand import braceexpand
            except ImportError:
                raise DataError(f"{part}: brace ranges need the braceexpand package; "
                                "pip install 'vitfast[webdataset]'.") from None
            paths.extend(braceexpand(part))
        else:
            paths.append(part)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} shards do not exist, e.g. {missing[0]}; check --train-data/"
                        "--val-data (brace ranges like {00000..00099} are expanded).")
    return [Path(p) for p in paths]


class TarShardDataset(ImageTextDataset):
    """(image tensor, token ids) pairs from webdataset-style tar shards, read by position."""

    def __init__(self, spec: str, tokenize: Callable[[str], torch.Tensor] | None = None, transform=None,
                 skip_bad_images: bool = False):
        self.table = Path(spec)
        self.shards = expand_shards(spec)
        self.tokenize, self.transform, self.skip_bad_images = tokenize, transform, skip_bad_images
        # per sample: (shard number, key, byte offset and size of the image)
        self.images: list[tuple[int, str, int, int]] = []
        self.captions: list[str] = []
        self.incomplete = 0  # samples lacking an image or a caption, left out
        for number, shard in enumerate(self.shards):
            self._index(number, shard)
        if not self.images:
            raise DataError(f"the shards {spec} hold no sample with both an image ({', '.join(IMAGE_EXTENSIONS)}) "
                            "and a caption (.txt) under one key.")
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def _index(self, number: int, shard: Path) -> None:
        samples: dict[str, dict] = {}
        try:
            with tarfile.open(shard, mode="r:") as tar:  # uncompressed: images are read by offset later
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, name = member.name.rpartition("/")
                    stem, dot, ext = name.partition(".")
                    if not dot:
                        continue
                    sample = samples.setdefault(f"{folder}/{stem}" if folder else stem, {})
                    ext = ext.lower()
                    if ext == "txt":
                        sample["caption"] = tar.extractfile(member).read().decode("utf-8").strip()
                    elif ext in IMAGE_EXTENSIONS:
                        sample["image"] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read shard {shard} ({type(exc).__name__}: {exc}); shards must be "
                            "uncompressed .tar files as webdataset writes them.") from None
        for key, sample in samples.items():
            if "image" in sample and "caption" in sample:
                self.images.append((number, key, *sample["image"]))
                self.captions.append(sample["caption"])
            else:
                self.incomplete += 1

    def _open(self, index: int):
        number, _, offset, size = self.images[index]
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own files
            self._files, self._pid = {}, os.getpid()
        if number not in self._files:
            self._files[number] = open(self.shards[number], "rb")
        f = self._files[number]
        f.seek(offset)
        return io.BytesIO(f.read(size))

    def _where(self, index: int) -> str:
        number, key, _, _ = self.images[index]
        return f"the image of sample {key} in shard {self.shards[number]}"

    def __getstate__(self) -> dict:  # open files stay behind; workers reopen them
        return {**self.__dict__, "_files": {}}


def pairs_dataset(spec: str | os.PathLike[str], transform=None, fmt: CsvFormat = CsvFormat(),
                  skip_bad_images: bool = False) -> ImageTextDataset:
    """Tar shards (a spec naming .tar files) or a CSV/TSV table; set `.tokenize` before reading samples."""
    if any(part.endswith(".tar") for part in str(spec).split("::")):
        return TarShardDataset(str(spec), transform=transform, skip_bad_images=skip_bad_images)
    return ImageTextDataset(spec, transform=transform, fmt=fmt, skip_bad_images=skip_bad_images)
