"""The public ops, `attention`, `packed_attention`, `window_attention` and `clip_loss`: each checks its
inputs, applies the precision policy (precision.py), and runs the backend asked for; "auto" asks
dispatch.py.

This is the one module that imports both the optimized files (flash_attention.py, swin_attention.py,
similarity_ce.py: one op's kernels, launcher and torch.library registration each) and the eager oracles
in reference.py, so that neither side imports the other: an optimized path cannot quietly run the
oracle, and the oracle stays plain PyTorch that tests can trust (attention-gym's rule; Liger-Kernel's
thin wrapper). The self-checks that "auto" runs before trusting a kernel on a device live here too:
they compare a Triton kernel with the fallback it would replace. Backend names come from
vitfast.choices, as the CLI's flags do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitfast.choices import ATTENTION_BACKENDS, CLIP_LOSS_BACKENDS, SIGLIP_LOSS_BACKENDS

from . import (dispatch, flash_attention, precision as policy, reference, similarity, similarity_ce,
               similarity_sigmoid, swin_attention)
from . import window_geometry as geo
from ._triton import KERNEL_ERRORS

# How far a kernel may be from its fallback in the self-check, relative to the largest value compared
# (random inputs of unit scale): well above rounding in each dtype (TF32 included), far below a wrong kernel.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _check_backend(backend: str, choices: tuple[str, ...], op: str) -> None:
    if backend not in choices:
        raise ValueError(f"unknown {op} backend {backend!r}; choose one of {', '.join(map(repr, choices))}.")


def _largest_difference(got, want, dtype: torch.dtype) -> float | None:
    """The largest relative difference between two lists of tensors, if over the dtype's tolerance."""
    worst = 0.0
    for g, w in zip(got, want):
        if not torch.isfinite(g).all():
            return math.inf
        worst = max(worst, ((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1.0)).item())
    return worst if worst > SELF_CHECK_TOLERANCE[dtype] else None


def _forward_backward(fn, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    inputs = [x.detach().requires_grad_() for x in inputs]
    out = fn(*inputs)
    g = torch.Generator(device=out.device).manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return [out, *(torch.zeros_like(x) if d is None else d for x, d in zip(inputs, grads))]


def _random(shapes, device, dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(s, generator=g, device=device, dtype=torch.float32).to(dtype) for s in shapes]


def _attention_self_check(device: torch.device, dtype: torch.dtype, head_dim: int, size: int,
                          causal: bool) -> float | None:
    """Both entry points (q, k, v and packed qkv) against SDPA: forward and every gradient. Past 1024
    tokens at 1025, so that it runs the backward schedule the call will (the split kernels there)."""
    n, heads = min(size, 1025), 2
    (qkv,) = _random([(1, n, 3 * heads * head_dim)], device, dtype)
    fp32_dot, scale = policy.float32_dot("auto"), head_dim ** -0.5

    def sdpa(qkv):
        q, k, v = flash_attention.unpack_heads(qkv, 3, heads)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).flatten(2)

    def unpacked(qkv):
        q, k, v = flash_attention.unpack_heads(qkv, 3, heads)
        out = flash_attention.triton_attention(q, k, v, causal=causal, scale=scale, precision=fp32_dot)
        return out.transpose(1, 2).flatten(2)

    want = _forward_backward(sdpa, [qkv], seed=1)
    errors = [_largest_difference(_forward_backward(fn, [qkv], seed=1), want, dtype) for fn in (
        unpacked, lambda x: flash_attention.triton_packed_attention(x, heads, causal=causal, scale=scale,
                                                                     precision=fp32_dot))]
    return max((e for e in errors if e is not None), default=None)


