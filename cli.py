"""The `vitfast` command line: parses flags, calls the library, prints results.

Installed as ``vitfast.cli``; run it as ``vitfast`` or ``python -m vitfast``.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vitfast",
    help="Vision transformers (ViT, Swin, CLIP) on fused Triton kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmark kernels against eager PyTorch and torch's SDPA.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.callback()
def _root() -> None:
    """Vision transformers (ViT, Swin, CLIP) on fused Triton kernels."""
