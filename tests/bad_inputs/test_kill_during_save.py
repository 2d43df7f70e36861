"""Issue 16, faults: a process killed (SIGKILL, no handler runs) in the middle of writing a checkpoint
leaves the previous checkpoint byte-identical and loadable, and `--resume latest` finishes the run.

The kill is placed exactly, not raced: the run's own process replaces the writer of one file (the
first safetensors file, the run folder's, or the training state) with one that writes part of it
into the staged file and then SIGKILLs itself.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import run_vitfast, snapshot

FLAGS = ["--model", "vit_micro_patch4_32", "--img-size", "16", "-b", "8", "--workers", "0", "--attn-backend",
         "sdpa", "--lr", "3e-3", "--warmup-epochs", "0.5", "--quiet"]

KILLER = textwrap.dedent("""
    import os, signal, sys
    import safetensors.torch
    import torch
    from vitfast.cli import app

    target, folder = sys.argv[1], sys.argv[2]  # which writer; "" or the folder whose file to kill in
    calls = {"n": 0}

    def killed_midway(write):
        def writer(obj, path, *args, **kwargs):
            calls["n"] += 1
            if (folder and os.path.dirname(os.fspath(path)) == folder) or (not folder and calls["n"] == 1):
                with open(path, "wb") as f:  # half a file in the staged path, then gone without a word
                    f.write(b"\\0" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return write(obj, path, *args, **kwargs)
        return writer

    if target == "weights":
        safetensors.torch.save_file = killed_midway(safetensors.torch.save_file)
    else:
        torch.save = killed_midway(torch.save)
    app(sys.argv[3:], prog_name="vitfast")
""")


def _visible(snap: dict) -> dict:
    """Files a user sees (staged writes are hidden: their names start with a dot)."""
    return {k: v for k, v in snap.items() if not any(part.startswith(".") for part in k.split("/"))}


@pytest.fixture(scope="module")
def one_epoch(tiny_image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "run"
    result = run_vitfast("train", *FLAGS, "--data-dir", str(tiny_image_folder), "--epochs", "1", "--output",
                         str(out), cwd=out.parent)
    assert result.code == 0, result.stderr
    return out


# Epoch 2's save writes best/ when epoch 2 is the best (weights first), then the run folder's weights,
# then the training state: killed in the first weights written, in the run folder's, and in the state.
@pytest.mark.parametrize("target, in_run_folder", [("weights", False), ("weights", True), ("state", False)],
                         ids=["first-weights", "run-folder-weights", "train-state"])
def test_kill_during_save_keeps_the_previous_checkpoint(target, in_run_folder, one_epoch, tiny_image_folder,
                                                        tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    before = snapshot(out)
    args = ["train", *FLAGS, "--data-dir", str(tiny_image_folder), "--epochs", "2", "--output", str(out),
            "--resume", "latest"]
    folder = str(out) if in_run_folder else ""
    proc = subprocess.run([sys.executable, "-c", KILLER, target, folder, *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    after = _visible(snapshot(out))
    # Files written before the killed one may be epoch 2's (best/ is complete before the run folder is
    # touched); none is half-written, and what the killed write would have replaced is unchanged.
    changed = {k for k in before if after.get(k) != before[k]}
    if target == "weights":  # nothing of the run folder changed; best/ only if it was complete before the kill
        assert all(k.startswith("best/") for k in changed) and (in_run_folder or not changed), changed
    evaluated = run_vitfast("eval", "--model-dir", str(out), "--data-dir", str(tiny_image_folder), "--workers", "0",
                            "--json", cwd=tmp_path)
    assert evaluated.code == 0 and "Traceback" not in evaluated.stderr, evaluated.stderr
    resumed = run_vitfast(*args, cwd=tmp_path)
    assert resumed.code == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert (out / "metrics.jsonl").read_text().count("\n") == 2
