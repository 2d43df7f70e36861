"""The two tables the kernels are driven by, both shipped as JSON beside this file.

- tiles.json: each kernel's launch configuration (block sizes, warps, stages) per tile family
  (kernels/arch.py), dtype class, head dim and size. A table, not a timing race, so every run and every
  rank launches the same tiles and gets bit-identical results, and the first step compiles one
  configuration, not ten. `VITFAST_AUTOTUNE=FILE.json` turns on timing-based tuning among a family's
  rows (for the GPU run: ``bash benchmarks/run_gpu.sh tune``) and writes each winner, with every
  candidate's time, to FILE.json as it is found, for a developer to fold back into the table.
- dispatch.json: where ``backend="auto"`` takes a Triton kernel (kernels/dispatch.py), rows written
  from a recorded GPU run.

`VITFAST_TILES` and `VITFAST_DISPATCH` name other files to read instead (the GPU run, tests).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TILES_ENV, DISPATCH_ENV, AUTOTUNE_ENV = "VITFAST_TILES", "VITFAST_DISPATCH", "VITFAST_AUTOTUNE"


def dtype_class(dtype: torch.dtype) -> str:
    """"fp32" for float32 (and float64), "16bit" for float16 and bfloat16."""
    return "16bit" if dtype in (torch.float16, torch.bfloat16) else "fp32"


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration: the kernel's block-size constexprs, warps and pipeline stages."""

    params: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, params: dict[str, int], num_warps: int, num_stages: int) -> TileConfig:
        return cls(tuple(sorted(params.items())), int(num_warps), int(num_stages))

    def __getitem__(self, name: str) -> int:
        return dict(self.params)[name]

    def launch_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``kernel[grid](...)``."""
        return {**dict(self.params), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def __str__(self) -> str:
        blocks = ",".join(f"{k.removeprefix('BLOCK_') or k}={v}" for k, v in self.params)
        return f"{blocks} w{self.num_warps} s{self.num_stages}"


@dataclass(frozen=True)
class TileRow:
    """A row of tiles.json: `config` for the kernel on these families, dtype class and sizes."""

    families: tuple[str, ...]
    dtype: str  # "16bit", "fp32" or "any"
    max_head_dim: int | None
    max_size: int | None
    config: TileConfig

    def matches(self, family: str, dclass: str, head_dim: int, size: int) -> bool:
        return (family in self.families and self.dtype in (dclass, "any")
                and (self.max_head_dim is None or head_dim <= self.max_head_dim)
                and (self.max_size is None or size <= self.max_size))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the kernel table {path}: {exc}. Fix the file, or unset "
                         f"{TILES_ENV}/{DISPATCH_ENV} to use the tables shipped with vitfast.") from None


@functools.lru_cache(maxsize=None)
def _tiles(path: str) -> dict[str, tuple[TileRow, ...]]:
    table = _read(Path(path))["tiles"]
    return {kernel: tuple(TileRow(tuple(r["families"]), r["dtype"], r["max_head_dim"], r["max_size"],
                                  TileConfig.of(r["config"], r["num_warps"], r["num_stages"]))
                          for r in rows)
            for kernel, rows in table.items()}


def tiles_path() -> Path:
    return Path(os.environ.get(TILES_ENV) or HERE / "tiles.json")


def tile_rows(kernel: str) -> tuple[TileRow, ...]:
    """Every row of `kernel` ("attention.fwd", "window.bwd", "clip.grad", ...) in the tile table."""
    return _tiles(str(tiles_path())).get(kernel, ())


def tile_for(kernel: str, family: str | None, dtype: torch.dtype, head_dim: int, size: int) -> TileConfig | None:
    """The configuration `kernel` launches with, or None where the table has none (it does not run there)."""
    if family is None:
        return None
    dclass = dtype_class(dtype)
    return next((r.config for r in tile_rows(kernel) if r.matches(family, dclass, head_dim, size)), None)


def required_tile(kernel: str, family: str | None, dtype: torch.dtype, head_dim: int, size: int) -> TileConfig:
    """tile_for's configuration, or a ValueError naming what the table lacks (the launchers' check)."""
    config = tile_for(kernel, family, dtype, head_dim, size)
    if config is None:
        raise ValueError(f"the tile table has no configuration of {kernel} for {family or 'this device'}, "
                         f"{dtype}, head dim {head_dim}, size {size}; use another backend for these inputs.")
    return config


def candidates(kernel: str, family: str, dtype: torch.dtype, head_dim: int) -> list[TileConfig]:
    """The distinct configurations of `kernel`'s rows that may run for this family, dtype and head dim:
    what opt-in tuning times."""
    dclass = dtype_class(dtype)
    seen: dict[TileConfig, None] = {}
    for r in tile_rows(kernel):
        if r.matches(family, dclass, head_dim, 0):
            seen.setdefault(r.config)
    return list(seen)


# --------------------------------------------------------------------------------------------------
# Opt-in tuning (the GPU run): time every candidate once per key, use and record the fastest.
# --------------------------------------------------------------------------------------------------


@dataclass
class _Tuned:
    winners: dict[tuple, TileConfig] = field(default_factory=dict)
    times: dict[tuple, dict[str, float]] = field(default_factory=dict)


_TUNED = _Tuned()


def autotuning() -> Path | None:
    """Where opt-in tuning records its winners (VITFAST_AUTOTUNE), or None when it is off."""
    value = os.environ.get(AUTOTUNE_ENV, "").strip()
    return Path(value) if value and value != "0" else None


def _record_winners(path: Path) -> None:
    """Merge this process's winners into `path` (several processes of one run share the file)."""
    try:
        known = json.loads(path.read_text())["winners"] if path.is_file() else []
    except (OSError, json.JSONDecodeError, KeyError):
        known = []
    mine = list(tuned_rows())
    keys = {(r["kernel"], r["families"][0], r["dtype"], r["head_dim"], r["size"], tuple(r["extra_key"])) for r in mine}
    kept = [r for r in known
            if (r["kernel"], r["families"][0], r["dtype"], r["head_dim"], r["size"], tuple(r["extra_key"])) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"winners": kept + mine}, indent=1) + "\n")


