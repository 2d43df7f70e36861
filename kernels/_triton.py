"""Triton, imported once for all kernel files, without making it a hard requirement.

On machines without Triton (macOS, some CPU-only boxes) the decorators below become no-ops so the
kernel modules still import; their eager and SDPA backends work and the Triton backend raises a clear
error through :func:`require_triton`.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl

    TRITON_ERROR: ImportError | None = None
except ImportError as exc:  # pragma: no cover - exercised only where Triton is absent
    TRITON_ERROR = exc
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=object)


def interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_triton() -> None:
    if TRITON_ERROR is not None:
        raise ValueError(
            f"backend='triton' needs the triton package, which failed to import ({TRITON_ERROR}); "
            "install it (`pip install triton`, Linux only) or use backend='sdpa' or 'eager'."
        )


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input_precision: float32 follows torch's own matmul setting (TF32 only when
    torch.backends.cuda.matmul.allow_tf32 is on), so a kernel is as exact as torch's matmul."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
