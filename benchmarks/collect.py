"""Merge one GPU run's JSON files into benchmarks/results/<device>-<date>.json.

    python benchmarks/collect.py OUT_DIR [MORE_DIRS ...] [--results benchmarks/results]

Every ``*.json`` under the folders (the `vitfast bench` sweeps, `bench all`'s summary, the
pytest-benchmark file, the tile check, the racecheck verdict and the new dispatch table) goes into one
document keyed by its path relative to its folder, beside the device name and the torch and Triton
versions (read from the recorded environments). An earlier merge at the same target (a run done in
parts, one call each) keeps its files, except those this merge has anew. Prints the target's path.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def merged_name(environment: dict) -> str:
    """The merged file's name for a run recorded with this environment: "<device>-<date>.json"."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(environment["device_name"]).lower()).strip("-")
    return f"{slug}-{str(environment['date'])[:10]}.json"


def collect(outs: list[Path], results: Path) -> Path:
    docs: dict = {}
    for out in outs:
        docs |= {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))}
    docs = {name: d for name, d in docs.items() if not (isinstance(d, dict) and "files" in d)}  # earlier merges
    envs = [d["environment"] for d in docs.values() if isinstance(d, dict) and "environment" in d]
    if not envs:
        raise SystemExit(f"no vitfast bench JSON under {', '.join(map(str, outs))}: run benchmarks/run_gpu.sh first.")
    env = envs[0]
    target = results / merged_name(env)
    if target.is_file():
        docs = {**json.loads(target.read_text()).get("files", {}), **docs}
    doc = {"device": env["device_name"], "torch": env["torch"], "triton": env["triton"], "cuda": env.get("cuda"),
           "date": env["date"], "files": docs}
    results.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", type=Path, nargs="+", metavar="OUT_DIR")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    print(collect(args.outs, args.results))