def launch(kernel: str, family: str | None, dtype: torch.dtype, head_dim: int, size: int,
           run: Callable[[TileConfig], None], tune_key: tuple = ()) -> TileConfig:
    """Run `run` with `kernel`'s tile from the table (or, under VITFAST_AUTOTUNE on a GPU, the
    fastest candidate for this key, recorded in that file); returns the configuration used. Raises
    ValueError when the table has no tile for these inputs."""
    config = required_tile(kernel, family, dtype, head_dim, size)
    record = autotuning()
    if record is not None and family not in (None, "interpreter"):
        key = (kernel, family, dtype_class(dtype), head_dim, size, *tune_key)
        if key not in _TUNED.winners:
            from triton.testing import do_bench

            times = {c: do_bench(lambda c=c: run(c), warmup=5, rep=20) for c in candidates(kernel, family, dtype,
                                                                                            head_dim)}
            _TUNED.winners[key] = min(times, key=times.get)
            _TUNED.times[key] = {str(c): t for c, t in times.items()}
            _record_winners(record)
        config = _TUNED.winners[key]
    run(config)
    return config


def tuned_rows() -> Iterator[dict]:
    """What opt-in tuning found, one record per key: the winner as a tiles.json row and every time (ms)."""
    for key, config in _TUNED.winners.items():
        kernel, family, dclass, head_dim, size, *rest = key
        yield {"kernel": kernel, "families": [family], "dtype": dclass, "head_dim": head_dim, "size": size,
               "extra_key": list(rest), "config": dict(config.params), "num_warps": config.num_warps,
               "num_stages": config.num_stages, "times_ms": _TUNED.times[key]}


# --------------------------------------------------------------------------------------------------
# The dispatch table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchRow:
    """Triton measured ahead of the fallback for `kernel` on `arch` in `dtype` over these ranges."""

    kernel: str  # "attention", "causal_attention", "window_attention", "clip_loss"
    arch: str  # "sm_90", ...
    dtype: str  # "bfloat16", "float16", "float32"
    head_dim: tuple[int, int]  # inclusive range
    size: tuple[int, int]  # inclusive range
    speedup: float
    source: str

    def matches(self, kernel: str, arch: str, dtype: torch.dtype, head_dim: int, size: int) -> bool:
        return (self.kernel == kernel and self.arch == arch and self.dtype == str(dtype).removeprefix("torch.")
                and self.head_dim[0] <= head_dim <= self.head_dim[1] and self.size[0] <= size <= self.size[1])


def dispatch_path() -> Path:
    return Path(os.environ.get(DISPATCH_ENV) or HERE / "dispatch.json")


@functools.lru_cache(maxsize=None)
def _dispatch(path: str) -> tuple[DispatchRow, ...]:
    return tuple(DispatchRow(r["kernel"], r["arch"], r["dtype"], tuple(r["head_dim"]), tuple(r["size"]),
                             float(r["speedup"]), r["source"])
                 for r in _read(Path(path))["rows"])


def dispatch_rows() -> tuple[DispatchRow, ...]:
    return _dispatch(str(dispatch_path()))


def dispatch_row(kernel: str, arch: str, dtype: torch.dtype, head_dim: int, size: int) -> DispatchRow | None:
    """The dispatch row that sends these inputs to Triton, if any."""
    return next((r for r in dispatch_rows() if r.matches(kernel, arch, dtype, head_dim, size)), None)


def write_table(path: Path, doc: dict, rows_key: str) -> None:
    """Write a table as JSON with one row per line (readable diffs when a GPU run updates it)."""
    lines = ["{"]
    for key, value in doc.items():
        if key == rows_key:
            continue
        lines.append(f" {json.dumps(key)}: {json.dumps(value)},")
    body = doc[rows_key]
    if isinstance(body, dict):
        lines.append(f" {json.dumps(rows_key)}: {{")
        for i, (kernel, rows) in enumerate(body.items()):
            inner = ",\n".join(f"   {json.dumps(r)}" for r in rows)
            lines.append(f"  {json.dumps(kernel)}: [\n{inner}\n  ]" + ("," if i < len(body) - 1 else ""))
        lines.append(" }")
    else:
        inner = ",\n".join(f"  {json.dumps(r)}" for r in body)
        lines.append(f" {json.dumps(rows_key)}: [" + (f"\n{inner}\n ]" if body else "]"))
    lines.append("}")
    Path(path).write_text("\n".join(lines) + "\n")
