"""The oracle comparison that every kernel test uses (flash-attention's rule; design.md, "Tolerances").

A kernel output's max error against the float64 oracle must be at most twice the max error of eager
PyTorch in the same dtype against that oracle, plus a floor: twice the dtype's rounding error at the
magnitude of the values (the kernel and eager PyTorch round in different places) plus FLOOR.

Test files import it as ``import oracle``: pytest puts this folder on sys.path, as for ``aot``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# torch.testing's default absolute tolerance for float32. On the CPU test grid the most any output
# needs beyond 2× eager's error and the rounding term is 1.7e-6: attention at N = 1, where dQ and dK
# are exactly 0, eager PyTorch returns exact zeros and the kernel's rowsum(O∘dO) identity leaves
# float32 noise; next comes Swin's bias-table gradient (1.0e-6), a float32 sum over many pairs taken
# in another order than eager's. So 1e-6 is too tight, and 1e-5 leaves about 6× headroom.
FLOOR = 1e-5


def rounding_floor(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Twice `dtype`'s rounding error at the magnitude of `ref`'s values (at least 0.3), plus FLOOR."""
    x = ref.to(dtype)
    return 2 * ((x + 0.3 - 0.3).double() - x.double()).abs().max().item() + FLOOR


def assert_matches_oracle(names: Sequence[str], got: Sequence[torch.Tensor], ref: Sequence[torch.Tensor],
                          eager: Sequence[torch.Tensor], likes: Sequence[torch.Tensor | None],
                          floors: Mapping[str, float] | None = None) -> None:
    """Each kernel output in `got` against the float64 oracle's `ref`, with eager PyTorch's `eager`
    (in the inputs' dtype) as the yardstick.

    likes: per output, the tensor whose dtype and shape it must have, whose dtype sets its rounding
        floor (None: nothing to check; then `floors` must name its floor).
    floors: per output name, a floor to use instead of ``rounding_floor``.
    """
    floors = floors or {}
    for name, g, r, e, like in zip(names, got, ref, eager, likes):
        if like is not None:
            assert g.dtype == like.dtype and g.shape == like.shape, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        err = (g.double() - r).abs().max().item()
        eager_err = (e.double() - r).abs().max().item()
        floor = floors[name] if name in floors else rounding_floor(r, like.dtype)
        bound = 2 * eager_err + floor
        assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g} (eager error {eager_err:.3g})"
