"""Flags refused when the command line is parsed (issue 16): each bad value or broken rule between flags
exits 2 with one ``error:`` line naming the flag, before any data is read or anything is written; the
library refuses what the flags would have passed to it; `--help` and usage errors never import torch;
`eval --json` is strict JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import refused, snapshot

# (arguments, the flag the one error line names). Each runs in a folder holding a saved run, which must
# be left as it was.
BAD_FLAGS = [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),  # was a ZeroDivisionError after a whole epoch
    (["train", "--lr", "-1e-3"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--min-lr", "-1e-5"], "--min-lr"),
    (["train", "--lr", "1e-3", "--min-lr", "1e6"], "--min-lr"),  # was a NaN model replacing a good one
    (["train", "--weight-decay", "-0.05"], "--weight-decay"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--clip-grad", "-1"], "--clip-grad"),  # reversed the gradient: loss 1.1 -> 25, exit 0
    (["train", "--clip-grad", "0"], "--clip-grad"),
    (["train", "--drop-path", "2"], "--drop-path"),  # was a traceback in the model
    (["train", "--drop-path", "1"], "--drop-path"),
    (["train", "--drop-path", "-0.1"], "--drop-path"),
    (["train", "--img-size", "0"], "--img-size"),  # was reported as an unreadable image
    (["train", "--grad-accum-steps", "0"], "--grad-accum-steps"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--csv-separator", ""], "--csv-separator"),  # was a traceback in the csv module
    (["train", "--csv-separator", ";;"], "--csv-separator"),
    (["train", "--csv-separator", "\\x"], "--csv-separator"),  # an escape that does not decode
    (["train", "--epochs", "ten"], "--epochs"),
    (["train", "--attn-backend", "trition"], "--attn-backend"),
    (["train", "--no-such-flag"], "--no-such-flag"),
    (["eval", "--model-dir", "run", "--batch-size", "0"], "--batch-size"),
    (["eval", "--model-dir", "run", "--csv-separator", ""], "--csv-separator"),
    (["eval"], "--model-dir"),  # missing
    (["convert", "run", "out", "--max-shard-size", "0GB"], "--max-shard-size"),
    (["convert", "run", "out", "--max-shard-size", "lots"], "--max-shard-size"),
    (["convert", "run"], "dst"),  # missing argument
    (["bench", "window", "--window", "7", "--shift", "9"], "--shift"),
    (["bench", "attention", "--rep", "0"], "--rep"),
    (["bench", "model", "--img-size", "0"], "--img-size"),
    (["nosuchcommand"], "nosuchcommand"),
]


@pytest.fixture
def saved_run(tmp_path):
    """A folder holding what a run left (a model folder, metrics), as a user's working folder would."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"family": "vit"}\n')
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n')
    return tmp_path


@pytest.mark.parametrize("args, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_is_refused_when_parsed(vitfast, saved_run, args, flag):
    before = snapshot(saved_run)
    result = vitfast(*args, "--output", "run", cwd=saved_run) if args[0] == "train" else vitfast(*args, cwd=saved_run)
    refused(result, 2, flag, "--help")
    assert snapshot(saved_run) == before
    assert "╭" not in result.stderr  # click's boxed panel is gone


@pytest.mark.parametrize("window, shift", [(7, 9), (7, 7), (7, -1), ((7, 7), (3, 7))])
def test_window_attention_refuses_a_shift_not_below_the_window(window, shift):
    import torch

    from vitfast.kernels import window_attention

    qkv, table = torch.randn(1, 14, 14, 3 * 8), torch.zeros(13 * 13, 2)
    with pytest.raises(ValueError, match="shift_size .* less than window_size") as info:
        window_attention(qkv, table, num_heads=2, window_size=window, shift_size=shift, backend="eager")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "swin_micro_patch2_window4_32"])
def test_vit_and_swin_refuse_a_size_their_patch_does_not_divide_and_a_drop_path_of_1_or_more(name):
    import torch

    import vitfast

    with pytest.raises(ValueError, match="img_size 31 is not a multiple of patch_size"):
        vitfast.create_model(name, img_size=31)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\); got 2"):
        vitfast.create_model(name, drop_path_rate=2.0)
    model = vitfast.create_model(name, attn_backend="sdpa").eval()
    with pytest.raises(ValueError, match=r"image size 31×31 is not a multiple of the patch size"):
        model(torch.randn(1, 3, 31, 31))
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)  # another multiple of the patch runs


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["train", "--lr", "0"]])
def test_help_and_usage_errors_answer_without_torch(args):
    """`vitfast --help` and a usage error never import torch (2.6 s on a 2-core CPU), so they answer in a
    fraction of a second."""
    code = ("import runpy, sys\nsys.argv = ['vitfast', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('vitfast', run_name='__main__')\n"
            "except SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
            "print('torch' in sys.modules, code, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert out.stderr.splitlines()[-1] == f"False {2 if '--lr' in args else 0}", out.stderr
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitfast", *args], capture_output=True, timeout=60)
    assert time.perf_counter() - start < 1.5  # about 0.25 s measured; torch alone takes 2 s to import


def test_eval_json_writes_null_for_nan(vitfast, tiny_image_folder, tmp_path):
    """A diverged model's loss is NaN: `eval --json` must still be strict JSON (bare NaN is not)."""
    import torch

    import vitfast as vf

    model = vf.create_model("vit_micro_patch4_32", num_classes=4, img_size=16)
    with torch.no_grad():  # finite weights whose logits overflow: every logit +inf, the loss inf - inf
        model.fc_norm.bias.fill_(1.0)
        model.head.weight.fill_(3e38)
    vf.save(model, tmp_path / "nan_model")
    result = vitfast("eval", "--model-dir", str(tmp_path / "nan_model"), "--data-dir", str(tiny_image_folder),
                     "--workers", "0", "--attn-backend", "sdpa", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    metrics = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name} in --json"))
    assert metrics["loss"] is None
    assert metrics["images"] == 32
