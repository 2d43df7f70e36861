"""Training loop for image classifiers and CLIP: AdamW, warmup + cosine, AMP, accumulation, DDP,
exact resume. What is trained (model, data, loss, validation) comes from vitfast.train.tasks.

Reproducibility is by construction, so that a resumed run and a multi-process run can be compared
with an uninterrupted single-process one:
- the sample order of epoch e is a permutation seeded by (seed, e), split across ranks the way
  DistributedSampler splits it (one process is world size 1 of the same scheme);
- each sample's augmentation is seeded by (seed, epoch, index), whatever worker or rank loads it;
- the checkpoint's training state holds the model, optimizer, scheduler, scaler, position (epoch
  and step within it) and the RNG states.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from vitfast import data as vdata
from vitfast.checkpoint import CheckpointError, save
from vitfast.files import atomic_write
from vitfast.models import check_model_name
from vitfast.runtime import Runtime, amp_dtype_for, autocast, init_runtime
from vitfast.train.tasks import build_task

STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, bad resume state): the message says what is kept and what to try."""


class _StopRequested(Exception):
    """Raised between optimizer steps after Ctrl-C, so the saved state is never half a step."""


@contextlib.contextmanager
def _deferred_sigint(flag: dict) -> Iterator[None]:
    """The first Ctrl-C sets flag["stop"] (the loop saves and stops after the step in flight); a
    second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        flag["stop"] = True
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainConfig:
    model: str = "vit_micro_patch4_32"
    data_dir: str | None = None  # None: the built-in default data
    output: str = "output/train"
    epochs: int = 15
    batch_size: int = 128  # per process
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    amp_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    grad_accum_steps: int = 1
    grad_checkpointing: bool = False
    clip_grad: float | None = None
    compile: bool = False
    attn_backend: str = "auto"
    resume: str | None = None  # a checkpoint folder / train_state.pt, or "latest" (in --output)
    seed: int = 42
    workers: int = 2
    img_size: int | None = None  # default: the model's
    scale: tuple[float, float] | None = None  # RandomResizedCrop area range; default (0.08, 1), default data (0.35, 1)
    drop_path: float | None = None
    skip_bad_images: bool = False
    quiet: bool = False
    # CLIP only (see vitfast.train.tasks.ClipTask); no --train-data: the default data's captions.
    train_data: str | None = None  # CSV/TSV of image-text pairs
    val_data: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    tokenizer: str | None = None  # a tokenizer.json, "clip" (CLIP's BPE) or "train" (a BPE on the captions)
    bpe_path: str | None = None  # CLIP's bpe_simple_vocab_16e6.txt.gz; default: open_clip's copy


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as timm: no weight decay on biases, norms, position embeddings and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup from 0, then cosine down to min_lr."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))) / lr
    return factor


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    # numpy's state is a tuple holding an array; stored as a tensor so weights_only loading accepts it.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                   "has_gauss": has_gauss, "gauss": gauss}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_train_state(resume: str, output: Path) -> dict:
    """The training state --resume names: a checkpoint folder or its train_state.pt, or "latest" (in --output)."""
    path = output if resume == "latest" else Path(resume)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        where = f"in {output} (--output)" if resume == "latest" else f"at {resume}"
        raise CheckpointError(f"no training state {where}: expected {STATE_NAME} from an earlier `vitfast train`.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read the training state {path} ({type(exc).__name__}: {exc}). "
                              "It may be corrupt; resume from another checkpoint or start afresh.") from None


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, progress_factory=None, log: Callable[[str], None] = print) -> dict:
    """Train `cfg.model` on its data (or the default data); returns the last epoch's metrics.

    Writes under cfg.output: the model folder (config.json + model.safetensors, + tokenizer.json for
    CLIP) and train_state.pt after every epoch, and metrics.jsonl.
    """
    check_model_name(cfg.model)  # before any data work: a typo fails at once
    rt = init_runtime()
    amp = amp_dtype_for(cfg.amp_dtype, rt.device)
    output = Path(cfg.output)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    say = log if rt.is_main else (lambda msg: None)  # messages every rank would repeat: rank 0 says them
    task = build_task(cfg, rt, output, say)
    model = task.model
    train_set = vdata.SeededAugment(task.train_set, cfg.seed)
    sampler = vdata.EpochSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=rt.rank, world=rt.world)
    loader = vdata.build_loader(train_set, batch_size=cfg.batch_size, workers=cfg.workers, sampler=sampler,
                                drop_last=True, seed=cfg.seed)
    steps_per_epoch = len(loader) // cfg.grad_accum_steps
    if steps_per_epoch < 1:
        raise vdata.DataError(f"the training data has {len(train_set)} samples: too few for one step of "
                              f"batch size {cfg.batch_size} × {rt.world} process(es) × "
                              f"{cfg.grad_accum_steps} accumulation steps. Lower --batch-size.")

    model.to(rt.device)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}

    start_epoch, start_step = 0, 0
    if cfg.resume:
        state = read_train_state(cfg.resume, output)
        try:
            for name, part in stateful.items():
                part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the training state does not fit model {cfg.model} with these flags "
                                  f"({' '.join(str(exc).split())[:200]}).") from None
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        _set_rng_state(state["rng"])
        say(f"resumed from {cfg.resume} at epoch {start_epoch + 1}, step {start_step}")

    ddp_model = model
    if rt.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        if not rt.is_main:
            return
        save(model, output)
        task.save_extra(output)
        state = {name: part.state_dict() for name, part in stateful.items()}
        state |= {"epoch": epoch, "step_in_epoch": step_in_epoch, "rng": _rng_state(), "config": asdict(cfg)}
        atomic_write(output / STATE_NAME, lambda p: torch.save(state, p))

    if rt.is_main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_args.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{cfg.model}: {n_params / 1e6:.2f}M params, {task.description}; {rt.world} process(es) on "
            f"{rt.device}, {cfg.epochs} epochs of {steps_per_epoch} steps")

    metrics: dict = {}
    epoch = start_epoch
    # optimizer steps done in the current epoch, and whether Ctrl-C asked to stop
    position = {"step": start_step, "stop": False}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_set.epoch = epoch
            position["step"] = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, skip=position["step"] * cfg.grad_accum_steps * cfg.batch_size)
            with _deferred_sigint(position):
                stats = _train_epoch(task, run_model, model, loader, optimizer, scheduler, scaler, cfg, rt, amp,
                                     epoch, position, steps_per_epoch, progress_factory)
            val = task.evaluate(rt.device, amp)
            metrics = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items()}}
            if rt.is_main:
                with open(output / METRICS_NAME, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats['train_loss']:.4f}, {task.summary(val)}, "
                    f"{stats['images_per_s']:.0f} img/s")
            save_checkpoint(epoch + 1, 0)
        if rt.world > 1:
            # Every rank leaves together: one tearing gloo down while another still finishes its
            # checkpoint write was seen to abort the process (SIGABRT) under load.
            dist.barrier()
    except _StopRequested:
        done = position["step"]
        save_checkpoint(epoch, done)
        say(f"interrupted: saved a checkpoint at epoch {epoch + 1}, step {done} in {output}; "
            f"continue with --resume latest --output {output}")
        raise KeyboardInterrupt from None
    finally:
        if rt.world > 1 and dist.is_initialized():
            del run_model, ddp_model  # DDP's reducer holds collective state: release it before the group
            dist.destroy_process_group()
    return metrics


def _any_rank(flag: bool, rt: Runtime) -> bool:
    """True if `flag` is set on any rank (every rank must stop at the same step)."""
    if rt.world == 1:
        return flag
    t = torch.tensor(float(flag), device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _train_epoch(task, run_model, model, loader, optimizer, scheduler, scaler, cfg: TrainConfig, rt: Runtime,
                 amp: torch.dtype | None, epoch: int, position: dict, steps: int, progress_factory) -> dict:
    run_model.train()
    accum = cfg.grad_accum_steps
    start_step = step = position["step"]
    seen = n_loss = micro = bad_images = 0
    loss_sum = torch.zeros((), device=rt.device)
    data_time = 0.0
    t0 = tick = time.perf_counter()
    progress = progress_factory(epoch, steps, start_step) if progress_factory and rt.is_main else None
    try:
        for images, labels, skipped in loader:
            if step >= steps:
                break
            bad_images += skipped
            data_time += time.perf_counter() - tick
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            # Under DDP, gradients are all-reduced only on the micro-batch that ends a step.
            sync = contextlib.nullcontext() if micro == accum - 1 or rt.world == 1 else run_model.no_sync()
            with sync, autocast(rt.device, amp):
                loss = task.loss(run_model, images, labels)
                scaler.scale(loss / accum).backward()
            value = loss.detach()
            if not torch.isfinite(value):
                raise TrainingError(
                    f"the loss became {value.item()} at epoch {epoch + 1}, step {step + 1}; stopped without "
                    f"saving, so {cfg.output} keeps the last good checkpoint. Try a lower --lr, --clip-grad 1.0, "
                    "or --amp-dtype bf16/fp32.")
            loss_sum += value
            n_loss += 1
            seen += images.shape[0]
            micro += 1
            tick = time.perf_counter()
            if micro < accum:
                continue
            micro = 0
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            task.after_step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            position["step"] = step
            if progress is not None:
                elapsed = time.perf_counter() - t0
                progress(step, loss=value.item(), lr=optimizer.param_groups[0]["lr"],
                         images_per_s=seen * rt.world / max(elapsed, 1e-9), data_time=data_time / n_loss)
            if _any_rank(position["stop"], rt):
                raise _StopRequested
            tick = time.perf_counter()
    finally:
        if progress is not None:
            progress(None)
    elapsed = time.perf_counter() - t0
    if rt.world > 1:
        totals = torch.stack([loss_sum, torch.tensor(float(n_loss), device=rt.device)])
        dist.all_reduce(totals)
        loss_sum, n_loss = totals[0], int(totals[1].item())
    return {"train_loss": (loss_sum / max(1, n_loss)).item(), "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen * rt.world / max(elapsed, 1e-9), "data_time_s": data_time,
            "epoch_time_s": elapsed, "bad_images_skipped": bad_images}
