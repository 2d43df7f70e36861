"""Flash attention against the float64 oracle: forward and all three gradients.

Without CUDA these run the Triton kernels in the interpreter (fp32 and fp16; bf16 is tested in
test_bf16.py, which repairs the interpreter's broken bf16 dot). The tolerance is flash-attention's,
shared by every kernel test in oracle.py.
"""

from __future__ import annotations

import oracle
import pytest
import torch

from vitfast.choices import ATTENTION_BACKENDS
from vitfast.kernels import attention, packed_attention
from vitfast.kernels import flash_attention as fa
from vitfast.kernels import tables

DTYPES = [torch.float32, torch.float16]


def _forward_backward(backend, q, k, v, do, causal, scale=None):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, causal=causal, scale=scale, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


def assert_matches_oracle(q, k, v, do, causal, scale=None, backend="triton"):
    """Kernel vs fp64 oracle, with eager PyTorch in q's dtype as the yardstick."""
    got = _forward_backward(backend, q, k, v, do, causal, scale)
    ref = _forward_backward("eager", *(x.double() for x in (q, k, v, do)), causal, scale)
    eager = _forward_backward("eager", q, k, v, do, causal, scale)
    oracle.assert_matches_oracle(("out", "dq", "dk", "dv"), got, ref, eager, likes=(q, q, k, v))


