"""Issue 16, training: what was saved is never lost or made worse. A diverging epoch stops without
saving; the best epoch is kept in best/ beside the last; a folder holding another run is refused
unless --resume or --overwrite says what to do; SIGTERM and SIGINT, in training or in validation,
save a resumable checkpoint and print the command that resumes it; a resume refuses flags that
change what the saved state means; --lr 0 and an all-unreadable batch do not crash.

Most cases run the CLI in this process (CliRunner, so that monkeypatch can poison a run); the signal
cases run it as a user would, in its own process with a DataLoader worker.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import Result, refused, snapshot
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app
from vitfast.data import write_shapes_dataset
from vitfast.train import STATE_NAME, TrainConfig, TrainUsageError, train
from vitfast.train import tasks as vtasks
from vitfast.train.loop import PHASE_FILE_ENV

STEPS_PER_EPOCH = 12  # 96 train images of the tiny folder at batch 8


def _flags(data, *, batch: int = 8, workers: int = 0) -> list[str]:
    return ["--data-dir", str(data), "--model", "vit_micro_patch4_32", "--img-size", "16", "-b", str(batch),
            "--workers", str(workers), "--attn-backend", "sdpa", "--lr", "3e-3", "--warmup-epochs", "0.5", "--quiet"]


def _cli(*args: str) -> Result:
    result = CliRunner().invoke(app, ["train", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def _epochs(out) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_epoch(tiny_image_folder, tmp_path_factory):
    """A finished 1-epoch run of the tiny ViT (copy it before changing it)."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    result = _cli(*_flags(tiny_image_folder), "--epochs", "1", "--output", str(out))
    assert result.code == 0, result.stderr
    return out


