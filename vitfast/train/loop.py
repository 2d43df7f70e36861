"""Training loop for image classifiers and CLIP: AdamW, warmup + cosine, AMP, accumulation, DDP,
exact resume. What is trained (model, data, loss, validation) comes from vitfast.train.tasks.

Reproducibility is by construction, so that a resumed run and a multi-process run can be compared
with an uninterrupted single-process one:
- the sample order of epoch e is a permutation seeded by (seed, e), split across ranks the way
  DistributedSampler splits it (one process is world size 1 of the same scheme);
- each sample's augmentation is seeded by (seed, epoch, index), whatever worker or rank loads it;
- the checkpoint's training state holds the model, optimizer, scheduler, scaler, position (epoch
  and step within it) and every rank's RNG states (vitfast.train.state: one file, or a distributed
  checkpoint that loads on another number of processes);
- what a step sees is a contiguous slice of the epoch's permutation, whatever the number of processes,
  so a resume on another world size at the same global batch (processes × --batch-size) continues the
  same data order.

What was saved is never lost or made worse: before any save the weights (and, at an epoch's end, the
validation metrics) must be finite, or the run stops and leaves the last good files as they were;
the best epoch by validation metric is kept in `best/` beside the last; a fresh run refuses a folder
holding another run unless told to resume or overwrite it; SIGINT and SIGTERM, in training or in
validation, save a resumable checkpoint before the run stops; and a resume refuses flags that would
change what the saved state means (see RESUME_MUST_MATCH).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from vitfast import data as vdata
from vitfast.checkpoint import CheckpointError, save
from vitfast.models import check_model_name, model_family, named_config
from vitfast.runtime import Runtime, amp_dtype_for, autocast, init_runtime
from vitfast.train import fsdp
from vitfast.train import state as saved_state
from vitfast.train.state import SHARDED_DIR, STATE_NAME
from vitfast.train.tasks import build_task

METRICS_NAME = "metrics.jsonl"
ARGS_NAME = "train_args.json"
BEST_DIR = "best"
# What `vitfast train` writes into --output (and, the model files, into best/): all --overwrite removes.
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
               "tokenizer.json")
RUN_FILES = (STATE_NAME, METRICS_NAME, ARGS_NAME)  # and the distributed checkpoints in SHARDED_DIR/
# For the signal tests (tests/bad_inputs/test_train_safety.py): when this variable names a file, the
# loop writes "train E" or "val E" into it as each phase of epoch E starts, so a test can send its
# signal in the phase it means. Nothing else reads it.
PHASE_FILE_ENV = "VITFAST_PHASE_FILE"

# Flags a resume must repeat: each changes what the saved state means (the data order, the model's
# shapes, the schedule the optimizer state was built on) or is silently overridden by it (the
# optimizer's learning rates and weight decay come from the state). --batch-size too, on the same number
# of processes; on another, the global batch (processes × --batch-size) is kept (_resume_batch_size).
RESUME_MUST_MATCH = {
    "model": "--model", "data_dir": "--data-dir", "train_data": "--train-data",
    "grad_accum_steps": "--grad-accum-steps", "img_size": "--img-size", "scale": "the crop scale",
    "seed": "--seed", "lr": "--lr", "min_lr": "--min-lr", "warmup_epochs": "--warmup-epochs",
    "weight_decay": "--weight-decay", "layer_decay": "--layer-decay", "drop_path": "--drop-path",
    "tokenizer": "--tokenizer", "bpe_path": "--bpe-path", "csv_img_key": "--csv-img-key",
    "csv_caption_key": "--csv-caption-key", "csv_separator": "--csv-separator", "pretrained": "--pretrained",
    "fsdp": "--fsdp",
}
# Flags a resume may change, with what changes (one warning line each). The others change nothing in
# the result (--workers, --grad-checkpointing, --quiet, --dcp, --keep-checkpoints) or only its rounding
# (--attn-backend, --compile).
RESUME_MAY_CHANGE = {
    "amp_dtype": ("--amp-dtype", "the numerics change from here on"),
    "clip_grad": ("--clip-grad", "gradient clipping changes from here on"),
    "skip_bad_images": ("--skip-bad-images", "unreadable images are handled differently from here on"),
    "val_data": ("--val-data", "validation metrics change, so best/ compares epochs on different data"),
}


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, weights or metrics): the message says what is kept and what to try."""


