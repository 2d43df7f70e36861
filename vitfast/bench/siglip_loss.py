"""SigLIP-loss benchmark (`vitfast bench siglip-loss`): time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.siglip_loss` across batch sizes N, and the largest batch each backend fits in memory; the
twin of `vitfast bench clip-loss` (vitfast.bench.clip_loss), with the same flags, files and search.

Backends: the three of `siglip_loss` ("triton", "chunked", "eager") and one peer, "open_clip":
``open_clip.loss.SigLipLoss()`` itself, called as open_clip's training step calls it,
``loss(image, text, logit_scale, logit_bias)``, on the embeddings as they are (bf16 embeddings give bf16
logits, the least memory it can use). open_clip is an optional package (the GPU machines lack it), left
out of the default backends, which then run the same everywhere; asked for where it is not installed, its
rows say so.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from vitfast.bench.harness import defaults_for, peak_memory
from vitfast.bench.largest_batch import (MAX_BATCH_CAP, MAX_BATCH_START, MaxBatchResult, MaxBatchTry,
                                         check_memory_limit, max_batch_fields, search, to_json)
from vitfast.bench.sweep import (KernelRow, KernelSweep, check_sweep, kernel_call, kernel_fields, mode_flops,
                                 sweep_kernel)
from vitfast.choices import AUTO, KERNEL_MODES, SIGLIP_LOSS_BACKENDS, SIGLIP_LOSS_PEERS
from vitfast.kernels import siglip_loss
from vitfast.runtime import resolve_device, resolve_dtype

MODES = KERNEL_MODES
DEFAULT_BACKENDS = tuple(b for b in SIGLIP_LOSS_BACKENDS if b != AUTO)
BACKENDS = DEFAULT_BACKENDS + SIGLIP_LOSS_PEERS
OPEN_CLIP_MISSING = "skipped: open_clip is not installed (pip install open_clip_torch)"
# The CLIP loss bench's width, so the two benches read side by side (SigLIP ViT-B/16's is 768: --dim 768).
DEFAULT_DIM = 512
# SigLIP's initial scale and bias (logit_scale = log 10, logit_bias = -10): fixed, so every case is alike.
LOGIT_SCALE = 10.0
LOGIT_BIAS = -10.0
# The backward does four times the forward's matmul work; see siglip_loss_flops.
BACKWARD_FLOP_RATIO = 4.0

FIELDS = kernel_fields(
    backend="triton (tiled kernels), chunked (the same passes in PyTorch, row chunks), eager (the full N×N "
            "logits), open_clip (open_clip.loss.SigLipLoss itself, on embeddings of the sweep's dtype)",
    mode="fwd: the loss only, no autograd graph; fwd+bwd: the loss, then gradients of both embeddings, the "
         "logit scale and the logit bias",
    case=("batch", "batch size N (image-text pairs; embeddings are (N, D))"),
    tflops="2·N²·D for fwd (one N×N×D similarity product), 10·N²·D for fwd+bwd (the Triton kernels' work: "
           "each gradient pass recomputes the similarities), divided by time_ms",
    inputs="the embeddings, the scale and the bias")
MAX_BATCH_FIELDS = max_batch_fields("the embeddings, the scale and the bias")


class SiglipBenchRow(KernelRow):
    """One (mode, N, backend) case; its case is the batch size N."""

    case_field, case_prefix = "batch", "N="


def open_clip_available() -> bool:
    """Whether the "open_clip" backend can run (the open_clip package is importable)."""
    return importlib.util.find_spec("open_clip") is not None


def siglip_loss_flops(*, batch: int, dim: int, mode: str) -> float:
    """Matmul FLOPs of one loss call: 2·N²·D forward, 10·N²·D forward and backward.

    The forward is one N×N×D product, the similarities S = image·textᵀ (2·N²·D): unlike the CLIP loss,
    the sigmoid loss needs no second, per-text pass. The Triton backward is one pass per side, each
    recomputing S (2·N²·D) and multiplying the N×N weights G = σ(logits) − labels by the other side
    (2·N²·D): 8·N²·D, four times the forward, 10·N²·D in all. That is the count, for every backend, so
    their TFLOP/s compare as speed; the others do less: chunked recomputes S once for both sides (8·N²·D
    in all), eager and open_clip keep S (6·N²·D, and the N×N logits in memory). Left out: the O(N²)
    sigmoids and logarithms, the O(N·D) terms, and the Triton gradient pass's padding of its accumulator
    to the next power of two of D (1024 wide at D = 768: a third more G products there).
    """
    return mode_flops(2.0 * batch * batch * dim, mode, BACKWARD_FLOP_RATIO)


def validate_siglip_sweep(*, batch_sizes: Sequence[int], dim: int, dtype: torch.dtype, backends: Sequence[str],
                          modes: Sequence[str], warmup: int, rep: int, **_: object) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_siglip_loss` (before any run)."""
    check_sweep(counts={"embedding dim": dim, "warmup": warmup, "rep": rep}, dtype=dtype,
                sizes=("batch sizes", batch_sizes),
                choices=(("backend", backends, BACKENDS), ("mode", modes, MODES)))
    _check_backends(backends, dim)


