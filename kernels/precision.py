"""The precision policy of every kernel, in one place: what the operands of the matrix products are.

`precision=` of `attention`, `window_attention` and `clip_loss`:

- "auto": follow autocast as SDPA and open_clip's matmuls do. Under ``torch.autocast`` the inputs are
  multiplied in the autocast dtype (16-bit operands, float32 accumulation); outside it, in their own
  dtype, float32 through TF32 only when torch's own matmul setting allows it
  (``torch.backends.cuda.matmul.allow_tf32``, which ``vitfast train``, ``eval`` and ``bench`` turn on).
- "bf16", "fp16": 16-bit operands whatever the inputs (the caller asks for speed).
- "tf32", "ieee": float32 inputs multiplied through TF32, or exactly.

Accumulators, softmax statistics (log-sum-exps) and gradient sums are float32 in every case; the
outputs of attention take the operands' dtype (as SDPA under autocast), the loss is float32, and
gradients return in the dtype of the tensors the caller passed.
"""

from __future__ import annotations

import torch

from vitfast.choices import KERNEL_PRECISIONS

SIXTEEN_BIT = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str) -> None:
    if precision not in KERNEL_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(map(repr, KERNEL_PRECISIONS))}.")


def operand_dtype(precision: str, dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The dtype the matrix products multiply in, for inputs of `dtype` on a `device_type` device."""
    check(precision)
    if precision in SIXTEEN_BIT:
        return SIXTEEN_BIT[precision]
    if precision == "auto" and dtype in (torch.float32, torch.float16, torch.bfloat16) \
            and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def float32_dot(precision: str) -> str:
    """`tl.dot`'s input_precision for float32 operands: "tf32" or "ieee" (16-bit operands ignore it)."""
    if precision in ("ieee", "tf32"):
        return precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def cast(dtype: torch.dtype, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The floating-point tensors in `dtype` (autograd carries gradients back to the original dtype)."""
    return [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t for t in tensors]
