"""Compile gate for the fused window-attention forward: its launch configuration builds for sm_80 and
sm_90 (no GPU needed; see tests/aot.py).

Specialized like a launch at the Swin-T stage-1 shape (B=64, 56×56 map, C=96, 3 heads of 32), with
window 7 and 12, shift on and off, for float16, bfloat16 and float32 (TF32 and "ieee"). Asserted:
it compiles, fits shared memory, runs its matmuls on tensor cores (HGMMA on sm_90, HMMA on sm_80;
none for "ieee"), and on sm_90 does not spill. The table prints with ``-s``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from aot import AotRequest, compile_all, launch_signature  # noqa: E402
from vitfast.kernels import swin_attention as sa  # noqa: E402

B, H, W, HEADS, HEAD_DIM = 64, 56, 56, 3, 32
C = HEADS * HEAD_DIM
NUMERICS = (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
VARIANTS = [(dtype, precision, window, shifted, arch)
            for dtype, precision in NUMERICS for window in (7, 12) for shifted in (False, True) for arch in (80, 90)]


def _request(dtype: str, precision: str, window: int, shifted: bool, arch: int) -> AotRequest:
    hp, wp = -(-H // window) * window, -(-W // window) * window
    shift = window // 2 if shifted else 0
    args = {"QKV": "*" + dtype, "QKV_BIAS": "*" + dtype, "TABLE": "*" + dtype, "OUT": "*" + dtype,
            "stride_b": H * W * 3 * C, "stride_h": W * 3 * C, "stride_w": 3 * C, "stride_c": 1,
            "stride_ob": H * W * C, "stride_oh": W * C, "stride_ow": C, "stride_oc": 1,
            "stride_t_row": HEADS, "stride_t_head": 1,
            "H": H, "W": W, "C": C, "heads": HEADS, "n_win_x": wp // window, "n_win": (hp // window) * (wp // window),
            "Hp": hp, "Wp": wp, "sh": shift, "sw": shift, "TH": window, "TW": window,
            "scale_log2": HEAD_DIM**-0.5 * sa.LOG2E}
    signature, constexprs, divisible = launch_signature(args)
    meta = dict(WH=window, WW=window, HEAD_DIM=HEAD_DIM, BLOCK_D=32, BLOCK_M=sa.BLOCK_M, BLOCK_N=sa.BLOCK_N,
                HAS_SHIFT=shifted, HAS_QKV_BIAS=True, PRECISION=precision)
    signature.update(dict.fromkeys(meta, "constexpr"))
    constexprs.update(meta)
    return AotRequest.of(sa._window_attn_fwd_kernel, signature, constexprs, arch=arch, num_warps=sa.NUM_WARPS,
                         divisible_by_16=divisible)


def _id(v) -> str:
    dtype, precision, window, shifted, arch = v
    return f"{dtype}{'-' + precision if dtype == 'fp32' else ''}-w{window}{'-shift' if shifted else ''}-sm{arch}"


@pytest.fixture(scope="module")
def builds():
    results = dict(zip(map(_id, VARIANTS), compile_all(_request(*v) for v in VARIANTS)))
    print("\nwindow-attention fwd compile gate: registers, stack bytes, shared memory, tensor-core ops")
    for name, r in results.items():
        print(f"{name:28s} " + (f"FAILED: {r}" if isinstance(r, Exception) else
                                f"{r.registers:4d} {r.stack_bytes:5d} {r.shared_bytes:7d} {dict(r.mma_ops)}"))
    return results


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_compiles(builds, variant):
    result = builds[_id(variant)]
    if isinstance(result, Exception):
        raise result
    dtype, precision, _, _, arch = variant
    assert result.fits_shared_memory, f"{result.shared_bytes} bytes of shared memory on sm_{arch}"
    if precision == "ieee":
        assert not result.mma_ops
    else:
        assert result.tensor_cores, f"no tensor-core instruction on sm_{arch}: {result.mma_ops or 'none'}"
        if arch >= 90:
            assert not result.spills, f"{result.stack_bytes} stack bytes on sm_{arch}"
