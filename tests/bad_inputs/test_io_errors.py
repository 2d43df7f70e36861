"""OS and data errors in train, eval and convert: one ``error:`` line naming the path and the fix, no
traceback, nothing that existed before changed; convert --force replaces only a model folder; what
vitfast writes follows the umask; stale staging entries of a killed run are cleaned up.

The cases run the CLI in its own process (the harness in conftest.py); the faults a subprocess cannot
get (a full disk, a read-only file system when running as root) are injected in-process.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import Result, refused, snapshot
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app
from vitfast.files import STALE_AFTER_S, atomic_write
from vitfast.data import DataError
from vitfast.pairs import CsvFormat, read_pairs
from vitfast.tokenizer import train_bpe

ROOT = os.geteuid() == 0  # chmod does not stop root: those cases inject the error instead
DEAD_PID = 4_194_305  # above Linux's largest pid_max, so never a live process
TRAIN = ("train", "--model", "vit_micro_patch4_32", "--img-size", "16", "--epochs", "1", "-b", "32",
         "--workers", "0", "--attn-backend", "sdpa", "--quiet")


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_image_folder):
    """Folders the cases copy: a 4-class ViT, a CLIP with and without tokenizer.json, a timm checkpoint,
    and the tiny image folder."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vitfast.save(vitfast.create_model("vit_micro_patch4_32", num_classes=4, img_size=16), root / "vit")
    tokenizer = train_bpe(read_pairs(tiny_image_folder / "train_captions.tsv")[1], vocab_size=600, context_length=24)
    vitfast.save(vitfast.create_model("clip_tiny", image_size=16, vocab_size=tokenizer.vocab_size,
                                      eot_token_id=tokenizer.eot_token_id, context_length=24), root / "clip")
    shutil.copytree(root / "clip", root / "clip_no_tokenizer")
    tokenizer.save(root / "clip")
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).state_dict(), root / "a.pth")
    shutil.copytree(tiny_image_folder, root / "data")
    return root


def _copy(models: Path, tmp: Path, *names: str) -> None:
    for name in names:
        (shutil.copytree if (models / name).is_dir() else shutil.copy)(models / name, tmp / name)


def _table(tmp: Path, rows: list[tuple[str, str]], encoding: str = "utf-8", name: str = "pairs.tsv") -> Path:
    body = "filepath\ttitle\n" + "".join(f"{image}\t{caption}\n" for image, caption in rows)
    (tmp / name).write_bytes(body.encode(encoding))
    return tmp / name


def _val_images(n: int = 4) -> list[str]:
    return [f"data/val/circle/{i:05d}.png" for i in range(n)]


@dataclass
class Case:
    id: str
    setup: Callable[[Path], None]  # given the scratch folder, after the model and data copies
    args: tuple[str, ...]  # "{tmp}" stands for the scratch folder
    code: int
    words: tuple[str, ...] = ()  # in the one error line (refusals only)
    copies: tuple[str, ...] = ("data",)
    changed: tuple[str, ...] = ()  # top-level names the command may write (everything else stays as it was)
    check: Callable[[Path, Result], None] | None = None
    skip: str | None = None


def _file(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text("not a folder\n")


def _read_only(tmp: Path) -> None:
    (tmp / "locked").mkdir()
    (tmp / "locked" / "keep.txt").write_text("mine\n")
    (tmp / "locked").chmod(0o500)


def _notes(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("my notes\n")
    _copy(tmp, tmp / "out", "vit")  # a training run inside it


def _modes(tmp: Path, out: str) -> None:
    """Everything under tmp/out: files 0644, folders 0755 (umask 022)."""
    paths = [tmp / out, *(tmp / out).rglob("*")]
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_file()} == {"0o644"}
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_dir()} == {"0o755"}


def _previous_convert(tmp: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp / "a.pth"), str(tmp / "out"), "--no-verify"])
    assert result.exit_code == 0, result.output
    (tmp / "out" / "model.safetensors").write_bytes(b"to be replaced")


def _replaced(tmp: Path, result: Result) -> None:
    assert vitfast.load(tmp / "out").config.num_classes == 3
    assert sorted(p.name for p in tmp.iterdir()) == ["a.pth", "data", "out"]
    _modes(tmp, "out")


