"""Distributed checkpoints (--fsdp, or --dcp with DDP): a run saved by two processes resumes on one and the
reverse, continuing to the weights of the unbroken run; a save killed before its COMPLETE marker leaves the
previous checkpoint as the one a resume takes; what a resume reads and refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from runs import assert_close_weights, one_process, torchrun
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app
from vitfast.train import state as saved_state


def _args(folder) -> list[str]:
    # 96 images: 6 steps of a global batch of 16 per epoch
    return ["train", "--data-dir", str(folder), "--model", "vit_micro_patch4_32", "--img-size", "16", "--epochs",
            "2", "--lr", "3e-3", "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend", "sdpa"]


def _checkpoints(output) -> list:
    return sorted((output / "train_state").iterdir())


def test_two_processes_resume_on_one_and_one_on_two(tiny_image_folder, tmp_path):
    args = _args(tiny_image_folder)
    # unbroken: two FSDP processes at batch 8, one plain process at batch 16 (the same global batch)
    torchrun([*args, "--batch-size", "8", "--fsdp", "--keep-checkpoints", "2"], tmp_path / "fsdp2")
    one_process([*args, "--batch-size", "16", "--dcp", "--keep-checkpoints", "2"], tmp_path / "one")
    assert_close_weights(tmp_path / "one", tmp_path / "fsdp2", atol=5e-5)
    saved = _checkpoints(tmp_path / "fsdp2")
    assert [p.name for p in saved] == ["000001-epoch1-step0", "000002-epoch2-step0"]
    assert sorted(p.name for p in saved[0].iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    assert {"COMPLETE", "trainer.pt", "rng-0.pt", "rng-1.pt", ".metadata"} <= {p.name for p in saved[0].iterdir()}

    # 2 → 1: the epoch-1 checkpoint of the FSDP pair, on one process (FSDP over a one-rank group)
    said = one_process([*args, "--batch-size", "8", "--fsdp", "--resume", str(saved[0])], tmp_path / "to_one")
    assert "resuming a run of 2 process(es) on 1: --batch-size 16" in said
    assert_close_weights(tmp_path / "fsdp2", tmp_path / "to_one", atol=2e-5)
    # 1 → 2: the epoch-1 checkpoint of the single process, on two DDP processes
    torchrun([*args, "--batch-size", "8", "--dcp", "--resume", str(_checkpoints(tmp_path / "one")[0])],
             tmp_path / "to_two")
    assert_close_weights(tmp_path / "one", tmp_path / "to_two", atol=2e-5)
    # every rank's RNG states came back: each rank wrote its own
    to_two = _checkpoints(tmp_path / "to_two")
    assert [p.name for p in to_two] == ["000002-epoch2-step0"]  # the serial goes on; --keep-checkpoints 1
    rngs = [torch.load(to_two[0] / f"rng-{r}.pt", weights_only=True)["torch"] for r in (0, 1)]
    assert rngs[0].shape == rngs[1].shape


_KILL_AT_SECOND_MARKER = """
import os, sys
import vitfast.train.state as state
real, calls = state._mark_complete, []
def mark(target, meta):
    calls.append(target)
    if len(calls) == 2:
        os._exit(137)  # as SIGKILL: every shard, the RNG files and trainer.pt written, the marker not
    real(target, meta)
state._mark_complete = mark
from vitfast.cli import app
app(sys.argv[1:], prog_name="vitfast")
"""


def test_a_save_killed_before_its_marker_leaves_the_previous_checkpoint(tiny_image_folder, tmp_path):
    args = [*_args(tiny_image_folder), "--batch-size", "16", "--dcp", "--output", str(tmp_path / "run")]
    # (torch's own thread count, as in this process, which runs the rest: the runs are compared exactly)
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_SECOND_MARKER, *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    first, half = _checkpoints(tmp_path / "run")
    assert (first / "COMPLETE").is_file() and not (half / "COMPLETE").is_file()
    assert (half / ".metadata").is_file()  # the half-written one has all its data but no marker

    latest = saved_state.find("latest", tmp_path / "run")
    assert latest.path == first and (latest.meta["epoch"], latest.meta["step_in_epoch"]) == (1, 0)
    refused = CliRunner().invoke(app, [*args, "--resume", str(half)])
    assert refused.exit_code != 0 and "is incomplete" in refused.output and "COMPLETE" in refused.output
    assert "Traceback" not in refused.output

    said = one_process([*args[:-2], "--resume", "latest"], tmp_path / "run")
    assert "resumed from latest at epoch 2, step 0" in said
    assert [p.name for p in _checkpoints(tmp_path / "run")] == ["000002-epoch2-step0"]  # the half one replaced
    one_process([*_args(tiny_image_folder), "--batch-size", "16"], tmp_path / "unbroken")
    assert_close_weights(tmp_path / "unbroken", tmp_path / "run", atol=0)


def test_switching_formats_and_what_a_resume_refuses(tiny_image_folder, tmp_path):
    run = tmp_path / "run"
    args = [*_args(tiny_image_folder), "--epochs", "1", "--batch-size", "16", "--output", str(run)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (run / "train_state.pt").is_file() and not (run / "train_state").exists()
    # a full state resumed with --dcp: read as before, saved distributed, the full file removed after
    result = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume", "latest", "--dcp"])
    assert result.exit_code == 0, result.output
    assert not (run / "train_state.pt").exists() and len(_checkpoints(run)) == 1
    # a distributed checkpoint resumed without --dcp: read, saved as one file, the folder removed after
    result = CliRunner().invoke(app, [*args, "--epochs", "3", "--resume", "latest"])
    assert result.exit_code == 0, result.output
    assert (run / "train_state.pt").is_file() and not (run / "train_state").exists()
    # the same number of processes: --batch-size must be repeated
    result = CliRunner().invoke(app, [*args, "--epochs", "4", "--resume", "latest", "--batch-size", "8"])
    assert result.exit_code != 0 and "--batch-size was 16 in the saved run and is 8 now" in result.output
    # --overwrite removes both kinds
    result = CliRunner().invoke(app, [*args, "--dcp", "--overwrite"])
    assert result.exit_code == 0 and len(_checkpoints(run)) == 1 and not (run / "train_state.pt").exists()
    fresh = CliRunner().invoke(app, args)
    assert fresh.exit_code != 0 and "train_state/" in fresh.output and "--resume latest" in fresh.output


def test_a_global_batch_the_processes_cannot_split_is_refused():
    from vitfast.train.loop import TrainConfig, TrainUsageError, _resume_batch_size

    saved = {"config": {"batch_size": 8}, "world": 2}
    cfg = TrainConfig(batch_size=8)
    with pytest.raises(TrainUsageError, match="global batch is 16 .* which 3 processes cannot split evenly"):
        _resume_batch_size(saved, cfg, 3, print)
    assert _resume_batch_size(saved, cfg, 4, lambda m: None) == 4


def test_resume_of_a_missing_or_corrupt_distributed_checkpoint(tmp_path):
    with pytest.raises(vitfast.checkpoint.CheckpointError, match="no training state"):
        saved_state.find("latest", tmp_path)
    folder = tmp_path / "train_state" / "000001-epoch1-step0"
    folder.mkdir(parents=True)
    (folder / "COMPLETE").write_text("{}")
    (folder / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(vitfast.checkpoint.CheckpointError, match="It may be corrupt"):
        saved_state.find("latest", tmp_path)
