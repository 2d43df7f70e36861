"""Whole-model benchmark (`vitfast bench model`): samples/s, step time, peak memory, parameters and GFLOPs
of a ViT, Swin or CLIP per attention backend, optionally beside the peer library's model of the same
architecture.

In the manner of timm's ``benchmark.py``: an inference step is a forward pass under
``torch.inference_mode``; a training step is forward, loss (cross-entropy on random labels, or the CLIP
loss: vitfast's for vitfast, open_clip's ClipLoss for open_clip), backward and an SGD-with-momentum
update (gradients freed after it), under autocast when an AMP dtype is set. Each (mode, backend) case
is one :class:`ModelBenchRow`; a case that cannot run (Triton without CUDA, out of memory) is a row
whose ``status`` says why. With ``retry_smaller`` a case that runs out of memory is tried again at half
the batch, as timm's benchmark does, and the row records the batch that ran.

FLOPs are counted from the config (matrix products only, 2 FLOPs per multiply-add, as fvcore and
``torch.utils.flop_counter`` count them; LayerNorm, softmax and activations left out). A training step
is counted as 3× the forward (the backward's two products per forward product). The CLIP text tower's
causal attention is counted in full, as those counters count it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitfast import patching
from vitfast.bench import report
from vitfast.bench.harness import OUT_OF_MEMORY, TRITON_NEEDS_CUDA, defaults_for, run_guarded, time_and_peak
from vitfast.bench.sweep import ATTENTION_IMPLS, StatusRow, Sweep, run_grid
from vitfast.choices import AUTO, MODEL_MODES
from vitfast.kernels import clip_loss
from vitfast.kernels.window_geometry import effective_window
from vitfast.models import FAMILIES, build_config, build_model, named_config
from vitfast.models.peers import PEERS, peer_model
from vitfast.runtime import DTYPES, autocast, default_dtype_name, resolve_device

MODES = MODEL_MODES
BACKENDS = ATTENTION_IMPLS
COMPARE = ("timm", "open_clip")
ACCELERATED = "+vitfast"  # a peer library's model patched by vitfast.accelerate: "timm+vitfast"

FIELDS = {
    "model": "the vitfast model name",
    "impl": "vitfast, or the peer library (timm for ViT/Swin, open_clip for CLIP) with the same architecture, or "
            "that peer's model patched by vitfast.accelerate (timm+vitfast, open_clip+vitfast)",
    "backend": "vitfast's attention backend (triton, sdpa, eager); for a peer, the library's own attention",
    "mode": "infer: forward under inference_mode; train: forward, loss, backward, SGD step, zero_grad",
    "batch": "the batch that ran (smaller than requested_batch after an out-of-memory retry)",
    "requested_batch": "the batch asked for",
    "img_size": "input image size",
    "amp_dtype": "autocast dtype, or fp32 (no autocast)",
    "samples_per_s": "batch / step_ms",
    "step_ms": "median time of one step in ms (CUDA events on a GPU, perf_counter on a CPU)",
    "peak_mem_bytes": "peak memory allocated during one step above what existed before it: activations, "
                      "gradients and temporaries (not the weights and SGD's momentum, state_bytes, nor the inputs)",
    "state_bytes": "bytes of parameters and buffers, and in train mode SGD's momentum",
    "params": "number of parameters of the model that ran (vitfast's, or the peer's); null when none ran",
    "gflops": "GFLOPs per sample of one step, counted from the config (train: 3× the forward)",
    "tflops": "achieved TFLOP/s: gflops × batch / step time",
    "status": "'ok', or why the case has no numbers",
}


@dataclass(frozen=True, kw_only=True)
class ModelBenchRow(StatusRow):
    """One measured (model, implementation, backend, mode). Numbers are None when it did not run."""

    model: str
    impl: str
    backend: str
    mode: str
    batch: int
    requested_batch: int
    img_size: int
    amp_dtype: str
    samples_per_s: float | None = None
    step_ms: float | None = None
    peak_mem_bytes: int | None = None
    state_bytes: int | None = None
    params: int | None = None
    gflops: float
    tflops: float | None = None
    status: str

    @property
    def label(self) -> str:
        return self.backend if self.impl == "vitfast" else self.impl


# FLOPs from the config


def _block_macs(tokens: int, dim: int, hidden: int, attention: int | None = None) -> int:
    """Multiply-adds of one pre-norm transformer block over `tokens` tokens of width `dim`: qkv, the two
    attention products (`attention`; by default each query against every token), the output projection and the MLP."""
    attention = 2 * tokens * tokens * dim if attention is None else attention
    return tokens * dim * 3 * dim + attention + tokens * dim * dim + 2 * tokens * dim * hidden


def _vit_macs(cfg, img_size: int) -> int:
    grid = (img_size // cfg.patch_size) ** 2
    return (grid * cfg.embed_dim * cfg.in_chans * cfg.patch_size**2  # patch embedding
            + cfg.depth * _block_macs(grid + int(cfg.class_token), cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))
            + cfg.embed_dim * cfg.num_classes)  # head


def _swin_macs(cfg, img_size: int) -> int:
    grid = -(-img_size // cfg.patch_size)
    macs = grid * grid * cfg.embed_dim * cfg.in_chans * cfg.patch_size**2
    for i, depth in enumerate(cfg.depths):
        dim, res = cfg.embed_dim * 2**i, -(-grid // 2**i)
        if i:  # patch merging: (res x res) tokens of 4·C/2 channels projected to C
            macs += res * res * 2 * dim * dim
        tokens, hidden = res * res, int(dim * cfg.mlp_ratio)
        for j in range(depth):
            (wh, ww), _ = effective_window(res, res, cfg.window_size, cfg.window_size // 2 if j % 2 else 0)
            padded = -(-res // wh) * wh * -(-res // ww) * ww  # windows cover the map padded to whole windows
            macs += _block_macs(tokens, dim, hidden, attention=2 * padded * wh * ww * dim)
    return macs + cfg.embed_dim * 2 ** (len(cfg.depths) - 1) * cfg.num_classes


def _clip_macs(cfg, img_size: int) -> int:
    grid = (img_size // cfg.patch_size) ** 2
    vision_mlp = int(cfg.vision_width * cfg.vision_mlp_ratio)
    vision = (grid * cfg.vision_width * cfg.in_chans * cfg.patch_size**2
              + cfg.vision_layers * _block_macs(grid + 1, cfg.vision_width, vision_mlp)
              + cfg.vision_width * cfg.embed_dim)
    text = (cfg.text_layers * _block_macs(cfg.context_length, cfg.text_width, int(cfg.text_width * cfg.text_mlp_ratio))
            + cfg.text_width * cfg.embed_dim)
    return vision + text


def count_flops(family: str, config, img_size: int | None = None, mode: str = "infer") -> float:
    """FLOPs per sample of one `mode` step ('infer' or 'train') of the model `config` describes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose {', '.join(MODES)}.")
    size = img_size or image_size(family, config)
    macs = {"vit": _vit_macs, "swin": _swin_macs, "clip": _clip_macs}[family](config, size)
    return 2.0 * macs * (3 if mode == "train" else 1)


