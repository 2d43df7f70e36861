"""Every tile of every kernel against the float64 oracle, on this GPU (benchmarks/run_gpu.sh, step 1).

    python benchmarks/check_tiles.py [--out FILE] [--all-families] [--dtypes bf16,fp16,fp32] [--jobs N]
    python benchmarks/check_tiles.py --smoke --out FILE        # CPU: the interpreter, tiny shapes
    python benchmarks/check_tiles.py --racecheck --out FILE    # step 2: the window-12 backward under racecheck

For the GPU's tile family (vitfast.kernels.arch.device_family; with --all-families also every other
family whose tiles fit this GPU's shared memory) each distinct configuration of each kernel in
kernels/tiles.json runs explicitly, forward and every gradient, at a few odd shapes, in bf16, fp16 and
fp32, and each output is held to the rule every kernel test uses (tests/kernels/oracle.py): its max
error against a float64 oracle at most twice eager PyTorch's in the same dtype, plus a rounding floor.
Outputs are poisoned (NaN) before each launch, so an element a kernel skips fails.

Attention tiles are passed to the launchers; the window and CLIP launchers read theirs from the tile
table only, so each of their runs points VITFAST_TILES at a temporary table holding just the tiles
under test. The attention kernels' configurations differ in number (forward, dK/dV, dQ); they are
paired round-robin until each has run. On a GPU the runs are spread over worker processes, a fresh one
per run (Triton compiles on the CPU, once per configuration and shape class: the parallelism is for
them; and a kernel that faults leaves its process's CUDA context unusable, failing only its own run).

Writes one JSON document: a row per (kernel, configuration, dtype, shape, output) with the error, the
bound, pass or fail. Exits 1 when any row failed, after a summary naming the failures.

Numerics: fp32 runs the kernels' exact ("ieee") dot against eager float32 with TF32 off. 16-bit
operands ignore the dot precision; they are passed "tf32", as `vitfast bench` and training pass it
under their TF32 default, so the compiled kernels are the very ones the benchmarks then load from
Triton's cache.

--racecheck runs this script's --racecheck-case (one 24×24 map, window 12, shift 6, 2 heads of 32,
bf16: the window backward's three 64-token tiles per window, the one place the kernels rely on barrier
ordering) under ``compute-sanitizer --tool racecheck``, found on PATH or in /usr/local/cuda*/bin, and
writes its verdict ("pass", "fail", "not available", "could not run", "timed out").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORACLE_PATH = HERE.parent / "tests" / "kernels" / "oracle.py"
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
KERNEL_GROUPS = {"attention": ("attention.fwd", "attention.bwd", "attention.dkdv", "attention.dq"),
                 "window": ("window.fwd", "window.bwd"),
                 "clip": ("clip.lse", "clip.grad")}
# The op each tile kernel belongs to, as the dispatch table names it.
OP_OF_GROUP = {"attention": "attention", "window": "window_attention", "clip": "clip_loss"}
# Which kernel produces each output.
# Attention's gradients twice: the one-launch backward (short sequences), then the split kernels.
OUTPUT_KERNEL = {"attention": {"out": "attention.fwd", "dq": "attention.bwd", "dk": "attention.bwd",
                               "dv": "attention.bwd", "dq (split)": "attention.dq", "dk (split)": "attention.dkdv",
                               "dv (split)": "attention.dkdv"},
                 "window": {"out": "window.fwd", "dqkv": "window.bwd", "dtable": "window.bwd",
                            "dqkv_bias": "window.bwd"},
                 "clip": {"loss": "clip.lse", "d_image": "clip.grad", "d_text": "clip.grad", "d_scale": "clip.grad",
                          "d_bias": "clip.grad"}}


@dataclass(frozen=True)
class Shapes:
    """The shapes one run checks: attention (batch, heads, lengths, head dims), window maps
    (batch, height, width, heads, head dim, window, shift) and CLIP losses (batches, dims)."""

    attention_bh: tuple[int, int]
    attention_lens: tuple[int, ...]
    attention_head_dims: tuple[int, ...]
    windows: tuple[tuple[int, int, int, int, int, int, int], ...]
    clip_batches: tuple[int, ...]
    clip_dims: tuple[int, ...]


# batch·heads = 15 is a multiple of no block size; every length is odd. Window maps: Swin-T's stage 1
# (56×56, window 7, shift 3), Swin-B 384's window 12 (three 64-token tiles per window) on a 24×24 map,
# and a window-12 map that pads (30×17: padded tokens carry qkv_bias, whose gradient only they feed).
GPU_SHAPES = Shapes(attention_bh=(3, 5), attention_lens=(197, 577, 1025), attention_head_dims=(64, 128),
                    windows=((3, 56, 56, 3, 32, 7, 3), (3, 24, 24, 2, 32, 12, 6), (2, 30, 17, 2, 32, 12, 6)),
                    clip_batches=(1000, 4097), clip_dims=(512, 768))
# The interpreter runs kernels through numpy: tiny shapes, still odd and still padded and shifted.
SMOKE_SHAPES = Shapes(attention_bh=(1, 3), attention_lens=(17, 70), attention_head_dims=(32,),
                      windows=((1, 9, 9, 2, 16, 7, 3), (1, 13, 12, 1, 16, 12, 6)),
                      clip_batches=(65,), clip_dims=(32,))

RACE_CASE = dict(batch=1, height=24, width=24, heads=2, head_dim=32, window=12, shift=6, dtype="bfloat16")
RACE_KERNEL = "_window_attn_bwd_kernel"
RACE_DONE = "racecheck case ran"


# ---------------------------------------------------------------------------------------------- the rule


def load_oracle():
    """tests/kernels/oracle.py, the rule every kernel test applies, imported by path."""
    spec = importlib.util.spec_from_file_location("vitfast_kernel_oracle", ORACLE_PATH)
    if spec is None or not ORACLE_PATH.is_file():
        raise SystemExit(f"cannot find the oracle rule at {ORACLE_PATH}; run from a vitfast checkout.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def judge(oracle, name: str, got, ref, eager, like, floor: float | None = None) -> dict:
    """One output against the float64 oracle: the verdict of oracle.assert_matches_oracle, with the
    numbers that rule compares (the error, eager's error, the floor and the bound) for the report.
    `like` as in that rule; `floor` replaces its rounding floor (it must where `like` is None)."""
    err = (got.double() - ref).abs().max().item() if got.numel() else 0.0
    eager_err = (eager.double() - ref).abs().max().item() if eager.numel() else 0.0
    floors = None if floor is None else {name: floor}
    floor = oracle.rounding_floor(ref, like.dtype) if floor is None else floor
    try:
        oracle.assert_matches_oracle([name], [got], [ref], [eager], [like], floors=floors)
        passed, status = True, "ok"
    except AssertionError as exc:
        passed, status = False, str(exc) or f"{name} differs from the oracle"
    return {"error": _finite(err), "eager_error": _finite(eager_err), "floor": floor,
            "bound": _finite(2 * eager_err + floor), "passed": passed, "status": status}


# ----------------------------------------------------------------------------------------- work items


@dataclass
class Item:
    """One unit of work for a worker: a kernel group run with one configuration per kernel (`configs`)
    at the cases of `shape` in one dtype."""

    group: str  # attention, window, clip
    dtype: str  # torch dtype name
    configs: dict  # kernel name -> TileConfig
    families: dict  # kernel name -> the families whose rows hold that configuration
    shape: dict
    family: str  # the device's tile family (window and CLIP tables are written for it)
    smoke: bool
    rows: list = field(default_factory=list)


def _configs_for(kernel: str, families: list[str], dtype, head_dim: int) -> dict:
    """The distinct configurations of `kernel`'s rows on `families` that take `dtype` at `head_dim`,
    each with the families whose rows hold it (sizes do not matter: a tile must be right at any size)."""
    from vitfast.kernels import tables

    dclass = tables.dtype_class(dtype)
    found: dict = {}
    for row in tables.tile_rows(kernel):
        fams = [f for f in row.families if f in families]
        if fams and row.dtype in (dclass, "any") and (row.max_head_dim is None or head_dim <= row.max_head_dim):
            found.setdefault(row.config, set()).update(fams)
    return {c: sorted(f) for c, f in found.items()}


def _combos(group: str, families: list[str], dtype, head_dim: int) -> list[tuple[dict, dict]]:
    """Round-robin pairs of the group's kernels' configurations until each has run once."""
    per_kernel = {k: _configs_for(k, families, dtype, head_dim) for k in KERNEL_GROUPS[group]}
    if not all(per_kernel.values()):
        return []
    lists = {k: list(v) for k, v in per_kernel.items()}
    combos = []
    for i in range(max(map(len, lists.values()))):
        configs = {k: c[i % len(c)] for k, c in lists.items()}
        combos.append((configs, {k: per_kernel[k][configs[k]] for k in configs}))
    return combos


def plan(family: str, families: list[str], dtypes: list[str], groups: list[str], shapes: Shapes,
         smoke: bool) -> tuple[list[Item], list[str]]:
    """The work items, heaviest first, and notes on what has no tile here (nothing to check)."""
    import torch

    items, notes = [], []
    for name in dtypes:
        dtype = getattr(torch, name)

        def add(group: str, head_dim: int, shape: dict) -> None:
            combos = _combos(group, families, dtype, head_dim)
            if not combos:
                notes.append(f"{group} has no tile for {name} at head dim {head_dim} on {', '.join(families)}")
            for configs, fams in combos:
                items.append(Item(group, name, configs, fams, shape, family, smoke))

        if "attention" in groups:
            for head_dim in shapes.attention_head_dims:
                for causal in (False, True):
                    add("attention", head_dim, dict(batch=shapes.attention_bh[0], heads=shapes.attention_bh[1],
                                                    lens=list(shapes.attention_lens), head_dim=head_dim,
                                                    causal=causal))
        if "window" in groups:
            for batch, height, width, heads, head_dim, window, shift in shapes.windows:
                add("window", head_dim, dict(batch=batch, height=height, width=width, heads=heads, head_dim=head_dim,
                                             window=window, shift=shift))
        if "clip" in groups:
            for dim in shapes.clip_dims:
                add("clip", dim, dict(batches=list(shapes.clip_batches), dim=dim))
    order = {"attention": 0, "window": 1, "clip": 2}
    items.sort(key=lambda it: order[it.group])
    return items, notes


# ------------------------------------------------------------------------------------------- running


def _device(smoke: bool):
    import torch

    return torch.device("cpu" if smoke else "cuda")


def _randn(shape, dtype, device, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _precision(dtype) -> str:
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"


@contextlib.contextmanager
def poisoned():
    """Every tensor the kernels allocate with torch.empty (and the window launcher's `_empty`) starts
    as NaN, so an element a kernel never writes fails the check."""
    import torch

    from vitfast.kernels import swin_attention

    real, real_window = torch.empty, swin_attention._empty

    def nan_empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty, swin_attention._empty = nan_empty, nan_empty
    try:
        yield
    finally:
        torch.empty, swin_attention._empty = real, real_window


@contextlib.contextmanager
def only_tiles(configs: dict, family: str):
    """Point VITFAST_TILES at a table holding just `configs` (kernel -> TileConfig) for `family`, at
    every dtype, head dim and size, for the launchers that read their tiles from the table."""
    from vitfast.kernels import dispatch, tables

    table = {"tiles": {kernel: [{"families": [family], "dtype": "any", "max_head_dim": None, "max_size": None,
                                 "config": dict(c.params), "num_warps": c.num_warps, "num_stages": c.num_stages}]
                       for kernel, c in configs.items()}}
    before = os.environ.get(tables.TILES_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiles.json"
        path.write_text(json.dumps(table))
        os.environ[tables.TILES_ENV] = str(path)
        dispatch.reset()
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(tables.TILES_ENV, None)
            else:
                os.environ[tables.TILES_ENV] = before
            dispatch.reset()


def _grads(out, leaves, grad):
    import torch

    grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


# A case builder takes (item, size, device, oracle) and makes the case's inputs; it returns kernels()
# (the outputs through the tiles under test, poisoned), eager(cast=None) (the same through the eager
# oracle, in the inputs' dtype or upcast to `cast`), the tensor each output is like (oracle.py's
# `likes`) and the floors that replace oracle.py's rounding floor.


def _attention_case(item: Item, n: int, device, oracle):
    import torch

    from vitfast.kernels import attention
    from vitfast.kernels import flash_attention as fa

    s = item.shape
    dtype = getattr(torch, item.dtype)
    shape = (s["batch"], s["heads"], n, s["head_dim"])
    causal, scale = s["causal"], s["head_dim"] ** -0.5
    q, k, v, do = (_randn(shape, dtype, device, _seed("attention", item.dtype, shape, causal, i)) for i in range(4))

    def eager(cast=None):
        leaves = [(x if cast is None else x.to(cast)).detach().requires_grad_() for x in (q, k, v)]
        out = attention(*leaves, causal=causal, scale=scale, backend="eager")
        grads = _grads(out, leaves, do if cast is None else do.to(cast))
        return [out, *grads, *grads]

    def kernels():
        c = item.configs
        with poisoned():
            out, lse = fa.attention_forward(q, k, v, causal, scale, _precision(dtype), config=c["attention.fwd"])
            fused = fa.attention_backward(do, q, k, v, out, lse, causal, scale, _precision(dtype),
                                          bwd_config=c["attention.bwd"])
            split = fa.attention_backward(do, q, k, v, out, lse, causal, scale, _precision(dtype),
                                          dkdv_config=c["attention.dkdv"], dq_config=c["attention.dq"])
        return [out, *fused, *split]

    return kernels, eager, (q, q, k, v, q, k, v), {}


def _window_case(item: Item, tokens: int, device, oracle):
    import torch

    from vitfast.kernels import window_attention

    s = item.shape
    dtype = getattr(torch, item.dtype)
    C = s["heads"] * s["head_dim"]
    # The table and the qkv bias are float32 parameters, as in a model under autocast.
    seed = _seed("window", item.dtype, tuple(sorted(s.items())))
    qkv = _randn((s["batch"], s["height"], s["width"], 3 * C), dtype, device, seed)
    table = _randn(((2 * s["window"] - 1) ** 2, s["heads"]), torch.float32, device, seed + 1)
    bias = _randn((3 * C,), torch.float32, device, seed + 2)
    dout = _randn((s["batch"], s["height"], s["width"], C), dtype, device, seed + 3)
    kw = dict(num_heads=s["heads"], window_size=s["window"], shift_size=s["shift"])

    def run(backend, cast=None, precision="auto"):
        leaves = [(x if cast is None else x.to(cast)).detach().requires_grad_() for x in (qkv, table, bias)]
        out = window_attention(leaves[0], leaves[1], qkv_bias=leaves[2], backend=backend, precision=precision, **kw)
        return [out, *_grads(out, leaves, dout if cast is None else dout.to(cast))]

    def kernels():
        with only_tiles(item.configs, item.family), poisoned():
            return run("triton", precision=_precision(dtype))

    def eager(cast=None):
        return run("eager", cast)

    return kernels, eager, (dout, qkv, table, bias), {}


def _clip_case(item: Item, n: int, device, oracle):
    import torch
    import torch.nn.functional as F

    from vitfast.kernels import clip_loss

    d = item.shape["dim"]
    dtype = getattr(torch, item.dtype)
    g = torch.Generator().manual_seed(_seed("clip", item.dtype, n, d))
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    # Matching texts near their images, as in training, so the diagonal matters.
    text = F.normalize(image + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    image, text = image.to(device=device, dtype=dtype), text.to(device=device, dtype=dtype)
    scale, bias = torch.tensor(50.0, device=device), torch.tensor(-1.0, device=device)

    def run(backend, cast=None, precision="auto"):
        leaves = [x.detach().clone().to(cast or x.dtype).requires_grad_() for x in (image, text, scale, bias)]
        loss = clip_loss(leaves[0], leaves[1], leaves[2], logit_bias=leaves[3], backend=backend, precision=precision)
        return [loss, *_grads(loss, leaves, None)]

    def kernels():
        with only_tiles(item.configs, item.family), poisoned():
            return run("triton", precision=_precision(dtype))

    def eager(cast=None):
        return run("eager", cast)

    # As tests/kernels/test_clip_loss.py: the loss is float32 whatever the inputs and as large as the
    # logits, so its floor is float32's rounding at the scale, not at the loss's own magnitude.
    loss_floor = 4 * torch.finfo(torch.float32).eps * float(scale) + oracle.FLOOR
    return kernels, eager, (None, image, text, scale, bias), {"loss": loss_floor}


CASES = {"attention": _attention_case, "window": _window_case, "clip": _clip_case}


def _cases(item: Item) -> list[tuple[str, int, int]]:
    """(the case in words, its size as the dispatch table counts it, its head dim) of each case of `item`:
    sequence length for attention, window tokens for window attention, batch (and embedding dim) for CLIP."""
    s = item.shape
    if item.group == "attention":
        return [(f"B={s['batch']} H={s['heads']} N={n} D={s['head_dim']}" + (" causal" if s["causal"] else ""), n,
                 s["head_dim"]) for n in s["lens"]]
    if item.group == "window":
        tokens = min(s["window"], s["height"]) * min(s["window"], s["width"])
        return [(f"B={s['batch']} {s['height']}×{s['width']} heads={s['heads']} D={s['head_dim']} window "
                 f"{s['window']} shift {s['shift']}", tokens, s["head_dim"])]
    return [(f"N={n} D={s['dim']} scale 50 bias -1", n, s["dim"]) for n in s["batches"]]


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _rows(item: Item, case: str, size: int, head_dim: int, results: dict | str) -> list[dict]:
    """A row per output of one case: `results` maps each output to judge()'s verdict, or is why none ran."""
    config_names = {k: str(c) for k, c in item.configs.items()}
    rows = []
    for name, kernel in OUTPUT_KERNEL[item.group].items():
        row = {"kernel": kernel, "config": config_names[kernel], "families": item.families[kernel],
               "op": OP_OF_GROUP[item.group], "dtype": item.dtype, "case": case, "head_dim": head_dim, "size": size,
               "output": name, "with": {k: v for k, v in config_names.items() if k != kernel}}
        if isinstance(results, str):
            row.update(error=None, eager_error=None, floor=None, bound=None, passed=False, status=results)
        else:
            row.update(results[name])
        rows.append(row)
    return rows


def run_item(item: Item) -> list[dict]:
    """Run one item's cases; a row per (case, output). Whatever fails (a tile that does not compile or
    launch, the oracle running out of memory) fails that case's rows, with the error as their status."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # eager float32, the yardstick, multiplies exactly
    oracle = load_oracle()
    device = _device(item.smoke)
    rows = []
    for case, size, head_dim in _cases(item):
        try:
            kernels, eager, likes, floors = CASES[item.group](item, size, device, oracle)
            ref, yardstick = eager(torch.float64), eager()
        except Exception as exc:  # noqa: BLE001 - no verdict without the oracle: the case fails, the run goes on
            rows += _rows(item, case, size, head_dim, f"oracle {_error(exc)}")
            continue
        try:
            got = kernels()
            if device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a tile that fails to compile or launch is a failed case
            rows += _rows(item, case, size, head_dim, _error(exc))
            continue
        rows += _rows(item, case, size, head_dim, {
            name: judge(oracle, name, got[i], ref[i], yardstick[i], likes[i], floors.get(name))
            for i, name in enumerate(OUTPUT_KERNEL[item.group])})
    return rows


def run_all(items: list[Item], jobs: int) -> list[dict]:
    """Every item's rows: in this process with one job, else in `jobs` worker processes, a fresh one per
    item (a kernel that faults leaves its CUDA context unusable: only its own item may fail of it)."""
    if jobs == 1:
        return [row for item in items for row in run_item(item)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent has a CUDA context.
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    rows = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), **fresh) as pool:
        futures = [pool.submit(run_item, item) for item in items]
        for item, future in zip(items, futures):
            try:
                rows += future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died fails its item's cases
                for case, size, head_dim in _cases(item):
                    rows += _rows(item, case, size, head_dim, f"worker {_error(exc)}")
    return rows


# ----------------------------------------------------------------------------------------- reporting


def summarize(rows: list[dict], notes: list[str]) -> list[str]:
    """What the log shows: per (kernel, configuration, dtype) the cases passed and the worst error as a
    fraction of its bound, then every failure."""
    lines = []
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["config"], r["dtype"])].append(r)
    width = max((len(k[0]) + len(k[1]) for k in groups), default=20) + 3
    for (kernel, config, dtype), rs in sorted(groups.items()):
        ratios = [r["error"] / r["bound"] for r in rs if r["error"] is not None and r["bound"]]
        worst = f"worst error {max(ratios):.2f}× its bound" if ratios else "no error measured"
        ok = sum(r["passed"] for r in rs)
        lines.append(f"  {(kernel + ' ' + config).ljust(width)} {dtype:9} {ok:3}/{len(rs):<3} passed, {worst}")
    lines += [f"  note: {n}" for n in notes]
    failed = [r for r in rows if not r["passed"]]
    if failed:
        lines.append(f"FAILED: {len(failed)} of {len(rows)} checks")
        for r in failed[:40]:
            lines.append(f"  {r['kernel']} [{r['config']}] {r['dtype']} {r['case']} {r['output']}: {r['status']}")
        if len(failed) > 40:
            lines.append(f"  ... and {len(failed) - 40} more (all in the JSON)")
    else:
        lines.append(f"PASSED: all {len(rows)} checks")
    return lines


def _tiles_digest() -> dict:
    from vitfast.kernels import tables

    path = tables.tiles_path()
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def check(args) -> int:
    """The tile check (step 1): plan, run (in worker processes on a GPU), write the JSON, summarize."""
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
    import torch

    from vitfast.bench.harness import environment_info
    from vitfast.kernels import arch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("check_tiles.py needs a CUDA GPU; --smoke runs the interpreter's tiles on the CPU.")
    device = _device(args.smoke)
    dtypes = [DTYPE_NAMES[d] for d in args.dtypes.split(",")] if args.dtypes else (
        ["float32", "float16"] if args.smoke else ["bfloat16", "float16", "float32"])
    if args.smoke and "bfloat16" in dtypes:
        raise SystemExit("--smoke cannot check bf16: the interpreter's bf16 dot is broken (tests/kernels/"
                         "bf16_shim.py); check bf16 on a GPU.")
    groups = args.kernels.split(",")
    if args.smoke:
        family, name = "interpreter", "interpreter"
        families = ["interpreter", *arch.FAMILIES] if args.all_families else ["interpreter"]
    else:
        family, name = arch.device_family(device), arch.device_arch(device)
        if family is None:
            raise SystemExit(f"this GPU ({name}) has no tile family: the kernels need sm_80 or newer.")
        limit = arch.shared_memory_limit(device)
        families = [family] + ([f for f in arch.FAMILIES if f != family and arch.FAMILY_SHARED_MEMORY[f] <= limit]
                               if args.all_families else [])
    items, notes = plan(family, families, dtypes, groups, SMOKE_SHAPES if args.smoke else GPU_SHAPES, args.smoke)
    jobs = args.jobs or (1 if args.smoke else max(1, min(12, (os.cpu_count() or 2) - 2)))
    print(f"tile check on {name} (family {family}; tiles of {', '.join(families)}): {len(items)} runs of "
          f"{', '.join(groups)} in {', '.join(dtypes)}, {jobs} worker process(es)", flush=True)
    start = time.perf_counter()
    rows = run_all(items, jobs)
    rows.sort(key=lambda r: (r["kernel"], r["config"], r["dtype"], r["case"], r["output"]))
    failed = sum(not r["passed"] for r in rows)
    doc = {
        "check": "tiles",
        "about": "Every tile of kernels/tiles.json for this GPU's family, run explicitly against the float64 "
                 "oracle (benchmarks/check_tiles.py). A row per (kernel, config, dtype, case, output): max error "
                 "against float64, eager PyTorch's in the same dtype, the floor, the bound (2 × eager's error + "
                 "floor, tests/kernels/oracle.py) and the verdict; 'with' names the configs it ran beside.",
        "environment": environment_info(device),
        "arch": name,
        "family": family,
        "families": families,
        "tiles": _tiles_digest(),
        "parameters": {"smoke": args.smoke, "dtypes": dtypes, "kernels": groups, "all_families": args.all_families,
                       "jobs": jobs},
        "seconds": round(time.perf_counter() - start, 1),
        "passed": failed == 0 and bool(rows),
        "failed": failed,
        "total": len(rows),
        "notes": notes,
        "rows": rows,
    }
    out = _out_path(args.out, "tile_check.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(summarize(rows, notes)))
    print(f"tile check: {len(rows)} checks in {doc['seconds']} s; wrote {out}")
    return 0 if doc["passed"] else 1


# ------------------------------------------------------------------------------------------ racecheck


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else the newest /usr/local/cuda*/bin/compute-sanitizer."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    return candidates[-1] if candidates else None


SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
ERRORS = re.compile(r"ERROR SUMMARY:\s*(\d+) errors?")


def racecheck_verdict(output: str, returncode: int | None) -> dict:
    """The verdict in compute-sanitizer's output: "pass" (the case ran and no hazard was reported),
    "fail" (hazards), or "could not run" (the case did not finish, or no summary came)."""
    match, errors = SUMMARY.search(output), ERRORS.search(output)
    if RACE_DONE not in output or (match is None and errors is None):
        why = "the case did not finish" if RACE_DONE not in output else "no racecheck summary in the output"
        return {"verdict": "could not run", "reason": f"{why} (exit code {returncode})"}
    if match is None:  # only the generic summary line
        count = int(errors.group(1))
        return {"verdict": "pass" if count == 0 else "fail", "hazards": count, "errors": count, "warnings": 0}
    hazards, errors, warnings = (int(x) for x in match.groups())
    return {"verdict": "pass" if hazards == 0 else "fail", "hazards": hazards, "errors": errors,
            "warnings": warnings}


def racecheck(args) -> int:
    """Step 2: the window-12 backward under racecheck. Exit 1 only when it reports hazards."""
    doc: dict = {"check": "racecheck", "kernel": RACE_KERNEL, "case": RACE_CASE}
    tool = find_sanitizer()
    if tool is None:
        doc.update(verdict="not available", reason="compute-sanitizer is neither on PATH nor in /usr/local/cuda*/bin")
    else:
        base = [tool, "--tool", "racecheck"]
        case = [sys.executable, str(Path(__file__).resolve()), "--racecheck-case"]
        start = time.perf_counter()
        # Only the backward kernel is instrumented; should the filter be refused (another sanitizer
        # version), once more without it, every kernel instrumented, if time is left.
        for command in (base + ["--kernel-name", f"kns={RACE_KERNEL}"] + case, base + case):
            left = args.timeout - (time.perf_counter() - start)
            try:
                proc = subprocess.run(command, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired as exc:
                output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
                verdict = {"verdict": "timed out", "reason": f"no verdict within {args.timeout:g} s"}
                break
            output = proc.stdout + proc.stderr
            verdict = racecheck_verdict(output, proc.returncode)
            if verdict["verdict"] != "could not run" or args.timeout - (time.perf_counter() - start) < 10:
                break
        doc.update(verdict, tool=tool, command=" ".join(command), seconds=round(time.perf_counter() - start, 1),
                   output_tail=output[-4000:])
        print(output[-8000:])
    out = _out_path(args.out, "racecheck.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    detail = doc.get("reason") or f"{doc.get('hazards', 0)} hazards"
    print(f"racecheck of the window-12 backward: {doc['verdict']} ({detail}); wrote {out}")
    return 1 if doc["verdict"] == "fail" else 0


def racecheck_case() -> int:
    """What runs under the sanitizer: one window-12 forward and backward through the table's tiles."""
    import torch

    from vitfast.kernels import window_attention

    c, device = RACE_CASE, torch.device("cuda")
    dtype = getattr(torch, c["dtype"])
    C = c["heads"] * c["head_dim"]
    qkv = _randn((c["batch"], c["height"], c["width"], 3 * C), dtype, device, 1).requires_grad_()
    table = _randn(((2 * c["window"] - 1) ** 2, c["heads"]), torch.float32, device, 2).requires_grad_()
    bias = _randn((3 * C,), torch.float32, device, 3).requires_grad_()
    out = window_attention(qkv, table, qkv_bias=bias, num_heads=c["heads"], window_size=c["window"],
                           shift_size=c["shift"], backend="triton", precision="tf32")
    grads = torch.autograd.grad(out, (qkv, table, bias), torch.randn_like(out))
    torch.cuda.synchronize()
    if not all(torch.isfinite(g).all() for g in grads):
        print("racecheck case: non-finite gradients")
        return 1
    print(f"{RACE_DONE}: window-12 backward, {c}")
    return 0


# ------------------------------------------------------------------------------------------------ CLI


def _out_path(out: str, default_name: str) -> Path:
    path = Path(out)
    if path.is_dir():
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="JSON file to write, or a folder (then tile_check.json or "
                                                   "racecheck.json in it). Default: the current folder.")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run: the interpreter family's tiles at tiny shapes, fp32 and fp16.")
    parser.add_argument("--all-families", action="store_true",
                        help="also every other family's tiles that fit this GPU's shared memory.")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated among bf16, fp16, fp32 (default: all three; fp32,fp16 with --smoke).")
    parser.add_argument("--kernels", default="attention,window,clip",
                        help="comma-separated among attention, window, clip (default: all).")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: one per core up to 12 on a GPU, 1 with --smoke).")
    parser.add_argument("--racecheck", action="store_true",
                        help="instead of the tile check: the window-12 backward under compute-sanitizer's racecheck.")
    parser.add_argument("--timeout", type=float, default=120.0, help="with --racecheck: seconds before giving up.")
    parser.add_argument("--racecheck-case", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in (args.dtypes or "bf16").split(","):
        if name not in DTYPE_NAMES:
            raise SystemExit(f"unknown dtype {name!r} in --dtypes; choose among {', '.join(DTYPE_NAMES)}.")
    for name in args.kernels.split(","):
        if name not in KERNEL_GROUPS:
            raise SystemExit(f"unknown kernel {name!r} in --kernels; choose among {', '.join(KERNEL_GROUPS)}.")
    if args.racecheck_case:
        return racecheck_case()
    if args.racecheck:
        return racecheck(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
