"""Test-only repairs of the Triton interpreter's bfloat16 arithmetic, so bf16 kernels can be tested on a CPU.

The interpreter keeps bf16 values as their raw uint16 bit patterns, and three of its builder methods
(``triton.runtime.interpreter.InterpreterBuilder``) treat those bits wrongly (measured on Triton 3.8):

- ``create_dot`` multiplies the bit patterns as integers (upstream triton #11584; the fix was declined),
  so every bf16 ``tl.dot`` returns garbage.
- ``create_fp_trunc`` (``x.to(tl.bfloat16)`` from float32) truncates the mantissa instead of rounding to
  nearest even, as the GPU's ``cvt.rn.bf16.f32`` does, and mangles subnormals.
- ``create_fp_ext`` (``x.to(tl.float32)`` from bf16) mangles subnormals (normal values are exact).

Loads and stores of bf16 copy the bits and are right. :func:`broken_ops` runs a tiny kernel that does
each of the three and compares the interpreter with torch; :func:`patch` replaces only the methods it
finds broken, so on a Triton that fixes them it patches nothing. The replacements model the GPU: a
bf16 MMA multiplies exactly (a bf16 product fits in float32) and accumulates in float32, so the dot
converts bf16 operands to float32 (exactly) and multiplies in float32; the casts round as torch does
(to nearest even). The dot alone decides whether test_bf16.py passes, but the truncating cast biases
every probability cast for P·V low: it took attention's dV (N = 197, D = 80, causal) to 97% of its
oracle bound, where rounding to nearest leaves it at 21%.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

PROBE_SIZE = 16


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (on a GPU there is nothing to repair)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _probe_kernel(A, B, C, X, Y, W, Z, N: tl.constexpr):
    # A, B: (N, N) bf16; C: (N, N) fp32 = A·B; X: (N·N,) fp32; Y: (N·N,) bf16 = X rounded;
    # W: (N·N,) bf16 (rounded by torch, so a broken rounding cannot hide in Z); Z: (N·N,) fp32 = W widened.
    rows = tl.arange(0, N)
    tile = rows[:, None] * N + rows[None, :]
    tl.store(C + tile, tl.dot(tl.load(A + tile), tl.load(B + tile)))
    flat = tl.arange(0, N * N)
    tl.store(Y + flat, tl.load(X + flat).to(tl.bfloat16))
    tl.store(Z + flat, tl.load(W + flat).to(tl.float32))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = torch.int32 if a.element_size() == 4 else torch.int16
    return torch.equal(a.view(bits), b.view(bits))


def broken_ops() -> set[str]:
    """Which of the interpreter's bf16 operations are wrong: a subset of {"dot", "round", "widen"}.

    "dot": a bf16 ``tl.dot`` of small multiples of 1/4 (every product and sum exact in float32) differs
    from float32's matmul of the same values. "round": float32 → bf16 differs from torch's rounding
    (to nearest even) on random values, ties, a carry into the exponent and subnormals. "widen":
    bf16 → float32 is not exact on those values. Empty when not interpreting.
    """
    if not interpreting():
        return set()
    n = PROBE_SIZE
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-8, 9, (n, n), generator=g).to(torch.bfloat16) / 4 for _ in range(2))
    x = torch.randn(n * n, generator=g)
    x[:4] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8 + 2**-12), 1 - 2**-24])  # ties, just above, carry
    x[4:8] = torch.tensor([1e-39, -3e-40, 5.5e-39, float("inf")])  # subnormals (in both formats), inf
    w = x.to(torch.bfloat16)
    c, y, z = torch.empty(n, n), torch.empty(n * n, dtype=torch.bfloat16), torch.empty(n * n)
    _probe_kernel[(1,)](a, b, c, x, y, w, z, N=n)
    broken = set()
    if not torch.equal(c, a.float() @ b.float()):
        broken.add("dot")
    if not _same_bits(y, w):
        broken.add("round")
    if not _same_bits(z, w.float()):
        broken.add("widen")
    return broken


def _widen(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) → float32, exactly: bf16 is float32's upper half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _round(values: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), rounded to nearest even as the GPU does."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def patch(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Replace the interpreter builder's broken bf16 methods (:func:`broken_ops`) for as long as
    `monkeypatch` lasts; returns what was patched (nothing when not interpreting or nothing is broken)."""
    broken = broken_ops()
    if not broken:
        return broken
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    if "dot" in broken:
        real_dot = InterpreterBuilder.create_dot

        def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            if tl.bfloat16 not in (a.dtype, b.dtype):
                return real_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
            # Triton's semantics only allow a float32 accumulator for bf16 operands.
            a32, b32 = (_widen(x.data) if x.dtype == tl.bfloat16 else x.data for x in (a, b))
            return TensorHandle(np.matmul(a32, b32, dtype=np.float32) + d.data, d.dtype.scalar)

        monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)
    if "round" in broken:
        real_trunc = InterpreterBuilder.create_fp_trunc

        def create_fp_trunc(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                return TensorHandle(_round(src.data), tl.bfloat16)
            return real_trunc(self, src, dst_type)

        monkeypatch.setattr(InterpreterBuilder, "create_fp_trunc", create_fp_trunc)
    if "widen" in broken:
        real_ext = InterpreterBuilder.create_fp_ext

        def create_fp_ext(self, src, dst_type):
            if src.dtype.scalar == tl.bfloat16 and dst_type.scalar == tl.float32:
                return TensorHandle(_widen(src.data), tl.float32)
            return real_ext(self, src, dst_type)

        monkeypatch.setattr(InterpreterBuilder, "create_fp_ext", create_fp_ext)
    return broken
