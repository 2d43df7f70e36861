"""Attention benchmark (`vitfast bench attention`): time, TFLOP/s and peak memory of each backend of
`vitfast.kernels.attention` across sequence lengths N, on random (B, H, N, D) inputs; beside them the peers a
user would pick today: "flex" (torch's FlexAttention, compiled).

With ``module=True`` a case is the whole attention layer instead, where the layout costs live: the qkv
projection of a (B, N, H·D) input, attention on its strided q, k, v, the heads merged, the output projection.
vitfast's ``models.layers.Attention`` weights run each backend; "flex" runs FlexAttention between the same two
projections, and "timm" is timm's own ``Attention`` module with those weights loaded.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask

from vitfast.bench.harness import defaults_for
from vitfast.bench.sweep import (ATTENTION_BACKWARD_FLOP_RATIO, ATTENTION_IMPLS, KernelRow, KernelSweep, check_sweep,
                                 compiled_flex, kernel_call, kernel_fields, mode_flops, sweep_kernel)
from vitfast.choices import ATTENTION_PEERS, AUTO, KERNEL_MODES
from vitfast.kernels import attention
from vitfast.models.layers import Attention, multi_head_attention
from vitfast.runtime import resolve_device, resolve_dtype

MODES = KERNEL_MODES
BACKENDS = ATTENTION_IMPLS
# SDPA pinned to one of its kernels, so Triton can be compared with SDPA's best, not only with the
# kernel SDPA's dispatcher happens to pick. Opt-in (`--backends triton,sdpa-flash,sdpa-cudnn,...`).
SDPA_KERNELS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
PEERS = ATTENTION_PEERS
KNOWN_BACKENDS = BACKENDS + tuple(SDPA_KERNELS) + PEERS
# timm's Attention is a module: it has no op to time on its own.
MODULE_ONLY = ("timm",)
DEFAULT_SEQ_LENS = (197, 257, 577, 1025, 2048, 4096)
# A linear layer's backward does twice its forward's matmul work (the input's gradient and the weight's).
LINEAR_BACKWARD_FLOP_RATIO = 2.0

FIELDS = kernel_fields(
    backend="attention backend: triton, sdpa (torch's scaled_dot_product_attention; sdpa-<kernel>: pinned to one "
            "of its kernels) or eager; the peers: flex (torch's flex_attention under torch.compile, the first "
            "warm-up call compiling), timm (timm.layers.Attention, module rows only)",
    mode="fwd: forward only, no autograd graph; fwd+bwd: forward then backward with a fixed grad",
    case=("seq_len", "sequence length N (queries = keys)"),
    tflops="4·B·H·N²·D for fwd, 3.5× that for fwd+bwd, halved when causal, divided by time_ms",
    inputs="the inputs and the grad output")
MODULE_FIELDS = kernel_fields(
    backend="attention backend inside vitfast's Attention layer (qkv → attention → proj): triton, sdpa, "
            "sdpa-<kernel>, eager; the peers with the same weights: flex (flex_attention under torch.compile between "
            "the same projections), timm (timm.layers.Attention, its own SDPA call)",
    mode="the whole layer, under autocast to the sweep's dtype when that is 16-bit (float32 weights and input, as a "
         "model trains): fwd: forward only, no autograd graph; fwd+bwd: forward then the gradients of the input and "
         "of every weight, with a fixed grad",
    case=("seq_len", "sequence length N (tokens of the (B, N, H·D) input)"),
    tflops="attention's FLOPs (4·B·H·N²·D fwd, 3.5× fwd+bwd, halved when causal) plus the projections' "
           "(8·B·N·C² fwd with C = H·D, 3× fwd+bwd), divided by time_ms",
    inputs="the input, the weights and the grad output")


class AttentionBenchRow(KernelRow):
    """One (mode, N, backend) case; its case is the sequence length N."""

    case_field, case_prefix = "seq_len", "N="


def attention_flops(*, batch: int, heads: int, seq_len: int, head_dim: int, mode: str,
                    causal: bool = False, module: bool = False) -> float:
    """Matmul FLOPs of one attention call: 4·B·H·N²·D forward, 3.5× that fwd+bwd, halved if causal; with
    `module`, plus the qkv and output projections': 8·B·N·C² forward (C = H·D), 3× that fwd+bwd."""
    flops = mode_flops(4.0 * batch * heads * seq_len * seq_len * head_dim, mode, ATTENTION_BACKWARD_FLOP_RATIO)
    flops = flops / 2 if causal else flops
    if module:
        flops += mode_flops(8.0 * batch * seq_len * (heads * head_dim) ** 2, mode, LINEAR_BACKWARD_FLOP_RATIO)
    return flops


