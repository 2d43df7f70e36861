"""What the bench tests share: running one `vitfast bench` command to its JSON."""

from __future__ import annotations

import json

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
