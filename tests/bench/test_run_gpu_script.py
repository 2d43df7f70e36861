"""benchmarks/run_gpu.sh has not rotted: every `vitfast` command in it parses with today's CLI (flags,
typed choices, types), and every `python3 benchmarks/<script>.py` command with that script's own
argument parser, checked without running anything, since the script's shapes need a GPU."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from vitfast.cli import app

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "run_gpu.sh"
# What the script's shell variables hold when it runs (the last value of each loop; open_clip installed).
VARIABLES = {"out": "/tmp/out", "work": "/tmp/work", "sdpa_all": "sdpa,sdpa-flash,sdpa-efficient,sdpa-cudnn",
             "dt": "fp16", "hd": "128", "heads": "6", "window": "12", "wshift": "6",
             "clip_backends": "triton,eager,open_clip", "merged##*/": "nvidia-h100-2026-01-01.json"}
# A command: `vitfast ...` or `python3 benchmarks/<name>.py ...`, at the start of a line or after a shell word.
COMMAND = re.compile(r"(?:^|[\s(;&|])(vitfast|python3 benchmarks/(\w+)\.py) (.*)$")


def _commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of each command line of the script: "vitfast", or the benchmarks script's name;
    continuation lines joined, variables filled in, everything after the command's own words dropped."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        match = COMMAND.search(line)
        if line.startswith(("#", "echo ")) or match is None:
            continue
        rest = re.sub(r"\$\{([^}]+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)],
                      match.group(3).split(" 2>&1")[0])
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = []
        for word in lexer:
            if set(word) <= set("();<>|&"):  # the end of the command: `)`, `||`, `|`, `;` ...
                break
            words.append(word)
        commands.append((match.group(2) or "vitfast", words))
    return commands


def test_the_script_has_commands_for_every_step():
    commands = _commands()
    vitfast = {tuple(args[:2]) for program, args in commands if program == "vitfast"}
    assert vitfast >= {("bench", "attention"), ("bench", "window"), ("bench", "clip-loss"), ("bench", "all")}
    assert {program for program, _ in commands} >= {"check_tiles", "dispatch_table", "collect"}
    assert any(program == "check_tiles" and "--racecheck" in args for program, args in commands)


@pytest.mark.parametrize("program, args", _commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x[:2]))
def test_each_command_parses(program, args, bench_script):
    if program != "vitfast":  # argparse exits with status 2 on an unknown flag or a bad value
        assert bench_script(program).build_parser().parse_args(args)
        return
    command, (name, *rest) = typer.main.get_command(app), ["vitfast", *args]
    while hasattr(command, "get_command"):  # a group: down to the leaf command
        name, *rest = rest
        command = command.get_command(None, name)
    assert command.make_context(name, rest).params  # unknown flags or bad choices raise while parsing


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_an_unknown_part_is_refused(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "everything"], capture_output=True, text=True,
                            env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "usage" in result.stderr and not any(tmp_path.iterdir())


def test_the_merge_holds_every_folder_and_earlier_parts(tmp_path, bench_script):
    collect = bench_script("collect")
    env = {"device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0",
           "date": "2026-12-01T10:00:00+00:00"}
    out, work, later = tmp_path / "out", tmp_path / "work", tmp_path / "later"
    for folder in (out, work, later / "all"):
        folder.mkdir(parents=True)
    (out / "tile_check.json").write_text(json.dumps({"check": "tiles", "environment": env, "rows": []}))
    (out / "dispatch.json").write_text(json.dumps({"about": "table", "rows": []}))
    (work / "attention.json").write_text(json.dumps({"benchmark": "attention", "environment": env, "rows": [1]}))
    first = collect.collect([out, work], out / "merged")
    assert first.name == "nvidia-h100-80gb-hbm3-2026-12-01.json"
    # A later part (another call, another work folder) keeps the first part's files, replacing those it writes anew.
    (later / "attention.json").write_text(json.dumps({"benchmark": "attention", "environment": env, "rows": [2]}))
    (later / "all" / "summary.json").write_text(json.dumps({"lines": []}))
    second = collect.collect([out, later], out / "merged")
    files = json.loads(second.read_text())["files"]
    assert second == first
    assert set(files) == {"tile_check.json", "dispatch.json", "attention.json", "all/summary.json"}
    assert files["attention.json"]["rows"] == [2]
