"""Triton, imported once for all kernel files, without making it a hard requirement.

On machines without Triton (macOS, some CPU-only boxes) the decorators below become no-ops so the
kernel modules still import; their eager and SDPA backends work and the Triton backend raises a clear
error through :func:`require_triton`.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

try:
    import triton
    import triton.language as tl

    TRITON_ERROR: ImportError | None = None
    # What a kernel that cannot be built or launched on this GPU raises (too much shared memory, a
    # compiler or ptxas failure): backend="auto" falls back on these, an explicit "triton" lets them out.
    # Looked up by name: the classes moved between Triton 3.0 and 3.8.
    import triton.compiler.errors
    import triton.runtime.errors

    KERNEL_ERRORS: tuple[type[Exception], ...] = tuple(
        getattr(module, name) for module in (triton.runtime.errors, triton.compiler.errors)
        for name in ("OutOfResources", "PTXASError", "CompilationError") if hasattr(module, name))
except ImportError as exc:  # pragma: no cover - exercised only where Triton is absent
    TRITON_ERROR = exc
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=object)
    KERNEL_ERRORS = ()


def interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_triton() -> None:
    if TRITON_ERROR is not None:
        raise ValueError(
            f"backend='triton' needs the triton package, which failed to import ({TRITON_ERROR}); "
            "install it (`pip install triton`, Linux only) or use backend='sdpa' or 'eager'."
        )
