"""benchmarks/attention_copies_cpu.py: the Triton attention path of ViT's and CLIP's blocks makes no
copy, stack or cat of q, k, v, the output or their gradients, forward and backward."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")


def test_triton_blocks_make_no_layout_copies(bench_script):
    counts = bench_script("attention_copies_cpu").count("triton")
    assert set(counts) == {"ViT block", "CLIP text block (causal)"}
    for name, c in counts.items():
        assert c["layout"] == 0, f"{name}: {c['layout']} copy/stack/cat ops around the Triton attention"
        # The forward and the one-launch backward: one interpreter write-back per launch argument.
        assert c["interpreter"] > 0


def test_the_count_sees_sdpa_backward_stack(bench_script):
    """The same count on the SDPA path finds the stack autograd makes of dq, dk, dv (and the copy that
    lays them out as the projection's gradient): the counter is not blind."""
    counts = bench_script("attention_copies_cpu").count("sdpa")
    assert all(c["layout"] >= 2 for c in counts.values()), counts
