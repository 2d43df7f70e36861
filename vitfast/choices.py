"""The names vitfast's options accept, kept free of torch so that the CLI can build its typed
choices (and `vitfast --help`) without importing it. The library modules take their lists from here,
so a flag's choices and the function behind it cannot drift apart.
"""

from __future__ import annotations

# Dtypes, in the order flags list them; "auto" resolves per device (vitfast.runtime).
DTYPE_NAMES = ("bf16", "fp16", "fp32")
AUTO = "auto"

# vitfast.kernels.attention and window_attention; models take the same names as attn_backend.
ATTENTION_BACKENDS = ("auto", "triton", "sdpa", "eager")
# vitfast.kernels.clip_loss.
CLIP_LOSS_BACKENDS = ("auto", "triton", "chunked", "eager")
SIGLIP_LOSS_BACKENDS = CLIP_LOSS_BACKENDS  # the same four: the sigmoid loss is tiled the same way
# The kernels' `precision=`: how matrix products multiply (vitfast.kernels.precision).
KERNEL_PRECISIONS = ("auto", "ieee", "tf32", "bf16", "fp16")

# vitfast convert: where weights come from (--from) and what an export writes (--to).
CONVERT_SOURCES = ("auto", "timm", "hf", "openai", "open_clip")
EXPORT_TARGETS = ("timm", "hf")

# Benchmarks: what a kernel case times, and what a model case times.
KERNEL_MODES = ("fwd", "fwd+bwd")
MODEL_MODES = ("infer", "train")
# Benchmarks only: the peers, what a user would run instead of vitfast today, timed beside its backends. They
# are rows of a bench, never backends of a vitfast.kernels op. "flex": torch's FlexAttention, compiled; "timm":
# timm's own attention modules on the same weights; "open_clip": open_clip's ClipLoss on the sweep's dtype,
# "open_clip-amp" as its training loop calls it (float32 features under autocast to the sweep's 16-bit dtype);
# for the sigmoid loss, "open_clip" is open_clip's SigLipLoss on the sweep's dtype.
ATTENTION_PEERS = ("flex", "timm")
WINDOW_PEERS = ("flex", "timm")
CLIP_LOSS_PEERS = ("open_clip", "open_clip-amp")
SIGLIP_LOSS_PEERS = ("open_clip",)
MODEL_PEERS = ("timm", "open_clip")  # `bench model --compare`: the whole model in the peer library
