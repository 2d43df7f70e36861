"""Peak memory per rank of training a ViT classifier with AdamW, sharded with FSDP2 as `vitfast train --fsdp`
shards it (vitfast.train.fsdp.shard, the trainer's optimizer), against the same model under DDP (every rank
holds everything, plus DDP's gradient buckets), for 1, 2, 4, ... processes:

    torchrun --standalone --nproc_per_node K benchmarks/fsdp_memory.py [--mode fsdp|ddp]
        [--model vit_base_patch16_224] [--img-size 64] [--batch-size 4] [--steps 3] [--json FILE]

or without torchrun for one process (FSDP over a one-rank group). Memory is read with PyTorch's profiler
(profile_memory: every allocation and free of the CPU allocator, or CUDA's on a GPU), per rank:

- ``build_peak_mib``: the peak while the model is built (whole, on the CPU, as the trainer builds it) and
  sharded or wrapped in DDP;
- ``train_peak_mib``: the peak over the training steps (forward, backward, reduce-scatter or all-reduce,
  AdamW's step);

both the profiler's running total of allocations minus frees, from 0 when it starts, before anything of the
model exists;
- ``state_mib``: what stays between steps (local parameters, gradients and AdamW's two moments).

Rank 0 prints one JSON line with every rank's figures (and writes it to --json).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import vitfast
from vitfast.runtime import init_runtime
from vitfast.train import TrainConfig, fsdp
from vitfast.train.loop import build_optimizer


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * t.element_size() for t in tensors)


def _peaks(prof, device: torch.device) -> tuple[int, int, int]:
    """The highest running total (bytes) of the allocations the profiler saw on `device`, from 0 at its start,
    before the "train" range began and after, and the total when it began."""
    kind = "CUDA" if device.type == "cuda" else "CPU"
    events = list(prof.profiler.kineto_results.events())
    train_start = min(e.start_ns() for e in events if e.name() == "train")
    memory = sorted((e for e in events if e.name() == "[memory]" and str(e.device_type()).endswith(kind)),
                    key=lambda e: e.start_ns())
    total, peaks, at_start = 0, [0, 0], None
    for e in memory:
        phase = int(e.start_ns() >= train_start)
        if phase and at_start is None:
            at_start = total
        total += e.nbytes()
        peaks[phase] = max(peaks[phase], total)
    return peaks[0], peaks[1], at_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fsdp", "ddp"), default="fsdp")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rt = init_runtime(group=True)
    torch.manual_seed(0)
    activities = [ProfilerActivity.CUDA if rt.device.type == "cuda" else ProfilerActivity.CPU]
    with profile(activities=activities, profile_memory=True) as prof:
        model = vitfast.create_model(args.model, img_size=args.img_size, num_classes=1000, attn_backend="sdpa")
        if args.mode == "fsdp":
            fsdp.shard(model, None, rt.device)
        else:
            model.to(rt.device)
        optimizer = build_optimizer(model, TrainConfig(model=args.model))
        run = model
        if args.mode == "ddp" and rt.world > 1:
            run = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=rt.device)
        labels = torch.randint(0, 1000, (args.batch_size,), device=rt.device)
        start = time.perf_counter()
        with record_function("train"):
            for _ in range(args.steps):
                loss = F.cross_entropy(run(images), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)  # the gradients stay, as between steps
        seconds = (time.perf_counter() - start) / args.steps
    state = _bytes([*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None),
                    *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())])
    build_peak, train_peak, at_start = _peaks(prof, rt.device)
    mine = {"rank": rt.rank, "build_peak_mib": build_peak / 2**20, "train_peak_mib": train_peak / 2**20,
            "alive_at_train_start_mib": at_start / 2**20,
            "state_mib": state / 2**20,
            "seconds_per_step": seconds}
    everyone = [None] * rt.world
    dist.all_gather_object(everyone, mine)
    if rt.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        line = {"mode": args.mode, "world": rt.world, "model": args.model, "params_m": round(n_params / 1e6, 2),
                "img_size": args.img_size, "batch_size_per_rank": args.batch_size, "steps": args.steps,
                "device": str(rt.device), "torch": torch.__version__,
                "ranks": [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in everyone]}
        print(json.dumps(line))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(line) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
