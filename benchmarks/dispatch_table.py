"""Write the dispatch table from one GPU run: where backend="auto" should take the Triton kernels.

    python benchmarks/dispatch_table.py BENCH_JSON|FOLDER ... --checks TILE_CHECK_JSON --out dispatch.json
        [--margin 0.05] [--source benchmarks/results/<device>-<date>.json]

Reads the `vitfast bench attention | window | clip-loss` JSON files of benchmarks/run_gpu.sh and the
tile check of benchmarks/check_tiles.py, and writes a table in kernels/dispatch.json's format (a
developer copies it there and commits it with the results it names). For each (kernel, arch, dtype,
head dim) the measured sizes (sequence length; window tokens, the window's area after timm's shrink
rule; CLIP batch) are sorted; a size is a win when Triton's fwd+bwd median time beats the fallback's
by the margin — for attention the fastest SDPA variant the sweep ran (sdpa, sdpa-flash, sdpa-efficient,
sdpa-cudnn), SDPA for window attention, the chunked loss for the CLIP loss — in every sweep that
measured it (a causal sweep's rows are "causal_attention", what vitfast.kernels.attention asks for
with causal=True). Each run of
consecutive wins becomes a row over that size range, at that one head dim, its speedup (best fallback
time / Triton time) the smallest over the run, so a size where Triton lost or did not run splits the
range.

Rows come only from GPU sweeps (the arch is the recorded compute capability, "sm_90"), and only where
the tile check ran on the same arch and passed every case of that kernel in that dtype, including
the head dim; a kernel and dtype with any failed check gets no row. A summary of every decision, and
why, goes to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

MODE = "fwd+bwd"
# What backend="auto" falls back to, per kernel: the fastest of these that ran is Triton's opponent.
FALLBACKS = {"attention": ("sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn"),
             "window_attention": ("sdpa",),
             "clip_loss": ("chunked",)}
FALLBACKS["causal_attention"] = FALLBACKS["attention"]
SIZE_WORDS = {"attention": "N", "causal_attention": "N", "window_attention": "window tokens", "clip_loss": "batch"}
HEAD_WORDS = {"attention": "head dim", "causal_attention": "head dim", "window_attention": "head dim",
              "clip_loss": "dim"}
# The tile check covers both attention variants under the op "attention".
CHECKED_AS = {"causal_attention": "attention"}


@dataclass(frozen=True)
class Measurement:
    """One size of one sweep: Triton's fwd+bwd time against the best fallback's."""

    kernel: str
    arch: str
    dtype: str
    head_dim: int
    size: int
    triton_ms: float | None  # None: Triton did not run (why: `note`)
    fallback: str | None
    fallback_ms: float | None
    where: str  # file and case, for the summary
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.triton_ms is None or self.fallback_ms is None:
            return None
        return self.fallback_ms / self.triton_ms


def arch_of(environment: dict) -> str | None:
    """"sm_90" from a GPU run's recorded compute capability ("9.0"); None for a CPU run."""
    capability = environment.get("device_capability")
    if not capability or not str(environment.get("device", "cuda")).startswith("cuda"):
        return None
    major, minor = str(capability).split(".")
    return f"sm_{major}{minor}"


