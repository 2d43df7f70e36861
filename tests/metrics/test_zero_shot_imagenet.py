"""Zero-shot ImageNet as open_clip runs it: OpenAI's class names and 80 templates (vitfast.imagenet),
picked by `clip_eval_data` for a split whose class folders are ImageNet synsets, and a classifier equal
to open_clip's `build_zero_shot_classifier` on the same weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitfast
from vitfast import data as vdata
from vitfast.imagenet import IMAGENET_CLASSNAMES, IMAGENET_SYNSETS, OPENAI_IMAGENET_TEMPLATES, imagenet_class_names
from vitfast.metrics import clip as clip_metrics
from vitfast.metrics.clip import TEMPLATES, evaluate_clip, zero_shot_classifier
from vitfast.models.peers import peer_model
from vitfast.pairs import CsvFormat
from vitfast.tokenizer import clip_bpe_tokenizer
from vitfast.train.evaluate import clip_eval_data

# tench, English springer, cassette player
SYNSETS = ("n01440764", "n02102040", "n02979186")
NAMES = ["tench", "English Springer Spaniel", "cassette player"]


def test_the_lists_are_open_clips_and_timms():
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    timm = pytest.importorskip("timm")
    assert list(IMAGENET_CLASSNAMES) == list(metadata.IMAGENET_CLASSNAMES)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t("{}") for t in metadata.OPENAI_IMAGENET_TEMPLATES] == list(OPENAI_IMAGENET_TEMPLATES)
    assert all(t.format("x") == f("x") for t, f in zip(OPENAI_IMAGENET_TEMPLATES, metadata.OPENAI_IMAGENET_TEMPLATES))
    synsets = (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    assert list(IMAGENET_SYNSETS) == synsets


def test_the_synsets_are_sorted_and_line_up_with_the_names():
    assert len(IMAGENET_SYNSETS) == len(IMAGENET_CLASSNAMES) == 1000
    assert list(IMAGENET_SYNSETS) == sorted(set(IMAGENET_SYNSETS))
    assert IMAGENET_SYNSETS[0] == "n01440764" and IMAGENET_CLASSNAMES[0] == "tench"
    assert IMAGENET_SYNSETS[-1] == "n15075141" and IMAGENET_CLASSNAMES[-1] == "toilet paper"
    assert all(t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)


def test_imagenet_class_names_on_full_subset_mixed_and_other_folders():
    assert imagenet_class_names(list(IMAGENET_SYNSETS)) == list(IMAGENET_CLASSNAMES)
    assert imagenet_class_names(SYNSETS) == NAMES
    assert imagenet_class_names(list(reversed(SYNSETS))) == NAMES[::-1]  # the folders' order, not ImageNet's
    assert imagenet_class_names(["n01440764", "cat"]) is None
    assert imagenet_class_names(["n01440764", "n99999999"]) is None  # looks like a synset, is not one of the 1000
    assert imagenet_class_names(["circle", "square"]) is None
    assert imagenet_class_names([]) is None


def _image_folder(root: Path, classes, per_class: int = 2, size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "val" / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "val" / c / f"{i}.png")
    return root


def _tiny_clip():
    model = vitfast.create_model("clip_tiny", vocab_size=49408, eot_token_id=49407, attn_backend="sdpa").eval()
    tokenizer = clip_bpe_tokenizer(context_length=model.config.context_length)
    assert (tokenizer.vocab_size, tokenizer.eot_token_id) == (model.config.vocab_size, model.config.eot_token_id)
    return model, tokenizer


def _eval_data(root, model, tokenizer):
    return clip_eval_data(root, None, model.config.image_size, tokenizer, CsvFormat(), batch_size=4, workers=0)


def test_clip_eval_data_picks_imagenet_names_and_openai_templates(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    root = _image_folder(tmp_path / "nette", SYNSETS)
    model, tokenizer = _tiny_clip()
    data = _eval_data(root, model, tokenizer)
    assert data.names == NAMES
    assert data.templates == OPENAI_IMAGENET_TEMPLATES
    assert "ImageNet class names and OpenAI's 80 templates" in data.description[-1]

    # evaluate_clip builds its classifier from the data's templates
    seen = []

    def spy(model, tokenizer, names, templates=TEMPLATES, **kw):
        seen.append((list(names), tuple(templates)))
        return zero_shot_classifier(model, tokenizer, names, templates, **kw)

    monkeypatch.setattr(clip_metrics, "zero_shot_classifier", spy)
    metrics = evaluate_clip(model, tokenizer, data, torch.device("cpu"))
    assert seen == [(NAMES, OPENAI_IMAGENET_TEMPLATES)]
    assert 0 <= metrics["zeroshot_top1"] <= metrics["zeroshot_top5"] == 100  # 3 classes: top-5 holds all

    # the same classifier as open_clip's, on the same weights and with open_clip's own tokenizer
    peer = peer_model("clip", model.config).eval()
    peer.load_state_dict(model.state_dict())
    oc_tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.config.context_length)
    prompts = [t.format(n) for n in NAMES for t in OPENAI_IMAGENET_TEMPLATES]
    assert torch.equal(tokenizer(prompts), oc_tokenizer(prompts))
    ours = zero_shot_classifier(model, tokenizer, data.names, data.templates, device=torch.device("cpu"))
    theirs = build_zero_shot_classifier(peer, oc_tokenizer, NAMES, open_clip.OPENAI_IMAGENET_TEMPLATES, device="cpu")
    assert ours.shape == theirs.shape == (model.config.embed_dim, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_classnames_txt_and_other_folders_keep_vitfasts_templates(tmp_path):
    model, tokenizer = _tiny_clip()
    other = _eval_data(_image_folder(tmp_path / "shapes", ("circle", "red_square")), model, tokenizer)
    assert other.names == ["circle", "red square"] and other.templates == TEMPLATES
    assert "OpenAI" not in other.description[-1]

    # a classnames.txt beside the split wins over the ImageNet names
    root = _image_folder(tmp_path / "named", SYNSETS)
    (root / vdata.CLASSNAMES_FILE).write_text("fish\ndog\ntape deck\n")
    named = _eval_data(root, model, tokenizer)
    assert named.names == ["fish", "dog", "tape deck"] and named.templates == TEMPLATES

    # a mix of synsets and other folders is not ImageNet
    mixed = _eval_data(_image_folder(tmp_path / "mixed", ("n01440764", "zebra_toy")), model, tokenizer)
    assert mixed.names == ["n01440764", "zebra toy"] and mixed.templates == TEMPLATES