# The benchmark


def image_size(family: str, config) -> int:
    """The input size of a config: CLIP's ``image_size``, a ViT's or Swin's ``img_size``."""
    return config.image_size if family == "clip" else config.img_size


def model_config(name: str, img_size: int | None = None, backend: str | None = None):
    """(family, config) of the vitfast model `name`, at `img_size` and with `backend` if given."""
    family, config = named_config(name)
    if family not in PEERS:
        raise ValueError(f"vitfast bench model measures ViT, Swin and CLIP models; {name} is a {family} model, "
                         "which it does not measure yet.")
    overrides = {}
    if img_size is not None:
        overrides["image_size" if family == "clip" else "img_size"] = img_size
    if backend is not None:
        overrides["attn_backend"] = backend
    fields = {**dataclasses.asdict(config), **overrides}
    return family, build_config(family, fields)


def validate_model_bench(*, name: str, modes: Sequence[str], backends: Sequence[str], compare: Sequence[str],
                         batch: int, img_size: int | None, amp_dtype: str, accelerate: bool = False,
                         **_: object) -> None:
    """Raise ValueError naming the first bad argument, before anything is built or timed."""
    model_config(name, img_size)  # unknown names and impossible sizes
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose infer, train or both.")
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}.")
    for peer in compare:
        if peer not in COMPARE:
            raise ValueError(f"unknown --compare {peer!r}; choose timm (ViT, Swin) or open_clip (CLIP).")
    if accelerate and not compare:
        raise ValueError("--accelerate times the --compare library's model patched by vitfast.accelerate: add "
                         "--compare timm (ViT, Swin) or --compare open_clip (CLIP).")
    if batch < 1:
        raise ValueError(f"--batch-size must be at least 1; got {batch}.")
    if amp_dtype not in DTYPES:
        raise ValueError(f"unknown AMP dtype {amp_dtype!r}; choose bf16, fp16 or fp32.")


