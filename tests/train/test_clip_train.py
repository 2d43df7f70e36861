"""CLIP training and evaluation: image-text tables and tar shards, the default captions, the trainer's CLIP task
(exact resume, two-process DDP through clip_loss(group=)), zero-shot and retrieval metrics, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import vitfast
from vitfast import data as vdata
from vitfast import pairs as vdata_pairs
from vitfast.cli import app
from vitfast.data import class_names
from vitfast.metrics import retrieval_metrics
from vitfast.pairs import CsvFormat, ImageTextDataset, read_pairs
from vitfast.train import TrainConfig, train

# clip_tiny at 16×16 on the tiny folder (96 captioned train images): 6 steps per epoch at batch 16.
TINY = dict(model="clip_tiny", img_size=16, batch_size=16, lr=2e-3, warmup_epochs=0.5, workers=0,
            attn_backend="sdpa", quiet=True)


def _train(folder, out, **kw) -> dict:
    tables = dict(train_data=str(folder / "train_captions.tsv"), val_data=str(folder / "val_captions.tsv"))
    cfg = TrainConfig(data_dir=str(folder), output=str(out), **{**TINY, **tables, **kw})
    return train(cfg, log=lambda m: None)


def _weights(path) -> dict[str, torch.Tensor]:
    return vitfast.load(path).state_dict()


def test_default_captions_describe_their_images(tiny_image_folder):
    images, captions = read_pairs(tiny_image_folder / "train_captions.tsv")
    assert len(images) == 4 * 24 and all(p.is_file() for p in images)
    for path, text in zip(images, captions):
        assert vdata.CLASS_PHRASES[path.parent.name] in text, (path, text)
    names = class_names(tiny_image_folder / "val", ["checker", "circle", "hstripes", "square"])
    assert names == ["checkerboard", "circle", "horizontal stripes", "square"]


def test_table_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(vdata.DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.csv")
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\na.png,a cat\n")
    with pytest.raises(vdata.DataError, match=r"no column 'filepath'.*'image', 'caption'.*--csv-img-key"):
        read_pairs(table, CsvFormat(separator=","))
    with pytest.raises(vdata.DataError, match="no column"):  # the default separator is a tab
        read_pairs(table, CsvFormat(img_key="image", caption_key="caption"))
    table.write_text("image,caption\n")
    with pytest.raises(vdata.DataError, match="no image-text pairs"):
        read_pairs(table, CsvFormat("image", "caption", ","))
    table.write_text("image,caption\na.png\n")
    with pytest.raises(vdata.DataError, match="line 2: fewer fields"):
        read_pairs(table, CsvFormat("image", "caption", ","))
    (tmp_path / "a.png").write_bytes(b"not a png")
    table.write_text("image,caption\na.png,a cat\n")
    dataset = ImageTextDataset(table, lambda text: torch.zeros(3), fmt=CsvFormat("image", "caption", ","))
    with pytest.raises(vdata.DataError, match=r"cannot read image .*a\.png.*--skip-bad-images"):
        dataset[0]
    skipping = ImageTextDataset(table, lambda text: torch.zeros(3), fmt=CsvFormat("image", "caption", ","),
                                skip_bad_images=True)
    assert skipping[0] is None


def test_retrieval_recall_counts_ranks():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    assert retrieval_metrics(image, image)["image_to_text_R@1"] == 100.0
    text = image.roll(1, dims=0)  # every true caption now scores below the best one
    m = retrieval_metrics(image, text, chunk=7)
    sims = image @ text.t()
    ranks = (sims > sims.diagonal()[:, None]).sum(1)
    for k in (1, 5, 10):
        assert m[f"image_to_text_R@{k}"] == pytest.approx(100 * (ranks < k).double().mean().item())
    assert m["image_to_text_R@1"] < 100.0


def test_resume_after_a_crash_equals_uninterrupted(tiny_image_folder, tmp_path, monkeypatch):
    full = _train(tiny_image_folder, tmp_path / "full", epochs=2)
    assert {"val_zeroshot_top1", "val_image_to_text_R@10", "val_logit_scale"} <= full.keys()
    out = tmp_path / "crashed"
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *a, **kw):  # the 9th step (in epoch 2) dies without saving, as under SIGKILL
        calls["n"] += 1
        if calls["n"] == 9:
            raise SystemExit("killed")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(SystemExit):
        _train(tiny_image_folder, out, epochs=2)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    _train(tiny_image_folder, out, epochs=2, resume="latest")
    a, b = _weights(tmp_path / "full"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "tokenizer.json").is_file()
    assert vitfast.load(out).logit_scale.exp().item() <= 100.0 + 1e-4


def test_eval_cli_reproduces_the_training_metrics(tiny_image_folder, tmp_path):
    out = tmp_path / "run"
    metrics = _train(tiny_image_folder, out, epochs=1)
    result = CliRunner().invoke(app, ["eval", "--model-dir", str(out), "--data-dir", str(tiny_image_folder),
                                      "--val-data", str(tiny_image_folder / "val_captions.tsv"),
                                      "--attn-backend", "sdpa", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    for key in ("zeroshot_top1", "zeroshot_top5", "image_to_text_R@1", "text_to_image_R@5"):
        assert evaluated[key] == pytest.approx(metrics[f"val_{key}"]), key


def test_two_gloo_processes_equal_one_with_the_global_batch(tiny_image_folder, ddp_and_single):
    """DDP with the loss gathered across ranks trains the same weights as one process on both halves."""
    args = ["train", "--model", "clip_tiny", "--img-size", "16", "--epochs", "1", "--lr", "2e-3",
            "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend", "sdpa", "--quiet",
            "--data-dir", str(tiny_image_folder), "--train-data", str(tiny_image_folder / "train_captions.tsv")]
    ddp, one = ddp_and_single(args)
    a, b = _weights(ddp), _weights(one)
    for k in a:
        if k.endswith("in_proj_bias"):
            # The key bias has zero gradient in exact arithmetic (it adds a constant to a query's
            # scores), so AdamW turns its rounding noise into full-size steps: left out.
            width = a[k].shape[0] // 3
            a[k], b[k] = a[k][torch.arange(3 * width) // width != 1], b[k][torch.arange(3 * width) // width != 1]
        # Measured: at most 7e-5 apart (rounding, amplified by AdamW where gradients are near zero);
        # without the gathered loss (each rank's own 8×8 loss) every tensor is ~1e-2 apart.
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=0, msg=k)


def test_clip_flags_and_tokenizer_errors(tiny_image_folder, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--model", "clip_tiny", "--train-data", str(tmp_path / "nope.tsv"),
                                 "--output", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "nope.tsv does not exist" in result.output
    result = runner.invoke(app, ["train", "--model", "clip_tiny", "--drop-path", "0.1", "--data-dir",
                                 str(tiny_image_folder), "--train-data", str(tiny_image_folder / "train_captions.tsv"),
                                 "--output", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "no stochastic depth" in result.output
    result = runner.invoke(app, ["train", "--model", "clip_tiny", "--tokenizer", str(tmp_path / "missing.json"),
                                 "--train-data", str(tiny_image_folder / "train_captions.tsv"),
                                 "--output", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code != 0 and "missing.json" in result.output
    result = runner.invoke(app, ["train", "--model", "vit_micro_patch4_32", "--train-data", "pairs.tsv",
                                 "--output", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "--train-data apply to CLIP models" in result.output


def _write_shards(folder, out, per_shard: int) -> str:
    """The tiny folder's train pairs, in table order, as webdataset shards (KEY.png + KEY.txt)."""
    import io
    import tarfile

    images, captions = read_pairs(folder / "train_captions.tsv")
    out.mkdir()
    for start in range(0, len(images), per_shard):
        with tarfile.open(out / f"{start // per_shard:03d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                for name, payload in ((f"{i:06d}.png", images[i].read_bytes()),
                                      (f"{i:06d}.txt", captions[i].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(out / f"{{000..{(len(images) - 1) // per_shard:03d}}}.tar")


def test_tar_shards_train_exactly_like_the_table(tiny_image_folder, tmp_path):
    spec = _write_shards(tiny_image_folder, tmp_path / "shards", per_shard=40)  # 3 shards, the last one short
    shards = vdata_pairs.pairs_dataset(spec)
    table = vdata_pairs.pairs_dataset(tiny_image_folder / "train_captions.tsv")
    assert len(shards.shards) == 3 and shards.captions == table.captions
    assert np.array_equal(np.asarray(shards.load_image(50)), np.asarray(table.load_image(50)))
    _train(tiny_image_folder, tmp_path / "table", epochs=1)
    _train(tiny_image_folder, tmp_path / "tar", epochs=1, train_data=spec, workers=2)
    a, b = _weights(tmp_path / "table"), _weights(tmp_path / "tar")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shard_errors_name_the_shard(tmp_path):
    with pytest.raises(vdata.DataError, match=r"2 of 2 shards do not exist, e\.g\. .*000\.tar"):
        vdata_pairs.pairs_dataset(str(tmp_path / "{000..001}.tar"))
    (tmp_path / "bad.tar").write_bytes(b"\x1f\x8b" + b"0" * 600)  # gzip magic: a compressed shard
    with pytest.raises(vdata.DataError, match=r"cannot read shard .*bad\.tar.*uncompressed"):
        vdata_pairs.pairs_dataset(str(tmp_path / "bad.tar"))


def test_siglip_trains_with_the_sigmoid_loss_and_evaluates(tiny_image_folder, tmp_path, monkeypatch):
    """siglip_tiny goes through the image-text task with vitfast.kernels.siglip_loss (the model's forward gives
    the bias too), starts at scale 10 and bias -10, saves a folder that `eval` reads and reproduces."""
    import vitfast.train.tasks as tasks

    calls = []
    real = tasks.siglip_loss
    monkeypatch.setattr(tasks, "siglip_loss", lambda *a, **k: calls.append(len(a)) or real(*a, **k))
    out = tmp_path / "run"
    metrics = _train(tiny_image_folder, out, model="siglip_tiny", epochs=1)
    assert calls and set(calls) == {4}
    assert metrics["val_logit_scale"] == pytest.approx(10.0, rel=0.05)
    assert metrics["val_logit_bias"] == pytest.approx(-10.0, abs=0.5)
    assert json.loads((out / "config.json").read_text())["family"] == "siglip"
    result = CliRunner().invoke(app, ["eval", "--model-dir", str(out), "--data-dir", str(tiny_image_folder),
                                      "--val-data", str(tiny_image_folder / "val_captions.tsv"),
                                      "--attn-backend", "sdpa", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    for key in ("zeroshot_top1", "image_to_text_R@1"):
        assert evaluated[key] == pytest.approx(metrics[f"val_{key}"]), key
