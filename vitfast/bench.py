"""Attention benchmark: time, TFLOP/s and peak memory of each backend of `vitfast.kernels.attention`.

Library half of `vitfast bench attention` (the CLI only parses, calls and prints). Every
(mode, sequence length, backend) case becomes one :class:`AttentionBenchRow`; a case that cannot run
(Triton without CUDA, out of memory, an unsupported head dim) is a row whose ``status`` says why, so
one failure never ends a sweep.

Timing follows ``triton.testing.do_bench``: untimed warm-up calls first (the first one compiles and
autotunes), then the median of ``rep`` timed calls; on a GPU each call is timed with CUDA events after
flushing the L2 cache, on a CPU with ``time.perf_counter``. ``--warmup`` and ``--rep`` count calls
(not milliseconds as in ``do_bench``) so they mean the same on both devices.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import torch

import vitfast
from vitfast.kernels import attention

BACKENDS = ("triton", "sdpa", "eager")
# SDPA pinned to one of its kernels, so Triton can be compared with SDPA's best, not only with the
# kernel SDPA's dispatcher happens to pick. Opt-in (`--backends triton,sdpa-flash,sdpa-cudnn,...`).
SDPA_KERNELS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}
KNOWN_BACKENDS = BACKENDS + tuple(SDPA_KERNELS)
MODES = ("fwd", "fwd+bwd")
DEFAULT_SEQ_LENS = (197, 257, 577, 1025, 2048, 4096)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Backward does 2.5× the forward's matmul work (five N×N·D products against two).
BACKWARD_FLOP_RATIO = 2.5
# Larger than any current GPU's L2 (H100: 50 MiB), as in triton.testing.do_bench.
L2_FLUSH_BYTES = 256 * 1024 * 1024

T = TypeVar("T")

TRITON_NEEDS_CUDA = "skipped: Triton kernels need a CUDA GPU"
OUT_OF_MEMORY = "out of memory"

# What each JSON row field means; written into the JSON next to the rows.
FIELDS = {
    "backend": "attention backend: triton, sdpa (torch's scaled_dot_product_attention) or eager",
    "mode": "fwd: forward only, no autograd graph; fwd+bwd: forward then backward with a fixed grad",
    "seq_len": "sequence length N (queries = keys)",
    "time_ms": "median time of one call in ms (CUDA events after an L2 flush on a GPU, "
               "perf_counter on a CPU); null when the case did not run",
    "tflops": "4·B·H·N²·D for fwd, 3.5× that for fwd+bwd, halved when causal, divided by time_ms",
    "peak_mem_bytes": "peak memory allocated during one call above what was allocated before it "
                      "(the inputs and the grad output are not counted)",
    "status": "'ok', or why the case has no numbers",
}


@dataclass(frozen=True)
class DeviceDefaults:
    """The values of the CLI's "auto" flags on one kind of device."""

    batch: int
    dtype: str
    warmup: int
    rep: int


# On a GPU: the ViT-B/16 training shape (B=64, H=12, D=64) in bf16. On a CPU: one image, fp32
# (CPU bf16/fp16 matmuls are slow and say nothing about the kernels), and 3 reps (a call at N=4096
# takes seconds), so the default sweep ends in about a minute on two cores.
CUDA_DEFAULTS = DeviceDefaults(batch=64, dtype="bf16", warmup=10, rep=100)
CPU_DEFAULTS = DeviceDefaults(batch=1, dtype="fp32", warmup=1, rep=3)


class StatusRow:
    """What every benchmark row shares: a ``status`` that is "ok" when the case ran, else why not."""

    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class AttentionBenchRow(StatusRow):
    """One measured case. Numbers are None when the case did not run; ``status`` then says why."""

    backend: str
    mode: str
    seq_len: int
    time_ms: float | None
    tflops: float | None
    peak_mem_bytes: int | None
    status: str

    @property
    def case(self) -> str:
        """What the row measured besides backend and mode, for tables and notes."""
        return f"N={self.seq_len}"

    @property
    def point(self) -> str:
        """The label of the row's point in a plot."""
        return str(self.seq_len)


def defaults_for(device: torch.device) -> DeviceDefaults:
    """Defaults for batch size, dtype, warm-up and reps on `device` (CUDA or CPU)."""
    return CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS


