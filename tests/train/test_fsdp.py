"""--fsdp (FSDP2's fully_shard over torchrun's processes) trains to the weights DDP trains to, with the same
data, on two gloo processes: ViT, Swin, and CLIP (whose 0-dim logit_scale FSDP cannot shard) with gradient
accumulation and clipping, through a resume."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app


def _torchrun(args: list[str], output) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vitfast",
         *args, "--output", str(output)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_close_weights(a, b, atol: float) -> None:
    wa, wb = vitfast.load(a).state_dict(), vitfast.load(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize("model", ["vit_micro_patch4_32", "swin_micro_patch2_window4_32"])
def test_fsdp_trains_vit_and_swin_to_ddps_weights(tiny_image_folder, tmp_path, model):
    args = ["train", "--data-dir", str(tiny_image_folder), "--model", model, "--img-size", "16",
            "--epochs", "1", "--lr", "3e-3", "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend", "sdpa",
            "--batch-size", "8", "--quiet"]
    _torchrun(args, tmp_path / "ddp")
    _torchrun([*args, "--fsdp"], tmp_path / "fsdp")
    _assert_close_weights(tmp_path / "ddp", tmp_path / "fsdp", atol=1e-5)
    saved = (tmp_path / "fsdp" / "metrics.jsonl").read_text(), (tmp_path / "ddp" / "metrics.jsonl").read_text()
    assert saved[0].split('"lr"')[0] == saved[1].split('"lr"')[0]  # the same training loss


def test_fsdp_clip_with_accumulation_clipping_and_resume_matches_ddp(tiny_image_folder, tmp_path):
    folder = tiny_image_folder
    args = ["train", "--data-dir", str(folder), "--train-data", str(folder / "train_captions.tsv"),
            "--val-data", str(folder / "val_captions.tsv"), "--model", "clip_tiny", "--img-size", "16",
            "--epochs", "1", "--lr", "3e-3", "--warmup-epochs", "0.5", "--workers", "0", "--attn-backend", "sdpa",
            "--batch-size", "8", "--grad-accum-steps", "2", "--clip-grad", "0.5", "--quiet"]
    _torchrun(args, tmp_path / "ddp")
    _torchrun([*args, "--fsdp"], tmp_path / "fsdp")
    # accumulation order and the clipping norm's summation differ in rounding only
    _assert_close_weights(tmp_path / "ddp", tmp_path / "fsdp", atol=2e-4)
    assert vitfast.load(tmp_path / "fsdp").logit_scale.item() == vitfast.load(tmp_path / "ddp").logit_scale.item()
    more = [a if a != "1" or i == 0 or args[i - 1] != "--epochs" else "2" for i, a in enumerate(args)]
    _torchrun([*more, "--resume", "latest"], tmp_path / "ddp")
    _torchrun([*more, "--fsdp", "--resume", "latest"], tmp_path / "fsdp")
    _assert_close_weights(tmp_path / "ddp", tmp_path / "fsdp", atol=5e-4)


def test_fsdp_needs_torchrun_and_a_resume_must_repeat_it(tiny_image_folder, tmp_path):
    args = ["train", "--data-dir", str(tiny_image_folder), "--model", "vit_micro_patch4_32", "--img-size", "16",
            "--epochs", "1", "--workers", "0", "--batch-size", "8", "--quiet", "--output", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--fsdp"])
    assert result.exit_code != 0 and "torchrun --nproc_per_node N" in result.output
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume", "latest", "--fsdp"])
    assert again.exit_code != 0 and "--fsdp was False in the saved run" in again.output
