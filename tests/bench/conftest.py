"""What the bench tests share: running one `vitfast bench` command to its JSON, and importing a script
of benchmarks/ by path."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitfast.cli import app


@pytest.fixture
def bench_json(tmp_path):
    """``bench_json(command, *args)``: run `vitfast bench COMMAND ARGS --json FILE`, check that it exited 0,
    and return the JSON document it wrote."""
    def run(command: str, *args: str) -> dict:
        out = tmp_path / f"{command}.json"
        result = CliRunner().invoke(app, ["bench", command, *args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    return run


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: benchmarks/NAME.py imported by path (once per session), for its functions."""
    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"vitfast_bench_script_{name}", BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for module in loaded.values():
        del sys.modules[module.__name__]
