"""Test setup: without CUDA, Triton kernels run on CPU tensors through the interpreter.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any vitfast import.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU under the Triton interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory):
    """A 4-class, 16×16 shapes ImageFolder (24 train / 8 val images per class) for fast training tests."""
    from vitfast.data import write_shapes_dataset

    root = tmp_path_factory.mktemp("tiny-shapes")
    return write_shapes_dataset(root, per_class={"train": 24, "val": 8},
                                classes=("circle", "square", "hstripes", "checker"), size=16)


@pytest.fixture
def ddp_and_single(tmp_path):
    """Run `vitfast <args>` as two gloo processes at batch 8 each (into tmp_path/ddp) and as one
    process at batch 16 (into tmp_path/one); returns the two output folders."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from vitfast.cli import app

    def run(args: list[str]):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        two = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "vitfast", *args, "--batch-size", "8", "--output", str(tmp_path / "ddp")],
            env=env, capture_output=True, text=True, timeout=300)
        assert two.returncode == 0, two.stderr[-3000:]
        result = CliRunner().invoke(app, [*args, "--batch-size", "16", "--output", str(tmp_path / "one")])
        assert result.exit_code == 0, result.output
        return tmp_path / "ddp", tmp_path / "one"

    return run
