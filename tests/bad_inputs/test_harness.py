"""The harness itself: it sees a refusal, a traceback and a changed file."""

from __future__ import annotations

import pytest
from conftest import Result, refused, snapshot


def test_refused_accepts_one_error_line():
    refused(Result(2, "", "Usage: ...\nerror: --lr must be positive; got -1.\n"), 2, "--lr")


@pytest.mark.parametrize("result", [
    Result(1, "", "Traceback (most recent call last):\nerror: boom\n"),  # a traceback
    Result(0, "", "error: --lr must be positive\n"),  # wrong exit code
    Result(2, "", "error: one\nerror: two\n"),  # two lines
    Result(2, "", "error: something else\n"),  # does not name the flag
])
def test_refused_rejects(result):
    with pytest.raises(AssertionError):
        refused(result, 2, "--lr")


def test_snapshot_sees_bytes_and_mode(tmp_path):
    f = tmp_path / "a" / "b.txt"
    f.parent.mkdir()
    f.write_text("x")
    before = snapshot(tmp_path)
    f.chmod(0o600)
    assert snapshot(tmp_path) != before
    f.chmod(before["a/b.txt"][1])
    f.write_text("y")
    assert snapshot(tmp_path) != before


def test_cli_usage_error_is_a_refusal(vitfast, tmp_path):
    refused(vitfast("train", "--epochs", "0", cwd=tmp_path), 2, "--epochs")