def _inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype) for _ in range(4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 128])
@pytest.mark.parametrize("seq_len", [1, 17, 64, 197, 257])
def test_matches_oracle(seq_len, head_dim, causal, dtype, device):
    q, k, v, do = _inputs((1, 2, seq_len, head_dim), dtype, device, seed=seq_len * 1000 + head_dim)
    assert_matches_oracle(q, k, v, do, causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_long_sequence(causal, dtype, device):
    q, k, v, do = _inputs((1, 1, 577, 80), dtype, device, seed=577)
    assert_matches_oracle(q, k, v, do, causal)


# Every head dim the kernel accepts, each at a length that is not a multiple of any block size.
@pytest.mark.parametrize("head_dim", range(16, 129, 8))
def test_every_head_dim(head_dim, device):
    seq_len = 33 + 7 * (head_dim // 8)
    q, k, v, do = _inputs((2, 1, seq_len, head_dim), torch.float16, device, seed=head_dim)
    assert_matches_oracle(q, k, v, do, causal=head_dim % 16 == 8)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_custom_scale_and_batch_heads(causal, device):
    q, k, v, do = _inputs((3, 5, 41, 48), torch.float32, device, seed=7)
    assert_matches_oracle(q, k, v, do, causal, scale=0.3)


def _table_configs(kernel: str, dtype: torch.dtype) -> list:
    """Every distinct GPU tile of `kernel` for `dtype` in kernels/tiles.json."""
    dclass = tables.dtype_class(dtype)
    return list(dict.fromkeys(r.config for r in tables.tile_rows(kernel)
                              if r.dtype in (dclass, "any") and r.families != ("interpreter",)))


# Every GPU tile of the tile table, run through the interpreter: block-size logic (tails, the causal
# diagonal spanning several key blocks, key blocks larger than query blocks) must hold for each. The
# lists differ in length, so the shorter ones wrap around until every config has run.
def _config_cases():
    for dtype in (torch.float16, torch.float32):
        lists = [_table_configs(f"attention.{k}", dtype) for k in ("fwd", "dkdv", "dq")]
        for i in range(max(map(len, lists))):
            yield pytest.param(dtype, *(c[i % len(c)] for c in lists), id=f"{str(dtype)[6:]}-{i}")


@pytest.mark.parametrize("dtype, fwd_cfg, dkdv_cfg, dq_cfg", list(_config_cases()))
def test_each_tile_config(dtype, fwd_cfg, dkdv_cfg, dq_cfg, device):
    q, k, v, do = _inputs((1, 2, 197, 64), dtype, device, seed=3)
    scale = 64**-0.5
    for causal in (False, True):
        out, lse = fa.attention_forward(q, k, v, causal, scale, config=fwd_cfg)
        grads = fa.attention_backward(do, q, k, v, out, lse, causal, scale,
                                      dkdv_config=dkdv_cfg, dq_config=dq_cfg)
        ref = _forward_backward("eager", *(x.double() for x in (q, k, v, do)), causal)
        for name, g, r in zip(("out", "dq", "dk", "dv"), (out, *grads), ref):
            err = (g.double() - r).abs().max().item()
            assert err < 1e-2, f"{name} with {fwd_cfg}/{dkdv_cfg}/{dq_cfg}: max error {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_fused_backward_tile(dtype, device):
    """Every GPU tile of the one-launch backward ("attention.bwd") through the interpreter: query
    blocks smaller than key blocks, the causal diagonal inside a key block, dQ summed over four key
    blocks, a last query block past N."""
    q, k, v, do = _inputs((1, 2, 197, 64), dtype, device, seed=4)
    scale = 64**-0.5
    configs = _table_configs("attention.bwd", dtype)
    assert configs
    for config in configs:
        for causal in (False, True):
            out, lse = fa.attention_forward(q, k, v, causal, scale)
            grads = fa.attention_backward(do, q, k, v, out, lse, causal, scale, bwd_config=config)
            ref = _forward_backward("eager", *(x.double() for x in (q, k, v, do)), causal)
            for name, g, r in zip(("dq", "dk", "dv"), grads, ref[1:]):
                err = (g.double() - r).abs().max().item()
                assert err < 1e-2, f"{name} with {config}, causal={causal}: max error {err:.3g}"


def test_short_sequences_take_the_fused_backward():
    """The tile table sends lengths up to 1024 to the one-launch backward, longer ones to the split
    kernels (whose grid has a program per key block and per query block)."""
    for family in ("sm_80", "sm_86", "sm_90", "interpreter"):
        for dtype in (torch.bfloat16, torch.float16):
            assert tables.tile_for("attention.bwd", family, dtype, 64, 1024) is not None
            assert tables.tile_for("attention.bwd", family, dtype, 64, 1025) is None
    assert fa.uses_fused_backward(torch.empty(1, 1, 577, 32))
    assert not fa.uses_fused_backward(torch.empty(1, 1, 1025, 32))


def _packed_forward_backward(backend, qkv, dout, heads, causal):
    qkv = qkv.detach().clone().requires_grad_()
    out = packed_attention(qkv, heads, causal=causal, backend=backend)
    return out, torch.autograd.grad(out, qkv, dout)[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seq_len, heads, head_dim", [(1, 2, 32), (17, 3, 40), (70, 2, 64), (197, 1, 32)])
def test_packed_matches_oracle(seq_len, heads, head_dim, causal, dtype, device):
    """The packed entry point: (B, N, 3·C) in, (B, N, C) out, one (B, N, 3·C) gradient."""
    g = torch.Generator().manual_seed(seq_len + heads)
    C = heads * head_dim
    qkv = torch.randn(2, seq_len, 3 * C, generator=g).to(device=device, dtype=dtype)
    dout = torch.randn(2, seq_len, C, generator=g).to(device=device, dtype=dtype)
    got = _packed_forward_backward("triton", qkv, dout, heads, causal)
    ref = _packed_forward_backward("eager", qkv.double(), dout.double(), heads, causal)
    eager = _packed_forward_backward("eager", qkv, dout, heads, causal)
    oracle.assert_matches_oracle(("out", "dqkv"), got, ref, eager, likes=(dout, qkv))
    assert got[0].is_contiguous() and got[1].is_contiguous()


def test_packed_reads_strided_qkv_and_writes_every_element(device, monkeypatch):
    """A qkv slice of a wider projection (row stride > 3·C) is read in place; output and dqkv are
    poisoned with NaN first, so an element the kernels skip fails."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    g = torch.Generator().manual_seed(12)
    wide = torch.randn(2, 45, 3 * 64 + 16, generator=g).to(device=device, dtype=torch.float32)
    qkv = wide[..., 8:8 + 3 * 64]
    assert not qkv.is_contiguous()
    dout = torch.randn(2, 45, 64, generator=g).to(device=device)
    ref = _packed_forward_backward("eager", qkv.double(), dout.double(), 2, True)
    eager = _packed_forward_backward("eager", qkv, dout, 2, True)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    got = _packed_forward_backward("triton", qkv, dout, 2, True)
    oracle.assert_matches_oracle(("out", "dqkv"), got, ref, eager, likes=(dout, qkv))


def test_packed_checks_its_shape():
    with pytest.raises(ValueError, match=r"\(B, N, 3·C\) with C divisible by num_heads=5"):
        packed_attention(torch.randn(1, 4, 96), 5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        packed_attention(torch.randn(1, 4, 96), 2, backend="flash")


def test_packed_qkv_and_strided_grad(device):
    """q, k, v unbound from one (B, N, 3, H, D) projection and a non-contiguous dO need no copies."""
    B, N, H, D = 2, 70, 3, 64
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, N, 3, H, D, generator=g).to(device=device, dtype=torch.float16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    do = torch.randn(B, N, H, D, generator=g).to(device=device, dtype=torch.float16).transpose(1, 2)
    assert not do.is_contiguous()
    assert_matches_oracle(q, k, v, do, causal=False)
    # A head-dim stride other than 1 is slow but must stay correct.
    wide = torch.randn(1, 2, 50, 64, generator=g).to(device=device, dtype=torch.float32)
    q2, k2, v2 = wide[..., ::2], wide.flip(-1)[..., ::2], wide[..., 1::2]
    assert_matches_oracle(q2, k2, v2, torch.randn_like(q2), causal=True)


def test_backward_is_deterministic(device):
    q, k, v, do = _inputs((2, 2, 150, 64), torch.float16, device, seed=5)
    first = _forward_backward("triton", q, k, v, do, causal=True)
    second = _forward_backward("triton", q, k, v, do, causal=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_output_has_no_unwritten_elements(device, monkeypatch):
    """Fresh outputs are poisoned with NaN first, so any element the kernel skips fails the check."""
    q, k, v, do = _inputs((1, 3, 97, 40), torch.float32, device, seed=9)
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    got = _forward_backward("triton", q, k, v, do, causal=False)
    for t in got:
        assert torch.isfinite(t).all()


def test_empty_batch(device):
    q = torch.randn(0, 2, 5, 32, device=device)
    assert attention(q, q, q, backend="triton").shape == q.shape


def test_backends_agree_on_cpu():
    q, k, v, do = _inputs((2, 3, 45, 32), torch.float32, "cpu", seed=1)
    for causal in (False, True):
        eager = attention(q, k, v, causal=causal, backend="eager")
        sdpa = attention(q, k, v, causal=causal, backend="sdpa")
        auto = attention(q, k, v, causal=causal)  # CPU tensors: auto picks SDPA
        torch.testing.assert_close(eager, sdpa)
        assert torch.equal(auto, sdpa)


@pytest.mark.parametrize(
    "shapes, dtype, match",
    [
        (((1, 2, 8, 200),) * 3, torch.float16, "head dims"),
        (((1, 2, 8, 12),) * 3, torch.float16, "head dims"),
        (((1, 2, 8, 32), (1, 2, 9, 32), (1, 2, 9, 32)), torch.float16, "one shape"),
        (((2, 8, 32),) * 3, torch.float16, "one shape"),
        (((1, 2, 8, 32),) * 3, torch.float64, "float64"),
    ],
)
def test_unsupported_inputs_raise(shapes, dtype, match, device):
    q, k, v = (torch.randn(s, dtype=dtype, device=device) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, backend="triton")


def test_cpu_tensor_outside_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ValueError, match="NVIDIA GPUs"):
        attention(q, q, q, backend="triton")


def test_unknown_backend():
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'") as error:
        attention(q, q, q, backend="flash")
    assert all(repr(name) in str(error.value) for name in ATTENTION_BACKENDS)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("seq_len", [197, 577, 1025])
def test_bf16_on_gpu(seq_len, head_dim, causal):
    q, k, v, do = _inputs((4, 6, seq_len, head_dim), torch.bfloat16, "cuda", seed=seq_len)
    assert_matches_oracle(q, k, v, do, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_vit_b_shape_on_gpu(dtype):
    q, k, v, do = _inputs((64, 12, 197, 64), dtype, "cuda", seed=64)
    assert_matches_oracle(q, k, v, do, causal=False)


@pytest.mark.gpu
def test_offsets_past_int32_on_gpu():
    """B·H·N·D > 2^31: the last head's output must match SDPA computed on that head alone."""
    B, H, N, D = 2, 65, 131072, 128  # 2^31 + 2^25 elements per tensor, 4.1 GiB each in fp16
    free, _ = torch.cuda.mem_get_info()
    need = 5 * B * H * N * D * 2
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    q = torch.randn(B, H, N, D, device="cuda", dtype=torch.float16)
    k = torch.randn_like(q)
    v = torch.randn_like(q)
    out = attention(q, k, v, causal=True, backend="triton")
    last = torch.nn.functional.scaled_dot_product_attention(
        q[-1:, -1:], k[-1:, -1:], v[-1:, -1:], is_causal=True)
    torch.testing.assert_close(out[-1:, -1:], last, atol=2e-3, rtol=2e-3)
