"""The `vitfast` command line: parses flags, calls the library, prints results.

Installed as ``vitfast.cli``; run it as ``vitfast`` or ``python -m vitfast``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # torch-heavy modules load inside the commands, so `vitfast --help` stays fast
    from rich.table import Table

    from vitfast.bench import AttentionBenchRow

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


@bench_app.command("attention")
def bench_attention(
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", show_default=False,
        help="Batch size B. Default: 64 on CUDA (ViT-B training), 1 on CPU."),
    heads: int = typer.Option(12, "--heads", help="Attention heads H."),
    head_dim: int = typer.Option(64, "--head-dim", help="Head dim D."),
    dtype: str = typer.Option("auto", "--dtype",
                              help="bf16, fp16, fp32, or auto: bf16 on CUDA, fp32 on CPU."),
    seq_lens: str = typer.Option("197,257,577,1025,2048,4096", "--seq-lens",
                                 help="Comma-separated sequence lengths N."),
    backends: str = typer.Option("triton,sdpa,eager", "--backends", help="Comma-separated: triton, sdpa, eager; or SDPA pinned to one kernel: sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math."),
    modes: str = typer.Option("fwd,fwd+bwd", "--modes", help="Comma-separated: fwd, fwd+bwd."),
    causal: bool = typer.Option(False, "--causal/--no-causal", help="Causal masking (FLOPs halved)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    warmup: int | None = typer.Option(
        None, "--warmup", show_default=False,
        help="Untimed calls before timing; the first compiles. Default: 10 on CUDA, 1 on CPU."),
    rep: int | None = typer.Option(
        None, "--rep", show_default=False,
        help="Timed calls; their median is reported. Default: 100 on CUDA, 3 on CPU."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
    plot_path: Path | None = typer.Option(None, "--plot",
                                          help="Also save a PNG of time against peak memory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines on stderr."),
) -> None:
    """Time, TFLOP/s and peak memory of each attention backend across sequence lengths.

    Peak memory is what one call allocates above its inputs.

    A case that cannot run (Triton without CUDA, out of memory) is a row that says why.

    Exit code: 0, 1 when no case ran at all, 2 on bad flags.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vitfast import bench

    try:
        dev = bench.resolve_device(device)
        defaults = bench.defaults_for(dev)
        params = dict(
            batch=defaults.batch if batch_size is None else batch_size, heads=heads,
            head_dim=head_dim, dtype=bench.resolve_dtype(dtype, dev),
            seq_lens=_csv_ints(seq_lens, "--seq-lens"), backends=_csv(backends, "--backends"),
            modes=_csv(modes, "--modes"), causal=causal, device=dev,
            warmup=defaults.warmup if warmup is None else warmup,
            rep=defaults.rep if rep is None else rep,
        )
        bench.validate_attention_sweep(**params)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    env = bench.environment_info(dev)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    shape = bench.describe_shape(params["batch"], heads, head_dim, params["dtype"], causal)
    where = f"{dev} ({env['device_name']})"
    if not quiet:
        err.print(f"attention on {where}: {shape}" + (" (--dtype auto)" if dtype == "auto" else "")
                  + f"; warmup {params['warmup']}, median of {params['rep']} timed calls")
    n_cases = len(params["seq_lens"]) * len(params["backends"]) * len(params["modes"])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=quiet or not err.is_terminal) as progress:
        task = progress.add_task("attention", total=n_cases)

        def on_row(row: AttentionBenchRow) -> None:
            progress.update(task, advance=1, description=f"{row.backend} {row.mode} N={row.seq_len}")

        rows = bench.bench_attention(**params, on_row=on_row)

    Console(highlight=False).print(
        _attention_table(rows, bench.speedup_over(rows, "sdpa"), f"attention · {where} · {shape}"))
    try:
        if json_path is not None:
            bench.write_json(json_path, rows, parameters=params, environment=env)
        if plot_path is not None:
            bench.plot_time_vs_memory(rows, plot_path, title=f"attention on {where}: {shape}")
    except OSError as exc:
        raise _fail(f"cannot write {exc.filename}: {exc.strerror}.", 1) from None
    if not quiet:
        for path in (json_path, plot_path):
            if path is not None:
                err.print(f"wrote {path}")
    if not any(row.ok for row in rows):
        raise _fail("no case ran; the status column says why.", 1)


def _attention_table(rows: list[AttentionBenchRow], speedups: list[float | None], title: str) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    # Long reasons go under the table as numbered notes, so rows stay one line on an 80-column terminal.
    notes: dict[str, int] = {}
    table = Table(title=title, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for name in ("mode", "N", "backend", "time ms", "TFLOP/s", "peak MiB", "vs sdpa", "status"):
        table.add_column(name, justify="left" if name in ("mode", "backend", "status") else "right",
                         no_wrap=True)
    for i, (row, speedup) in enumerate(zip(rows, speedups)):
        if i and row.mode != rows[i - 1].mode:
            table.add_section()
        if row.ok:
            status = "[green]ok[/green]"
        elif len(row.status) <= 16:
            status = f"[yellow]{escape(row.status)}[/yellow]"
        else:
            note = notes.setdefault(row.status, len(notes) + 1)
            head = row.status.split(":")[0]
            label = head if head.isalpha() else "not run"  # "skipped", "error", else generic
            status = f"[yellow]{label} [{note}][/yellow]"
        table.add_row(
            row.mode, str(row.seq_len), row.backend,
            "" if row.time_ms is None else f"{row.time_ms:.4g}",
            "" if row.tflops is None else f"{row.tflops:.3g}",
            "" if row.peak_mem_bytes is None else f"{row.peak_mem_bytes / 2**20:.4g}",
            "" if speedup is None else f"{speedup:.2f}×",
            status,
        )
    if notes:
        table.caption = "\n".join(f"[{n}] {escape(text)}" for text, n in notes.items())
    return table


def _csv(text: str, flag: str) -> list[str]:
    items = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not items:
        raise ValueError(f"{flag} needs a comma-separated list; got {text!r}.")
    return items


def _csv_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text, flag)]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers like 197,257,577; got {text!r}.") from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error on stderr; the caller raises the returned Exit."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)
