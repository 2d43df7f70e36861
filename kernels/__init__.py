"""vitfast's fused Triton kernels and their eager oracles (installed as ``vitfast.kernels``).

One file per op holds its Triton kernels, launcher and autograd Function (flash_attention.py,
swin_attention.py, similarity_ce.py); reference.py holds the eager oracles; ops.py holds the public
functions below, which pick a backend, and is the only module that imports both sides.

Importing this package does not need Triton: the kernel files import it through ``_triton`` and
only the ``"triton"`` backends require it.
"""

from .ops import attention, clip_loss, window_attention

__all__ = ["attention", "clip_loss", "window_attention"]