def bench_siglip_loss(*, dtype: torch.dtype, batch_sizes: Sequence[int], device: torch.device, warmup: int,
                      rep: int, dim: int = DEFAULT_DIM, backends: Sequence[str] = DEFAULT_BACKENDS,
                      modes: Sequence[str] = MODES,
                      on_row: Callable[[SiglipBenchRow], None] | None = None) -> list[SiglipBenchRow]:
    """The SigLIP loss on random L2-normalized (N, dim) embeddings of `dtype` (Triton: `dim` a multiple of 16)
    and a float32 logit scale and bias, as a model's parameters, swept over `batch_sizes` as
    :func:`~vitfast.bench.sweep.sweep_kernel` sweeps. Raises ValueError for a bad argument."""
    validate_siglip_sweep(batch_sizes=batch_sizes, dim=dim, dtype=dtype, backends=backends, modes=modes,
                          warmup=warmup, rep=rep)
    return sweep_kernel(
        SiglipBenchRow, modes=modes, cases=batch_sizes, backends=backends, device=device, warmup=warmup, rep=rep,
        make_call=lambda backend, mode, n: make_call(backend, mode, *make_inputs(n, dim, dtype, device, mode)),
        flops=lambda mode, n: siglip_loss_flops(batch=n, dim=dim, mode=mode), on_row=on_row)


def measure_footprint(backend: str, mode: str, *, batch: int, dim: int, dtype: torch.dtype,
                      device: torch.device) -> int:
    """Bytes one call at batch size `batch` needs in all: its inputs plus the peak it allocates above them.

    Runs the call once (the first Triton call on a GPU also compiles). Raises what the call raises,
    e.g. torch.cuda.OutOfMemoryError.
    """
    inputs = make_inputs(batch, dim, dtype, device, mode)
    held = sum(t.numel() * t.element_size() for t in inputs)
    return held + peak_memory(make_call(backend, mode, *inputs), device)


def max_batch(backend: str, mode: str, dim: int, dtype: torch.dtype, device: torch.device,
              memory_limit: int | None = None, *, start: int = MAX_BATCH_START, cap: int = MAX_BATCH_CAP,
              on_try: Callable[[MaxBatchTry], None] | None = None) -> MaxBatchResult:
    """The largest batch size whose loss call fits in memory, by doubling from `start`, then bisecting: the
    CLIP loss bench's search (:func:`vitfast.bench.clip_loss.max_batch`), on this loss's call.

    A batch fits when its call runs without running out of memory and, if `memory_limit` (bytes) is given, its
    footprint (:func:`measure_footprint`) is at most that; on a CPU the limit is required. Doubling stops at the
    first N that does not fit, or at `cap` (the largest N tried; `start` is lowered to it); bisection then
    narrows the gap between the largest N that fits and the smallest that does not to under 5% of N, on round
    numbers (multiples of a power of two of at most 2.5% of N). One untimed call per N tried, each shown to
    `on_try` as soon as it ran. Triton on a CPU is skipped, as in the sweep; a bad argument
    (:func:`validate_max_batch`) raises ValueError.
    """
    validate_max_batch(backends=[backend], modes=[mode], dim=dim, dtype=dtype, device=device,
                       memory_limit=memory_limit, cap=cap, start=start)
    return search(lambda n: measure_footprint(backend, mode, batch=n, dim=dim, dtype=dtype, device=device),
                  backend, mode, device, memory_limit, start=start, cap=cap, on_try=on_try)


def _check_backends(backends: Sequence[str], dim: int) -> None:
    if "triton" in backends and dim % 16:
        raise ValueError(f"backend triton needs an embedding dim that is a multiple of 16; got {dim}. "
                         f"Use e.g. {-(-dim // 16) * 16}, or leave triton out of the backends.")


def validate_max_batch(*, backends: Sequence[str], modes: Sequence[str], dim: int, dtype: torch.dtype,
                       device: torch.device, memory_limit: int | None, cap: int, start: int = MAX_BATCH_START) -> None:
    """Raise ValueError naming the first bad argument of :func:`max_batch` for any of `backends` × `modes`."""
    check_sweep(counts={"embedding dim": dim, "first batch": start, "largest-batch cap": cap}, dtype=dtype,
                choices=(("backend", backends, BACKENDS), ("mode", modes, MODES)))
    _check_backends(backends, dim)
    check_memory_limit(memory_limit, device)


