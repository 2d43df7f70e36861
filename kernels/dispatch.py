"""What ``backend="auto"`` runs, and why: Triton only where a recorded GPU run showed it ahead.

For each call the public op (ops.py) asks :func:`choose` with the kernel, the device, the dtype the
products multiply in, the head dim and the size (sequence length, window tokens or batch). The answer
is Triton only when

1. the Triton kernels accept the inputs on this device (an NVIDIA GPU of sm_80 or newer with a tile
   that fits, or the interpreter; never ROCm),
2. the dispatch table (kernels/dispatch.json, written from a GPU run's measurements) has a row for
   this (kernel, arch, dtype, head dim, size), and
3. the kernel passed its self-check: on first use of a (kernel, device, dtype, head dim, tile) it runs
   a small problem forward and backward and compares it with SDPA (or the chunked loss). A mismatch,
   or a kernel that fails to compile or launch, gives one warning and the fallback from then on.

Everything else runs the fallback. Each decision is logged once (logger "vitfast.kernels", INFO) with
its reason. ``VITFAST_TRITON=0`` turns Triton off for "auto" process-wide; ``VITFAST_TRITON=1`` takes
it wherever the kernels accept the inputs, table or not (self-check still applies), as timm's
``TIMM_FUSED_ATTN`` does for its fused attention. ``backend="triton"`` bypasses all of this: it runs
or raises a clear error.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import torch

from . import arch, tables

log = logging.getLogger("vitfast.kernels")
ENV = "VITFAST_TRITON"

_self_checks: dict[tuple, str | None] = {}  # key -> None (passed) or why it failed
_logged: set[tuple] = set()


def override() -> str | None:
    """VITFAST_TRITON as "0" or "1", or None when unset; anything else is refused with a clear error."""
    value = os.environ.get(ENV, "").strip()
    if value in ("", "auto"):
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r} is not understood; set it to 0 (never Triton for backend='auto'), "
                         "1 (Triton wherever the kernels accept the inputs) or unset it (the dispatch table).")
    return value


def _say(key: tuple, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)


def record_failure(kernel: str, device: torch.device, dtype: torch.dtype, error: BaseException) -> None:
    """A Triton kernel failed at launch: warn once, and send this (kernel, device, dtype) to the fallback."""
    key = (kernel, str(device), dtype)
    if _self_checks.get(key) is None:
        _self_checks[key] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        warnings.warn(f"vitfast: the Triton {kernel} kernel failed on {arch.device_arch(device)} ({dtype}): "
                      f"{_self_checks[key]}; falling back for the rest of this process.", RuntimeWarning,
                      stacklevel=3)


def _self_check(kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int, size: int,
                check: Callable[..., float | None], extra: tuple) -> str | None:
    """Run `check` once per (kernel, device, dtype, head dim, tile, extra); None if it passed, else why not."""
    tile = tables.tile_for(_PRIMARY[kernel], arch.device_family(device), dtype, head_dim, size)
    broad = (kernel, str(device), dtype)
    if _self_checks.get(broad):
        return _self_checks[broad]
    key = (*broad, head_dim, str(tile), extra)
    if key not in _self_checks:
        try:
            # The check differentiates, whatever the caller's mode (evaluation under no_grad or
            # inference_mode), and compares like with like, whatever autocast the caller is under.
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                error = check(device, dtype, head_dim, size, *extra)
        except Exception as exc:  # any failure of the guard means: do not trust the kernel here
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        else:
            reason = None if error is None else f"it differs from the fallback by {error:.3g}"
        _self_checks[key] = reason
        if reason:
            warnings.warn(f"vitfast: the Triton {kernel} kernel failed its self-check on "
                          f"{arch.device_arch(device)} ({dtype}, head dim {head_dim}): {reason}; using the "
                          "fallback instead.", RuntimeWarning, stacklevel=4)
    return _self_checks[key]


# The kernel whose tile keys a self-check (a different tile means a different compiled kernel).
_PRIMARY = {"attention": "attention.fwd", "causal_attention": "attention.fwd", "window_attention": "window.fwd",
            "clip_loss": "clip.grad"}


@torch.compiler.assume_constant_result
def choose(kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int, size: int,
           unsupported: str | None, fallback: str, check: Callable[..., float | None], extra: tuple = ()) -> str:
    """"triton" or `fallback` for one call of `kernel` (see the module docstring); logs the reason once.

    unsupported: why the Triton kernels cannot take these inputs (None: they can).
    check: the self-check, ``check(device, dtype, head_dim, size, *extra)``, run once per (kernel,
        device, dtype, head dim, tile, extra): the largest difference from the fallback when it is too
        large, else None. extra: plain values the check needs beyond those (a window's shape).

    Under torch.compile this runs once while tracing and its answer is a constant of the graph.
    """
    name = arch.device_arch(device)
    where = f"{kernel} on {name}, {str(dtype).removeprefix('torch.')}, head dim {head_dim}, size {size}"
    forced = override()
    row = tables.dispatch_row(kernel, name, dtype, head_dim, size)
    backend, reason = fallback, None
    if unsupported:
        reason = unsupported
    elif forced == "0":
        reason = f"{ENV}=0"
    elif forced != "1" and row is None:
        reason = (f"no measured row in {tables.dispatch_path().name} says the Triton kernel is faster here "
                  f"(a GPU run writes them: benchmarks/run_gpu.sh; {ENV}=1 forces Triton)")
    else:
        failed = _self_check(kernel, device, dtype, head_dim, size, check, extra)
        if failed:
            reason = f"the Triton kernel failed its self-check ({failed})"
        else:
            backend = "triton"
            reason = f"{ENV}=1" if forced == "1" else f"measured {row.speedup:.2f}× faster ({row.source})"
    _say((kernel, name, dtype, backend, reason.split("(")[0]), f"vitfast: {where}: {backend} ({reason})")
    return backend


def reset() -> None:
    """Forget self-check results and logged decisions (tests; a changed table)."""
    _self_checks.clear()
    _logged.clear()
    tables._tiles.cache_clear()
    tables._dispatch.cache_clear()