class TrainUsageError(ValueError):
    """Flags that cannot run as given (a folder holding another run, a resume with changed flags, a
    learning rate ≤ 0): the CLI exits 2, as for any usage error."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after saving a resumable checkpoint (`signum` says which;
    the CLI exits 128 + signum)."""

    def __init__(self, saved: str, output: Path, signum: int) -> None:
        super().__init__(f"{saved}; continue with --resume latest --output {output} and the same flags")
        self.saved, self.signum = saved, signum


class _StopRequested(Exception):
    """Raised between optimizer steps (or between validation batches) after SIGINT/SIGTERM, so the
    saved state is never half a step."""


@contextlib.contextmanager
def _deferred_stop(flag: dict) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM (SLURM preemption, `docker stop`, `timeout`) set flag["stop"] to
    the signal's number: the loop saves and stops after the optimizer step in flight, or after the
    validation batch in flight (validation changes no state). A second signal of the same kind acts
    as it would without vitfast (SIGINT: KeyboardInterrupt; SIGTERM: the process ends). DataLoader
    workers ignore both (vitfast.data.build_loader): the training process stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()
    previous: dict = {}

    def on_signal(signum, frame):
        if os.getpid() != pid:  # a DataLoader worker
            return
        flag["stop"] = signum
        signal.signal(signum, previous[signum])

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, on_signal)
        if previous[signum] is None:  # installed outside Python
            previous[signum] = signal.SIG_DFL
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
    layer_decay: float | None = None  # layer-wise lr decay (ViT, Swin), as timm's --layer-decay; None: off
    warmup_epochs: float = 1.0
    amp_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    grad_accum_steps: int = 1
    grad_checkpointing: bool = False
    fsdp: bool = False  # shard with FSDP2 (vitfast.train.fsdp) instead of DDP; under torchrun
    dcp: bool = False  # save the training state as distributed checkpoints (always with fsdp); vitfast.train.state
    keep_checkpoints: int = 1  # distributed checkpoints kept in output/train_state/, newest first
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
    overwrite: bool = False  # replace the run already in --output (only the files training writes)
    # start from published weights (vitfast.pretrained): a tag, "default" (the tag in --model, or timm's
    # default), hf-hub:ORG/NAME or a local folder; None: random initialization
    pretrained: str | None = None

    def check(self) -> None:
        """Refuse what cannot run, before any data is read: the rules the command line applies when it
        parses the flags, for callers of the library."""
        def number(flag: str, value: float | None, low: float, *, above: bool = False, below: float | None = None,
                   hint: str = "") -> None:
            if value is None:
                return
            bad = not math.isfinite(value) or value < low or (above and value == low) or \
                (below is not None and value >= below)
            if bad:
                rule = (f"above {low:g}" if above else f"at least {low:g}") + (f" and below {below:g}" if below else "")
                raise TrainUsageError(f"{flag} must be a finite number {rule}; got {value}.{hint}")

        number("--lr", self.lr, 0, above=True, hint=" Pass e.g. --lr 1e-3.")
        number("--min-lr", self.min_lr, 0)
        if self.min_lr > self.lr:
            raise TrainUsageError(f"--min-lr ({self.min_lr:g}) must not be above --lr ({self.lr:g}): the cosine "
                                  "schedule decays from --lr down to --min-lr.")
        number("--weight-decay", self.weight_decay, 0)
        number("--warmup-epochs", self.warmup_epochs, 0)
        number("--clip-grad", self.clip_grad, 0, above=True, hint=" Leave it out for no clipping.")
        number("--drop-path", self.drop_path, 0, below=1)
        if self.layer_decay is not None:
            if not (math.isfinite(self.layer_decay) and 0 < self.layer_decay <= 1):
                raise TrainUsageError(f"--layer-decay must be a finite number above 0 and at most 1; got "
                                      f"{self.layer_decay}. Pass e.g. --layer-decay 0.75, or leave it out for "
                                      "one learning rate for all layers.")
            try:
                family = named_config(self.model.partition(".")[0])[0]
            except ValueError:  # an unknown --model: train() names it, with suggestions
                family = None
            if family in ("clip", "siglip"):
                raise TrainUsageError(f"--layer-decay applies to ViT and Swin classifiers; {self.model} is an "
                                      "image-text model (open_clip has no layer decay): leave --layer-decay out.")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--grad-accum-steps", self.grad_accum_steps, 1), ("--workers", self.workers, 0),
                                 ("--keep-checkpoints", self.keep_checkpoints, 1),
                                 ("--img-size", self.img_size, 1)):
            if value is not None and value < low:
                raise TrainUsageError(f"{flag} must be at least {low}; got {value}.")
        if len(self.csv_separator) != 1:
            raise TrainUsageError(f"--csv-separator must be one character (e.g. '\\t' or ','); got "
                                  f"{self.csv_separator!r}.")
        if self.resume and self.overwrite:
            raise TrainUsageError("--resume continues the run in --output and --overwrite replaces it; pass one.")


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------


