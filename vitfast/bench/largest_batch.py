"""The largest batch a loss call fits in memory, for the similarity-loss benchmarks (`bench clip-loss
--max-batch`, `bench siglip-loss --max-batch`): doubling, then bisection on round numbers, over a footprint
measurement each benchmark supplies; and the records the search leaves in the JSON file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA, run_guarded

MAX_BATCH_START = 1024
MAX_BATCH_CAP = 2**22
OVER_LIMIT = "over the memory limit"
REACHED_CAP = "reached the cap: every N tried fit"


def max_batch_fields(held: str) -> dict[str, str]:
    """What each field of a search's JSON entry means; `held` names the inputs a call holds."""
    return {
        "batch": "the largest N that ran within the memory (null when none did)",
        "peak_mem_bytes": f"the whole footprint of one call at that N: {held} plus the peak the call allocates "
                          "above them",
        "memory_limit_bytes": "a batch fits when its footprint is at most this; null: when it does not run out of "
                              "GPU memory",
        "status": f"'ok' (the next N tried did not fit), '{REACHED_CAP}', or why the search stopped",
        "tried": "every N tried, in order, with its footprint and whether it fit ('ok') or why not",
    }


@dataclass(frozen=True)
class MaxBatchTry:
    """One batch size the largest-batch search ran: its footprint (None if it failed) and the outcome."""

    batch: int
    peak_mem_bytes: int | None
    status: str


@dataclass(frozen=True)
class MaxBatchResult:
    """The largest batch one backend fits in one mode; the fields are described by max_batch_fields."""

    backend: str
    mode: str
    batch: int | None
    peak_mem_bytes: int | None
    memory_limit_bytes: int | None
    status: str
    tried: tuple[MaxBatchTry, ...]


def check_memory_limit(memory_limit: int | None, device: torch.device) -> None:
    """ValueError for a limit below one byte, or none on a CPU (where the search would exhaust the RAM)."""
    if memory_limit is not None and memory_limit < 1:
        raise ValueError(f"the memory limit must be a positive number of bytes; got {memory_limit}.")
    if memory_limit is None and device.type != "cuda":
        raise ValueError("on a CPU the largest-batch search needs a memory limit (e.g. 2GiB): it stops where the "
                         "measured footprint passes it instead of exhausting the machine's RAM.")


def search(footprint: Callable[[int], int], backend: str, mode: str, device: torch.device,
           memory_limit: int | None, *, start: int, cap: int,
           on_try: Callable[[MaxBatchTry], None] | None = None) -> MaxBatchResult:
    """The largest N whose call fits, by doubling from `start`, then bisecting.

    `footprint(n)` runs one call at batch size n and returns the bytes it needs in all (or raises what the call
    raises). N fits when the call runs without running out of memory and, if `memory_limit` (bytes) is given,
    its footprint is at most that. Doubling stops at the first N that does not fit, or at `cap` (the largest N
    tried; `start` is lowered to it); bisection then narrows the gap between the largest N that fits and the
    smallest that does not to under 5% of N, trying round numbers (multiples of a power of two of at most 2.5%
    of N). Each N tried is shown to `on_try` as soon as it ran. Triton on a CPU is skipped, as in the sweeps.
    """
    start = min(start, cap)
    if backend == "triton" and device.type != "cuda":
        return MaxBatchResult(backend, mode, None, None, memory_limit, TRITON_NEEDS_CUDA, ())
    tried: list[MaxBatchTry] = []
    fits, fails, n = 0, None, start  # the largest N that fit, the smallest that did not, the next to try
    while True:
        peak, status = run_guarded(lambda: footprint(n), device)
        if status == "ok" and memory_limit is not None and peak > memory_limit:
            status = OVER_LIMIT
        tried.append(MaxBatchTry(n, peak, status))
        if on_try is not None:
            on_try(tried[-1])
        if status == "ok":
            fits = n
        elif status in (OVER_LIMIT, OUT_OF_MEMORY):
            fails = n
        else:  # a failure that says nothing about memory ends the search
            break
        if fails is None:  # doubling
            if n >= cap:
                status = REACHED_CAP
                break
            n = min(2 * n, cap)
        elif not fits:
            status = f"does not fit at N={start}: {status}"
            break
        else:  # bisecting, on round numbers: multiples of the largest power of two at most 2.5% of N
            step = 1 << max(0, (fits // 40).bit_length() - 1)
            n = (fits + fails) // 2 // step * step
            if n <= fits:  # the gap is under two steps: 5% of N
                status = "ok"
                break
    peak = next((t.peak_mem_bytes for t in tried if t.batch == fits and t.status == "ok"), None)
    return MaxBatchResult(backend, mode, fits or None, peak, memory_limit, status, tuple(tried))


def to_json(results: Sequence[MaxBatchResult], fields: dict[str, str]) -> dict[str, object]:
    """The searches' entries in the JSON file, after the rows."""
    return {"max_batch_fields": fields, "max_batch": [asdict(r) for r in results]}
