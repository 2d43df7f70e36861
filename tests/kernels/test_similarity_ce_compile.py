"""Compile gate for the CLIP-loss kernels (kernels/similarity_ce.py): the log-sum-exp pass and the
gradient pass, with the launcher's block sizes and launch options, build for sm_80 and sm_90 (no GPU
needed; see tests/aot.py).

Specialized like a launch at N=32768 for embedding dims 64, 80 (a tail in the D loop) and 512 (the
gradient's 256-wide output blocks), in float16, bfloat16 and float32 (TF32 and "ieee"); the gradient
pass with both softmaxes (single process) and with one (the gathered multi-GPU passes). Asserted: it
compiles, fits shared memory, uses tensor cores (none for "ieee"), and does not spill on sm_90.
The table prints with ``-s``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from aot import AotRequest, check_build, compile_variants, launch_request  # noqa: E402
from vitfast.kernels import similarity_ce as sce  # noqa: E402

N = 32768
NUMERICS = (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
# The gradient pass's softmax terms: "both" (single process), "row" or "col" (gathered, multi-GPU).
TERMS = {"lse": ("",), "grad": ("both", "row", "col")}
VARIANTS = [(kernel, terms, dtype, precision, dim, arch) for kernel in ("lse", "grad") for terms in TERMS[kernel]
            for dtype, precision in NUMERICS for dim in (64, 80, 512) for arch in (80, 90)
            if terms in ("", "both") or dim != 64]


def _request(kernel: str, terms: str, dtype: str, precision: str, dim: int, arch: int) -> AotRequest:
    args = {"A": "*" + dtype, "B": "*" + dtype, "SCALE": "*fp32", "BIAS": "*fp32"}
    if kernel == "lse":
        fn = sce._clip_lse_kernel
        args |= {"LSE": "*fp32", "n_a": N, "n_b": N, "D": dim, "stride_a": dim, "stride_ak": 1, "stride_b": dim,
                 "stride_bk": 1}
        meta = {}
    else:
        fn = sce._clip_grad_kernel
        args |= {"LSE_A": "*fp32", "LSE_B": "*fp32", "G": "*fp32", "ROW_SUMS": "*fp32", "n_a": N, "n_b": N,
                 "D": dim, "stride_a": dim, "stride_ak": 1, "stride_b": dim, "stride_bk": 1, "stride_g": dim}
        meta = {"BLOCK_DO": sce.grad_block_do(dim), "ROW_TERM": terms != "col", "COL_TERM": terms != "row"}
    meta |= dict(HAS_BIAS=True, BLOCK_M=sce.BLOCK_M, BLOCK_N=sce.BLOCK_N, BLOCK_K=sce.BLOCK_K, PRECISION=precision)
    return launch_request(fn, args, meta, arch=arch, **sce.launch_options(kernel))


def _id(v) -> str:
    kernel, terms, dtype, precision, dim, arch = v
    return f"{kernel}{'-' + terms if terms else ''}-{dtype}{'-' + precision if dtype == 'fp32' else ''}-d{dim}-sm{arch}"


@pytest.fixture(scope="module")
def builds():
    return compile_variants("clip-loss compile gate", VARIANTS, _id, _request)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_compiles(builds, variant):
    check_build(builds[_id(variant)], _id(variant), precision=variant[3], no_spills=True)