@pytest.fixture
def run_copy(one_epoch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    return out


def _poison_val_loss(monkeypatch):
    real = vtasks.evaluate
    monkeypatch.setattr(vtasks, "evaluate", lambda *a, **kw: {**real(*a, **kw), "loss": math.nan})


def _poison_weights_at(step: int, then=lambda: None):
    def arm(monkeypatch):
        real, calls = torch.optim.AdamW.step, {"n": 0}

        def poisoned(self, *a, **kw):
            result = real(self, *a, **kw)
            calls["n"] += 1
            if calls["n"] == step:
                self.param_groups[0]["params"][0].data.fill_(math.nan)
                then()
            return result

        monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    return arm


# (what goes wrong in epoch 2 of a resumed run, words the one error line must hold)
DIVERGING = [
    pytest.param(_poison_val_loss, ("epoch 2", "val loss nan", "last good checkpoint", "epoch 1", "--lr"),
                 id="val-loss-nan"),
    pytest.param(_poison_weights_at(STEPS_PER_EPOCH), ("epoch 2", "weight tensor", "last good checkpoint", "--lr"),
                 id="weights-nan-after-the-last-step"),
    pytest.param(_poison_weights_at(5, lambda: os.kill(os.getpid(), signal.SIGINT)),
                 ("sigint", "not finite", "nothing was saved", "last good checkpoint"), id="ctrl-c-with-nan-weights"),
]


@pytest.mark.parametrize("poison, words", DIVERGING)
def test_a_diverging_epoch_saves_nothing_and_keeps_the_last_good_files(poison, words, tiny_image_folder, run_copy,
                                                                        monkeypatch):
    before = snapshot(run_copy)
    poison(monkeypatch)
    result = _cli(*_flags(tiny_image_folder), "--epochs", "2", "--output", str(run_copy), "--resume", "latest")
    refused(result, 1, str(run_copy), *words)
    assert snapshot(run_copy) == before


def test_best_is_kept_beside_the_last_and_both_are_named(tiny_image_folder, tmp_path, monkeypatch):
    real, weights = vtasks.evaluate, []

    def epoch_1_scores_best(model, *a, **kw):
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return {**real(model, *a, **kw), "top1": 90.0 if len(weights) == 1 else 10.0}

    monkeypatch.setattr(vtasks, "evaluate", epoch_1_scores_best)
    monkeypatch.setenv("COLUMNS", "400")  # the log lines unwrapped
    out = tmp_path / "run"
    flags = [flag for flag in _flags(tiny_image_folder) if flag != "--quiet"]
    result = _cli(*flags, "--epochs", "2", "--output", str(out))
    assert result.code == 0, result.stderr
    done = [line for line in result.stderr.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and "(2, val top-1 10.00%" in done[0] and f"in {out};" in done[0], result.stderr
    assert "(epoch 1, val top-1 90.00%" in done[0] and f"in {out / 'best'}" in done[0], result.stderr
    best = vitfast.load(out / "best").state_dict()
    assert all(torch.equal(best[k], weights[0][k]) for k in best)
    assert not all(torch.equal(best[k], v) for k, v in vitfast.load(out).state_dict().items())
    for folder in (out, out / "best"):
        config = json.loads((folder / "config.json").read_text())
        assert config["class_names"] == ["checker", "circle", "hstripes", "square"]
    for line in (out / "metrics.jsonl").read_text().splitlines():  # strict JSON: no bare NaN
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    monkeypatch.undo()
    evaluated = CliRunner().invoke(app, ["eval", "--model-dir", str(out / "best"), "--data-dir",
                                         str(tiny_image_folder), "--workers", "0", "--json"])
    assert evaluated.exit_code == 0, evaluated.output


# (extra flags for a fresh run into a folder holding a finished run, expected exit code, words of the refusal)
FOLDER_HOLDING_A_RUN = [
    pytest.param([], 2, ("already holds a training run", "--resume", "--overwrite", "--output"), id="refused"),
    pytest.param(["--overwrite", "--resume", "latest"], 2, ("--resume", "--overwrite"), id="both-refused"),
    pytest.param(["--overwrite", "--seed", "7"], 0, (), id="overwrite"),
]


@pytest.mark.parametrize("extra, code, words", FOLDER_HOLDING_A_RUN)
def test_a_folder_holding_a_run_is_replaced_only_when_asked(extra, code, words, tiny_image_folder, run_copy):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "best" / "notes.txt").write_text("mine too")
    before = snapshot(run_copy)
    result = _cli(*_flags(tiny_image_folder), "--epochs", "1", "--output", str(run_copy), *extra)
    if code:
        refused(result, code, *words)
        assert snapshot(run_copy) == before
        return
    assert result.code == 0, result.stderr
    after = snapshot(run_copy)
    assert after["notes.txt"] == before["notes.txt"] and after["best/notes.txt"] == before["best/notes.txt"]
    assert _epochs(run_copy) == [1]  # the old run's line is gone, not mixed in
    assert after["model.safetensors"] != before["model.safetensors"]  # another seed, another model


# (flags of a resume of the finished 1-epoch run, expected exit code, words of the one line)
RESUME_FLAGS = [
    pytest.param(["--lr", "1e-3"], 2, ("--lr", "0.003", "0.001", "--overwrite"), id="lr"),
    pytest.param(["--min-lr", "1e-6"], 2, ("--min-lr",), id="min-lr"),
    pytest.param(["-b", "4"], 2, ("--batch-size", "8", "4"), id="batch-size"),
    pytest.param(["--img-size", "32"], 2, ("--img-size",), id="img-size"),
    pytest.param(["--epochs", "1"], 2, ("finished 1 epochs", "--epochs above 1"), id="nothing-left"),
    pytest.param(["--epochs", "2"], 0, ("warning: --epochs", "re-planned over 2 epochs"), id="more-epochs-warned"),
]


@pytest.mark.parametrize("changed, code, words", RESUME_FLAGS)
def test_resume_refuses_or_explains_each_changed_flag(changed, code, words, tiny_image_folder, run_copy,
                                                      monkeypatch):
    before = snapshot(run_copy)
    flags = _flags(tiny_image_folder)
    for flag, value in zip(changed[::2], changed[1::2]):
        if flag in flags:
            flags[flags.index(flag) + 1] = value
        else:
            flags += [flag, value]
    monkeypatch.setenv("COLUMNS", "400")
    result = _cli(*[f for f in flags if f != "--quiet"], "--output", str(run_copy), "--resume", "latest",
                  *([] if "--epochs" in changed else ["--epochs", "2"]))
    if code:
        refused(result, code, *words)
        assert snapshot(run_copy) == before
        return
    assert result.code == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(w in warnings[0] for w in words), result.stderr
    assert _epochs(run_copy) == [1, 2]


# The library refuses what the command line refuses, before any data is read (the data folder here
# does not exist, so a check that came later would fail on it instead).
LIBRARY_RULES = [
    (dict(lr=0.0), "--lr"), (dict(lr=-1e-3), "--lr"), (dict(lr=math.nan), "--lr"),
    (dict(lr=1e-3, min_lr=1e-2), "--min-lr"), (dict(min_lr=-1.0), "--min-lr"),
    (dict(weight_decay=-0.1), "--weight-decay"), (dict(warmup_epochs=-1.0), "--warmup-epochs"),
    (dict(clip_grad=-1.0), "--clip-grad"), (dict(clip_grad=0.0), "--clip-grad"), (dict(drop_path=2.0), "--drop-path"),
    (dict(epochs=0), "--epochs"), (dict(batch_size=0), "--batch-size"), (dict(grad_accum_steps=0), "--grad-accum"),
    (dict(workers=-1), "--workers"), (dict(img_size=0), "--img-size"), (dict(csv_separator=""), "--csv-separator"),
]


@pytest.mark.parametrize("fields, flag", LIBRARY_RULES, ids=lambda x: str(x))
def test_the_library_refuses_bad_settings_before_any_data(fields, flag, tmp_path):
    with pytest.raises(TrainUsageError, match=flag):
        train(TrainConfig(**fields, data_dir=str(tmp_path / "nothing"), output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_a_batch_of_only_unreadable_images_is_skipped(tiny_image_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_image_folder, data)
    (data / "train" / "circle" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # batch 1: the bad image is a batch of its own
    result = _cli(*_flags(data, batch=1), "--epochs", "1", "--skip-bad-images", "--output", str(tmp_path / "o"))
    assert result.code == 0, result.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.jsonl").read_text())
    assert metrics["bad_images_skipped"] == 1 and math.isfinite(metrics["train_loss"])


@pytest.fixture(scope="module")
def long_validation(tmp_path_factory):
    """Few train and many val images, so that validation lasts long enough to be interrupted."""
    return write_shapes_dataset(tmp_path_factory.mktemp("long-val"), per_class={"train": 16, "val": 64},
                                classes=("circle", "square", "hstripes", "checker"), size=16)


# (signal, the phase (PHASE_FILE_ENV) to send it in, exit code)
SIGNALS = [
    pytest.param(signal.SIGTERM, "train 2", 143, id="sigterm-in-training"),
    pytest.param(signal.SIGINT, "val 1", 130, id="sigint-in-validation"),
]


@pytest.mark.parametrize("signum, phase, code", SIGNALS)
def test_a_signal_saves_and_prints_the_resume_command(signum, phase, code, long_validation, tmp_path):
    out, phase_file = tmp_path / "run", tmp_path / "phase"
    flags = [*_flags(long_validation, batch=2, workers=1), "--epochs", "2", "--output", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "COLUMNS": "300", PHASE_FILE_ENV: str(phase_file)})
    proc = subprocess.Popen([sys.executable, "-m", "vitfast", "train", *flags], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (phase_file.is_file() and phase_file.read_text() == phase):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    time.sleep(0.1)  # the phase's DataLoader worker has started (the phase lasts about a second)
    os.killpg(proc.pid, signum)  # to the process group, DataLoader worker included: as Ctrl-C, `timeout`, SLURM
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in stdout + stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(signal.Signals(signum).name)]
    assert len(lines) == 1 and "saved a checkpoint" in lines[0], stderr
    state = torch.load(out / STATE_NAME, weights_only=True)
    steps = 32  # 64 train images at batch 2
    if phase == "val 1":  # validation was cut short: resume re-runs it, with the epoch's training stats
        assert (state["epoch"], state["step_in_epoch"]) == (0, steps) and "pending_stats" in state
    else:  # the step in flight finished first
        assert state["epoch"] == 1 and 0 < state["step_in_epoch"] <= steps
    command = shlex.split(lines[0].split("continue with: ")[1])
    assert command[:2] == ["vitfast", "train"] and command[-2:] == ["--resume", "latest"]
    resumed = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(out) == [1, 2]