def _sizes(doc: dict) -> dict[str, tuple[int, int]]:
    """Each case of a sweep → (head dim, size) in the dispatch table's terms."""
    params, kernel = doc["parameters"], doc["benchmark"]
    if kernel == "attention":
        return {str(n): (params["head_dim"], n) for n in params["seq_lens"]}
    if kernel == "clip_loss":
        return {str(n): (params["dim"], n) for n in params["batch_sizes"]}
    from vitfast.bench.window import STAGES
    from vitfast.kernels.window_geometry import effective_window

    cases = {}
    for name in params["stages"]:
        stage = STAGES[name]
        (wh, ww), _ = effective_window(stage.height, stage.width, params["window"], params["shift"])
        cases[name] = (stage.channels // stage.heads, wh * ww)
    return cases


CASE_FIELDS = {"attention": "seq_len", "window_attention": "stage", "clip_loss": "batch"}


def measurements(doc: dict, name: str) -> tuple[list[Measurement], str | None]:
    """The fwd+bwd measurements of one bench JSON, or why it has none that count."""
    kernel = doc.get("benchmark")
    if kernel not in FALLBACKS:
        return [], f"{name}: not an attention, window or CLIP-loss sweep"
    arch = arch_of(doc.get("environment", {}))
    if arch is None:
        return [], f"{name}: not a GPU run ({doc.get('environment', {}).get('device', '?')}): no rows"
    rows = [r for r in doc["rows"] if r["mode"] == MODE]
    if not rows:
        return [], f"{name}: no {MODE} rows"
    causal = " causal" if doc["parameters"].get("causal") else ""
    row_kernel = "causal_attention" if kernel == "attention" and causal else kernel
    by_case: dict = defaultdict(dict)
    for r in rows:
        by_case[str(r[CASE_FIELDS[kernel]])][r["backend"]] = r
    sizes = _sizes(doc)
    found = []
    for case, backends in by_case.items():
        head_dim, size = sizes[case]
        fallbacks = {b: r["time_ms"] for b, r in backends.items()
                     if b in FALLBACKS[kernel] and r["status"] == "ok" and r["time_ms"]}
        best = min(fallbacks, key=fallbacks.get) if fallbacks else None
        triton = backends.get("triton")
        ran = triton is not None and triton["status"] == "ok" and triton["time_ms"]
        note = "" if ran else f"triton: {triton['status'] if triton else 'not in the sweep'}"
        if best is None:
            note = (note + "; " if note else "") + f"no fallback ({', '.join(FALLBACKS[kernel])}) ran"
        found.append(Measurement(row_kernel, arch, doc["parameters"]["dtype"], head_dim, size,
                                 triton["time_ms"] if ran else None, best, fallbacks.get(best),
                                 f"{name} {case}{causal}", note))
    return found, None


def passed_checks(checks: list[dict]) -> dict:
    """(arch, kernel, dtype) → (passed every case?, head dims checked, why not) from tile-check JSONs,
    counting the tiles of the GPU's own family (those of others, with --all-families, it never launches)."""
    state: dict = {}
    for doc in checks:
        for r in doc.get("rows", []):
            if doc.get("family") not in r.get("families", [doc.get("family")]):
                continue
            key = (doc.get("arch"), r["op"], r["dtype"])
            ok, dims, why = state.get(key, (True, set(), ""))
            if not r["passed"] and ok:
                ok, why = False, f"{r['kernel']} [{r['config']}] {r['case']} {r['output']}: {r['status']}"
            state[key] = (ok, dims | {r["head_dim"]}, why)
    return state


def refusal(state: dict, kernel: str, arch: str, dtype: str, head_dim: int) -> str | None:
    """Why the tile check bars rows for these (None: it allows them)."""
    kernel = CHECKED_AS.get(kernel, kernel)
    if (arch, kernel, dtype) not in state:
        return f"no tile check of {kernel} in {dtype} on {arch}"
    ok, dims, why = state[(arch, kernel, dtype)]
    if not ok:
        return f"the tile check failed ({why})"
    if head_dim not in dims:
        return f"the tile check did not run {HEAD_WORDS[kernel]} {head_dim} (it ran {sorted(dims)})"
    return None


def decide(found: list[Measurement], state: dict, margin: float, source: str) -> tuple[list[dict], list[str]]:
    """The dispatch rows, and the summary lines that say why."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for m in found:
        groups[(m.kernel, m.arch, m.dtype, m.head_dim)][m.size].append(m)
    rows, lines = [], []
    for (kernel, arch, dtype, head_dim), by_size in sorted(groups.items()):
        lines.append(f"{kernel} on {arch}, {dtype}, {HEAD_WORDS[kernel]} {head_dim}:")
        barred = refusal(state, kernel, arch, dtype, head_dim)
        first = len(rows)
        run: list[tuple[int, float]] = []

        def close() -> None:
            if run:
                speedup = math.floor(min(s for _, s in run) * 1000) / 1000  # rounded down: "at least"
                rows.append({"kernel": kernel, "arch": arch, "dtype": dtype, "head_dim": [head_dim, head_dim],
                             "size": [run[0][0], run[-1][0]], "speedup": speedup, "source": source})
                lines.append(f"  → row: {SIZE_WORDS[kernel]} {run[0][0]}–{run[-1][0]}, speedup ≥ {speedup:.3f}×")
                run.clear()

        for size in sorted(by_size):
            wins = True
            for m in by_size[size]:
                if m.speedup is None:
                    verdict, wins = f"no comparison ({m.note})", False
                else:
                    won = m.speedup >= 1 + margin
                    wins &= won
                    verdict = (f"triton {m.triton_ms:.4g} ms, {m.fallback} {m.fallback_ms:.4g} ms: {m.speedup:.2f}× "
                               f"→ {'triton' if won else 'fallback'}")
                lines.append(f"  {SIZE_WORDS[kernel]}={size:<6} {verdict}  [{m.where}]")
            if wins and not barred:
                run.append((size, min(m.speedup for m in by_size[size])))
            else:
                close()
        close()
        if barred:
            lines.append(f"  → no row: {barred}")
        elif len(rows) == first:
            lines.append("  → no row: Triton was not ahead by the margin at any size")
    return rows, lines


def merged_name(environment: dict) -> str:
    """What benchmarks/collect.py (beside this file, loaded by path) names the merged run."""
    spec = importlib.util.spec_from_file_location("vitfast_bench_collect", Path(__file__).with_name("collect.py"))
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    return collect.merged_name(environment)


def shipped_about() -> str:
    """The shipped table's description, kept so the new file differs from it only in its rows."""
    from vitfast.kernels import tables

    return json.loads((tables.HERE / "dispatch.json").read_text())["about"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", nargs="+", type=Path,
                        help="`vitfast bench` JSON files, or folders of them (other JSON files are skipped).")
    parser.add_argument("--checks", nargs="+", type=Path, required=True,
                        help="benchmarks/check_tiles.py JSON file(s) of the same GPU.")
    parser.add_argument("--out", type=Path, required=True, help="the dispatch table to write.")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="how much faster Triton must be to be taken (0.05: 5%%). Default: 0.05.")
    parser.add_argument("--source", default=None,
                        help="the results file the rows cite. Default: benchmarks/results/<device>-<date>.json, "
                             "as benchmarks/collect.py names the merged run.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vitfast.kernels import tables

    docs = {}
    for path in [f for p in args.bench for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]:
        try:
            docs[path.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"cannot read the benchmark file {path}: {exc}") from None
    checks = []
    for path in args.checks:
        try:
            checks.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"cannot read the tile check {path} ({exc}): no kernel passed it, so no row is written.")
    found, skipped = [], []
    for name, doc in docs.items():
        got, why = measurements(doc, name)
        found += got
        if why:
            skipped.append(why)
    source = args.source or (f"benchmarks/results/{merged_name(docs[next(iter(docs))]['environment'])}"
                             if docs and "environment" in docs[next(iter(docs))] else "unknown")
    rows, lines = decide(found, passed_checks(checks), args.margin, source)
    for c in checks:
        print(f"tile check on {c.get('arch')}: {'passed' if c.get('passed') else 'FAILED'} "
              f"({c.get('total', 0) - c.get('failed', 0)}/{c.get('total', 0)})")
    print(f"dispatch table from {len(docs)} file(s), Triton taken where its {MODE} time beats the best fallback by "
          f"≥ {args.margin:.0%}:")
    print("\n".join([*(f"  skipped {s}" for s in skipped), *lines]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tables.write_table(args.out, {"about": shipped_about(), "rows": rows}, "rows")
    print(f"wrote {len(rows)} row(s) to {args.out} (source {source}); copy it to kernels/dispatch.json and commit "
          "it with that results file.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