def resolve_device(name: str) -> torch.device:
    """The device a name stands for: "auto" (the GPU if there is one, else the CPU), "cpu", "cuda[:N]"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"cannot benchmark on {name!r}; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a name stands for: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16" or "fp32"."""
    if name == "auto":
        name = defaults_for(device).dtype
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def attention_flops(*, batch: int, heads: int, seq_len: int, head_dim: int, mode: str,
                    causal: bool = False) -> float:
    """Matmul FLOPs of one attention call: 4·B·H·N²·D forward, 3.5× that fwd+bwd, halved if causal."""
    flops = 4.0 * batch * heads * seq_len * seq_len * head_dim
    if mode == "fwd+bwd":
        flops *= 1.0 + BACKWARD_FLOP_RATIO
    elif mode != "fwd":
        raise ValueError(f"unknown mode {mode!r}; choose {', '.join(MODES)}.")
    return flops / 2 if causal else flops


def bench_attention(
    *,
    batch: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
    backends: Sequence[str] = BACKENDS,
    modes: Sequence[str] = MODES,
    causal: bool = False,
    device: torch.device | None = None,
    warmup: int | None = None,
    rep: int | None = None,
    on_row: Callable[[AttentionBenchRow], None] | None = None,
) -> list[AttentionBenchRow]:
    """Benchmark attention on (batch, heads, N, head_dim) inputs for every mode × N × backend.

    Args:
        batch, heads, head_dim: the shape of q, k and v besides the sequence length.
        dtype: dtype of q, k and v.
        seq_lens: the sequence lengths N to sweep.
        backends: any of "triton", "sdpa", "eager", or SDPA pinned to one kernel: "sdpa-flash",
            "sdpa-efficient", "sdpa-cudnn", "sdpa-math".
        modes: "fwd" (forward, no autograd graph) and/or "fwd+bwd" (forward and backward).
        causal: causal masking (FLOPs are halved).
        device: where to run; defaults to the GPU when there is one, else the CPU.
        warmup: untimed calls before timing, at least 1 (the first compiles and autotunes);
            defaults to :data:`CUDA_DEFAULTS` or :data:`CPU_DEFAULTS`.
        rep: timed calls whose median is reported; defaults like `warmup`.
        on_row: called with each row as soon as it is measured (progress display).

    Returns:
        Rows ordered by mode, then N, then backend. Cases that could not run carry the reason in
        ``status``: Triton on a CPU is skipped (the interpreter's speed means nothing), running out
        of memory frees what it can and moves on, and an op's ValueError (e.g. a head dim Triton
        does not support) becomes the status.

    Raises:
        ValueError: for non-positive sizes, an empty sweep, or unknown backends or modes.
    """
    device = device if device is not None else resolve_device("auto")
    defaults = defaults_for(device)
    warmup = defaults.warmup if warmup is None else warmup
    rep = defaults.rep if rep is None else rep
    validate_attention_sweep(batch=batch, heads=heads, head_dim=head_dim, dtype=dtype,
                             seq_lens=seq_lens, backends=backends, modes=modes, causal=causal,
                             device=device, warmup=warmup, rep=rep)

    rows = []
    for mode in modes:
        for seq_len in seq_lens:
            for backend in backends:
                row = _bench_case(backend, mode, (batch, heads, seq_len, head_dim), dtype, causal,
                                  device, warmup, rep)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def validate_attention_sweep(*, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                             seq_lens: Sequence[int], backends: Sequence[str], modes: Sequence[str],
                             causal: bool, device: torch.device, warmup: int, rep: int) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_attention` (before any run).

    Takes the same keywords as :func:`bench_attention` (causal and device need no check).
    """
    check_sweep(counts={"batch size": batch, "heads": heads, "head dim": head_dim, "warmup": warmup, "rep": rep},
                dtype=dtype, sizes=("sequence lengths", seq_lens),
                choices=(("backend", backends, KNOWN_BACKENDS), ("mode", modes, MODES)))


def check_sweep(*, counts: Mapping[str, int], dtype: torch.dtype,
                choices: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                sizes: tuple[str, Sequence[int]] | None = None) -> None:
    """Raise ValueError naming the first bad argument a sweep shares with the others.

    Args:
        counts: name → value of each number that must be at least 1 (batch, warmup, rep, ...).
        dtype: must be one of :data:`DTYPES`.
        choices: (kind, given, known) for each list of names (backends, modes, stages): every given
            name must be known, and at least one must be given.
        sizes: (name, values) of the swept sizes (sequence lengths, batch sizes), if any: a
            non-empty list of positive integers.
    """
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}.")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(map(str, DTYPES.values()))}; got {dtype}.")
    if sizes is not None and (not sizes[1] or any(n < 1 for n in sizes[1])):
        raise ValueError(f"{sizes[0]} must be positive integers; got {list(sizes[1])}.")
    for kind, given, known in choices:
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(known)}.")


def describe_shape(batch: int, heads: int, head_dim: int, dtype: torch.dtype, causal: bool) -> str:
    """E.g. "B=64 H=12 D=64 bfloat16 causal", for titles."""
    name = str(dtype).removeprefix("torch.")
    return f"B={batch} H={heads} D={head_dim} {name}" + (" causal" if causal else "")


def speedup_over(rows: Sequence[AttentionBenchRow], baseline: str = "sdpa") -> list[float | None]:
    """For each row, the baseline backend's time divided by its time in the same mode and case (>1: faster)."""
    base = {(r.mode, r.case): r.time_ms for r in rows if r.backend == baseline and r.ok}
    out: list[float | None] = []
    for r in rows:
        ref = base.get((r.mode, r.case))
        out.append(ref / r.time_ms if r.ok and ref and r.time_ms else None)
    return out


def environment_info(device: torch.device | None = None) -> dict[str, object]:
    """Device name, torch / Triton / CUDA / Python versions and the date (UTC), for recorded results."""
    device = device if device is not None else resolve_device("auto")
    info: dict[str, object] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_capability"] = f"{props.major}.{props.minor}"
        info["device_memory_bytes"] = props.total_memory
    else:
        info["device_name"] = _cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
    try:
        triton_version: str | None = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    info.update(
        vitfast=vitfast.__version__,
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        platform=platform.platform(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return info


def write_json(path: str | os.PathLike[str], rows: Sequence[AttentionBenchRow], *,
               parameters: Mapping[str, object], environment: Mapping[str, object],
               benchmark: str = "attention", fields: Mapping[str, str] = FIELDS,
               extra: Mapping[str, object] | None = None) -> None:
    """Write the rows with the sweep's parameters, the environment and what each field means.

    `extra` adds top-level entries after the rows (e.g. another search's results, as dicts).
    """
    doc = {
        "benchmark": benchmark,
        "environment": dict(environment),
        "parameters": {k: _jsonable(v) for k, v in parameters.items()},
        "fields": dict(fields),
        "rows": [asdict(r) for r in rows],
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Sequence[AttentionBenchRow]) -> None:
    """Write the rows as CSV: a header of field names, then one line per row (empty where no number)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclass_fields(rows[0])])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot_time_vs_memory(rows: Sequence[AttentionBenchRow], path: str | os.PathLike[str], *,
                        title: str = "attention", point_name: str = "N") -> None:
    """Save a PNG of time (ms) against peak memory (MiB): one panel per mode, one line per backend.

    Each point is labelled with its case (N, or a Swin stage); cases that did not run are listed
    under the panels.
    """
    # A bare Figure renders through Agg without pyplot, so no GUI backend or global state is touched.
    from matplotlib.figure import Figure

    modes = [m for m in MODES if any(r.mode == m for r in rows)]
    fig = Figure(figsize=(6.2 * max(1, len(modes)), 5.4), layout="constrained")
    axes = fig.subplots(1, max(1, len(modes)), squeeze=False)[0]
    colors = {"triton": "tab:red", "sdpa": "tab:blue", "eager": "tab:green", "sdpa-flash": "tab:purple",
              "sdpa-efficient": "tab:orange", "sdpa-cudnn": "tab:brown", "sdpa-math": "tab:gray",
              "chunked": "tab:blue", "open_clip": "tab:purple"}
    markers = {"triton": "o", "sdpa": "s", "eager": "^", "chunked": "s", "open_clip": "v"}
    for ax, mode in zip(axes, modes):
        ok = [r for r in rows if r.mode == mode and r.ok]
        for backend in dict.fromkeys(r.backend for r in rows):
            pts = [r for r in ok if r.backend == backend]
            if not pts:
                continue
            xs = [r.peak_mem_bytes / 2**20 for r in pts]
            ys = [r.time_ms for r in pts]
            ax.plot(xs, ys, marker=markers.get(backend, "o"), color=colors.get(backend),
                    label=backend)
            # The lines rise to the right, so labels sit upper-left or lower-right of their point,
            # alternating, which keeps neighbouring N (197, 257) apart and off the line.
            for i, (x, y, r) in enumerate(zip(xs, ys, pts)):
                above = i % 2 == 0
                ax.annotate(r.point, (x, y), xytext=(-5, 3) if above else (5, -10),
                            textcoords="offset points", ha="right" if above else "left",
                            fontsize=7.5, color=colors.get(backend, "black"))
        # Both quantities grow like N² across the sweep, so only log axes show every N.
        if ok and all(r.peak_mem_bytes > 0 and r.time_ms > 0 for r in ok):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.margins(0.08)  # room for the labels of the first and last points
        ax.set_title(mode)
        ax.set_xlabel("peak memory above inputs (MiB)")
        ax.set_ylabel("median time (ms)")
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        if ok:
            ax.legend(loc="upper left", title=f"backend (points: {point_name})", title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no case ran", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    notes = _failure_notes(rows)
    if notes:
        fig.text(0.01, 0.0, "not run: " + "; ".join(notes), fontsize=8, ha="left", va="bottom",
                 wrap=True)
        fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=130)


# --------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------


def _bench_case(backend: str, mode: str, shape: tuple[int, int, int, int], dtype: torch.dtype,
                causal: bool, device: torch.device, warmup: int, rep: int) -> AttentionBenchRow:
    time_ms, peak, status = measure_case(lambda: make_call(backend, mode, shape, dtype, causal, device),
                                         backend, device, warmup, rep)
    tflops = None
    if time_ms is not None:
        flops = attention_flops(batch=shape[0], heads=shape[1], seq_len=shape[2], head_dim=shape[3],
                                mode=mode, causal=causal)
        tflops = flops / (time_ms * 1e-3) / 1e12
    return AttentionBenchRow(backend, mode, shape[2], time_ms, tflops, peak, status)


def measure_case(make_call: Callable[[], Callable[[], None]], backend: str, device: torch.device, warmup: int,
                 rep: int) -> tuple[float | None, int | None, str]:
    """(median ms, peak bytes, "ok") of the call `make_call` builds, or (None, None, why it did not run).

    Triton on a CPU is skipped; running out of memory frees what it can; an op's ValueError (an
    unsupported shape) becomes the status; any other failure becomes an "error: ..." status.
    """
    if backend == "triton" and device.type != "cuda":
        # Under TRITON_INTERPRET=1 the kernels would run on CPU, through numpy: correct but so slow
        # that its timings say nothing about the kernels.
        return None, None, TRITON_NEEDS_CUDA
    measured, status = run_guarded(lambda: _measure(make_call, device, warmup, rep), device)
    return (None, None, status) if measured is None else (*measured, status)


def run_guarded(fn: Callable[[], T], device: torch.device) -> tuple[T | None, str]:
    """(fn(), "ok"), or (None, why it failed) after freeing what the failure left on `device`.

    Running out of memory (CUDA, or the CPU allocator) becomes :data:`OUT_OF_MEMORY`, an op's
    ValueError (an unsupported shape) its message, any other exception "error: <type>: <message>".
    """
    try:
        result = fn()
    except torch.cuda.OutOfMemoryError:
        status = OUT_OF_MEMORY
    except MemoryError:
        status = OUT_OF_MEMORY
    except ValueError as exc:
        status = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of one case becomes its row, not a crash
        status = OUT_OF_MEMORY if _is_cpu_oom(exc) else f"error: {type(exc).__name__}: {_first_line(exc)}"
    else:
        return result, "ok"
    # Outside the except block, so the traceback no longer pins the failed case's tensors.
    _release_memory(device)
    return None, status


def _measure(make_call: Callable[[], Callable[[], None]], device: torch.device, warmup: int,
             rep: int) -> tuple[float, int]:
    """(median ms, peak bytes) of one case; its tensors die with this frame if anything raises."""
    fn = make_call()
    for _ in range(warmup):
        fn()
    peak = peak_memory(fn, device)
    return _median_ms(fn, device, rep), peak


def make_call(backend: str, mode: str, shape: tuple[int, int, int, int], dtype: torch.dtype,
              causal: bool, device: torch.device) -> Callable[[], None]:
    """The call one case times: attention on random (B, H, N, D) inputs, with its backward for fwd+bwd.
    (Also what the pytest-benchmark suites in benchmarks/ time.)"""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype, device=device) for _ in range(3))
    op_backend, kernel_scope = backend, contextlib.nullcontext
    if backend in SDPA_KERNELS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        op_backend = "sdpa"
        pinned = getattr(SDPBackend, SDPA_KERNELS[backend])
        kernel_scope = lambda: sdpa_kernel(pinned)  # noqa: E731
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad(), kernel_scope():
                attention(q, k, v, causal=causal, backend=op_backend)

        return fwd

    for t in (q, k, v):
        t.requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen, dtype=dtype, device=device)

    def fwd_bwd() -> None:
        with kernel_scope():
            out = attention(q, k, v, causal=causal, backend=op_backend)
        # autograd.grad returns fresh gradients instead of accumulating into .grad, so reps stay
        # identical and nothing needs zeroing between them.
        torch.autograd.grad(out, (q, k, v), grad_out)

    return fwd_bwd


def _median_ms(fn: Callable[[], None], device: torch.device, rep: int) -> float:
    if device.type != "cuda":
        times = []
        for _ in range(rep):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(rep)]
    torch.cuda.synchronize(device)
    for start, end in events:
        flush.zero_()  # so every call reads its inputs from HBM, not from the previous call's L2
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated while `fn` runs once, above what was allocated before it.

    On a GPU from torch's CUDA allocator statistics; on a CPU from the profiler's allocation events.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _peak_memory_cpu(fn)


def _peak_memory_cpu(fn: Callable[[], None]) -> int:
    # The CPU allocator keeps no peak statistic, but with profile_memory the profiler records every
    # allocation (+bytes) and free (-bytes) of CPU tensor memory made while it runs, each with a
    # timestamp. Frees of memory allocated before profiling are not reported, so the running sum in
    # time order starts from "what existed before" and its maximum is the peak extra memory: a
    # measurement of the allocator's traffic, not an estimate from shapes.
    from torch.profiler import ProfilerActivity, profile

    with _filter_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch.autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == cpu]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


# Lines Kineto (the profiler's native backend) writes straight to fd 2 on every profiling session,
# which would bury the progress output under dozens of lines per sweep.
_KINETO_NOISE = ("USDT:", "ERROR:")
_KINETO_NOISE_MARKERS = ("SyncActivityProfilerHandler", "gpuGetDeviceCount", "DeviceProperties")
# and the allocator's warning when a step frees memory allocated before profiling (a training step frees
# the previous step's gradients), which the peak computation already accounts for.
_PROFILER_WARNING = "allocated before the profiling started"


@contextlib.contextmanager
def _filter_native_stderr() -> Iterator[None]:
    """Capture fd 2 while the profiler runs; pass through every line except Kineto's own chatter."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                kineto = line.startswith(_KINETO_NOISE) and any(m in line for m in _KINETO_NOISE_MARKERS)
                if not (kineto or _PROFILER_WARNING in line):
                    sys.stderr.write(line)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_cpu_oom(exc: BaseException) -> bool:
    # The CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory").
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "allocate" in text and "memory" in text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _failure_notes(rows: Sequence[AttentionBenchRow]) -> list[str]:
    """One note per (backend, status) among rows that did not run, naming the cases it covers."""
    groups: dict[tuple[str, str], list[AttentionBenchRow]] = {}
    for r in rows:
        if not r.ok:
            groups.setdefault((r.backend, r.status), []).append(r)
    total = {b: sum(r.backend == b for r in rows) for b in dict.fromkeys(r.backend for r in rows)}
    notes = []
    for (backend, status), failed in groups.items():
        if len(failed) == total[backend]:
            where = "all cases"
        else:
            where = ", ".join(f"{r.mode} {r.case}" for r in failed)
        notes.append(f"{backend} ({where}): {status}")
    return notes


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _jsonable(value: object) -> object:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