def _stale(tmp: Path) -> None:
    old = time.time() - 2 * STALE_AFTER_S
    for name, age in [(f".out.{DEAD_PID}.abc.staging", old), (f".out.{DEAD_PID}.new.staging", None),
                      (f".out.{os.getpid()}.live.staging", old)]:
        (tmp / name).mkdir()
        (tmp / name / "model.safetensors").write_bytes(b"half")
        if age is not None:
            os.utime(tmp / name / "model.safetensors", (age, age))
            os.utime(tmp / name, (age, age))
    (tmp / f".out.{DEAD_PID}.xyz.tmp").write_bytes(b"half")
    os.utime(tmp / f".out.{DEAD_PID}.xyz.tmp", (old, old))
    (tmp / ".out.notes").write_text("not vitfast's\n")


def _stale_cleaned(tmp: Path, result: Result) -> None:
    assert {p.name for p in tmp.iterdir() if p.name.startswith(".")} == {
        f".out.{DEAD_PID}.new.staging", f".out.{os.getpid()}.live.staging", ".out.notes"}


def _empty_captions_warned(tmp: Path, result: Result) -> None:
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "4 of 4 captions" in warnings[0] and "pairs.tsv" in warnings[0], result.stderr


def _bad_image(tmp: Path) -> None:
    (tmp / "data" / "val" / "circle" / "00003.png").write_bytes(b"\x89PNG truncated")


def _ok(tmp: Path, result: Result) -> None:
    assert "Traceback" not in result.stderr and not result.error_lines, result.stderr


CLIP_EVAL = ("eval", "--model-dir", "{tmp}/clip", "--val-data", "{tmp}/pairs.tsv", "--workers", "0", "-b", "4")