def bench_model(*, name: str, modes: Sequence[str], backends: Sequence[str], batch: int, device: torch.device,
                img_size: int | None = None, amp_dtype: str = "fp32", compare: Sequence[str] = (),
                compile: bool = False, warmup: int = 1, rep: int = 3, retry_smaller: bool = False,
                accelerate: bool = False, on_row: Callable[[ModelBenchRow], None] | None = None
                ) -> list[ModelBenchRow]:
    """One row per (mode, vitfast backend), then per (mode, peer library) in `compare`, then with `accelerate`
    per (mode, peer library's model patched by vitfast.accelerate with the Triton kernels)."""
    validate_model_bench(name=name, modes=modes, backends=backends, compare=compare, batch=batch,
                         img_size=img_size, amp_dtype=amp_dtype, accelerate=accelerate)

    def run_case(mode: str, name: str, impl_backend: tuple[str, str]) -> ModelBenchRow:
        impl, backend = impl_backend
        family, config = model_config(name, img_size, backend if impl == "vitfast" else None)
        size = image_size(family, config)
        flops = count_flops(family, config, size, mode)
        base = dict(model=name, impl=impl, backend=backend, mode=mode, requested_batch=batch, img_size=size,
                    amp_dtype=amp_dtype, gflops=flops / 1e9)

        def not_run(status: str, batch: int) -> ModelBenchRow:
            params = _param_count(name, img_size) if impl == "vitfast" else None
            return ModelBenchRow(batch=batch, status=status, params=params, **base)

        library = impl.removesuffix(ACCELERATED)
        if backend == "triton" and device.type != "cuda":
            return not_run(TRITON_NEEDS_CUDA, batch)
        if impl != "vitfast" and PEERS[family] != library:
            return not_run(f"skipped: {library} has no {family} model; compare a {family} with {PEERS[family]}",
                           batch)
        tried = batch
        while True:
            measured, status = run_guarded(
                lambda: _measure_step(family, config, impl, mode, tried, device, amp_dtype, compile, warmup, rep),
                device)
            if status != OUT_OF_MEMORY or not retry_smaller or tried == 1:
                break
            tried //= 2
        if measured is None:
            if impl != "vitfast" and status.startswith(("error: ImportError", "error: ModuleNotFoundError")):
                status = f"skipped: {library} is not installed"
            return not_run(status, tried)
        step_ms, peak, state, params = measured
        return ModelBenchRow(batch=tried, samples_per_s=tried / (step_ms * 1e-3), step_ms=step_ms,
                             peak_mem_bytes=peak, state_bytes=state, params=params,
                             tflops=flops * tried / (step_ms * 1e-3) / 1e12, status="ok", **base)

    impls = [("vitfast", b) for b in backends] + [(peer, peer) for peer in compare]
    impls += [(peer + ACCELERATED, "triton") for peer in compare] if accelerate else []
    return run_grid(modes, [name], impls, run_case, on_row)


@functools.lru_cache(maxsize=8)
def _param_count(name: str, img_size: int | None) -> int:
    """Parameters of the vitfast model, for rows that did not run (a CPU build: the models' init reads
    values, torch.linspace(...).tolist(), so the meta device will not do)."""
    family, config = model_config(name, img_size)
    with torch.no_grad():
        return sum(p.numel() for p in build_model(family, config).parameters())


def _measure_step(family: str, config, impl: str, mode: str, batch: int, device: torch.device, amp_dtype: str,
                  compile: bool, warmup: int, rep: int) -> tuple[float, int, int, int]:
    """(median step ms, peak bytes above the state, state bytes, parameters); everything dies with this frame."""
    if compile:  # each case compiles a new model: start from empty caches, not the last case's guards
        torch._dynamo.reset()
    model = (build_model(family, config) if impl == "vitfast" else peer_model(family, config)).to(device)
    if impl.endswith(ACCELERATED):  # the peer's own model with vitfast's kernels in place
        patching.accelerate(model, backend="triton")
    amp = DTYPES[amp_dtype]
    step = make_step(family, config, model, mode, batch, device, None if amp == torch.float32 else amp, compile)
    # At least one warm-up step (time_and_peak's rule), as SGD allocates its momentum on the first step.
    step_ms, peak = time_and_peak(step, device, warmup, rep)
    state = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if mode == "train":
        state += sum(p.numel() * p.element_size() for p in model.parameters())  # SGD's momentum
    return step_ms, peak, state, sum(p.numel() for p in model.parameters())