def _pinned(backend: str):
    """SDPA pinned to the kernel `backend` names (sdpa-flash, ...), or nothing."""
    return sdpa_kernel(SDPA_KERNELS[backend]) if backend in SDPA_KERNELS else contextlib.nullcontext()


def flex_call(mode: str, seq_len: int, causal: bool, device: torch.device) -> Callable[..., torch.Tensor]:
    """The "flex" peer, called as ``flex(q, k, v)``: compiled flex_attention
    (:func:`~vitfast.bench.sweep.compiled_flex`), causal through a block mask made once, untimed, as a model
    keeps it."""
    flex = compiled_flex(mode, device)
    if not causal:
        return flex
    mask = create_block_mask(lambda b, h, q, kv: q >= kv, None, None, seq_len, seq_len, device=device)
    return functools.partial(flex, block_mask=mask)


def make_call(backend: str, mode: str, shape: tuple[int, int, int, int], dtype: torch.dtype,
              causal: bool, device: torch.device) -> Callable[[], None]:
    """The call one case times: attention on random (B, H, N, D) inputs, with its backward for fwd+bwd.
    (Also what the pytest-benchmark suites in benchmarks/ time.)"""
    if backend in MODULE_ONLY:
        raise ValueError(f"backend {backend} is timm's Attention module: time it with module=True (--module).")
    draw = functools.partial(torch.randn, shape, generator=torch.Generator(device=device).manual_seed(0), dtype=dtype,
                             device=device)
    q, k, v = draw(), draw(), draw()
    if backend == "flex":
        forward = functools.partial(flex_call(mode, shape[2], causal, device), q, k, v)
    else:
        def forward() -> torch.Tensor:  # the backward runs outside the pinned kernel's scope
            with _pinned(backend):
                return attention(q, k, v, causal=causal, backend="sdpa" if backend in SDPA_KERNELS else backend)

    return kernel_call(mode, forward, (q, k, v), draw)


def attention_layer(backend: str, mode: str, heads: int, head_dim: int, seq_len: int, causal: bool,
                    device: torch.device) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Parameter]]:
    """(forward, weights) of the attention layer one module case times: a (B, `seq_len`, H·D) input through the
    qkv projection, attention with `backend`, the heads merged and the output projection. One seeded
    ``models.layers.Attention`` holds the weights; "timm" loads them into timm's ``Attention``, "flex" runs
    FlexAttention (:func:`flex_call`) between the same projections."""
    dim = heads * head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # Only its weights are used: the forward below picks the backend (and masks, when causal).
        ours = Attention(dim, heads, qkv_bias=True, backend="sdpa").to(device)
    if backend == "timm":
        from timm.layers import Attention as TimmAttention

        theirs = TimmAttention(dim, heads, qkv_bias=True).to(device)
        theirs.load_state_dict(ours.state_dict())
        # is_causal only when causal: older timm's Attention takes no such argument.
        return functools.partial(theirs, is_causal=True) if causal else theirs, list(theirs.parameters())
    if backend == "flex":
        flex = flex_call(mode, seq_len, causal, device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            q, k, v = ours.qkv(x).unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
            return ours.proj(flex(q, k, v).transpose(1, 2).flatten(2))
    else:
        op = "sdpa" if backend in SDPA_KERNELS else backend

        def forward(x: torch.Tensor) -> torch.Tensor:
            with _pinned(backend):
                return ours.proj(multi_head_attention(ours.qkv(x), heads, causal=causal, backend=op))
    return forward, list(ours.parameters())


def make_module_call(backend: str, mode: str, shape: tuple[int, int, int, int], dtype: torch.dtype, causal: bool,
                     device: torch.device) -> Callable[[], None]:
    """The call one module case times: :func:`attention_layer` on a random (B, N, H·D) input, `shape` being
    (B, H, N, D), and for fwd+bwd the gradients of the input and of every weight. A 16-bit `dtype` runs under
    autocast (float32 weights and input, as a model trains)."""
    batch, heads, seq_len, head_dim = shape
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, seq_len, heads * head_dim, generator=gen, device=device)
    layer, weights = attention_layer(backend, mode, heads, head_dim, seq_len, causal, device)
    autocast = dtype != torch.float32

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return layer(x)

    return kernel_call(mode, forward, (x, *weights),
                       lambda: torch.randn(x.shape, generator=gen, dtype=dtype, device=device))


