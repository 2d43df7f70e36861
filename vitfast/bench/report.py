"""How results leave a benchmark: JSON and CSV files, speedups, PNG plots and the tables the commands print.

Rows are any of the benchmarks' row types: a kernel row (:class:`vitfast.bench.sweep.KernelRow`) or a
model row (:class:`vitfast.bench.model.ModelBenchRow`); each has ``as_dict()`` for the files.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from rich import box
from rich.markup import escape
from rich.table import Table

from vitfast.choices import KERNEL_MODES, MODEL_MODES


@dataclass(frozen=True)
class SummaryLine:
    """One line of `vitfast bench all`'s summary: a backend (or model implementation) at one case."""

    sweep: str
    case: str
    mode: str
    backend: str
    time_ms: float | None
    peak_mib: float | None
    speedup: float | None
    baseline: str
    status: str


# Files


def write_json(path: str | os.PathLike[str], rows: Sequence, sweep, environment: Mapping[str, object],
               extra: Mapping[str, object] | None = None) -> None:
    """Write the rows of `sweep` (a :class:`vitfast.bench.sweep.Sweep`) with its parameters and what it records
    after them, the environment and what each field means; `extra` adds top-level entries after the rows (e.g.
    another search's results, as dicts)."""
    doc = {
        "benchmark": sweep.benchmark,
        "environment": dict(environment),
        "parameters": {**sweep.params, **sweep.recorded},
        "fields": dict(sweep.fields),
        "rows": [r.as_dict() for r in rows],
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # What JSON cannot hold as it is, among the parameters: a dtype by its name ("bfloat16"), a device as "cuda:0".
    path.write_text(json.dumps(doc, indent=2, default=lambda value: str(value).removeprefix("torch.")) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Sequence) -> None:
    """Write the rows as CSV: a header of field names, then one line per row (empty where no number)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [r.as_dict() for r in rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dicts[0]))
        writer.writeheader()
        writer.writerows(dicts)


def write_summary(lines: Sequence[SummaryLine], output: Path, env: Mapping[str, object], quick: bool) -> None:
    """summary.md (a markdown table, with the environment) and summary.json (the same lines)."""
    head = (f"# vitfast bench all{' --quick' if quick else ''}\n\n"
            f"{env['device_name']} · torch {env['torch']} · triton {env['triton']} · {env['date']}\n\n"
            "Kernels: every backend at the largest case of each sweep; models: every implementation. "
            "Time is one call (kernels) or one step (models); peak memory is above the inputs (kernels) "
            "or above weights and optimizer state (models). Full rows: the JSON beside this file.\n\n"
            "| sweep | case | mode | backend | time ms | peak MiB | speedup | status |\n"
            "|---|---|---|---|---:|---:|---:|---|\n")
    body = "".join(f"| {x.sweep} | {x.case} | {x.mode} | {x.backend} | {_num(x.time_ms, '.4g')} | "
                   f"{_num(x.peak_mib, '.4g')} | {_num(x.speedup, '.2f') + ('× vs ' + x.baseline if x.speedup else '')}"
                   f" | {x.status} |\n" for x in lines)
    (output / "summary.md").write_text(head + body)
    (output / "summary.json").write_text(json.dumps({"environment": dict(env), "quick": quick,
                                                     "lines": [asdict(x) for x in lines]}, indent=2) + "\n")


def speedup_over(rows: Sequence, baseline: str = "sdpa") -> list[float | None]:
    """For each row, the baseline backend's time divided by its time in the same mode and case (>1: faster)."""
    base = {(r.mode, r.case): r.time_ms for r in rows if r.backend == baseline and r.ok}
    return [base[r.mode, r.case] / r.time_ms if r.ok and base.get((r.mode, r.case)) and r.time_ms else None
            for r in rows]


# Plots

_COLORS = {"triton": "tab:red", "sdpa": "tab:blue", "eager": "tab:green", "sdpa-flash": "tab:purple",
           "sdpa-efficient": "tab:orange", "sdpa-cudnn": "tab:brown", "sdpa-math": "tab:gray",
           "chunked": "tab:blue", "open_clip": "tab:purple", "timm": "tab:purple"}
_MARKERS = {"triton": "o", "sdpa": "s", "eager": "^", "chunked": "s", "open_clip": "v"}


def plot_time_vs_memory(rows: Sequence, path: str | os.PathLike[str], *,
                        title: str = "attention", point_name: str = "N") -> None:
    """Save a PNG of time (ms) against peak memory (MiB): one panel per mode, one line per backend.

    Each point is labelled with its case (N, or a Swin stage); cases that did not run are listed
    under the panels.
    """
    fig, panels = _figure(rows, KERNEL_MODES, 6.2, 5.4)
    for ax, ok in panels:
        for backend in dict.fromkeys(r.backend for r in rows):
            pts = [r for r in ok if r.backend == backend]
            if not pts:
                continue
            xs = [r.peak_mem_bytes / 2**20 for r in pts]
            ys = [r.time_ms for r in pts]
            ax.plot(xs, ys, marker=_MARKERS.get(backend, "o"), color=_COLORS.get(backend), label=backend)
            # The lines rise to the right, so labels sit upper-left or lower-right of their point,
            # alternating, which keeps neighbouring N (197, 257) apart and off the line.
            for i, (x, y, r) in enumerate(zip(xs, ys, pts)):
                above = i % 2 == 0
                ax.annotate(str(r.case), (x, y), xytext=(-5, 3) if above else (5, -10),
                            textcoords="offset points", ha="right" if above else "left",
                            fontsize=7.5, color=_COLORS.get(backend, "black"))
        # Both quantities grow like N² across the sweep, so only log axes show every N.
        if ok and all(r.peak_mem_bytes > 0 and r.time_ms > 0 for r in ok):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.margins(0.08)  # room for the labels of the first and last points
        ax.set_xlabel("peak memory above inputs (MiB)")
        ax.set_ylabel("median time (ms)")
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        if ok:
            ax.legend(loc="upper left", title=f"backend (points: {point_name})", title_fontsize=8)
    _save(fig, path, title, _failure_notes(rows), bottom=0.05)


def plot_speed_vs_memory(rows: Sequence, path: str | os.PathLike[str], *, title: str) -> None:
    """A PNG of samples/s against peak memory, one panel per mode, one point per backend or peer."""
    fig, panels = _figure(rows, MODEL_MODES, 5.6, 4.6)
    for ax, ok in panels:
        for r in ok:
            ax.scatter(r.peak_mem_bytes / 2**20, r.samples_per_s, color=_COLORS.get(r.label), s=40, label=r.label)
            ax.annotate(f"{r.label} (B={r.batch})", (r.peak_mem_bytes / 2**20, r.samples_per_s),
                        xytext=(5, 4), textcoords="offset points", fontsize=8)
        ax.set_xlabel("peak memory of a step above weights and state (MiB)")
        ax.set_ylabel("samples / s")
        ax.margins(0.2)
        ax.grid(True, alpha=0.4)
    _save(fig, path, title, sorted({f"{r.label}: {r.status}" for r in rows if not r.ok}), bottom=0.06)


def _figure(rows: Sequence, modes: Sequence[str], width: float, height: float):
    """A figure with one panel per mode that has rows, each panel titled and paired with its rows that ran."""
    # A bare Figure renders through Agg without pyplot, so no GUI backend or global state is touched.
    from matplotlib.figure import Figure

    modes = [m for m in modes if any(r.mode == m for r in rows)]
    fig = Figure(figsize=(width * max(1, len(modes)), height), layout="constrained")
    axes = fig.subplots(1, max(1, len(modes)), squeeze=False)[0]
    panels = []
    for ax, mode in zip(axes, modes):
        ok = [r for r in rows if r.mode == mode and r.ok]
        ax.set_title(mode)
        if not ok:
            ax.text(0.5, 0.5, "no case ran", ha="center", va="center", transform=ax.transAxes)
        panels.append((ax, ok))
    return fig, panels


def _save(fig, path: str | os.PathLike[str], title: str, notes: Sequence[str], bottom: float) -> None:
    """Title the figure, list what did not run under the panels, and write the PNG."""
    fig.suptitle(title)
    if notes:
        fig.text(0.01, 0.0, "not run: " + "; ".join(notes), fontsize=8, ha="left", va="bottom", wrap=True)
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=130)


