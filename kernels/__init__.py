"""vitfast's fused Triton kernels and their eager oracles (installed as ``vitfast.kernels``).

Importing this package does not need Triton: the kernel files import it through ``_triton`` and
only the ``"triton"`` backends require it.
"""

from .flash_attention import attention
from .similarity_ce import clip_loss
from .swin_attention import window_attention

__all__ = ["attention", "clip_loss", "window_attention"]
