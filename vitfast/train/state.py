"""The training state a resume reads: one file written by rank 0, or a distributed checkpoint.

Two formats, both read by :func:`find` + :func:`restore` whatever wrote them:

- **Full** (``train_state.pt``, the default with DDP): rank 0 writes the whole state (model, optimizer,
  scheduler, scaler, position, RNG states, flags) in one file, atomically. DDP's replicas are equal, so
  any number of processes can read it.
- **Distributed** (``train_state/``; always with ``--fsdp``, with DDP under ``--dcp``): PyTorch's
  Distributed Checkpoint. Every rank writes its own shards of the model and optimizer state (replicated
  tensors once), its RNG states (``rng-<rank>.pt``), and rank 0 the rest (``trainer.pt``), into a
  folder of its own, ``train_state/<serial>-epoch<E>-step<S>/``. DCP keeps every tensor's global
  shape and each shard's offsets, so a run saved by N processes loads on M: each rank reads the
  pieces of its own new shards.

Atomic: a distributed save is good only once rank 0 has written its ``COMPLETE`` marker, after every
rank has finished writing (a barrier). :func:`find` ignores folders without it, so a save killed at
any point leaves the previous checkpoint as the latest; only after the marker does rank 0 remove the
older folders beyond ``keep`` (and a leftover half-written folder). With a different world size on
resume, rank r restores the RNG states of saved rank r mod the saved world size.

Each rank must see the same ``--output`` (on several nodes: a shared file system), as DCP's file
writer assumes.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from vitfast.checkpoint import CheckpointError
from vitfast.files import atomic_write

STATE_NAME = "train_state.pt"  # the full format
SHARDED_DIR = "train_state"  # the distributed checkpoints' folder
COMPLETE = "COMPLETE"  # written last, by rank 0: the checkpoint beside it is whole
TRAINER = "trainer.pt"  # rank 0's part of a distributed checkpoint: position, flags, scheduler, scaler
_FOLDER = re.compile(r"^(\d{6})-epoch\d+-step\d+$")


def rng_state() -> dict:
    """This process's RNG states (torch, CUDA, numpy, Python), loadable with weights_only."""
    # numpy's state is a tuple holding an array; stored as a tensor so weights_only loading accepts it.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                   "has_gauss": has_gauss, "gauss": gauss}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world: int) -> list[dict]:
    """Every rank's RNG states, in rank order (a collective under torchrun)."""
    mine = rng_state()
    if world == 1:
        return [mine]
    states: list = [None] * world
    dist.all_gather_object(states, mine)
    return states


@dataclass
class Saved:
    """A training state found on disk: `meta` holds everything but the model and optimizer tensors
    (epoch, step_in_epoch, config, world, serial, best, pending_stats, scheduler, scaler, and for the
    full format the rest too)."""

    kind: str  # "full" | "sharded"
    path: Path  # train_state.pt, or the checkpoint's folder
    meta: dict


def _serial(folder: Path) -> int:
    return int(_FOLDER.match(folder.name).group(1))


def _complete(root: Path) -> list[Path]:
    """The whole distributed checkpoints in `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _FOLDER.match(p.name) and (p / COMPLETE).is_file()), key=_serial)


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"cannot read the training state {path} ({type(exc).__name__}: {exc}). "
                              "It may be corrupt; resume from another checkpoint or start afresh.") from None


def find(resume: str, output: Path) -> Saved:
    """The training state --resume names: "latest" (the newest in --output), a run's folder, its
    train_state.pt, its train_state/ folder or one checkpoint folder in it."""
    base = output if resume == "latest" else Path(resume)
    where = f"in {output} (--output)" if resume == "latest" else f"at {resume}"
    if base.is_file():
        return Saved("full", base, _read(base))
    if base.is_dir() and (_FOLDER.match(base.name) or (base / ".metadata").is_file()):  # one checkpoint's folder
        if not (base / COMPLETE).is_file():
            raise CheckpointError(f"the checkpoint {base} is incomplete (its save was interrupted, so it has no "
                                  f"{COMPLETE} marker); resume from {base.parent} to take the newest whole one.")
        return Saved("sharded", base, _read(base / TRAINER))
    found = []
    full = base / STATE_NAME
    if full.is_file():
        found.append((full.stat().st_mtime, "full", full))
    sharded = _complete(base if base.name == SHARDED_DIR else base / SHARDED_DIR)
    if sharded:
        found.append(((sharded[-1] / COMPLETE).stat().st_mtime, "sharded", sharded[-1]))
    if not found:
        half = (base / SHARDED_DIR).is_dir() and any((base / SHARDED_DIR).iterdir())
        raise CheckpointError(f"no training state {where}: expected {STATE_NAME} or a {SHARDED_DIR}/ folder of "
                              "checkpoints from an earlier `vitfast train`" + (
                                  f" ({base / SHARDED_DIR} holds only checkpoints whose save was interrupted, "
                                  f"without their {COMPLETE} marker: start afresh with --overwrite)" if half else "")
                              + ".")
    _, kind, path = max(found)  # both: a run switched formats and stopped before removing the older
    return Saved(kind, path, _read(path if kind == "full" else path / TRAINER))


def restore(saved: Saved, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """Load the model and optimizer state into `model` (plain, or sharded by FSDP) and `optimizer`, and this
    rank's RNG states. Every rank calls it (for the distributed format, a collective)."""
    if saved.kind == "full":
        if any(hasattr(p, "full_tensor") for p in model.parameters()):
            raise CheckpointError(f"{saved.path} holds a full training state, which --fsdp runs neither write nor "
                                  f"read; resume it without --fsdp, or start the --fsdp run afresh.")
        model.load_state_dict(saved.meta["model"])
        optimizer.load_state_dict(saved.meta["optimizer"])
        rngs = saved.meta.get("rank_rngs") or [saved.meta["rng"]]
        set_rng_state(rngs[rank % len(rngs)])
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        try:
            with _one_process_ok():
                dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=saved.path,
                         no_dist=not dist.is_initialized())
        except Exception as exc:  # DCP wraps each rank's failure in a CheckpointException
            raise CheckpointError(f"cannot read the checkpoint {saved.path} ({' '.join(str(exc).split())[:300]})."
                                  ) from None
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        set_rng_state(_read(saved.path / f"rng-{rank % saved.meta.get('world', 1)}.pt"))


