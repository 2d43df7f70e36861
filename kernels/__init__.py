"""vitfast's fused Triton kernels and their eager oracles (installed as ``vitfast.kernels``).

One file per op holds its Triton kernels, launchers and torch.library registration
(flash_attention.py, swin_attention.py, similarity_ce.py, similarity_sigmoid.py); reference.py holds the eager oracles;
ops.py holds the public functions below, which apply the precision policy and pick a backend, and is
the only module that imports both sides.

Importing this package does not need Triton: the kernel files import it through ``_triton`` and
only the ``"triton"`` backends require it.
"""

if __name__ == "vitfast.kernels":
    from .ops import attention, clip_loss, packed_attention, siglip_loss, window_attention

    __all__ = ["attention", "clip_loss", "packed_attention", "siglip_loss", "window_attention"]
else:
    # With a checkout's root on sys.path (``python -m ...`` run there), this folder is also importable
    # as a top-level "kernels", a name other libraries probe (transformers imports it looking for the
    # Hub's `kernels` package). Import nothing then: the torch.library ops must be registered once, by
    # vitfast.kernels, or the second registration would replace the first one's implementations.
    __all__: list[str] = []