# Layer ids for layer-wise lr decay: timm's group_matcher(coarse=False) of the same architecture, numbered
# as timm's param_groups_layer_decay numbers them (group_with_matcher): each parameter name gets a sort
# key; the distinct keys, sorted, are layers 0, 1, ...; a key ending in _WITH_PREVIOUS joins the layer
# before it (the final norm shares the last block's layer); names no rule matches (the head) come last.
_WITH_PREVIOUS = 99999
_LAYER_RULES: dict[str, list[tuple[re.Pattern, Callable[[re.Match], tuple]]]] = {
    "vit": [
        (re.compile(r"cls_token|reg_token|pos_embed|patch_embed|norm_pre"), lambda m: (0,)),
        (re.compile(r"blocks\.(\d+)"), lambda m: (1, int(m[1]))),
        (re.compile(r"norm"), lambda m: (1, _WITH_PREVIOUS)),
    ],
    "swin": [
        (re.compile(r"patch_embed"), lambda m: (0,)),
        # a stage's downsample (patch merging) shares the layer of the stage's first block
        (re.compile(r"layers\.(\d+)\.downsample"), lambda m: (1, int(m[1]), 0)),
        (re.compile(r"layers\.(\d+)\.\w+\.(\d+)"), lambda m: (1, int(m[1]), int(m[2]))),
        (re.compile(r"norm"), lambda m: (1, _WITH_PREVIOUS)),
    ],
}
# Exempt from weight decay under layer decay, beside ndim <= 1: timm's model.no_weight_decay() (ViT:
# these names; Swin: every relative_position_bias_table), as timm's create_optimizer_v2 passes it.
_NO_WEIGHT_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token")


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer for layer-wise lr decay (ViT, Swin; TrainUsageError otherwise): 0 for the
    stem, one per block upwards, the head last, as timm's param_groups_layer_decay assigns them."""
    try:
        family = model_family(model)
    except ValueError:
        family = type(model).__name__
    if family not in _LAYER_RULES:
        raise TrainUsageError(f"--layer-decay applies to ViT and Swin classifiers, not to a {family} model: "
                              "leave --layer-decay out.")
    head = (math.inf,)

    def key(name: str) -> tuple:
        for pattern, to_key in _LAYER_RULES[family]:
            m = pattern.match(name)
            if m:
                return to_key(m)
        return head

    keys = {name: key(name) for name, _ in model.named_parameters()}
    layer_of: dict[tuple, int] = {}
    layer = -1
    for k in sorted(set(keys.values())):
        if layer < 0 or k[-1] != _WITH_PREVIOUS:
            layer += 1
        layer_of[k] = layer
    return {name: layer_of[k] for name, k in keys.items()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups as timm: no weight decay on biases, norms, position embeddings and tokens.

    With `layer_decay` (ViT and Swin): timm's param_groups_layer_decay groups, one per (layer, decay or
    not), each with lr_scale = layer_decay ** (top layer - layer) (the head 1, each layer below it
    layer_decay times the one above), and no weight decay on ndim <= 1 parameters and timm's
    no_weight_decay() names (which for Swin include the relative position bias tables). Groups are
    ordered from the top layer down, so param_groups[0] runs at the schedule's own learning rate."""
    if layer_decay is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    ids = layer_ids(model)
    top = max(ids.values())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name in _NO_WEIGHT_DECAY_NAMES or "relative_position_bias_table" in name
        group = groups.setdefault((ids[name], not exempt), {
            "params": [], "weight_decay": 0.0 if exempt else weight_decay,
            "lr_scale": layer_decay ** (top - ids[name])})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW on param_groups(model, cfg.weight_decay, cfg.layer_decay), each group's learning rate
    cfg.lr × its lr_scale (1 without layer decay): the schedule (a LambdaLR factor) multiplies it, so
    every layer follows warmup + cosine at its own scale, and the saved optimizer and scheduler state
    hold the scaled rates (a resume continues them)."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    return torch.optim.AdamW([{**g, "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in groups], lr=cfg.lr,
                             betas=(0.9, 0.999))


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


