"""Every benchmark in one run: attention, window attention, CLIP loss and whole models.

Library half of `vitfast bench all`. Each sweep writes ``<name>.json`` (rows, parameters, environment,
field meanings: the format of the single-sweep commands' ``--json``) and ``<name>.png`` (speed against
memory) into the output folder; ``summary.md`` holds one table of the headline rows. The full plan is
sized for a GPU (the shapes the performance goals name); ``quick`` is a short plan that finishes on a
two-core CPU in a few minutes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from vitfast import bench, bench_clip, bench_model, bench_window
from vitfast.bench import MODES


@dataclass(frozen=True)
class Sweep:
    """One sweep of the plan: its file name, a title, and how to run it (given on_row)."""

    name: str
    title: str
    cases: int
    run: Callable[[Callable[[object], None]], list]
    write: Callable[[list, Path, dict], None]


@dataclass(frozen=True)
class SummaryLine:
    sweep: str
    case: str
    mode: str
    backend: str
    time_ms: float | None
    peak_mib: float | None
    speedup: float | None
    baseline: str
    status: str


def plan(device: torch.device, quick: bool, dtype: torch.dtype | None = None) -> list[Sweep]:
    """The sweeps of `vitfast bench all` on `device`: the full GPU plan, or the short one with `quick`."""
    defaults = bench.defaults_for(device)
    dtype = dtype if dtype is not None else bench.resolve_dtype("auto", device)
    warmup, rep = defaults.warmup, defaults.rep
    clip_backends = ["triton", "chunked", "eager"] + (["open_clip"] if bench_clip.open_clip_available() else [])
    if quick:
        attention = dict(batch=1, heads=4, head_dim=64, seq_lens=[64, 197])
        window = dict(batch=1, stages=["stage3", "stage4"])
        clip = dict(batch_sizes=[256, 1024], dim=512)
        models = [("vit_small_patch16_224", 2, ["timm"]), ("swin_micro_patch2_window4_32", 8, ["timm"]),
                  ("clip_tiny", 8, ["open_clip"])]
    else:
        attention = dict(batch=defaults.batch, heads=12, head_dim=64, seq_lens=list(bench.DEFAULT_SEQ_LENS))
        window = dict(batch=defaults.batch, stages=list(bench_window.STAGES))
        clip = dict(batch_sizes=list(bench_clip.default_batch_sizes(device)), dim=512)
        batch = bench_model.default_batch(device)
        models = [("vit_base_patch16_224", batch, ["timm"]), ("swin_tiny_patch4_window7_224", batch // 2, ["timm"]),
                  ("ViT-B-16", batch // 2, ["open_clip"])]
    common = dict(dtype=dtype, modes=list(MODES), device=device, warmup=warmup, rep=rep)
    amp = next(name for name, value in bench.DTYPES.items() if value == dtype)
    sweeps = [
        Sweep("attention", f"attention B={attention['batch']} H={attention['heads']} D={attention['head_dim']}",
              len(attention["seq_lens"]) * 3 * 2,
              lambda on_row: bench.bench_attention(**attention, **common, on_row=on_row),
              lambda rows, path, env: bench.write_json(path, rows, parameters={**attention, **common},
                                                       environment=env)),
        Sweep("window", f"window attention B={window['batch']} window 7 shift 3", len(window["stages"]) * 3 * 2,
              lambda on_row: bench_window.bench_window(**window, **common, on_row=on_row),
              lambda rows, path, env: bench.write_json(path, rows, parameters={**window, **common}, environment=env,
                                                       benchmark="window_attention", fields=bench_window.FIELDS)),
        Sweep("clip_loss", f"clip loss D={clip['dim']}", len(clip["batch_sizes"]) * len(clip_backends) * 2,
              lambda on_row: bench_clip.bench_clip_loss(**clip, **common, backends=clip_backends, on_row=on_row),
              lambda rows, path, env: bench.write_json(path, rows, parameters={**clip, **common,
                                                                               "backends": clip_backends},
                                                       environment=env, benchmark="clip_loss",
                                                       fields=bench_clip.FIELDS)),
    ]
    for name, batch, compare in models:
        # A model step takes milliseconds to seconds: 3 warm-up and 20 timed steps are plenty on any device.
        params = dict(name=name, modes=list(bench_model.MODES), backends=list(bench_model.BACKENDS), batch=batch,
                      amp_dtype=amp, compare=compare, device=device, warmup=min(warmup, 3), rep=min(rep, 20),
                      retry_smaller=True)
        sweeps.append(Sweep(
            f"model_{name}", f"model {name} B={batch} {amp}", 2 * (3 + len(compare)),
            lambda on_row, params=params: bench_model.bench_model(**params, on_row=on_row),
            lambda rows, path, env, params=params: bench.write_json(path, rows, parameters=params, environment=env,
                                                                    benchmark="model", fields=bench_model.FIELDS)))
    return sweeps


def run_all(output: str | os.PathLike[str], sweeps: Sequence[Sweep], *, env: dict, quick: bool = False,
            on_sweep: Callable[[Sweep], None] | None = None,
            on_row: Callable[[Sweep, object], None] | None = None) -> list[SummaryLine]:
    """Run `sweeps` (from :func:`plan`), writing each one's JSON and PNG into `output`, then
    ``summary.md`` and ``summary.json`` with the environment `env`; returns the summary lines."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary: list[SummaryLine] = []
    for sweep in sweeps:
        if on_sweep is not None:
            on_sweep(sweep)
        rows = sweep.run(lambda row, sweep=sweep: on_row(sweep, row) if on_row is not None else None)
        sweep.write(rows, output / f"{sweep.name}.json", env)
        if sweep.name.startswith("model_"):
            bench_model.plot_speed_vs_memory(rows, output / f"{sweep.name}.png", title=sweep.title)
            summary += _model_summary(sweep, rows)
        else:
            point = {"attention": "N", "window": "stage", "clip_loss": "N"}[sweep.name]
            bench.plot_time_vs_memory(rows, output / f"{sweep.name}.png", title=sweep.title, point_name=point)
            summary += _kernel_summary(sweep, rows)
    write_summary(summary, output, env, quick)
    return summary


