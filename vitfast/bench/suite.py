"""Every benchmark in one run (`vitfast bench all`): attention (the op, and the layer around it), window
attention, CLIP and SigLIP losses and whole models, each backend beside the peers a user would pick instead.

Each sweep writes ``<name>.json`` (rows, parameters, environment, field meanings: the format of the
single-sweep commands' ``--json``) and ``<name>.png`` (speed against memory) into the output folder;
``summary.md`` holds one table of the headline rows. The full plan is sized for a GPU (the shapes the
performance goals name); ``quick`` is a short plan that finishes on a two-core CPU in a few minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import torch

from vitfast.bench import clip_loss, model, report, siglip_loss
from vitfast.bench.attention import DEFAULT_SEQ_LENS, attention_sweep
from vitfast.bench.harness import defaults_for
from vitfast.bench.sweep import ATTENTION_IMPLS, KernelSweep
from vitfast.bench.window import STAGES, window_sweep
from vitfast.choices import ATTENTION_PEERS, AUTO, KERNEL_MODES, MODEL_MODES, WINDOW_PEERS
from vitfast.runtime import DTYPES, resolve_dtype

AnySweep = Union[KernelSweep, model.ModelSweep]


def plan(device: torch.device, quick: bool, dtype: str = AUTO) -> list[AnySweep]:
    """The sweeps of `vitfast bench all` on `device`: the full GPU plan, or the short one with `quick`."""
    defaults = defaults_for(device)
    dtype = resolve_dtype(dtype, device)
    # Every backend beside the peers a user would pick instead (open_clip's loss only where it is installed, its
    # autocast path only in a 16-bit run).
    peers = ["open_clip"] + (["open_clip-amp"] if dtype != torch.float32 else [])
    clip_backends = [*clip_loss.DEFAULT_BACKENDS] + (peers if clip_loss.open_clip_available() else [])
    siglip_backends = [*siglip_loss.DEFAULT_BACKENDS] + (["open_clip"] if siglip_loss.open_clip_available() else [])
    if quick:
        attention = dict(batch=1, heads=4, head_dim=64, seq_lens=[64, 197])
        window = dict(batch=1, stages=["stage3", "stage4"])
        clip = dict(batch_sizes=[256, 1024], dim=512)
        models = [("vit_small_patch16_224", 2, ["timm"]), ("swin_micro_patch2_window4_32", 8, ["timm"]),
                  ("clip_tiny", 8, ["open_clip"])]
    else:
        attention = dict(batch=defaults.batch, heads=12, head_dim=64, seq_lens=list(DEFAULT_SEQ_LENS))
        window = dict(batch=defaults.batch, stages=list(STAGES))
        clip = dict(batch_sizes=list(defaults.clip_batch_sizes), dim=512)
        batch = defaults.model_batch
        models = [("vit_base_patch16_224", batch, ["timm"]), ("swin_tiny_patch4_window7_224", batch // 2, ["timm"]),
                  ("ViT-B-16", batch // 2, ["open_clip"])]
    common = dict(dtype=dtype, modes=list(KERNEL_MODES), device=device, warmup=defaults.warmup, rep=defaults.rep)
    amp = next(name for name, value in DTYPES.items() if value == dtype)
    attention_title = f"B={attention['batch']} H={attention['heads']} D={attention['head_dim']}"
    sweeps: list[AnySweep] = [
        attention_sweep({**attention, **common, "backends": [*ATTENTION_IMPLS, "flex"]},
                        title=f"attention {attention_title}"),
        # The layer around it, where the layout costs live, beside timm's Attention: at ViT's lengths.
        attention_sweep({**attention, **common, "seq_lens": [n for n in attention["seq_lens"] if n <= 1025],
                         "backends": [*ATTENTION_IMPLS, *ATTENTION_PEERS], "module": True},
                        title=f"attention module {attention_title}"),
        window_sweep({**window, **common, "backends": [*ATTENTION_IMPLS, *WINDOW_PEERS]},
                     title=f"window attention B={window['batch']} window 7 shift 3"),
        # Read against open_clip's loss where it ran, else against the N×N logits it also materializes.
        clip_loss.clip_sweep({**clip, **common, "backends": clip_backends}, baselines=("open_clip", "eager"),
                             title=f"clip loss D={clip['dim']}"),
        # The sigmoid loss at the same shapes, beside open_clip's SigLipLoss where it is installed.
        siglip_loss.siglip_sweep({**clip, **common, "backends": siglip_backends}, baselines=("open_clip", "eager"),
                                 title=f"siglip loss D={clip['dim']}"),
    ]
    for name, batch, compare in models:
        # A model step takes milliseconds to seconds: 3 warm-up and 20 timed steps are plenty on any device.
        params = dict(name=name, modes=list(MODEL_MODES), backends=list(model.BACKENDS), batch=batch, amp_dtype=amp,
                      compare=compare, device=device, warmup=min(defaults.warmup, 3), rep=min(defaults.rep, 20),
                      retry_smaller=True)
        sweeps.append(model.model_sweep(params, title=f"model {name} B={batch} {amp}"))
    return sweeps


def run_all(output: str | os.PathLike[str], sweeps: Sequence[AnySweep], *, env: Mapping[str, object],
            quick: bool = False, on_sweep: Callable[[AnySweep], None] | None = None,
            on_row: Callable[[AnySweep, object], None] | None = None) -> list[report.SummaryLine]:
    """Run `sweeps` (from :func:`plan`), writing each one's JSON and PNG into `output`, then
    ``summary.md`` and ``summary.json`` with the environment `env`; returns the summary lines."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary: list[report.SummaryLine] = []
    for sweep in sweeps:
        if on_sweep is not None:
            on_sweep(sweep)
        rows = sweep.run(lambda row, sweep=sweep: on_row(sweep, row) if on_row is not None else None)
        report.write_json(output / f"{sweep.name}.json", rows, sweep, env)
        sweep.plot(rows, output / f"{sweep.name}.png", sweep.title)
        summary += sweep.summary(rows)
    report.write_summary(summary, output, env, quick)
    return summary
