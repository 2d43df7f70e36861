"""Attention benchmark (`vitfast bench attention`): time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.attention` across sequence lengths N, on random (B, H, N, D) inputs.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitfast.bench.harness import defaults_for
from vitfast.bench.sweep import (ATTENTION_BACKWARD_FLOP_RATIO, ATTENTION_IMPLS, KernelRow, KernelSweep, check_sweep,
                                 kernel_call, kernel_fields, mode_flops, sweep_kernel)
from vitfast.choices import AUTO, KERNEL_MODES
from vitfast.kernels import attention
from vitfast.runtime import resolve_device, resolve_dtype

MODES = KERNEL_MODES
BACKENDS = ATTENTION_IMPLS
# SDPA pinned to one of its kernels, so Triton can be compared with SDPA's best, not only with the
# kernel SDPA's dispatcher happens to pick. Opt-in (`--backends triton,sdpa-flash,sdpa-cudnn,...`).
SDPA_KERNELS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
KNOWN_BACKENDS = BACKENDS + tuple(SDPA_KERNELS)
DEFAULT_SEQ_LENS = (197, 257, 577, 1025, 2048, 4096)

FIELDS = kernel_fields(
    backend="attention backend: triton, sdpa (torch's scaled_dot_product_attention) or eager",
    mode="fwd: forward only, no autograd graph; fwd+bwd: forward then backward with a fixed grad",
    case=("seq_len", "sequence length N (queries = keys)"),
    tflops="4·B·H·N²·D for fwd, 3.5× that for fwd+bwd, halved when causal, divided by time_ms",
    inputs="the inputs and the grad output")


class AttentionBenchRow(KernelRow):
    """One (mode, N, backend) case; its case is the sequence length N."""

    case_field, case_prefix = "seq_len", "N="


def attention_flops(*, batch: int, heads: int, seq_len: int, head_dim: int, mode: str,
                    causal: bool = False) -> float:
    """Matmul FLOPs of one attention call: 4·B·H·N²·D forward, 3.5× that fwd+bwd, halved if causal."""
    flops = mode_flops(4.0 * batch * heads * seq_len * seq_len * head_dim, mode, ATTENTION_BACKWARD_FLOP_RATIO)
    return flops / 2 if causal else flops


def make_call(backend: str, mode: str, shape: tuple[int, int, int, int], dtype: torch.dtype,
              causal: bool, device: torch.device) -> Callable[[], None]:
    """The call one case times: attention on random (B, H, N, D) inputs, with its backward for fwd+bwd.
    (Also what the pytest-benchmark suites in benchmarks/ time.)"""
    draw = functools.partial(torch.randn, shape, generator=torch.Generator(device=device).manual_seed(0), dtype=dtype,
                             device=device)
    q, k, v = draw(), draw(), draw()
    pinned = backend in SDPA_KERNELS

    def forward() -> torch.Tensor:  # the backward runs outside the pinned kernel's scope
        with sdpa_kernel(SDPA_KERNELS[backend]) if pinned else contextlib.nullcontext():
            return attention(q, k, v, causal=causal, backend="sdpa" if pinned else backend)

    return kernel_call(mode, forward, (q, k, v), draw)


def validate_attention_sweep(*, batch: int, heads: int, head_dim: int, dtype: torch.dtype, seq_lens: Sequence[int],
                             backends: Sequence[str], modes: Sequence[str], warmup: int, rep: int, **_: object) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_attention` (before any run)."""
    check_sweep(counts={"batch size": batch, "heads": heads, "head dim": head_dim, "warmup": warmup, "rep": rep},
                dtype=dtype, sizes=("sequence lengths", seq_lens),
                choices=(("backend", backends, KNOWN_BACKENDS), ("mode", modes, MODES)))


def bench_attention(*, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, warmup: int,
                    rep: int, seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, backends: Sequence[str] = BACKENDS,
                    modes: Sequence[str] = MODES, causal: bool = False,
                    on_row: Callable[[AttentionBenchRow], None] | None = None) -> list[AttentionBenchRow]:
    """Attention on random (batch, heads, N, head_dim) q, k and v of `dtype`, swept over `seq_lens` as
    :func:`~vitfast.bench.sweep.sweep_kernel` sweeps. `backends` may also pin SDPA to one kernel (any of
    :data:`SDPA_KERNELS`); `causal` masks, and halves the FLOPs. Raises ValueError for a bad argument."""
    validate_attention_sweep(batch=batch, heads=heads, head_dim=head_dim, dtype=dtype, seq_lens=seq_lens,
                             backends=backends, modes=modes, warmup=warmup, rep=rep)
    return sweep_kernel(
        AttentionBenchRow, modes=modes, cases=seq_lens, backends=backends, device=device, warmup=warmup, rep=rep,
        make_call=lambda backend, mode, n: make_call(backend, mode, (batch, heads, n, head_dim), dtype, causal, device),
        flops=lambda mode, n: attention_flops(batch=batch, heads=heads, seq_len=n, head_dim=head_dim, mode=mode,
                                              causal=causal),
        on_row=on_row)


def attention_sweep(params: dict[str, object], **labels: object) -> KernelSweep:
    """:func:`bench_attention` with the keywords `params`, as the commands run it; `labels` as in
    :class:`~vitfast.bench.sweep.Sweep` (title, detail)."""
    shape = (f"B={params['batch']} H={params['heads']} D={params['head_dim']} "  # e.g. "B=64 H=12 D=64 bfloat16 causal"
             f"{str(params['dtype']).removeprefix('torch.')}" + (" causal" if params.get("causal") else ""))
    cases = len(params["modes"]) * len(params["seq_lens"]) * len(params.get("backends", BACKENDS))
    return KernelSweep(name="attention", label="attention", bench=bench_attention, params=params,
                       benchmark="attention", fields=FIELDS, cases=cases, shape=shape, **labels)


def plan(*, batch: int | None = None, heads: int = 12, head_dim: int = 64, dtype: str = AUTO,
         seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, backends: Sequence[str] = BACKENDS,
         modes: Sequence[str] = MODES, causal: bool = False, device: str = AUTO, warmup: int | None = None,
         rep: int | None = None) -> KernelSweep:
    """`vitfast bench attention`: the sweep its flags ask for, with device and dtype names resolved and
    unset values the device's defaults. Raises ValueError naming the first bad argument."""
    dev = resolve_device(device)
    defaults = defaults_for(dev)
    params = dict(batch=defaults.batch if batch is None else batch, heads=heads, head_dim=head_dim,
                  dtype=resolve_dtype(dtype, dev), seq_lens=list(seq_lens), backends=list(backends),
                  modes=list(modes), causal=causal, device=dev, **defaults.timing(warmup, rep))
    validate_attention_sweep(**params)
    return attention_sweep(params, detail=" (--dtype auto)" if dtype == AUTO else "")