@contextlib.contextmanager
def _one_process_ok() -> Iterator[None]:
    """DCP warns that it assumes one process whenever no process group exists: here that is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_full(output: Path, model_state: dict, optimizer_state: dict, meta: dict, rngs: list[dict]) -> None:
    """Rank 0: the whole training state as output/train_state.pt (atomic); then drop distributed
    checkpoints an earlier part of the run wrote, which would otherwise look newer or older than it."""
    state = {"model": model_state, "optimizer": optimizer_state, **meta, "rng": rngs[0], "rank_rngs": rngs}
    atomic_write(output / STATE_NAME, lambda p: torch.save(state, p))
    _prune(output / SHARDED_DIR, keep=0)


def save_sharded(output: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict, rank: int,
                 keep: int) -> Path:
    """Every rank: a distributed checkpoint of `model` and `optimizer` (plain or FSDP-sharded) with `meta`
    (which names its serial, epoch and step_in_epoch) into output/train_state/; whole once rank 0 has
    marked it, after which it removes the older ones beyond `keep`. Returns the folder."""
    root = output / SHARDED_DIR
    target = root / f"{meta['serial']:06d}-epoch{meta['epoch']}-step{meta['step_in_epoch']}"
    if rank == 0:
        for stale in root.glob(f"{meta['serial']:06d}-*"):  # a save of this serial that was killed
            shutil.rmtree(stale)
        root.mkdir(parents=True, exist_ok=True)
    _barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _one_process_ok():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=target,
                 no_dist=not dist.is_initialized())
    mine = rng_state()
    atomic_write(target / f"rng-{rank}.pt", lambda p: torch.save(mine, p))
    if rank == 0:
        atomic_write(target / TRAINER, lambda p: torch.save(meta, p))
    _barrier()  # every rank's files are written
    if rank == 0:
        _mark_complete(target, meta)
        _prune(root, keep)
        (output / STATE_NAME).unlink(missing_ok=True)  # a full state from before a switch to --dcp
    return target


def _mark_complete(target: Path, meta: dict) -> None:
    """The checkpoint in `target` is whole from here on."""
    info = {k: meta[k] for k in ("epoch", "step_in_epoch", "world", "serial")}
    atomic_write(target / COMPLETE, lambda p: p.write_text(json.dumps(info) + "\n"))


def _prune(root: Path, keep: int) -> None:
    """Remove what a resume would never pick in `root`: checkpoints without the marker (killed saves)
    and whole ones older than the newest `keep`; `root` itself once empty."""
    if not root.is_dir():
        return
    whole = _complete(root)
    keep_these = set(whole[len(whole) - keep:]) if keep else set()
    for folder in root.iterdir():
        if _FOLDER.match(folder.name) and folder not in keep_these:
            shutil.rmtree(folder, ignore_errors=True)
    if not any(root.iterdir()):
        root.rmdir()


def remove_all(output: Path) -> None:
    """--overwrite: the training states vitfast wrote into `output`, in either format."""
    (output / STATE_NAME).unlink(missing_ok=True)
    _prune(output / SHARDED_DIR, keep=0)
