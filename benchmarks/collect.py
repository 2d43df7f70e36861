"""Merge one GPU run's JSON files into benchmarks/results/<device>-<date>.json.

    python benchmarks/collect.py OUT_DIR [--results benchmarks/results]

Every ``*.json`` under OUT_DIR (the `vitfast bench` sweeps, `bench all`'s summary and the
pytest-benchmark file) goes into one document keyed by its path relative to OUT_DIR, beside the device
name and the torch and Triton versions (read from the sweeps' recorded environment).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def collect(out: Path, results: Path) -> Path:
    docs = {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))}
    docs = {name: d for name, d in docs.items() if not (isinstance(d, dict) and "files" in d)}  # earlier merges
    envs = [d["environment"] for d in docs.values() if isinstance(d, dict) and "environment" in d]
    if not envs:
        raise SystemExit(f"no vitfast bench JSON under {out}: run benchmarks/run_gpu.sh first.")
    env = envs[0]
    slug = re.sub(r"[^a-z0-9]+", "-", str(env["device_name"]).lower()).strip("-")
    target = results / f"{slug}-{str(env['date'])[:10]}.json"
    doc = {"device": env["device_name"], "torch": env["torch"], "triton": env["triton"], "cuda": env.get("cuda"),
           "date": env["date"], "files": docs}
    results.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    print(collect(args.out, args.results))
