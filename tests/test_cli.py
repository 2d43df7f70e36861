"""The CLI's typed choices: a typo in a backend, dtype, source or target is refused by the parser
(exit 2, before any work), and --help lists the library's own names."""

import re

import pytest
from typer.testing import CliRunner

from vitfast import choices
from vitfast.cli import app


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.parametrize("args, value", [
    (["train", "--attn-backend", "trition"], "trition"),
    (["train", "--amp-dtype", "fp8"], "fp8"),
    (["eval", "--model-dir", ".", "--attn-backend", "flash"], "flash"),
    (["eval", "--model-dir", ".", "--amp-dtype", "half"], "half"),
    (["convert", "a", "b", "--from", "tim"], "tim"),
    (["convert", "a", "b", "--to", "onnx"], "onnx"),
    (["convert", "a", "b", "--dtype", "auto"], "auto"),
    (["bench", "attention", "--dtype", "fp64"], "fp64"),
    (["bench", "model", "--mode", "training"], "training"),
])
def test_a_typo_is_refused_by_the_parser(args, value, tmp_path):
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path)] if args[0] == "train" else args)
    assert result.exit_code == 2
    assert f"'{value}' is not one of" in _plain(result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command, flag, names", [
    (["train"], "--attn-backend", choices.ATTENTION_BACKENDS),
    (["eval"], "--amp-dtype", ("auto", *choices.DTYPE_NAMES)),
    (["convert"], "--from", choices.CONVERT_SOURCES),
    (["convert"], "--to", choices.EXPORT_TARGETS),
])
def test_help_lists_the_library_names(command, flag, names):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    line = next(line for line in _plain(result.output).splitlines() if f"{flag} " in line and "<" in line)
    assert "<" + "|".join(names) + ">" in line


@pytest.mark.parametrize("env, words", [
    ({}, ["vitfast"]),
    ({"TORCHELASTIC_RUN_ID": "1", "LOCAL_WORLD_SIZE": "8", "WORLD_SIZE": "8"},
     ["torchrun", "--nproc_per_node", "8", "-m", "vitfast"]),
    ({"TORCHELASTIC_RUN_ID": "1", "LOCAL_WORLD_SIZE": "8", "WORLD_SIZE": "32"},
     ["torchrun", "--nnodes", "4", "--nproc_per_node", "8", "-m", "vitfast"]),
])
def test_the_resume_line_starts_as_the_run_was_launched(env, words):
    from vitfast.cli import _launcher_words

    assert _launcher_words(env) == words
