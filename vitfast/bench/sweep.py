"""The sweep engine: the one mode × case × backend loop, the checks of its arguments, the kernel row it
yields, and :class:`Sweep`, a benchmark with every argument settled, as the commands and `bench all` run it.

A kernel benchmark (attention, window attention, CLIP loss) is then only its cases, its call and its
FLOP count, handed to :func:`sweep_kernel`; a case that cannot run (Triton without CUDA, out of
memory, an unsupported shape, FlexAttention's backward on a CPU) is a row whose ``status`` says why,
so one failure never ends a sweep. :func:`compiled_flex` is the FlexAttention the attention benchmarks
both time as a peer.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar, Iterable, Mapping, Sequence, TypeVar

import torch
from torch.nn.attention.flex_attention import flex_attention

from vitfast.bench import report
from vitfast.bench.harness import TRITON_NEEDS_CUDA, run_guarded, time_and_peak
from vitfast.choices import ATTENTION_BACKENDS, AUTO, KERNEL_MODES
from vitfast.runtime import DTYPES

# The attention backends a benchmark can time (every one but "auto"): attention, window attention and
# whole models run the same three.
ATTENTION_IMPLS = tuple(b for b in ATTENTION_BACKENDS if b != AUTO)
# Attention's backward does 2.5× its forward's matmul work (five N×N·D products against two); window
# attention is the same computation per window.
ATTENTION_BACKWARD_FLOP_RATIO = 2.5

# The row of a FlexAttention case that cannot run: torch's flex_attention has no backward on a CPU.
FLEX_BACKWARD_NEEDS_CUDA = "skipped: FlexAttention has no backward on a CPU (torch's flex_attention refuses it)"

C = TypeVar("C")
B = TypeVar("B")
R = TypeVar("R")


class StatusRow:
    """What every benchmark row shares: a ``status`` that is "ok" when the case ran, else why not."""

    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, object]:
        """The row as the JSON and CSV files hold it."""
        return asdict(self)


@dataclass(frozen=True)
class KernelRow(StatusRow):
    """One measured kernel case. Numbers are None when the case did not run; ``status`` then says why.

    Each benchmark subclasses it only to name its case: ``case_field`` is the case's key in the files
    (``seq_len``, ``stage``, ``batch``), ``case_prefix`` what tables and notes put before its value.
    """

    backend: str
    mode: str
    case: int | str
    time_ms: float | None
    tflops: float | None
    peak_mem_bytes: int | None
    status: str

    case_field: ClassVar[str] = "case"
    case_prefix: ClassVar[str] = ""

    @property
    def case_name(self) -> str:
        """The case in words, e.g. "N=197" or "stage3"."""
        return f"{self.case_prefix}{self.case}"

    def as_dict(self) -> dict[str, object]:
        return {self.case_field if k == "case" else k: v for k, v in asdict(self).items()}


def kernel_fields(*, backend: str, mode: str, case: tuple[str, str], tflops: str, inputs: str) -> dict[str, str]:
    """What each field of a benchmark's kernel rows means (written into its JSON beside the rows): its words
    for the backends, the modes, its case (key, meaning), the FLOP count and the inputs a peak leaves out."""
    return {"backend": backend, "mode": mode, case[0]: case[1],
            "time_ms": "median time of one call in ms (CUDA events after an L2 flush on a GPU, perf_counter on a "
                       "CPU); null when the case did not run",
            "tflops": tflops,
            "peak_mem_bytes": f"peak memory allocated during one call above what was allocated before it ({inputs} "
                              "are not counted)",
            "status": "'ok', or why the case has no numbers"}


def run_grid(modes: Iterable[str], cases: Iterable[C], backends: Iterable[B], run_case: Callable[[str, C, B], R],
             on_row: Callable[[R], None] | None = None) -> list[R]:
    """``run_case(mode, case, backend)`` for every mode × case × backend, in that order; `on_row` sees each
    row as soon as it is made (progress display)."""
    rows = []
    for mode, case, backend in itertools.product(modes, cases, backends):
        rows.append(run_case(mode, case, backend))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def sweep_kernel(row_type: type[KernelRow], *, modes: Sequence[str], cases: Sequence[C], backends: Sequence[str],
                 make_call: Callable[[str, str, C], Callable[[], None]], flops: Callable[[str, C], float],
                 device: torch.device, warmup: int, rep: int,
                 on_row: Callable[[KernelRow], None] | None = None) -> list[KernelRow]:
    """Time every mode × case × backend, in that order: ``make_call(backend, mode, case)`` builds the call one case
    times (its inputs are made there, untimed), ``flops(mode, case)`` counts its work for TFLOP/s; `warmup` and
    `rep` count calls as in :mod:`~vitfast.bench.harness`. A case that cannot run is a row whose ``status`` says
    why: Triton on a CPU is skipped, other failures as :func:`~vitfast.bench.harness.run_guarded` words them.
    `on_row` sees each row as soon as it is measured (progress display).
    """
    def run_case(mode: str, case: C, backend: str) -> KernelRow:
        if backend == "triton" and device.type != "cuda":
            # Under TRITON_INTERPRET=1 the kernels would run on CPU, through numpy: correct but so slow
            # that its timings say nothing about the kernels.
            return row_type(backend, mode, case, None, None, None, TRITON_NEEDS_CUDA)
        # make_call runs inside the guard, so the case's tensors die with its frame if anything raises.
        measured, status = run_guarded(lambda: time_and_peak(make_call(backend, mode, case), device, warmup, rep),
                                       device)
        if measured is None:
            return row_type(backend, mode, case, None, None, None, status)
        time_ms, peak = measured
        return row_type(backend, mode, case, time_ms, flops(mode, case) / (time_ms * 1e-3) / 1e12, peak, status)

    return run_grid(modes, cases, backends, run_case, on_row)


def mode_flops(forward: float, mode: str, backward_ratio: float) -> float:
    """FLOPs of one call in `mode`: the forward's, and for "fwd+bwd" the backward's too (`backward_ratio` × them)."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose {', '.join(KERNEL_MODES)}.")
    return forward * (1.0 + backward_ratio) if mode == "fwd+bwd" else forward