CASES = [
    Case("train output is a file", _file("out"), (*TRAIN, "--data-dir", "{tmp}/data", "--output", "{tmp}/out"),
         1, ("out", "file", "--output")),
    Case("train output's parent is a file", _file("parent"),
         (*TRAIN, "--data-dir", "{tmp}/data", "--output", "{tmp}/parent/out"), 1, ("parent", "--output")),
    Case("train output under a read-only folder", _read_only,
         (*TRAIN, "--data-dir", "{tmp}/data", "--output", "{tmp}/locked/out"), 1, ("permission denied", "locked"),
         skip="chmod does not stop root" if ROOT else None),
    Case("train files follow the umask", lambda tmp: None,
         (*TRAIN, "--data-dir", "{tmp}/data", "--output", "{tmp}/out"), 0, changed=("out",),
         check=lambda tmp, result: _modes(tmp, "out")),
    Case("convert DST is a file", _file("out"), ("convert", "{tmp}/a.pth", "{tmp}/out", "--force", "--no-verify"),
         1, ("out", "not a folder", "dst"), copies=("a.pth",)),
    Case("convert DST's parent is a file", _file("parent"),
         ("convert", "{tmp}/a.pth", "{tmp}/parent/out", "--no-verify"), 1, ("parent", "dst"), copies=("a.pth",)),
    Case("convert --force onto notes and a run", _notes, ("convert", "{tmp}/a.pth", "{tmp}/out", "--force",
         "--no-verify"), 1, ("out", "notes.txt", "choose another dst or remove it"), copies=("a.pth", "vit")),
    Case("convert --force onto a previous convert", _previous_convert,
         ("convert", "{tmp}/a.pth", "{tmp}/out", "--force", "--no-verify"), 0, copies=("a.pth", "data"),
         changed=("out",), check=_replaced),
    Case("convert cleans only stale staging", _stale, ("convert", "{tmp}/a.pth", "{tmp}/out", "--no-verify"), 0,
         copies=("a.pth",), changed=("out", f".out.{DEAD_PID}.abc.staging", f".out.{DEAD_PID}.xyz.tmp"),
         check=_stale_cleaned),
    Case("eval CLIP without tokenizer.json", lambda tmp: None,
         ("eval", "--model-dir", "{tmp}/clip_no_tokenizer", "--workers", "0"), 1,
         ("clip_no_tokenizer", "tokenizer.json", "copy"), copies=("clip_no_tokenizer",)),
    Case("--csv-separator ''", lambda tmp: _table(tmp, [(p, "a circle") for p in _val_images()]),
         (*CLIP_EVAL, "--csv-separator", ""), 2, ("--csv-separator", "one character"), copies=("clip", "data")),
    Case("non-UTF-8 table", lambda tmp: _table(tmp, [(p, c) for p, c in zip(_val_images(), ["a", "b", "café", "d"])],
                                               encoding="latin-1"),
         CLIP_EVAL, 1, ("pairs.tsv", "line 4", "utf-8"), copies=("clip", "data")),
    Case("caption over csv's 131,072-character field limit", lambda tmp: _table(
        tmp, [(p, "a circle " * (20_000 if i == 1 else 1)) for i, p in enumerate(_val_images())]),
        CLIP_EVAL, 0, copies=("clip", "data"), check=_ok),
    Case("all captions empty", lambda tmp: _table(tmp, [(p, " ") for p in _val_images()]), CLIP_EVAL, 0,
         copies=("clip", "data"), check=_empty_captions_warned),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_io_and_data_errors(case: Case, vitfast, models, tmp_path):
    if case.skip:
        pytest.skip(case.skip)
    _copy(models, tmp_path, *case.copies)
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    mask = os.umask(0o022)
    try:
        result = vitfast(*(a.replace("{tmp}", str(tmp_path)) for a in case.args), cwd=tmp_path)
    finally:
        os.umask(mask)
        if (tmp_path / "locked").exists():
            (tmp_path / "locked").chmod(0o700)
    if case.code == 0:
        assert result.code == 0, result.stderr[-3000:]
    else:
        refused(result, case.code, *case.words)
    if case.check is not None:
        case.check(tmp_path, result)
    after = snapshot(tmp_path)
    kept = {k: v for k, v in before.items() if Path(k).parts[0] not in case.changed}
    assert {k: after.get(k) for k in kept} == kept


def test_worker_error_is_the_same_line_as_in_process(vitfast, models, tmp_path):
    """An unreadable image read in a DataLoader worker (--workers 2, the default) is refused with the
    same one line as without workers."""
    _copy(models, tmp_path, "vit", "data")
    _bad_image(tmp_path)
    before = snapshot(tmp_path)
    results = [vitfast("eval", "--model-dir", "vit", "--data-dir", "data", "--workers", w, "-b", "8", cwd=tmp_path)
               for w in ("0", "2")]
    for result in results:
        refused(result, 1, "cannot read image", "00003.png", "--skip-bad-images")
    assert results[0].error_lines == results[1].error_lines
    assert snapshot(tmp_path) == before


def _invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Result(result.exit_code, result.stdout, result.stderr)


def test_full_disk_keeps_the_previous_checkpoint(models, tmp_path, monkeypatch):
    """safetensors words a full disk as "unexpected pos ...": the save fails as "no space left on"
    the file, the previous checkpoint stays byte-identical and no temp file is left."""
    import safetensors.torch

    shutil.copytree(models / "vit", tmp_path / "run")
    before = snapshot(tmp_path)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise safetensors.SafetensorError("Error while serializing: unexpected pos 4096")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 4096))
    model = vitfast.create_model("vit_micro_patch4_32", num_classes=4, img_size=16)
    with pytest.raises(OSError) as info:
        vitfast.save(model, tmp_path / "run")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "run" / "model.safetensors")
    assert snapshot(tmp_path) == before

    # The same fault under `vitfast convert`: one line, and no staging folder left.
    shutil.copy(models / "a.pth", tmp_path / "a.pth")
    refused(_invoke("convert", str(tmp_path / "a.pth"), str(tmp_path / "out"), "--no-verify"), 1,
            "no space left on", "out", "choose another dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "run"]


def test_an_error_unrelated_to_space_stays_itself(tmp_path):
    atomic_write(tmp_path / "f", lambda p: p.write_text("old"))
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "f", lambda p: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "old"


@pytest.mark.parametrize("code, words", [(errno.EROFS, ("read-only file system", "out", "choose another dst")),
                                         (errno.EACCES, ("permission denied", "out", "choose another dst"))])
def test_unwritable_destination_injected(models, tmp_path, monkeypatch, code, words):
    """What a read-only file system or a folder without write permission raises (root cannot get
    either with chmod), under `vitfast convert`."""
    import tempfile

    def refuse(*args, dir=None, **kw):
        raise OSError(code, os.strerror(code), str(Path(dir) / ".out.123.abc.staging"))

    shutil.copy(models / "a.pth", tmp_path / "a.pth")
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    refused(_invoke("convert", str(tmp_path / "a.pth"), str(tmp_path / "out"), "--no-verify"), 1, *words)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]


@pytest.mark.parametrize("separator", ["", "\t\t"])
def test_the_library_refuses_a_separator_of_other_than_one_character(separator):
    with pytest.raises(DataError, match="one character"):
        CsvFormat(separator=separator)
