"""`vitfast eval`, `convert` and `train` on published weights, offline: eval gives timm's metrics with
timm's transforms and open_clip's zero-shot on ImageNet folders; a fine-tune with another class count and
size runs; bad names, tags and a missing network are one line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import OPEN_CLIP, REVISION, TAGGED, TIMM_VIT
from PIL import Image
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app
from vitfast.imagenet import IMAGENET_CLASSNAMES, IMAGENET_SYNSETS, OPENAI_IMAGENET_TEMPLATES
from vitfast.train import evaluate_folder

SIZES = [(37, 53), (300, 199), (64, 64), (50, 120), (33, 32)]


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    """An ImageFolder of random images of odd sizes and modes (PNG and JPEG), val/ only."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / "val" / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = SIZES[(c * per_class + i) % len(SIZES)]
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if i % 2:
                image.convert("L").save(root / "val" / name / f"{i}.jpg", quality=90)
            else:
                image.save(root / "val" / name / f"{i}.png")
    return root


def _vitfast(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`vitfast ARGS` in this process (typer's CliRunner): the `offline` fixture points the environment
    and huggingface_hub's constants at the test cache, as a fresh process would read them. Tests whose point
    is a process of its own (a refusal's whole stderr, an unreachable Hub) use `processes` below."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    if check:
        assert result.exit_code == 0, result.stderr
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


# (args, words of the one error line) of each refusal
REFUSALS = [
    (["eval", "--model", "vit_base_patch16_224", "--pretrained", "nope"], ["unknown pretrained tag 'nope'"]),
    (["eval", "--model", "vit_small_patch16_224", "--pretrained"],
     ["timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "model.safetensors", "HF_HUB_OFFLINE"]),
    (["eval"], ["give --model-dir"]),
    (["train", "--model", "vit_base_patch16_224.augreg2_in21k_ft_in1k"], ["add --pretrained"]),
    (["convert", "hf-hub:nobody/nothing", "x"], ["nobody/nothing", "config.json"]),
    (["convert", "hf-hub:bad", "x"], ["is not a Hub repo"]),
]


@pytest.fixture(scope="module")
def processes(hub, tmp_path_factory):
    """`python -m vitfast` runs that need a process of their own: each refusal (its whole stderr is one
    line, as a user sees it) and the two runs against an unreachable Hub (huggingface_hub reads HF_ENDPOINT
    when imported). They start together, the first time a test asks; each test waits for its own. The
    unreachable runs spend about 25 s asleep in huggingface_hub's retry back-off, which the others overlap.
    Returns name -> a function that waits for that run and returns its CompletedProcess."""
    tmp = tmp_path_factory.mktemp("processes")
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HOME")}
    # as the `offline` fixture sets it for a subprocess
    offline = {**base, "HF_HUB_CACHE": str(hub["cache"]), "HF_HUB_OFFLINE": "1"}
    unreachable = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    unreachable.pop("HF_HUB_OFFLINE", None)
    runs = {f"refusal-{i}": (args, offline) for i, (args, _) in enumerate(REFUSALS)}
    runs["unreachable-empty-cache"] = (["convert", f"hf-hub:{TIMM_VIT}", str(tmp / "empty-out")],
                                       {**unreachable, "HF_HUB_CACHE": str(tmp / "empty")})
    runs["unreachable-cached"] = (["convert", f"hf-hub:{TIMM_VIT}", str(tmp / "cached-out"), "--json"],
                                  {**unreachable, "HF_HUB_CACHE": str(hub["cache"])})
    started = {name: subprocess.Popen([sys.executable, "-m", "vitfast", *args], env=env, cwd=tmp,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (args, env) in runs.items()}

    def wait(name: str) -> subprocess.CompletedProcess:
        proc = started[name]
        stdout, stderr = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    yield wait
    for proc in started.values():  # those a failed or deselected test left running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@torch.no_grad()
def test_eval_of_a_timm_repo_gives_timms_loss_and_accuracy(offline, tmp_path):
    """What timm's validate.py computes: its transforms from the pretrained config, its model, cross-entropy."""
    import timm
    from timm.data import create_transform, resolve_data_config

    root = _folder(tmp_path / "data", [f"c{i}" for i in range(5)], per_class=3)
    ours = evaluate_folder(model=f"hf-hub:{TIMM_VIT}", pretrained=True, data_dir=root, workers=0,
                           attn_backend="eager")
    model = timm.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    images, labels = [], []
    for c in range(5):
        for path in sorted((root / "val" / f"c{c}").iterdir()):
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(c)
    logits = model(torch.stack(images))
    labels = torch.tensor(labels)
    assert abs(ours["loss"] - F.cross_entropy(logits, labels).item()) <= 1e-4
    assert ours["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert ours["images"] == 15


@torch.no_grad()
def test_an_imagenet_model_on_some_synsets_scores_them_by_their_imagenet_index(offline, tmp_path):
    """A 1000-class model on a folder of a few ImageNet synsets (as ImageNette): labels are ImageNet indices."""
    import timm
    from timm.data import create_transform, resolve_data_config

    picks = (1, 404, 999)
    root = _folder(tmp_path / "nette", [IMAGENET_SYNSETS[i] for i in picks], per_class=2)
    ours = evaluate_folder(model="vit_base_patch16_224", pretrained=True, data_dir=root, workers=0,
                           attn_backend="eager")
    model = timm.create_model(f"hf-hub:{TAGGED}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    images, labels = [], []
    for i in picks:
        for path in sorted((root / "val" / IMAGENET_SYNSETS[i]).iterdir()):
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(i)
    logits, labels = model(torch.stack(images)), torch.tensor(labels)
    assert abs(ours["loss"] - F.cross_entropy(logits, labels).item()) <= 1e-4
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert ours["top5"] == pytest.approx(100 * top5)


@torch.no_grad()
def test_zero_shot_on_imagenet_synsets_matches_open_clip(offline, tmp_path):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    synsets = [IMAGENET_SYNSETS[i] for i in (0, 217, 482)]
    root = _folder(tmp_path / "imagenet", synsets, per_class=4)
    ours = evaluate_folder(model=f"hf-hub:{OPEN_CLIP}", pretrained=True, data_dir=root, workers=0,
                           attn_backend="eager")
    model, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{OPEN_CLIP}")
    model.eval()
    names = [IMAGENET_CLASSNAMES[i] for i in (0, 217, 482)]
    classifier = build_zero_shot_classifier(model, open_clip.get_tokenizer(f"hf-hub:{OPEN_CLIP}"), names,
                                            [lambda c, t=t: t.format(c) for t in OPENAI_IMAGENET_TEMPLATES],
                                            device="cpu")
    images, labels = [], []
    for c, synset in enumerate(synsets):
        for path in sorted((root / "val" / synset).iterdir()):
            images.append(preprocess(Image.open(path).convert("RGB")))
            labels.append(c)
    logits = F.normalize(model.encode_image(torch.stack(images)), dim=-1) @ classifier
    expected = 100 * (logits.argmax(1) == torch.tensor(labels)).float().mean().item()
    assert ours["zeroshot_top1"] == pytest.approx(expected)


def test_cli_convert_eval_and_fine_tune_offline(offline, hub, tmp_path, tiny_image_folder):
    # convert a revision of a timm repo; the folder records where it came from and its preprocessing
    report = json.loads(_vitfast("convert", f"hf-hub:{TIMM_VIT}", str(tmp_path / "vit"), "--revision", REVISION,
                                 "--json").stdout)
    assert report["max_abs_diff"] <= 1e-4 and report["source"] == f"timm (hf-hub:{TIMM_VIT}@{REVISION})"
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert saved["config"]["depth"] == 1 and saved["preprocess"]["crop_pct"] == 0.9
    # eval by name gives the converted folder's numbers
    data = _folder(tmp_path / "data", [f"c{i}" for i in range(5)])
    by_name = json.loads(_vitfast("eval", "--model", f"hf-hub:{TIMM_VIT}", "--pretrained", "--revision", REVISION,
                                  "--data-dir", str(data), "-j", "0", "--json", "-q").stdout)
    by_folder = json.loads(_vitfast("eval", "--model-dir", str(tmp_path / "vit"), "--data-dir", str(data), "-j", "0",
                                    "--json", "-q").stdout)
    assert by_name["loss"] == pytest.approx(by_folder["loss"], abs=1e-6)
    # fine-tune on a 4-class folder at another size: a new head, resampled positions, class names saved
    _vitfast("train", "--model", f"hf-hub:{TIMM_VIT}", "--pretrained", "--data-dir", str(tiny_image_folder),
             "--img-size", "24", "--epochs", "1", "-b", "16", "-j", "0", "-o", str(tmp_path / "ft"), "-q",
             "--layer-decay", "0.75")
    tuned = vitfast.load(tmp_path / "ft")
    assert tuned.config.num_classes == 4 and tuned.config.img_size == 24
    assert tuned.class_names == ["checker", "circle", "hstripes", "square"]
    assert tuned.preprocess["input_size"] == [3, 24, 24] and tuned.preprocess["mean"] == [0.5, 0.5, 0.5]
    start = vitfast.create_model(f"hf-hub:{TIMM_VIT}", pretrained=True)
    assert not torch.equal(tuned.blocks[0].attn.qkv.weight, start.blocks[0].attn.qkv.weight)  # it trained
    assert _vitfast("eval", "--model-dir", str(tmp_path / "ft"), "--data-dir", str(tiny_image_folder), "-j", "0",
                    "-q").returncode == 0


def test_cli_clip_from_the_hub_converts_with_clips_bpe_and_evaluates(offline, tmp_path):
    _vitfast("convert", f"hf-hub:{OPEN_CLIP}", str(tmp_path / "clip"))
    assert (tmp_path / "clip" / "tokenizer.json").is_file()
    out = _vitfast("eval", "--model", f"hf-hub:{OPEN_CLIP}", "--pretrained", "-j", "0", "--json", "-q").stdout
    assert "zeroshot_top1" in json.loads(out)


@pytest.mark.parametrize("case", range(len(REFUSALS)), ids=lambda i: f"args{i}")
def test_cli_refusals_are_one_line(processes, case):
    """Offline (the `offline` fixture's environment), in a process of its own."""
    args, words = REFUSALS[case]
    result = processes(f"refusal-{case}")
    assert result.returncode in (1, 2), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0]


def test_no_network_is_one_line_naming_the_fix(processes):
    """Online mode with an unreachable endpoint: huggingface_hub finds nothing in an empty cache."""
    result = processes("unreachable-empty-cache")
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error:") and "\n" not in line and "could not be reached" in line and "HF_ENDPOINT" in line


def test_no_network_with_the_files_cached_still_loads(processes):
    """Not offline by flag, but the Hub unreachable: what the cache holds is enough (the optional files a
    layout probes for count as absent once the Hub has proved unreachable)."""
    result = processes("unreachable-cached")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] <= 1e-4


def test_convert_tokenizer_takes_clips_bpe_file_or_the_word_clip(offline, tmp_path):
    """--tokenizer is honoured: CLIP's .gz (by content, any name) and 'clip' replace a repo's own tokenizer,
    and a broken .gz is named."""
    import gzip

    import open_clip
    from conftest import HF_CLIP

    from vitfast.tokenizer import clip_bpe_tokenizer, load_tokenizer

    merges = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    copy = tmp_path / "merges.bin"
    copy.write_bytes(merges.read_bytes())
    _vitfast("convert", f"hf-hub:{OPEN_CLIP}", str(tmp_path / "c"), "--tokenizer", str(copy), "--no-verify")
    saved = load_tokenizer(tmp_path / "c")
    assert torch.equal(saved(["a photo of a cat"]), clip_bpe_tokenizer(context_length=16)(["a photo of a cat"]))
    # the transformers repo ships a small BPE: 'clip' (49408 tokens) is honoured, so refused by its size
    refused = _vitfast("convert", f"hf-hub:{HF_CLIP}", str(tmp_path / "h"), "--tokenizer", "clip", check=False)
    assert refused.returncode == 1 and "the tokenizer has 49408 tokens but the model" in refused.stderr
    broken = tmp_path / "broken.gz"
    with gzip.open(broken, "wt") as f:
        f.write("not merges\n")
    refused = _vitfast("convert", f"hf-hub:{OPEN_CLIP}", str(tmp_path / "b"), "--tokenizer", str(broken),
                       check=False)
    assert refused.returncode == 1 and "broken.gz" in refused.stderr and not (tmp_path / "b").exists()