def validate_attention_sweep(*, batch: int, heads: int, head_dim: int, dtype: torch.dtype, seq_lens: Sequence[int],
                             backends: Sequence[str], modes: Sequence[str], warmup: int, rep: int,
                             module: bool = False, **_: object) -> None:
    """Raise ValueError naming the first bad argument of :func:`bench_attention` (before any run)."""
    check_sweep(counts={"batch size": batch, "heads": heads, "head dim": head_dim, "warmup": warmup, "rep": rep},
                dtype=dtype, sizes=("sequence lengths", seq_lens),
                choices=(("backend", backends, KNOWN_BACKENDS), ("mode", modes, MODES)))
    only = [b for b in backends if b in MODULE_ONLY]
    if only and not module:
        raise ValueError(f"backend {', '.join(only)} is timm's Attention module, timed only in module mode: add "
                         "--module, or leave it out of the backends.")


def bench_attention(*, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, warmup: int,
                    rep: int, seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, backends: Sequence[str] = BACKENDS,
                    modes: Sequence[str] = MODES, causal: bool = False, module: bool = False,
                    on_row: Callable[[AttentionBenchRow], None] | None = None) -> list[AttentionBenchRow]:
    """Attention on random (batch, heads, N, head_dim) q, k and v of `dtype`, swept over `seq_lens` as
    :func:`~vitfast.bench.sweep.sweep_kernel` sweeps. `backends` may also pin SDPA to one kernel (any of
    :data:`SDPA_KERNELS`) or name a peer (:data:`PEERS`); `causal` masks, and halves the attention FLOPs;
    `module` times the whole layer (:func:`make_module_call`). Raises ValueError for a bad argument."""
    validate_attention_sweep(batch=batch, heads=heads, head_dim=head_dim, dtype=dtype, seq_lens=seq_lens,
                             backends=backends, modes=modes, warmup=warmup, rep=rep, module=module)
    call = make_module_call if module else make_call
    return sweep_kernel(
        AttentionBenchRow, modes=modes, cases=seq_lens, backends=backends, device=device, warmup=warmup, rep=rep,
        make_call=lambda backend, mode, n: call(backend, mode, (batch, heads, n, head_dim), dtype, causal, device),
        flops=lambda mode, n: attention_flops(batch=batch, heads=heads, seq_len=n, head_dim=head_dim, mode=mode,
                                              causal=causal, module=module),
        on_row=on_row)


def attention_sweep(params: dict[str, object], **labels: object) -> KernelSweep:
    """:func:`bench_attention` with the keywords `params`, as the commands run it; `labels` as in
    :class:`~vitfast.bench.sweep.Sweep` (title, detail)."""
    shape = (f"B={params['batch']} H={params['heads']} D={params['head_dim']} "  # e.g. "B=64 H=12 D=64 bfloat16 causal"
             f"{str(params['dtype']).removeprefix('torch.')}" + (" causal" if params.get("causal") else ""))
    cases = len(params["modes"]) * len(params["seq_lens"]) * len(params.get("backends", BACKENDS))
    if params.get("module"):
        return KernelSweep(name="attention_module", label="attention module (qkv → attention → proj)",
                           bench=bench_attention, params=params, benchmark="attention_module", fields=MODULE_FIELDS,
                           cases=cases, shape=shape, **labels)
    return KernelSweep(name="attention", label="attention", bench=bench_attention, params=params,
                       benchmark="attention", fields=FIELDS, cases=cases, shape=shape, **labels)


def plan(*, batch: int | None = None, heads: int = 12, head_dim: int = 64, dtype: str = AUTO,
         seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, backends: Sequence[str] = BACKENDS,
         modes: Sequence[str] = MODES, causal: bool = False, module: bool = False, device: str = AUTO,
         warmup: int | None = None, rep: int | None = None) -> KernelSweep:
    """`vitfast bench attention`: the sweep its flags ask for, with device and dtype names resolved and
    unset values the device's defaults. Raises ValueError naming the first bad argument."""
    dev = resolve_device(device)
    defaults = defaults_for(dev)
    params = dict(batch=defaults.batch if batch is None else batch, heads=heads, head_dim=head_dim,
                  dtype=resolve_dtype(dtype, dev), seq_lens=list(seq_lens), backends=list(backends),
                  modes=list(modes), causal=causal, module=module, device=dev, **defaults.timing(warmup, rep))
    validate_attention_sweep(**params)
    return attention_sweep(params, detail=" (--dtype auto)" if dtype == AUTO else "")