def kernel_call(mode: str, forward: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor],
                grad_out: Callable[[], torch.Tensor] | None = None) -> Callable[[], None]:
    """The call a kernel case times: for "fwd", `forward` with no autograd graph; for "fwd+bwd", `forward` and
    the gradients of `leaves` (made to require them) against ``grad_out()`` (drawn once; None: a scalar)."""
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                forward()

        return fwd
    for t in leaves:
        t.requires_grad_(True)
    grad = None if grad_out is None else grad_out()

    def fwd_bwd() -> None:
        # autograd.grad returns fresh gradients instead of accumulating into .grad, so reps stay
        # identical and nothing needs zeroing between them.
        torch.autograd.grad(forward(), leaves, grad)

    return fwd_bwd


def compiled_flex(mode: str, device: torch.device) -> Callable[..., torch.Tensor]:
    """``torch.compile(flex_attention)``, the way FlexAttention is meant to run (uncompiled, it materializes the
    scores), for one case of the "flex" peer: the first call compiles (a warm-up call, untimed). Compiled afresh
    (``torch.compiler.reset()`` first), as in a new process, so a sweep's many shapes never pass dynamo's
    recompile limit, past which flex would quietly run uncompiled. Raises ValueError, which becomes the row's
    status, for fwd+bwd on a CPU."""
    if mode == "fwd+bwd" and device.type != "cuda":
        raise ValueError(FLEX_BACKWARD_NEEDS_CUDA)
    torch.compiler.reset()
    return torch.compile(flex_attention, dynamic=False)


def check_sweep(*, counts: Mapping[str, int], dtype: torch.dtype,
                choices: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                sizes: tuple[str, Sequence[int]] | None = None) -> None:
    """Raise ValueError naming the first bad argument a sweep shares with the others: `counts` (name → value) must
    be at least 1, `dtype` one of :data:`vitfast.runtime.DTYPES`, the swept `sizes` (name, values), if any, a
    non-empty list of positive integers, and each of `choices` (kind, given, known) a non-empty list of known names.
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


@dataclass(frozen=True)
class Sweep:
    """A benchmark with every argument settled: `bench` called with `params` (which the JSON records as
    the sweep's parameters, with `recorded` after them), and the words its log line and titles use."""

    name: str  # what `bench all` names its files: attention, window, clip_loss, model_<model>
    label: str  # what it times, in the log line and titles: "attention", "window attention", ...
    bench: Callable[..., list]
    params: Mapping[str, object]
    benchmark: str  # the JSON's "benchmark"
    fields: Mapping[str, str]  # the JSON's "fields": what each row field means
    cases: int  # rows it yields
    shape: str  # its inputs in words, for the log line and the plot's title
    detail: str = ""  # more for the log line only
    title: str = ""  # its title in `bench all`
    unit: str = "calls"  # what a rep times
    recorded: Mapping[str, object] = field(default_factory=dict)
    baselines: tuple[str, ...] = ("sdpa",)  # speedups are read against the first of these that ran (else the last)

    @property
    def device(self) -> torch.device:
        return self.params["device"]

    def run(self, on_row: Callable[[object], None] | None = None) -> list:
        return self.bench(**self.params, on_row=on_row)

    def log_line(self, where: str) -> str:
        """What a command says on stderr before it starts; `where` names the device."""
        return (f"{self.label} on {where}: {self.shape}{self.detail}; warmup {self.params['warmup']}, "
                f"median of {self.params['rep']} timed {self.unit}")

    def baseline(self, rows: Sequence) -> str:
        return next((b for b in self.baselines if any(r.backend == b and r.ok for r in rows)), self.baselines[-1])


@dataclass(frozen=True)
class KernelSweep(Sweep):
    """A sweep of kernel rows."""

    brief: str = ""  # the shape in the table's title, when shorter than `shape`
    point_name: str = "N"  # what a case is: the table's column and the plot's legend

    def describe(self, row: KernelRow) -> str:
        """The row in the progress bar."""
        return f"{row.backend} {row.mode} {row.case_name}"

    def table(self, rows: Sequence[KernelRow], where: str) -> report.Table:
        baseline = self.baseline(rows)
        return report.kernel_table(rows, report.speedup_over(rows, baseline), f"{self.label} · {where} · "
                                   f"{self.brief or self.shape}", self.point_name, baseline)

    def plot_title(self, where: str) -> str:
        return f"{self.label} on {where}: {self.shape}"

    def plot(self, rows: Sequence[KernelRow], path, title: str) -> None:
        report.plot_time_vs_memory(rows, path, title=title, point_name=self.point_name)

    def summary(self, rows: Sequence[KernelRow]) -> list[report.SummaryLine]:
        """Per mode, every backend at the largest case where anything ran, with speedups over the baseline."""
        baseline = self.baseline(rows)
        speedups = report.speedup_over(rows, baseline)
        largest = {r.mode: r.case for r in rows if r.ok}  # rows go by case within a mode: the last that ran
        return [report.SummaryLine(self.name, r.case_name, mode, r.backend, r.time_ms, report.mib(r.peak_mem_bytes),
                                   s, baseline, r.status)
                for mode in KERNEL_MODES if mode in largest
                for r, s in zip(rows, speedups) if r.mode == mode and r.case == largest[mode]]