def make_step(family: str, config, model: nn.Module, mode: str, batch: int, device: torch.device,
              amp: torch.dtype | None, compile: bool) -> Callable[[], None]:
    """One `mode` step of `model` (on `device`) on a random batch, as the benchmark times it."""
    gen = torch.Generator(device=device).manual_seed(0)
    size = image_size(family, config)
    images = torch.randn(batch, config.in_chans, size, size, generator=gen, device=device)
    if family == "clip":
        text = torch.randint(0, config.vocab_size - 2, (batch, config.context_length), generator=gen, device=device)
        text[:, -1] = config.vocab_size - 1  # the end token, where both open_clip and vitfast read the text
        inputs = (images, text)
    else:
        labels = torch.randint(0, max(config.num_classes, 1), (batch,), generator=gen, device=device)
        inputs = (images,)
    forward = torch.compile(model) if compile else model
    ours = isinstance(model, tuple(cls for _, cls in FAMILIES.values()))

    if family == "clip" and not ours:
        from open_clip.loss import ClipLoss  # open_clip trains with its own loss: time the two as used

        open_clip_loss = ClipLoss()

    def loss_of(out) -> torch.Tensor:
        if family != "clip":
            return F.cross_entropy(out.float(), labels) if config.num_classes else out.float().pow(2).mean()
        # vitfast's loss on auto: Triton where it can run, else the chunked path
        return (clip_loss if ours else open_clip_loss)(*(t.float() for t in out[:3]))

    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast(device, amp):
                forward(*inputs)

        return infer

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        with autocast(device, amp):
            out = forward(*inputs)
        loss_of(out).backward()
        optimizer.step()
        # Gradients freed at the end rather than the start (as timm's benchmark), the same work per step:
        # no step then begins with the last one's gradients, so its peak counts them on every device.
        optimizer.zero_grad(set_to_none=True)

    return train


def speedups(rows: Sequence[ModelBenchRow], baseline: str) -> list[float | None]:
    """Each row's samples/s over the `baseline` label's (a backend, or a peer library) in the same mode."""
    base = {r.mode: r.samples_per_s for r in rows if r.label == baseline and r.ok}
    return [r.samples_per_s / base[r.mode] if r.ok and base.get(r.mode) else None for r in rows]


@dataclass(frozen=True)
class ModelSweep(Sweep):
    """A sweep of model rows; speedups are read against the peer library where it ran, else vitfast's sdpa."""

    unit: str = "steps"

    def describe(self, row: ModelBenchRow) -> str:
        """The row in the progress bar."""
        return f"{row.label} {row.mode}"

    def table(self, rows: Sequence[ModelBenchRow], where: str) -> report.Table:
        baseline = self.baseline(rows)
        per_mode = ", ".join(f"{r.gflops:.3g} {r.mode}" for r in rows if r.label == rows[0].label)
        title = f"{self.shape} · {rows[0].params / 1e6:.3g}M params · GFLOPs/sample {per_mode} · {where}"
        return report.model_table(rows, speedups(rows, baseline), title, baseline)

    def plot_title(self, where: str) -> str:
        return f"{self.params['name']} on {where}"

    def plot(self, rows: Sequence[ModelBenchRow], path, title: str) -> None:
        report.plot_speed_vs_memory(rows, path, title=title)

    def summary(self, rows: Sequence[ModelBenchRow]) -> list[report.SummaryLine]:
        """Every row, with its speedup over the baseline."""
        baseline = self.baseline(rows)
        return [report.SummaryLine(self.name, f"B={r.batch}", r.mode, r.label, r.step_ms, report.mib(r.peak_mem_bytes),
                                   s, baseline, r.status)
                for r, s in zip(rows, speedups(rows, baseline))]


def model_sweep(params: dict[str, object], **labels: object) -> ModelSweep:
    """:func:`bench_model` with the keywords `params`, as the commands run it; `labels` as in
    :class:`~vitfast.bench.sweep.Sweep` (title)."""
    shape = f"{params['name']} B={params['batch']} {params['amp_dtype']}"
    shape += " compiled" if params.get("compile") else ""
    accelerated = len(params["compare"]) if params.get("accelerate") else 0
    cases = len(params["modes"]) * (len(params["backends"]) + len(params["compare"]) + accelerated)
    return ModelSweep(name=f"model_{params['name']}", label="model", bench=bench_model, params=params,
                      benchmark="model", fields=FIELDS, cases=cases, shape=shape,
                      baselines=(*params["compare"], "sdpa"), **labels)


def plan(*, name: str, modes: Sequence[str] = MODES, backends: Sequence[str] = BACKENDS, batch: int | None = None,
         img_size: int | None = None, amp_dtype: str = AUTO, compare: Sequence[str] = (), compile: bool = False,
         retry_smaller: bool = True, device: str = AUTO, warmup: int | None = None,
         rep: int | None = None, accelerate: bool = False) -> ModelSweep:
    """`vitfast bench model`: the sweep its flags ask for, with device and dtype names resolved and unset
    values the device's defaults. Raises ValueError naming the first bad argument."""
    dev = resolve_device(device)
    defaults = defaults_for(dev)
    params = dict(name=name, modes=list(modes), backends=list(backends),
                  batch=defaults.model_batch if batch is None else batch, img_size=img_size,
                  amp_dtype=default_dtype_name(dev) if amp_dtype == AUTO else amp_dtype, compare=list(compare),
                  accelerate=accelerate, compile=compile, **defaults.timing(warmup, rep), retry_smaller=retry_smaller,
                  device=dev)
    validate_model_bench(**params)
    return model_sweep(params)
