"""--fsdp (FSDP2's fully_shard over torchrun's processes) trains to the weights one process trains to at the
same global batch, with the same data, on two gloo processes: Swin, and CLIP (whose 0-dim logit_scale FSDP
cannot shard) with gradient accumulation and clipping, through a resume on one process from its distributed
checkpoint. ViT's turn is in test_distributed_checkpoint.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs import assert_close_weights, one_process, torchrun
from typer.testing import CliRunner

from vitfast.cli import app


def losses(folder) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_trains_swin_to_the_weights_of_one_process(tiny_image_folder, tmp_path):
    args = ["train", "--data-dir", str(tiny_image_folder), "--model", "swin_micro_patch2_window4_32", "--img-size",
            "16", "--epochs", "1", "--lr", "3e-3", "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend",
            "sdpa", "--drop-path", "0", "--quiet"]  # (stochastic depth draws per process: off)
    torchrun([*args, "--batch-size", "8", "--fsdp"], tmp_path / "fsdp")
    one_process([*args, "--batch-size", "16"], tmp_path / "one")
    assert_close_weights(tmp_path / "one", tmp_path / "fsdp", atol=1e-4)  # batch 16 vs 8 + 8: rounding
    assert abs(losses(tmp_path / "fsdp")[0] - losses(tmp_path / "one")[0]) < 1e-5


def test_fsdp_clip_with_accumulation_clipping_and_a_resume_on_one_process(tiny_image_folder, tmp_path):
    folder = tiny_image_folder
    args = ["train", "--data-dir", str(folder), "--train-data", str(folder / "train_captions.tsv"),
            "--val-data", str(folder / "val_captions.tsv"), "--model", "clip_tiny", "--img-size", "16",
            "--epochs", "2", "--lr", "3e-3", "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend", "sdpa",
            "--grad-accum-steps", "2", "--clip-grad", "0.5"]
    torchrun([*args, "--batch-size", "8", "--fsdp", "--keep-checkpoints", "2"], tmp_path / "fsdp")
    one_process([*args, "--batch-size", "16"], tmp_path / "one")
    # accumulation order and the clipping norm's summation differ in rounding only
    assert_close_weights(tmp_path / "one", tmp_path / "fsdp", atol=2e-4)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    # the epoch-1 checkpoint of the two-process run, resumed by one process (--fsdp on a one-rank group):
    # the global batch of 2 × 8 is kept (the flags' --batch-size 8 becomes 16), so epoch 2 sees the same data
    first = sorted((tmp_path / "fsdp" / "train_state").iterdir())[0]
    said = one_process([*args, "--batch-size", "8", "--fsdp", "--resume", str(first)], tmp_path / "resumed")
    assert "--batch-size 16 per process keeps its global batch of 16" in said
    assert_close_weights(tmp_path / "fsdp", tmp_path / "resumed", atol=2e-4)


def test_a_resume_must_repeat_fsdp(tiny_image_folder, tmp_path):
    args = ["train", "--data-dir", str(tiny_image_folder), "--model", "vit_micro_patch4_32", "--img-size", "16",
            "--epochs", "1", "--workers", "0", "--batch-size", "8", "--quiet", "--output", str(tmp_path / "run")]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume", "latest", "--fsdp"])
    assert again.exit_code != 0 and "--fsdp was False in the saved run and is True now" in again.output
    assert "leave --fsdp out" in again.output


def test_the_memory_benchmark_counts_the_sharded_state(tmp_path):
    """benchmarks/fsdp_memory.py (the per-rank peak figures for 1, 2, 4 processes) on one process: its state
    is the parameters, their gradients and AdamW's two moments, 16 bytes a parameter in float32."""
    script = Path(__file__).parents[2] / "benchmarks" / "fsdp_memory.py"
    result = subprocess.run([sys.executable, str(script), "--model", "vit_micro_patch4_32", "--img-size", "16",
                             "--batch-size", "2", "--steps", "2", "--json", str(tmp_path / "m.jsonl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads((tmp_path / "m.jsonl").read_text())
    (rank,) = line["ranks"]
    params_mib = line["params_m"] * 1e6 * 4 / 2**20
    assert rank["state_mib"] == pytest.approx(4 * params_mib, rel=0.01)
    assert rank["alive_at_train_start_mib"] == pytest.approx(params_mib, rel=0.05)
    assert rank["state_mib"] < rank["train_peak_mib"] < 10 * rank["state_mib"]
