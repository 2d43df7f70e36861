"""ImageNet-1k facts for zero-shot evaluation as open_clip runs it: the 1000 WordNet ids in class-index
order, OpenAI's readable name of each class, and OpenAI's 80 prompt templates.

The ids and names live in `imagenet_classes.tsv` beside this module (one `synset<TAB>name` line per
class, in class-index order, which is the synsets' sorted order): the ids are timm's
`data/_info/imagenet_synsets.txt`, the names open_clip's `IMAGENET_CLASSNAMES` (from OpenAI's CLIP
notebook). The templates are open_clip's `OPENAI_IMAGENET_TEMPLATES`, written as format strings.
Pure data: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

CLASSES_FILE = "imagenet_classes.tsv"


def _read_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = Path(__file__).with_name(CLASSES_FILE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if len(rows) != 1000 or any(len(row) != 2 for row in rows):
        raise RuntimeError(f"{CLASSES_FILE} must hold 1000 'synset<TAB>name' lines; the installed copy is damaged.")
    synsets, names = zip(*rows)
    if list(synsets) != sorted(set(synsets)):
        raise RuntimeError(f"{CLASSES_FILE} must list 1000 distinct synsets in sorted order.")
    return synsets, names


IMAGENET_SYNSETS, IMAGENET_CLASSNAMES = _read_classes()
_NAME_OF = dict(zip(IMAGENET_SYNSETS, IMAGENET_CLASSNAMES))

OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def imagenet_class_names(folders: Sequence[str]) -> list[str] | None:
    """OpenAI's names of the class folders `folders`, in their order, when every one is named by an
    ImageNet-1k synset (all 1000, or any subset such as ImageNette's 10); else None (also for no folders)."""
    if not folders or any(f not in _NAME_OF for f in folders):
        return None
    return [_NAME_OF[f] for f in folders]
