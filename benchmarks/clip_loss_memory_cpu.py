"""Peak memory and time of one clip_loss forward+backward on the CPU (the issue's N=65536, D=512 check).

    python benchmarks/clip_loss_memory_cpu.py --n 65536 --dim 512 --backend chunked

Peak memory is what the call allocates above its inputs, read from the CPU profiler's allocation
events (vitfast.bench.harness.peak_memory_cpu). `vitfast bench clip-loss` sweeps and searches batches; this
script is the one-shot repro of the issue's CPU figure at N=65536, D=512.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vitfast.bench.harness import peak_memory_cpu
from vitfast.kernels import clip_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--backend", default="chunked", choices=["chunked", "eager"])
    args = parser.parse_args()
    torch.manual_seed(0)
    image = F.normalize(torch.randn(args.n, args.dim), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(args.n, args.dim), dim=-1).requires_grad_()
    log_scale = torch.tensor(100.0).log().requires_grad_()

    def step() -> None:
        loss = clip_loss(image, text, log_scale.exp(), backend=args.backend)
        torch.autograd.grad(loss, (image, text, log_scale))

    start = time.perf_counter()
    peak = peak_memory_cpu(step)
    print(f"N={args.n} D={args.dim} {args.backend} fwd+bwd: peak {peak / 2**20:.1f} MiB above the inputs, "
          f"{time.perf_counter() - start:.1f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
