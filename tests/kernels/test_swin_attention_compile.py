"""Compile gate for the fused window-attention kernels: the forward and the backward, with the
launch options the launcher uses (launch_options), build for sm_80 and sm_90 (no GPU needed; see
tests/aot.py).

Specialized like a launch at the Swin-T stage-1 shape (B=64, 56×56 map, 3 heads), with window 7
(one tile) and 12 (three tiles), shift on and off at head dim 32 (every Swin), shift on at head dims
64 and 128 (float32: up to FP32_MAX_HEAD_DIM, the launcher's limit), for float16, bfloat16 and
float32 (TF32 and "ieee"). Asserted: it compiles, fits shared memory, runs its matmuls on tensor
cores (HGMMA on sm_90, HMMA on sm_80; none for "ieee"). On sm_90 the forward never spills, and the
backward does not spill at head dim 32 in 16-bit; wider or float32 backward tiles do spill some
registers, which the table (printed with ``-s``) shows.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from aot import AotRequest, check_build, compile_variants, launch_request  # noqa: E402
from vitfast.kernels import swin_attention as sa  # noqa: E402

B, H, W, HEADS = 64, 56, 56, 3
NUMERICS = (("fp16", "tf32"), ("bf16", "tf32"), ("fp32", "tf32"), ("fp32", "ieee"))
VARIANTS = [(kernel, dtype, precision, window, shifted, head_dim, arch)
            for kernel in ("fwd", "bwd") for dtype, precision in NUMERICS for window in (7, 12)
            for shifted, head_dim in ((False, 32), (True, 32), (True, 64), (True, 128))
            if dtype != "fp32" or head_dim <= sa.FP32_MAX_HEAD_DIM
            for arch in (80, 90)]


def _request(kernel: str, dtype: str, precision: str, window: int, shifted: bool, head_dim: int,
             arch: int) -> AotRequest:
    C = HEADS * head_dim
    hp, wp = -(-H // window) * window, -(-W // window) * window
    shift = window // 2 if shifted else 0
    n_win = (hp // window) * (wp // window)
    map_strides = {"stride_b": H * W * 3 * C, "stride_h": W * 3 * C, "stride_w": 3 * C, "stride_c": 1}
    out_strides = {"stride_b": H * W * C, "stride_h": W * C, "stride_w": C, "stride_c": 1}
    geometry = {"H": H, "W": W, "C": C, "heads": HEADS, "n_win_x": wp // window, "n_win": n_win,
                "Hp": hp, "Wp": wp, "sh": shift, "sw": shift, "TH": window, "TW": window}
    pointers = ["QKV", "QKV_BIAS", "TABLE", "OUT"]
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    meta = dict(WH=window, WW=window, HEAD_DIM=head_dim, BLOCK_D=block_d, HAS_SHIFT=shifted, HAS_QKV_BIAS=True,
                PRECISION=precision)
    if kernel == "fwd":
        args = {p: "*" + dtype for p in pointers} | {"LSE": "*fp32"}
        args |= map_strides | {k.replace("stride_", "stride_o"): v for k, v in out_strides.items()}
        args |= {"stride_t_row": HEADS, "stride_t_head": 1} | geometry | {"scale_log2": head_dim**-0.5 * sa.LOG2E}
        meta |= dict(BLOCK_M=sa.BLOCK_M, BLOCK_N=sa.BLOCK_N)
    else:
        args = {p: "*" + dtype for p in pointers + ["DOUT"]} | {"LSE": "*fp32", "DQKV": "*" + dtype}
        args |= {name: "*fp32" for name in ("DBIAS", "DPAD", "DQ_ACC")}
        args |= map_strides
        for prefix, strides in (("o", out_strides), ("d", out_strides), ("g", map_strides)):
            args |= {k.replace("stride_", "stride_" + prefix): v for k, v in strides.items()}
        chunks = sa.backward_chunks(B * n_win, HEADS, sm_count=132)  # an H100
        args |= {"stride_t_row": HEADS, "stride_t_head": 1, "items": B * n_win,
                 "items_per_chunk": -(-B * n_win // chunks)}
        args |= geometry | {"scale": head_dim**-0.5, "scale_log2": head_dim**-0.5 * sa.LOG2E}
        tiles = -(-window * window // sa.BWD_BLOCK)
        meta |= dict(BLOCK=sa.BWD_BLOCK, TILES=tiles, HAS_PAD=hp != H)
    fn = sa._window_attn_fwd_kernel if kernel == "fwd" else sa._window_attn_bwd_kernel
    return launch_request(fn, args, meta, arch=arch, **sa.launch_options(kernel, window * window))


def _id(v) -> str:
    kernel, dtype, precision, window, shifted, head_dim, arch = v
    return (f"{kernel}-{dtype}{'-' + precision if dtype == 'fp32' else ''}-w{window}{'-shift' if shifted else ''}"
            f"-d{head_dim}-sm{arch}")


@pytest.fixture(scope="module")
def builds():
    return compile_variants("window-attention compile gate", VARIANTS, _id, _request)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_compiles(builds, variant):
    kernel, dtype, precision, _, _, head_dim, _ = variant
    check_build(builds[_id(variant)], _id(variant), precision=precision,
                no_spills=kernel == "fwd" or (head_dim == 32 and dtype != "fp32"))