def _kernel_summary(sweep: Sweep, rows: Sequence) -> list[SummaryLine]:
    """Per mode, every backend at the largest case where anything ran, with speedups over the baseline."""
    baseline = {"attention": "sdpa", "window": "sdpa", "clip_loss": "eager"}[sweep.name]
    if sweep.name == "clip_loss" and any(r.backend == "open_clip" and r.ok for r in rows):
        baseline = "open_clip"
    speed = bench.speedup_over(rows, baseline)
    lines = []
    for mode in MODES:
        ran = [r for r in rows if r.mode == mode and r.ok]
        if not ran:
            continue
        case = ran[-1].case  # rows are ordered by case within a mode; the last that ran is the largest
        for r, s in zip(rows, speed):
            if r.mode == mode and r.case == case:
                lines.append(SummaryLine(sweep.name, case, mode, r.backend, r.time_ms,
                                         None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, s, baseline,
                                         r.status))
    return lines


def _model_summary(sweep: Sweep, rows: Sequence) -> list[SummaryLine]:
    baseline = bench_model.baseline_of(rows)
    return [SummaryLine(sweep.name, f"B={r.batch}", r.mode, r.label, r.step_ms,
                        None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, s, baseline, r.status)
            for r, s in zip(rows, bench_model.speedups(rows, baseline))]


def write_summary(lines: Sequence[SummaryLine], output: Path, env: dict, quick: bool) -> None:
    """summary.md (a markdown table, with the environment) and summary.json (the same lines)."""
    from dataclasses import asdict

    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    head = (f"# vitfast bench all{' --quick' if quick else ''}\n\n"
            f"{env['device_name']} · torch {env['torch']} · triton {env['triton']} · {env['date']}\n\n"
            "Kernels: every backend at the largest case of each sweep; models: every implementation. "
            "Time is one call (kernels) or one step (models); peak memory is above the inputs (kernels) "
            "or above weights and optimizer state (models). Full rows: the JSON beside this file.\n\n"
            "| sweep | case | mode | backend | time ms | peak MiB | speedup | status |\n"
            "|---|---|---|---|---:|---:|---:|---|\n")
    body = "".join(f"| {x.sweep} | {x.case} | {x.mode} | {x.backend} | {num(x.time_ms, '.4g')} | "
                   f"{num(x.peak_mib, '.4g')} | {num(x.speedup, '.2f') + ('× vs ' + x.baseline if x.speedup else '')}"
                   f" | {x.status} |\n" for x in lines)
    (output / "summary.md").write_text(head + body)
    (output / "summary.json").write_text(json.dumps({"environment": env, "quick": quick,
                                                     "lines": [asdict(x) for x in lines]}, indent=2) + "\n")