def make_inputs(batch: int, dim: int, dtype: torch.dtype, device: torch.device,
                mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random L2-normalized image and text embeddings, the logit scale and the logit bias (float32 scalars);
    leaves with gradients for fwd+bwd."""
    gen = torch.Generator(device=device).manual_seed(0)
    grad = mode == "fwd+bwd"
    # Drawn in `dtype` directly: float32 draws would double the temporary memory at the largest N.
    image, text = (F.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype, device=device), dim=-1)
                   .requires_grad_(grad) for _ in range(2))
    scale = torch.tensor(LOGIT_SCALE, device=device, requires_grad=grad)
    bias = torch.tensor(LOGIT_BIAS, device=device, requires_grad=grad)
    return image, text, scale, bias


def make_call(backend: str, mode: str, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor) -> Callable[[], None]:
    """The call one case times: the loss on :func:`make_inputs`' tensors (and the gradients of all four for
    fwd+bwd). The peer raises ValueError, the row's status, where open_clip is not installed."""
    if backend in SIGLIP_LOSS_PEERS:
        if not open_clip_available():
            raise ValueError(OPEN_CLIP_MISSING)
        from open_clip.loss import SigLipLoss

        loss_fn: Callable[..., torch.Tensor] = SigLipLoss()
    else:
        loss_fn = functools.partial(siglip_loss, backend=backend)
    return kernel_call(mode, lambda: loss_fn(image, text, scale, bias), (image, text, scale, bias))


def siglip_sweep(params: dict[str, object], baselines: tuple[str, ...] | None = None,
                 **labels: object) -> KernelSweep:
    """:func:`bench_siglip_loss` with the keywords `params`, as the commands run it. Speedups are read against
    open_clip's SigLipLoss when it is among the backends, else against eager; `labels` as in
    :class:`~vitfast.bench.sweep.Sweep` (title, detail, recorded)."""
    backends = params.get("backends", DEFAULT_BACKENDS)
    cases = len(params["modes"]) * len(params["batch_sizes"]) * len(backends)
    return KernelSweep(name="siglip_loss", label="siglip loss", bench=bench_siglip_loss, params=params,
                       benchmark="siglip_loss", fields=FIELDS, cases=cases,
                       shape=f"D={params['dim']} {str(params['dtype']).removeprefix('torch.')}",
                       baselines=baselines or (("open_clip",) if "open_clip" in backends else ("eager",)), **labels)


def plan(*, batch_sizes: Sequence[int] | None = None, dim: int = DEFAULT_DIM, dtype: str = AUTO,
         backends: Sequence[str] = DEFAULT_BACKENDS, modes: Sequence[str] = MODES, device: str = AUTO,
         warmup: int | None = None, rep: int | None = None, max_batch: bool = False, memory_limit: int | None = None,
         max_batch_cap: int = MAX_BATCH_CAP) -> KernelSweep:
    """`vitfast bench siglip-loss`: the sweep its flags ask for, with device and dtype names resolved and unset
    values the device's defaults (the CLIP loss bench's batch sizes); with `max_batch`, the search's arguments
    (:func:`max_batches`) are checked too, before anything runs. Raises ValueError naming the first bad
    argument."""
    dev = resolve_device(device)
    defaults = defaults_for(dev)
    params = dict(batch_sizes=defaults.clip_batch_sizes if batch_sizes is None else list(batch_sizes), dim=dim,
                  dtype=resolve_dtype(dtype, dev), backends=list(backends), modes=list(modes),
                  **defaults.timing(warmup, rep), device=dev)
    validate_siglip_sweep(**params)
    if max_batch:
        validate_max_batch(backends=params["backends"], modes=params["modes"], dim=dim, dtype=params["dtype"],
                           device=dev, memory_limit=memory_limit, cap=max_batch_cap, start=min(params["batch_sizes"]))
    return siglip_sweep(params, detail=f", N in {', '.join(map(str, params['batch_sizes']))}",
                        recorded={"memory_limit": memory_limit})


def max_batches(sweep: KernelSweep, cap: int = MAX_BATCH_CAP,
                on_try: Callable[[str, str, MaxBatchTry], None] | None = None) -> list[MaxBatchResult]:
    """:func:`max_batch` for every mode × backend of `sweep` (from :func:`plan`), within its memory limit and
    doubling from its smallest N; ``on_try(backend, mode, tried)`` sees each N as soon as it ran."""
    p, limit = sweep.params, sweep.recorded["memory_limit"]
    return [max_batch(backend, mode, p["dim"], p["dtype"], p["device"], limit, start=min(p["batch_sizes"]),
                      cap=cap, on_try=None if on_try is None else functools.partial(on_try, backend, mode))
            for mode in p["modes"] for backend in p["backends"]]


def max_batch_json(results: Sequence[MaxBatchResult]) -> dict[str, object]:
    """The searches' entries in the JSON file, after the rows."""
    return to_json(results, MAX_BATCH_FIELDS)
