"""Peak memory growth of siglip_loss's chunked backend (forward + backward) on the CPU at a large batch,
against what the full N×N logits would take: the issue's check at N=65,536, D=768 (fp32).

    python benchmarks/siglip_memory_cpu.py [--n 65536] [--dim 768]

The growth is the process's peak resident set (ru_maxrss) minus the resident set once the inputs exist,
so it counts everything the loss allocates: chunks of logits, the fp32 gradient accumulators, the copies
the chunked path makes. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F

from vitfast.kernels import siglip_loss


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(args.n, args.dim, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(args.n, args.dim, generator=g), dim=-1).requires_grad_()
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    before = _rss_mib()
    start = time.perf_counter()
    loss = siglip_loss(image, text, scale, bias, backend="chunked")
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"n": args.n, "dim": args.dim, "backend": "chunked", "loss": loss.item(),
                      "inputs_mib": round(2 * args.n * args.dim * 4 / 2**20, 1),
                      "peak_growth_mib": round(peak - before, 1),
                      "full_logits_mib": round(args.n * args.n * 4 / 2**20, 1),
                      "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
