"""How every benchmark measures: the median time of a call, its peak memory, the guard that turns a
failed case into a status, and the environment recorded beside the results.

Timing follows ``triton.testing.do_bench``: untimed warm-up calls first (the first one compiles and
autotunes), then the median of ``rep`` timed calls; on a GPU each call is timed with CUDA events after
flushing the L2 cache, on a CPU with ``time.perf_counter``. ``--warmup`` and ``--rep`` count calls
(not milliseconds as in ``do_bench``) so they mean the same on both devices.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable, Iterator, TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

from vitfast import __version__

# Larger than any current GPU's L2 (H100: 50 MiB), as in triton.testing.do_bench.
L2_FLUSH_BYTES = 256 * 1024 * 1024

TRITON_NEEDS_CUDA = "skipped: Triton kernels need a CUDA GPU"
OUT_OF_MEMORY = "out of memory"

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceDefaults:
    """The values of the CLI's unset flags on one kind of device."""

    batch: int  # attention and window attention
    warmup: int
    rep: int
    clip_batch_sizes: tuple[int, ...]
    model_batch: int

    def timing(self, warmup: int | None, rep: int | None) -> dict[str, int]:
        """``warmup`` and ``rep``, each this device's default where None."""
        return dict(warmup=self.warmup if warmup is None else warmup, rep=self.rep if rep is None else rep)


# On a GPU: the ViT-B/16 training shape (B=64, H=12, D=64), CLIP batches up to twice the goal point
# (N=32768) and timm's benchmark batch (256). On a CPU: one image and 3 reps (an attention call at N=4096
# takes seconds), so each default sweep ends in about a minute on two cores.
CUDA_DEFAULTS = DeviceDefaults(batch=64, warmup=10, rep=100, clip_batch_sizes=(4096, 8192, 16384, 32768, 65536),
                               model_batch=256)
CPU_DEFAULTS = DeviceDefaults(batch=1, warmup=1, rep=3, clip_batch_sizes=(256, 1024, 4096), model_batch=8)


def defaults_for(device: torch.device) -> DeviceDefaults:
    """Defaults for batch sizes, warm-up and reps on `device` (CUDA or CPU)."""
    return CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS


def run_guarded(fn: Callable[[], T], device: torch.device) -> tuple[T | None, str]:
    """(fn(), "ok"), or (None, why it failed) after freeing what the failure left on `device`.

    Running out of memory (CUDA, or the CPU allocator) becomes :data:`OUT_OF_MEMORY`, an op's
    ValueError (an unsupported shape) its message, any other exception "error: <type>: <message>".
    """
    try:
        result = fn()
    except (torch.cuda.OutOfMemoryError, MemoryError):
        status = OUT_OF_MEMORY
    except ValueError as exc:
        status = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of one case becomes its row, not a crash
        text = str(exc)
        # The CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory").
        cpu_oom = isinstance(exc, RuntimeError) and "allocate" in text.lower() and "memory" in text.lower()
        status = OUT_OF_MEMORY if cpu_oom else f"error: {type(exc).__name__}: {(text.strip().splitlines() or [''])[0]}"
    else:
        return result, "ok"
    # Outside the except block, so the traceback no longer pins the failed case's tensors.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return None, status


def time_and_peak(fn: Callable[[], None], device: torch.device, warmup: int, rep: int) -> tuple[float, int]:
    """(median ms, peak bytes) of `fn` after at least one untimed warm-up call."""
    for _ in range(max(warmup, 1)):
        fn()
    peak = peak_memory(fn, device)
    return median_ms(fn, device, rep), peak


def median_ms(fn: Callable[[], None], device: torch.device, rep: int) -> float:
    """The median time of `rep` calls of `fn` in ms: CUDA events after an L2 flush, or perf_counter."""
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
    return peak_memory_cpu(fn)


def peak_memory_cpu(fn: Callable[[], None]) -> int:
    """Peak bytes of CPU tensor memory allocated while `fn` runs once, above what existed before."""
    # The CPU allocator keeps no peak statistic, but with profile_memory the profiler records every
    # allocation (+bytes) and free (-bytes) of CPU tensor memory made while it runs, each with a
    # timestamp. Frees of memory allocated before profiling are not reported, so the running sum in
    # time order starts from "what existed before" and its maximum is the peak extra memory: a
    # measurement of the allocator's traffic, not an estimate from shapes.
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


def environment_info(device: torch.device) -> dict[str, object]:
    """Device name, torch / Triton / CUDA / Python versions and the date (UTC), for recorded results."""
    info: dict[str, object] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_capability"] = f"{props.major}.{props.minor}"
        info["device_memory_bytes"] = props.total_memory
        info["tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        info["device_name"] = _cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
    try:
        triton_version: str | None = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    info.update(
        vitfast=__version__,
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        platform=platform.platform(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return info


def device_label(device: torch.device, environment: dict[str, object]) -> str:
    """The device in titles and log lines, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    return f"{device} ({environment['device_name']})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