def _failure_notes(rows: Sequence) -> list[str]:
    """One note per (backend, status) among rows that did not run, naming the cases it covers."""
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        if not r.ok:
            groups.setdefault((r.backend, r.status), []).append(r)
    notes = []
    for (backend, status), failed in groups.items():
        everywhere = len(failed) == sum(r.backend == backend for r in rows)
        where = "all cases" if everywhere else ", ".join(f"{r.mode} {r.case_name}" for r in failed)
        notes.append(f"{backend} ({where}): {status}")
    return notes


# Tables (rich), as the commands print them


def kernel_table(rows: Sequence, speedups: Sequence[float | None], title: str, case_header: str,
                 baseline: str) -> Table:
    """One line per kernel row: time, TFLOP/s, peak memory, speedup over `baseline`, status."""
    columns = ("mode", case_header, "backend", "time ms", "TFLOP/s", "peak MiB", f"vs {baseline}", "status")
    return _table(title, columns, ("mode", "stage", "backend", "status"), (
        (r.mode, r.mode, str(r.case), r.backend, _num(r.time_ms, ".4g"), _num(r.tflops, ".3g"),
         _num(mib(r.peak_mem_bytes), ".4g"), _times(s), r.status) for r, s in zip(rows, speedups)))


def model_table(rows: Sequence, speedups: Sequence[float | None], title: str, baseline: str) -> Table:
    """One line per model row (mode, implementation): batch, samples/s, step time, peak memory, speedup, status."""
    columns = ("mode", "impl", "batch", "samples/s", "step ms", "peak MiB", f"vs {baseline}", "status")
    return _table(title, columns, ("mode", "impl", "status"), (
        (r.mode, r.mode, r.label, f"{r.batch}" + ("" if r.batch == r.requested_batch else f" (of {r.requested_batch})"),
         _num(r.samples_per_s, ".4g"), _num(r.step_ms, ".4g"), _num(mib(r.peak_mem_bytes), ".4g"), _times(s), r.status)
        for r, s in zip(rows, speedups)))