def _run_files(folder: Path) -> list[str]:
    """The files of a training run in `folder` (what a fresh run would replace)."""
    names = [STATE_NAME, METRICS_NAME, "config.json", "model.safetensors", "model.safetensors.index.json",
             f"{BEST_DIR}/config.json"]
    return [name for name in names if (folder / name).is_file()] + \
        ([f"{SHARDED_DIR}/"] if (folder / SHARDED_DIR).is_dir() else [])


def _remove_run(folder: Path) -> None:
    """--overwrite: remove what `vitfast train` wrote into `folder` and its best/, nothing else."""
    saved_state.remove_all(folder)
    for where in (folder / BEST_DIR, folder):
        for pattern in MODEL_FILES + (RUN_FILES if where == folder else ()):
            for path in where.glob(pattern):
                path.unlink()
    with contextlib.suppress(OSError):  # left if it holds anything vitfast did not write
        (folder / BEST_DIR).rmdir()


def _check_resume_flags(saved: dict, cfg: TrainConfig, start_epoch: int, say: Callable[[str], None]) -> None:
    """Refuse a resume whose flags change what the saved state means; warn about those that only
    change what comes next (--epochs: the schedule; RESUME_MAY_CHANGE)."""
    def same(key: str, old, new) -> bool:
        if isinstance(old, (list, tuple)):
            return tuple(old) == tuple(new or ())
        # a path given differently (relative, absolute) is the same if it names the same file now
        return old == new or (key in ("data_dir", "train_data", "bpe_path") and old is not None and new is not None
                              and Path(old).resolve() == Path(new).resolve())

    for key, flag in RESUME_MUST_MATCH.items():
        old, new = saved.get(key, getattr(cfg, key)), getattr(cfg, key)
        if not same(key, old, new):
            raise _must_repeat(flag, old, new)
    if start_epoch >= cfg.epochs:
        raise TrainUsageError(f"the saved run has finished {start_epoch} epochs and --epochs is {cfg.epochs}: "
                              f"nothing to do. Pass --epochs above {start_epoch} to train on.")
    if saved.get("epochs", cfg.epochs) != cfg.epochs:
        say(f"warning: --epochs is {cfg.epochs}, the saved run planned {saved['epochs']}: the warmup + cosine "
            f"schedule is re-planned over {cfg.epochs} epochs from the saved step (the learning rate jumps to "
            "the new curve), so the result equals neither unbroken run.")
    for key, (flag, effect) in RESUME_MAY_CHANGE.items():
        if key in saved and saved[key] != getattr(cfg, key):
            say(f"warning: {flag} was {saved[key]!r} in the saved run and is {getattr(cfg, key)!r} now: {effect}.")


def _must_repeat(flag: str, old, new) -> TrainUsageError:
    """The refusal of a resume that changed `flag` from `old` to `new`."""
    if isinstance(old, bool):
        again = f"pass {flag} again" if old else f"leave {flag} out"
    else:
        again = f"pass {flag} {old} again" if old is not None else f"leave {flag} out"
    return TrainUsageError(f"{flag} was {old!r} in the saved run and is {new!r} now; a resume must repeat it (the "
                           f"saved state was built on it): {again}, or start a new run with --overwrite or another "
                           "--output.")