def _choose_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> str:
    """What backend="auto" runs for these q, k, v (see dispatch.py)."""
    reason = (flash_attention.unsupported_reason(q.dim(), q.shape[-1], q.dtype, q.device)
              if q.shape == k.shape == v.shape else "cross-attention (q, k, v of different shapes)")
    # The size is a plain int (torch.compile specializes a dynamic length here): the decision depends on it.
    return dispatch.choose("causal_attention" if causal else "attention", q.device, q.dtype, q.shape[-1],
                           int(q.shape[-2]) if q.dim() == 4 else 0, reason, "sdpa", _attention_self_check, (causal,))


def _run_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, backend: str,
                   precision: str, run_triton: Callable[[str], torch.Tensor],
                   fallback_layout: Callable[[torch.Tensor], torch.Tensor] = lambda out: out) -> torch.Tensor:
    """The backend both attention entry points share: "auto" resolved by dispatch, `run_triton` (given
    tl.dot's float32 precision) for Triton, falling back to SDPA on a kernel error under "auto"; SDPA
    and eager on the (B, H, N, D) q, k, v, their output put in the entry point's layout."""
    auto = backend == "auto"
    if auto:
        backend = _choose_attention(q, k, v, causal)
    if backend == "triton":
        try:
            return run_triton(policy.float32_dot(precision))
        except KERNEL_ERRORS as exc:
            if not auto:
                raise
            dispatch.record_failure("causal_attention" if causal else "attention", q.device, q.dtype, exc)
            backend = "sdpa"
    with torch.autocast(q.device.type, enabled=False):
        if backend == "sdpa":
            return fallback_layout(F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale))
        return fallback_layout(reference.attention(q, k, v, causal=causal, scale=scale))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, backend: str = "auto", precision: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention over (B, H, N, D) tensors, like ``F.scaled_dot_product_attention``.

    Args:
        q, k, v: (B, H, N, D) tensors of one dtype; any strides (e.g. unbound from a packed qkv).
        causal: mask keys after each query (query i sees keys 0..i), for causal text towers.
        scale: multiplier of q·kᵀ; defaults to 1/sqrt(D).
        backend: one of vitfast.choices.ATTENTION_BACKENDS: "triton" (fused kernels; CUDA sm_80+, or
            CPU under TRITON_INTERPRET=1), "sdpa" (torch's scaled_dot_product_attention), "eager" (the
            reference in kernels/reference.py), or "auto" (Triton where the dispatch table shipped with
            vitfast has a measured row for this GPU, dtype and size and the kernel passed its self-check;
            otherwise SDPA: see vitfast.kernels.dispatch).
        precision: one of vitfast.choices.KERNEL_PRECISIONS (see vitfast.kernels.precision): "auto"
            follows autocast as SDPA does (float32 inputs run in the autocast dtype), "bf16"/"fp16" cast
            the inputs, "tf32"/"ieee" set how the Triton kernels multiply float32.

    Returns:
        (B, H, N, D) output in the dtype the products ran in (q's dtype, or autocast's, as SDPA).
    """
    _check_backend(backend, ATTENTION_BACKENDS, "attention")
    operand = policy.operand_dtype(precision, q.dtype, q.device.type)
    q, k, v = policy.cast(operand, q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    def run_triton(fp32_dot: str) -> torch.Tensor:
        return flash_attention.triton_attention(q, k, v, causal=causal, scale=scale, precision=fp32_dot)

    return _run_attention(q, k, v, causal, scale, backend, precision, run_triton)


def packed_attention(qkv: torch.Tensor, num_heads: int, *, causal: bool = False, scale: float | None = None,
                     backend: str = "auto", precision: str = "auto") -> torch.Tensor:
    """Self-attention of a packed qkv projection, heads in and out as the projections lay them out
    (flash-attn's ``flash_attn_qkvpacked_func``; what ViT's and CLIP's attention modules call).

    Args:
        qkv: (B, N, 3·C), the qkv projection's output as it is (per token: q, k, v, each heads × head
            dim), any strides. The Triton kernels read it in place.
        num_heads: attention heads; C must be divisible by it.
        causal, scale, backend, precision: as for `attention`.

    Returns:
        (B, N, C), heads concatenated, ready for the output projection. With backend="triton" the
        kernel writes it in this layout, and the backward writes one (B, N, 3·C) gradient for qkv: no
        transpose, stack or copy on either side.
    """
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv must be (B, N, 3·C) with C divisible by num_heads={num_heads}; got {tuple(qkv.shape)}.")
    _check_backend(backend, ATTENTION_BACKENDS, "attention")
    operand = policy.operand_dtype(precision, qkv.dtype, qkv.device.type)
    (qkv,) = policy.cast(operand, qkv)
    q, k, v = flash_attention.unpack_heads(qkv, 3, num_heads)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    def run_triton(fp32_dot: str) -> torch.Tensor:
        return flash_attention.triton_packed_attention(qkv, num_heads, causal=causal, scale=scale, precision=fp32_dot)

    # SDPA's fused kernels write (B, N, H, D) memory: the transpose and flatten are views there.
    return _run_attention(q, k, v, causal, scale, backend, precision, run_triton,
                          fallback_layout=lambda out: out.transpose(1, 2).flatten(2))


def window_attention(qkv: torch.Tensor, bias_table: torch.Tensor, *, num_heads: int,
                     window_size: int | tuple[int, int], shift_size: int | tuple[int, int],
                     qkv_bias: torch.Tensor | None = None, scale: float | None = None, shrink_window: bool = True,
                     backend: str = "auto", precision: str = "auto") -> torch.Tensor:
    """Shifted-window attention over a (B, H, W, 3·C) qkv map; returns (B, H, W, C), un-shifted.

    Args:
        qkv: the block's qkv projection of the (B, H, W, C) map, channels last; any strides.
        bias_table: relative-position bias, ((2·Mh−1)·(2·Mw−1), heads).
        num_heads: attention heads; C must be divisible by it.
        window_size, shift_size: an int or an (h, w) pair, the shift from 0 to below the window
            (ValueError otherwise). Along an axis where the map is no larger than the window, the
            window shrinks to the map and the shift becomes 0 (as timm).
        qkv_bias: the projection's bias, the q, k, v of padded tokens (timm zero-pads before qkv).
        scale: multiplier of q·kᵀ; defaults to head_dim^-0.5.
        shrink_window: apply the shrink rule above to this call's map. False keeps the window and
            shift as given (timm's blocks fix them for the resolution they were built for).
        backend: one of vitfast.choices.ATTENTION_BACKENDS: "triton" (fused kernels, forward and
            backward; CUDA, or CPU under TRITON_INTERPRET=1), "sdpa" (torch's
            scaled_dot_product_attention on the partitioned windows folded into the heads dimension,
            4-D so that its fused kernels apply, with the bias and shift mask as attn_mask: one
            (1, windows·heads, M, M) tensor, broadcast over the batch), "eager" (the
            oracle in kernels/reference.py), or "auto" (Triton where the dispatch table has a measured
            row and the kernel passed its self-check, otherwise SDPA; see vitfast.kernels.dispatch).
        precision: as for `attention`: under autocast, qkv (and qkv_bias) run in the autocast dtype.
    """
    if qkv.dim() != 4 or qkv.shape[-1] % 3 or (qkv.shape[-1] // 3) % num_heads:
        raise ValueError(f"qkv must be (B, H, W, 3·C) with C divisible by num_heads={num_heads}; "
                         f"got {tuple(qkv.shape)}.")
    if bias_table.dim() != 2 or bias_table.shape[1] != num_heads:
        raise ValueError(f"bias_table must be (table rows, num_heads={num_heads}); got {tuple(bias_table.shape)}.")
    geo.check_window(window_size, shift_size)
    _check_backend(backend, ATTENTION_BACKENDS, "window-attention")
    operand = policy.operand_dtype(precision, qkv.dtype, qkv.device.type)
    qkv, qkv_bias = policy.cast(operand, qkv, qkv_bias)
    window = dict(num_heads=num_heads, window_size=window_size, shift_size=shift_size, qkv_bias=qkv_bias,
                  shrink_window=shrink_window)
    auto = backend == "auto"
    if auto:
        g = geo.window_geometry(qkv, bias_table, window_size, shift_size, shrink_window)
        tokens = g.window[0] * g.window[1]
        reason = swin_attention.unsupported_reason(qkv.shape[-1] // 3 // num_heads, qkv.dtype, qkv.device, tokens)
        backend = dispatch.choose("window_attention", qkv.device, qkv.dtype, qkv.shape[-1] // 3 // num_heads,
                                  tokens, reason, "sdpa", _window_self_check, (g.window, g.shift))
    if backend == "triton":
        try:
            return swin_attention.triton_window_attention(qkv, bias_table, scale=scale,
                                                          precision=policy.float32_dot(precision), **window)
        except KERNEL_ERRORS as exc:
            if not auto:
                raise
            dispatch.record_failure("window_attention", qkv.device, qkv.dtype, exc)
            backend = "sdpa"
    with torch.autocast(qkv.device.type, enabled=False):
        if backend == "sdpa":
            return _window_sdpa(qkv, bias_table, scale, window)
        return reference.window_attention(qkv, bias_table, scale=scale, **window)


def _window_sdpa(qkv: torch.Tensor, bias_table: torch.Tensor, scale: float | None, window: dict) -> torch.Tensor:
    q, k, v, bias, geometry = geo.window_partition_qkv(qkv, bias_table, **window)
    # 4-D, windows folded into heads: SDPA takes a 5-D call to its math path, never its fused kernels.
    q, k, v, bias = geo.fold_windows(q, k, v, bias)
    return geo.window_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), geometry)


def _window_self_check(device: torch.device, dtype: torch.dtype, head_dim: int, size: int,
                       window: tuple[int, int], shift: tuple[int, int]) -> float | None:
    """The self-check for windows of this shape: a map of 2×2 windows, the last row and column padded
    (the qkv_bias path), shifted as the call is."""
    (wh, ww), heads = window, 2
    qkv, table, bias = _random([(1, wh + 1, ww + 1, 3 * heads * head_dim), ((2 * wh - 1) * (2 * ww - 1), heads),
                                (3 * heads * head_dim,)], device, dtype)
    args = dict(num_heads=heads, window_size=window, shift_size=shift, shrink_window=False)
    got = _forward_backward(lambda x, t, b: swin_attention.triton_window_attention(
        x, t, b, scale=None, precision=policy.float32_dot("auto"), **args), [qkv, table, bias], seed=1)
    want = _forward_backward(lambda x, t, b: _window_sdpa(x, t, None, dict(qkv_bias=b, **args)),
                             [qkv, table, bias], seed=1)
    return _largest_difference(got, want, dtype)


def _check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale, logit_bias,
                 loss: str = "clip_loss") -> None:
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (N, D) with the same N and D; got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}.")
    if image_emb.shape[0] == 0:
        raise ValueError(f"{loss} needs at least one image-text pair; got N = 0.")
    if image_emb.dtype != text_emb.dtype or image_emb.device != text_emb.device:
        raise ValueError(f"image_emb and text_emb must share dtype and device; got {image_emb.dtype} on "
                         f"{image_emb.device} and {text_emb.dtype} on {text_emb.device}.")
    for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element); got shape {tuple(value.shape)}.")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, *,
              logit_bias: torch.Tensor | float | None = None, backend: str = "auto", group=None,
              precision: str = "auto") -> torch.Tensor:
    """CLIP's symmetric contrastive loss, equal to open_clip's ClipLoss, without the N×N logits.

    Args:
        image_emb, text_emb: (N, D) L2-normalized embeddings of N matching pairs; any strides.
        logit_scale: the logits' multiplier, a scalar tensor (usually ``param.exp()``) or a float.
        logit_bias: optional scalar added to every logit.
        backend: one of vitfast.choices.CLIP_LOSS_BACKENDS: "triton" (tiled kernels; CUDA, or CPU
            under TRITON_INTERPRET=1; D a multiple of 16), "chunked" (the same tiling in PyTorch,
            O(N·D) memory, any device), "eager" (the full N×N oracle), or "auto" (Triton where the
            dispatch table has a measured row and the kernel passed its self-check, otherwise chunked;
            see vitfast.kernels.dispatch).
        group: a torch.distributed process group (``torch.distributed.group.WORLD`` for all ranks)
            to train across ranks: every rank's embeddings are gathered with gradient, and this
            rank's loss covers its own images against all texts and its own texts against all
            images (open_clip's ``local_loss=True, gather_with_grad=True``). With equal batches per
            rank, the mean of the ranks' losses is the loss over the global batch, and the gradients
            that DDP averages equal the global batch's. Ranks may hold different batch sizes.

    Returns:
        The mean of the image→text and text→image cross-entropies: a 0-dim float32 tensor
        (float64 for float64 inputs), with gradients for the embeddings, the scale and the bias.
    """
    _check_backend(backend, CLIP_LOSS_BACKENDS, "clip-loss")
    _check_pairs(image_emb, text_emb, logit_scale, logit_bias)
    if backend != "eager":
        operand = policy.operand_dtype(precision, image_emb.dtype, image_emb.device.type)
        image_emb, text_emb = policy.cast(operand, image_emb, text_emb)
    all_image = all_text = None
    offset = 0
    if group is not None:
        all_image, all_text, offset = similarity.gather_pairs(image_emb, text_emb, group)
    if backend == "eager":
        return reference.clip_loss(image_emb, text_emb, logit_scale, logit_bias, all_image=all_image,
                                   all_text=all_text, offset=offset)
    auto = backend == "auto"
    if auto:
        n_all = image_emb.shape[0] if all_image is None else all_image.shape[0]
        reason = similarity_ce.unsupported_reason(image_emb.shape[1], image_emb.dtype, image_emb.device)
        backend = dispatch.choose("clip_loss", image_emb.device, image_emb.dtype, image_emb.shape[1], int(n_all),
                                  reason, "chunked", _clip_self_check)
    fp32_dot = policy.float32_dot(precision)
    if backend == "triton":
        try:
            return similarity_ce.tiled_clip_loss(image_emb, text_emb, logit_scale, logit_bias, all_image=all_image,
                                                 all_text=all_text, use_triton=True, precision=fp32_dot)
        except KERNEL_ERRORS as exc:
            if not auto:
                raise
            dispatch.record_failure("clip_loss", image_emb.device, image_emb.dtype, exc)
    return similarity_ce.tiled_clip_loss(image_emb, text_emb, logit_scale, logit_bias, all_image=all_image,
                                         all_text=all_text, use_triton=False, precision=fp32_dot)


def _clip_self_check(device: torch.device, dtype: torch.dtype, dim: int, size: int) -> float | None:
    image, text = (F.normalize(x.float(), dim=-1).to(dtype) for x in _random([(min(size, 512), dim)] * 2, device,
                                                                               torch.float32))
    scale = torch.tensor(10.0, device=device)
    fp32_dot = "ieee" if dtype == torch.float32 else "tf32"

    def loss(use_triton: bool):
        return lambda i, t, s: similarity_ce.tiled_clip_loss(i, t, s, None, use_triton=use_triton,
                                                             precision=fp32_dot)

    got = _forward_backward(loss(True), [image, text, scale], seed=1)
    want = _forward_backward(loss(False), [image, text, scale], seed=1)
    return _largest_difference(got, want, dtype)


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float, *, group=None, backend: str = "auto",
                precision: str = "auto") -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, equal to open_clip's SigLipLoss, without the N×N logits.

    Args:
        image_emb, text_emb: (N, D) L2-normalized embeddings of N matching pairs; any strides.
        logit_scale, logit_bias: scalars (tensors, usually ``param.exp()`` and the bias parameter, or floats).
        group: a torch.distributed process group to train across ranks: every rank's texts are gathered
            with gradient and this rank's images are scored against all of them, as open_clip's
            ``SigLipLoss(rank, world_size)``; the texts' gradients reach the ranks that computed them. With
            equal batches, the mean of the ranks' losses is the global batch's loss. Ranks may hold
            different batch sizes.
        backend: one of vitfast.choices.SIGLIP_LOSS_BACKENDS, as for :func:`clip_loss`: "triton" (tiled
            kernels; D a multiple of 16), "chunked" (the same math in PyTorch, O(N·D) memory), "eager" (the
            full N×N oracle), or "auto" (Triton where the dispatch table has a measured row and the kernel
            passed its self-check, otherwise chunked).

    Returns:
        −Σ logsigmoid(labels · (scale · image·textᵀ + bias)) over the local images' rows, divided by the local
        batch: a 0-dim float32 tensor (float64 for float64 inputs), with gradients for the embeddings, the
        scale and the bias, accumulated in float32.
    """
    _check_backend(backend, SIGLIP_LOSS_BACKENDS, "siglip-loss")
    _check_pairs(image_emb, text_emb, logit_scale, logit_bias, "siglip_loss")
    if logit_bias is None:
        raise ValueError("siglip_loss needs a logit_bias (SigLIP learns one, initialized to -10).")
    if backend != "eager":
        operand = policy.operand_dtype(precision, image_emb.dtype, image_emb.device.type)
        image_emb, text_emb = policy.cast(operand, image_emb, text_emb)
    texts, offset = (text_emb, 0) if group is None else similarity.gather_rows(text_emb, group, "siglip_loss")
    if backend == "eager":
        return reference.siglip_loss(image_emb, text_emb, logit_scale, logit_bias,
                                     all_text=None if group is None else texts, offset=offset)
    auto = backend == "auto"
    if auto:
        reason = similarity_sigmoid.unsupported_reason(image_emb.shape[1], image_emb.dtype, image_emb.device)
        backend = dispatch.choose("siglip_loss", image_emb.device, image_emb.dtype, image_emb.shape[1],
                                  int(texts.shape[0]), reason, "chunked", _siglip_self_check)
    fp32_dot = policy.float32_dot(precision)
    if backend == "triton":
        try:
            return similarity_sigmoid.tiled_siglip_loss(image_emb, texts, logit_scale, logit_bias, offset=offset,
                                                        use_triton=True, precision=fp32_dot)
        except KERNEL_ERRORS as exc:
            if not auto:
                raise
            dispatch.record_failure("siglip_loss", image_emb.device, image_emb.dtype, exc)
    return similarity_sigmoid.tiled_siglip_loss(image_emb, texts, logit_scale, logit_bias, offset=offset,
                                                use_triton=False, precision=fp32_dot)


def _siglip_self_check(device: torch.device, dtype: torch.dtype, dim: int, size: int) -> float | None:
    image, text = (F.normalize(x.float(), dim=-1).to(dtype) for x in _random([(min(size, 512), dim)] * 2, device,
                                                                               torch.float32))
    scale, bias = torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device)
    fp32_dot = "ieee" if dtype == torch.float32 else "tf32"

    def loss(use_triton: bool):
        return lambda i, t, s, b: similarity_sigmoid.tiled_siglip_loss(i, t, s, b, use_triton=use_triton,
                                                                        precision=fp32_dot)

    got = _forward_backward(loss(True), [image, text, scale, bias], seed=1)
    want = _forward_backward(loss(False), [image, text, scale, bias], seed=1)
    return _largest_difference(got, want, dtype)
