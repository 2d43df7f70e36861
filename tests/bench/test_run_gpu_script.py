"""benchmarks/run_gpu.sh has not rotted: every `vitfast` command in it parses with today's CLI (flags,
typed choices, types), checked without running anything, since the script's shapes need a GPU."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from vitfast.cli import app

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run_gpu.sh"
# What the script's shell variables hold when it runs (the last one: open_clip installed).
VARIABLES = {"out": "/tmp/out", "sdpa_all": "sdpa,sdpa-flash,sdpa-efficient,sdpa-cudnn", "dt": "bf16",
             "clip_backends": "triton,chunked,eager,open_clip", "clip_backends/chunked,/": "triton,eager,open_clip"}


def _commands() -> list[list[str]]:
    """The script's `vitfast ...` command lines, continuation lines joined and variables filled in."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("vitfast ")]
    commands = []
    for line in lines:
        line = line.split(" 2>&1")[0]
        line = re.sub(r"\$\{([^}]+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)], line)
        commands.append(shlex.split(line)[1:])
    return commands


def test_the_script_has_commands_for_every_benchmark():
    assert {tuple(args[:2]) for args in _commands()} >= {("bench", "attention"), ("bench", "window"),
                                                          ("bench", "clip-loss"), ("bench", "all")}


@pytest.mark.parametrize("args", _commands(), ids=lambda args: " ".join(args[:2]))
def test_each_command_parses(args):
    command, (name, *rest) = typer.main.get_command(app), ["vitfast", *args]
    while hasattr(command, "get_command"):  # a group: down to the leaf command
        name, *rest = rest
        command = command.get_command(None, name)
    assert command.make_context(name, rest).params  # unknown flags or bad choices raise while parsing


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