def _resume_batch_size(saved: dict, cfg: TrainConfig, world: int, say: Callable[[str], None]) -> int:
    """The --batch-size a resume runs at: the saved one on the same number of processes; on another, the one
    that keeps the saved global batch (processes × --batch-size), so that every step sees the same samples
    and the schedule the same step count (a preempted job resumed on fewer or more GPUs)."""
    old, old_world = saved["config"]["batch_size"], saved.get("world", world)
    if old_world == world:
        if old != cfg.batch_size:
            raise _must_repeat("--batch-size", old, cfg.batch_size)
        return old
    total = old * old_world
    if total % world:
        raise TrainUsageError(f"the saved run's global batch is {total} ({old_world} process(es) × --batch-size "
                              f"{old}), which {world} processes cannot split evenly; resume on a number of processes "
                              f"that divides {total}.")
    say(f"resuming a run of {old_world} process(es) on {world}: --batch-size {total // world} per process keeps its "
        f"global batch of {total} and its data order" + (f" (not {cfg.batch_size} as passed)"
                                                         if cfg.batch_size != total // world else ""))
    return total // world


def _non_finite(model: nn.Module, val: dict, sharded: bool = False) -> list[str]:
    """What is not finite: validation metrics by name, then the weights (a count of tensors; under FSDP,
    whether any rank's shards are not: a collective)."""
    bad = [f"val {k} {v}" for k, v in val.items() if isinstance(v, float) and not math.isfinite(v)]
    if sharded:
        return bad if fsdp.all_finite(model) else [*bad, "the sharded weights"]
    tensors = [k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if tensors:
        bad.append(f"{len(tensors)} weight tensor(s) ({tensors[0]}, ...)")
    return bad


_RESTART = ("Start again with a lower --lr (or --clip-grad 1.0, or --amp-dtype fp32) and --overwrite or "
            "another --output.")


def _json_line(metrics: dict) -> str:
    """A metrics.jsonl line in strict JSON: a non-finite number (none reaches it today: such epochs
    stop the run) is written as null."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()},
                      allow_nan=False)


def _check_model(cfg: TrainConfig) -> None:
    """--model names a model vitfast knows, and a tag or a Hub repo in it comes with --pretrained."""
    if cfg.model.startswith("hf-hub:"):
        if not cfg.pretrained:
            raise TrainUsageError(f"--model {cfg.model} is a Hub repo of published weights; add --pretrained to "
                                  "start from them.")
        return
    base, dot, tag = cfg.model.partition(".")
    check_model_name(base)
    if dot and not cfg.pretrained:
        raise TrainUsageError(f"--model {cfg.model} names the pretrained tag {tag!r}; add --pretrained to start from "
                              f"those weights, or pass --model {base} to start from random ones.")


def train(cfg: TrainConfig, *, progress_factory=None, log: Callable[[str], None] = print) -> dict:
    """Train `cfg.model` on its data (or the default data); returns the last epoch's metrics.

    Writes under cfg.output, after every epoch whose weights and validation metrics are finite: the
    model folder (config.json with the class names + model.safetensors, + tokenizer.json for CLIP),
    train_state.pt and a metrics.jsonl line (strict JSON); and the best epoch so far (task.best_key)
    as a model folder in best/. Raises TrainUsageError before any data work if cfg.output holds
    another run and neither cfg.resume nor cfg.overwrite is set; TrainingError when the loss, weights
    or metrics stop being finite (nothing is saved then); Interrupted after SIGINT/SIGTERM (saved).
    """
    cfg.check()
    _check_model(cfg)  # before any data work: a typo fails at once
    output = Path(cfg.output)
    existing = _run_files(output)
    if existing and not cfg.resume and not cfg.overwrite:
        raise TrainUsageError(f"{output} already holds a training run ({', '.join(existing)}); pass --resume latest "
                              "to continue it, --overwrite to replace it, or another --output.")
    rt = init_runtime(group=cfg.fsdp)
    amp = amp_dtype_for(cfg.amp_dtype, rt.device)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    say = log if rt.is_main else (lambda msg: None)  # messages every rank would repeat: rank 0 says them
    found = saved_state.find(cfg.resume, output) if cfg.resume else None
    state = found.meta if found else None
    if state is not None and "config" in state:
        _check_resume_flags(state["config"], cfg, state["epoch"], say)
        cfg = replace(cfg, batch_size=_resume_batch_size(state, cfg, rt.world, say))
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

    model.set_grad_checkpointing(cfg.grad_checkpointing)
    scalars = None  # under --fsdp: the replicated 0-dim parameters (vitfast.train.fsdp)
    if cfg.fsdp:  # each block moves to the device as it is sharded: no rank ever holds the whole model there
        scalars = fsdp.shard(model, amp, rt.device)
    else:
        model.to(rt.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch), cfg.lr, cfg.min_lr))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    start_epoch, start_step = 0, 0
    saved_at: list[int] = []  # [epoch, step] of the last checkpoint in output
    best: dict | None = None  # {"epoch", "key", "summary"} of best/
    pending: dict | None = None  # the training stats of an epoch interrupted in its validation
    serial = 0  # of the last distributed checkpoint (vitfast.train.state)
    if state is not None:
        try:
            saved_state.restore(found, model, optimizer, rt.rank)
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the training state does not fit model {cfg.model} with these flags "
                                  f"({' '.join(str(exc).split())[:200]}).") from None
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        best, pending, serial = state.get("best"), state.get("pending_stats"), state.get("serial", 0)
        saved_at[:] = [start_epoch, start_step]
        say(f"resumed from {cfg.resume} at epoch {start_epoch + 1}, step {start_step}")

    ddp_model = model
    if rt.world > 1 and not cfg.fsdp:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    def save_model(folder: Path, weights: dict) -> None:
        save(model, folder, class_names=task.class_names, state_dict=weights)
        task.save_extra(folder)

    def full_weights() -> dict:
        """The model's state dict; under --fsdp gathered from the shards (a collective: every rank calls it)."""
        return fsdp.full_model_state(model) if cfg.fsdp else model.state_dict()

    def save_checkpoint(epoch: int, step_in_epoch: int, stats: dict | None = None,
                        weights: dict | None = None) -> None:
        """The model folder (rank 0; `weights`, or gathered here) and the training state: one file from rank 0,
        or a distributed checkpoint every rank writes its part of (collectives: every rank calls this)."""
        nonlocal serial
        saved_at[:] = [epoch, step_in_epoch]
        weights = full_weights() if weights is None else weights
        if rt.is_main:
            save_model(output, weights)
        serial += 1
        meta = {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "config": asdict(cfg), "world": rt.world, "serial": serial,
                "best": best}
        if stats is not None:
            meta["pending_stats"] = stats
        if cfg.fsdp or cfg.dcp:
            saved_state.save_sharded(output, model, optimizer, meta, rt.rank, cfg.keep_checkpoints)
            return
        rngs = saved_state.all_rng_states(rt.world)
        if rt.is_main:
            saved_state.save_full(output, weights, optimizer.state_dict(), meta, rngs)

    def kept() -> str:
        if not saved_at:
            return "nothing was saved"
        e, s = saved_at
        at = f"the end of epoch {e}" if s == 0 else f"epoch {e + 1}, step {s}"
        also = f", the best in {output / BEST_DIR} (epoch {best['epoch']})" if best else ""
        return f"{output} keeps the last good checkpoint, from {at}{also}"

    if rt.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:
            _remove_run(output)
        if state is None:  # the flags the run started with; a resume leaves the folder's files alone until it saves
            (output / ARGS_NAME).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{cfg.model}: {n_params / 1e6:.2f}M params, {task.description}; {rt.world} process(es) on "
            f"{rt.device}, {cfg.epochs} epochs of {steps_per_epoch} steps")

    phase_file = os.environ.get(PHASE_FILE_ENV)

    def enter(phase: str, epoch: int) -> None:
        if phase_file and rt.is_main:
            Path(phase_file).write_text(f"{phase} {epoch + 1}")

    def stop_validation() -> None:  # called before each validation batch
        if position["stop"] and rt.world == 1:  # under DDP, validation's all-reduce must finish
            raise _StopRequested

    metrics: dict = {}
    epoch = start_epoch
    stats: dict | None = None
    # optimizer steps done in the current epoch, and the signal that asked to stop (0: none)
    position = {"step": start_step, "stop": 0}
    try:
        with _deferred_stop(position):
            for epoch in range(start_epoch, cfg.epochs):
                train_set.epoch = epoch
                position["step"] = start_step if epoch == start_epoch else 0
                stats = pending if position["step"] >= steps_per_epoch and pending else None
                if stats is None:
                    sampler.set_epoch(epoch, skip=position["step"] * cfg.grad_accum_steps * cfg.batch_size)
                    enter("train", epoch)
                    stats = _train_epoch(task, run_model, model, loader, optimizer, scheduler, scaler, cfg, rt, amp,
                                         epoch, position, steps_per_epoch, progress_factory, kept, scalars)
                    position["step"] = steps_per_epoch
                enter("val", epoch)
                with fsdp.root_gathered(model) if cfg.fsdp else contextlib.nullcontext():
                    val = task.evaluate(rt.device, amp, stop_validation)
                bad = _non_finite(model, val, cfg.fsdp)
                if bad:
                    raise TrainingError(f"epoch {epoch + 1} diverged ({', '.join(bad)} not finite): stopped without "
                                        f"saving, so {kept()}. {_RESTART}")
                metrics = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items()}}
                key = task.best_key(val)
                weights = full_weights()  # gathered once for best/ and the checkpoint
                if best is None or not key or key > tuple(best["key"]):  # (): nothing measured, the last is best
                    best = {"epoch": epoch + 1, "key": list(key), "summary": task.summary(val)}
                    if rt.is_main:
                        save_model(output / BEST_DIR, weights)
                save_checkpoint(epoch + 1, 0, weights=weights)
                if rt.is_main:
                    with open(output / METRICS_NAME, "a") as f:
                        f.write(_json_line(metrics) + "\n")
                    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats['train_loss']:.4f}, {task.summary(val)}, "
                        f"{stats['images_per_s']:.0f} img/s")
                position["step"] = 0
                if epoch + 1 < cfg.epochs and _any_rank(bool(position["stop"]), rt):
                    raise _StopRequested  # the epoch is saved: stop before the next
            if rt.world > 1:
                # Every rank leaves together: one tearing gloo down while another still finishes its
                # checkpoint write was seen to abort the process (SIGABRT) under load.
                dist.barrier()
        if metrics:
            say(f"done: the last epoch ({metrics['epoch']}, {task.summary(val)}) is in {output}; the best "
                f"(epoch {best['epoch']}, {best['summary']}) is in {output / BEST_DIR}")
    except _StopRequested:
        signum = position["stop"] or signal.SIGINT
        done = position["step"]
        if done == 0:
            where = f"the end of epoch {epoch + 1}"  # saved before the stop
        elif _non_finite(model, {}, cfg.fsdp):
            raise TrainingError(f"{signal.Signals(signum).name} in epoch {epoch + 1}, but the weights are not "
                                f"finite: nothing was saved, so {kept()}. {_RESTART}") from None
        else:
            save_checkpoint(epoch, done, stats if done >= steps_per_epoch else None)
            where = (f"epoch {epoch + 1} after its training, before its validation" if done >= steps_per_epoch
                     else f"epoch {epoch + 1}, step {done} of {steps_per_epoch}")
        raise Interrupted(f"{signal.Signals(signum).name}: saved a checkpoint at {where} in {output}", output,
                          signum) from None
    finally:
        if dist.is_initialized():  # torchrun's group, or the one-rank group --fsdp made for one process
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
                 amp: torch.dtype | None, epoch: int, position: dict, steps: int, progress_factory,
                 kept: Callable[[], str], scalars: list[nn.Parameter] | None = None) -> dict:
    run_model.train()
    optimizer.zero_grad(set_to_none=True)  # an epoch whose last batches were all unreadable left some
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
            if images.shape[0] == 0:  # every image of the batch was unreadable (--skip-bad-images)
                tick = time.perf_counter()
                continue
            images, labels = images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True)
            # Under DDP, gradients are all-reduced only on the micro-batch that ends a step; FSDP reduce-scatters
            # them only then.
            last = micro == accum - 1
            if cfg.fsdp:
                model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext() if last or rt.world == 1 or cfg.fsdp else run_model.no_sync()
            with sync, autocast(rt.device, amp):
                loss = task.loss(run_model, images, labels)
                scaler.scale(loss / accum).backward()
            value = loss.detach()
            if not torch.isfinite(value):
                raise TrainingError(f"the loss became {value.item()} at epoch {epoch + 1}, step {step + 1}: stopped "
                                    f"without saving, so {kept()}. {_RESTART}")
            loss_sum += value
            n_loss += 1
            seen += images.shape[0]
            micro += 1
            tick = time.perf_counter()
            if micro < accum:
                continue
            micro = 0
            if cfg.fsdp:
                fsdp.sync_scalar_grads(scalars, rt.world)
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                if cfg.fsdp:
                    fsdp.clip_grad_norm(model, cfg.clip_grad)
                else:
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
            if step < steps and _any_rank(bool(position["stop"]), rt):
                raise _StopRequested  # the last step's stop is taken before validation
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