def summary_table(lines: Sequence[SummaryLine], title: str) -> Table:
    """`vitfast bench all`'s summary, one section per sweep."""
    columns = ("sweep", "case", "mode", "backend", "ms", "peak MiB", "speedup", "status")

    def style(name: str) -> dict:  # model names are long: that column folds rather than squeezing the numbers
        return dict(no_wrap=name != "sweep", overflow="fold", min_width={"sweep": 9, "status": 12}.get(name))

    return _table(title, columns, ("sweep", "case", "mode", "backend", "status"), (
        (x.sweep, x.sweep.removeprefix("model_"), x.case, x.mode, x.backend, _num(x.time_ms, ".4g"),
         _num(x.peak_mib, ".4g"), "" if x.speedup is None else f"{x.speedup:.2f}× {escape(x.baseline)}", x.status)
        for x in lines), style)


def _table(title: str, columns: Sequence[str], left: Sequence[str], lines: Iterable[Sequence[str]],
           style: Callable[[str], dict] = lambda name: {"no_wrap": True}, notes: bool = True) -> Table:
    """The compact, left-titled table every bench command prints: `columns` right-aligned but those in `left`,
    each with its `style`. Each line is (section, cells..., status): a rule goes where the section changes;
    with `notes`, long statuses become numbered notes under the table (:func:`_status`)."""
    table = Table(title=title, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right", **style(name))
    found: dict[str, int] | None = {} if notes else None
    section = None
    for key, *cells, status in lines:
        if section is not None and key != section:
            table.add_section()
        section = key
        table.add_row(*cells, _status(status, found))
    if found:
        table.caption = "\n".join(f"[{n}] {escape(text)}" for text, n in found.items())
    return table


def _status(status: str, notes: dict[str, int] | None) -> str:
    """A row's status: "ok" in green, others in yellow; given `notes`, one longer than 16 characters becomes a
    numbered note (added to `notes`), so rows stay one line on an 80-column terminal."""
    if status == "ok":
        return "[green]ok[/green]"
    if notes is None or len(status) <= 16:
        return f"[yellow]{escape(status)}[/yellow]"
    note = notes.setdefault(status, len(notes) + 1)
    head = status.split(":")[0]
    return f"[yellow]{head if head.isalpha() else 'not run'} [{note}][/yellow]"  # "skipped", "error", else generic


def max_batch_table(results: Sequence, shape: str, memory_limit: int | None) -> Table:
    """The largest-batch searches of `vitfast bench clip-loss --max-batch`, one line per (mode, backend)."""
    within = "until out of memory" if memory_limit is None else f"limit {memory_limit / 2**20:.4g} MiB"
    columns = ("mode", "backend", "largest N", "peak MiB", "tries", "status")
    return _table(f"largest batch · {shape} · {within}", columns, ("mode", "backend", "status"), (
        (None, r.mode, r.backend, _num(r.batch, ""), _num(mib(r.peak_mem_bytes), ".4g"), str(len(r.tried)), r.status)
        for r in results), lambda name: {"no_wrap": name != "status"}, notes=False)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def mib(nbytes: int | None) -> float | None:
    """Bytes in MiB (None stays None)."""
    return None if nbytes is None else nbytes / 2**20


def _times(speedup: float | None) -> str:
    return "" if speedup is None else f"{speedup:.2f}×"
