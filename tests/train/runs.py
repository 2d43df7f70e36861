"""Training runs for the multi-process tests: `vitfast train` as two gloo processes under torchrun, or in
this process, and the comparison of the model folders they write."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

import vitfast
from vitfast.cli import app


def torchrun(args: list[str], output) -> None:
    """`vitfast <args> --output OUTPUT` as two gloo processes."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vitfast",
         *args, "--output", str(output)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def one_process(args: list[str], output) -> str:
    """`vitfast <args> --output OUTPUT` in this process; returns what it printed."""
    result = CliRunner().invoke(app, [*args, "--output", str(output)])
    assert result.exit_code == 0, result.output
    return result.output


def assert_close_weights(a, b, atol: float) -> None:
    wa, wb = vitfast.load(a).state_dict(), vitfast.load(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4 if atol else 0, msg=k)
