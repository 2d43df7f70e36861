"""The bad-input suite's harness: run `vitfast` as a user would (its own process, so signals, exit
codes and worker processes are real), and check a refusal the way issue 16 defines one: the exit code,
one line on stderr that names the problem, no traceback anywhere, and every file that existed before
the command unchanged (same bytes, same mode) unless the case says otherwise.

    def test_x(vitfast, tmp_path):
        before = snapshot(tmp_path)
        result = vitfast("train", "--lr", "-1", cwd=tmp_path)
        refused(result, 2, "--lr")
        assert snapshot(tmp_path) == before

Every case file in this folder is table-driven: a list of cases, one parametrized test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """stderr's lines that report an error (vitfast prints them as ``error: ...``)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_vitfast(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> Result:
    """`python -m vitfast ARGS` in `cwd` on the CPU, without colour, the Triton interpreter off (a user's
    shell has no TRITON_INTERPRET)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}
    full_env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "vitfast", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def refused(result: Result, code: int, *words: str) -> None:
    """A refusal: exit `code`, exactly one ``error:`` line on stderr containing each of `words`
    (case-insensitive), and no traceback on either stream."""
    shown = f"exit {result.code}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.code == code, shown
    assert len(result.error_lines) == 1, shown
    line = result.error_lines[0].lower()
    for word in words:
        assert word.lower() in line, f"{word!r} not in the error line\n{shown}"


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root`: its SHA-256 and permission bits (what a refusal must leave alone)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                path.stat().st_mode & 0o7777)
    return out


@pytest.fixture
def vitfast():
    return run_vitfast
