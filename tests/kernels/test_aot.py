"""The compile gates' arithmetic (tests/kernels/aot.py): CTAs per SM on hand-computed cases, the limits
a build is held to, and the one shortcut the gates take (sm_89 runs sm_86's build)."""

from __future__ import annotations

import dataclasses

import pytest

from aot import SAME_BUILD, AotResult, compile_all, ctas_per_sm

# (arch, registers per thread, warps, shared bytes per block, tensor-memory columns) -> CTAs per SM by each
# limit, worked by hand:
CASES = [
    # 128 regs × 32 = 4096 per warp; a sub-partition's 16384 hold 4 warps, the SM 16 → 2 blocks of 8 warps.
    # 2048 threads / 256 → 8. 50000 B → 50048 (128-byte units) + 1024 reserved; 228 KiB / 51072 → 4.
    ((90, 128, 8, 50000, 0), dict(registers=2, threads=8, shared=4, tmem=32, blocks=32)),
    # 33 regs × 32 = 1056 per warp, allocated as 1280 (256-register units): 16384 // 1280 = 12 warps per
    # sub-partition, 48 per SM → 24 blocks of 2 warps (without the rounding it would be 31).
    # 164 KiB / (0 + 1024 reserved) → 164.
    ((80, 33, 2, 0, 0), dict(registers=24, threads=32, shared=164, tmem=32, blocks=32)),
    # sm_86 holds 1536 threads: 4-warp blocks → 12, whatever the registers (32 × 32 = 1024 per warp →
    # 64 warps → 16 blocks). 49152 + 1024 = 50176; 100 KiB / 50176 → 2.
    ((86, 32, 4, 49152, 0), dict(registers=16, threads=12, shared=2, tmem=16, blocks=16)),
    # One-warp blocks meet the per-SM block limit: 16 on sm_86, 24 on sm_89, 32 on sm_120 (threads: 48).
    ((86, 32, 1, 0, 0), dict(registers=64, threads=48, shared=100, tmem=16, blocks=16)),
    ((89, 32, 1, 0, 0), dict(registers=64, threads=48, shared=100, tmem=24, blocks=24)),
    ((120, 32, 1, 0, 0), dict(registers=64, threads=48, shared=100, tmem=32, blocks=32)),
    # 255 regs → 8160 per warp, allocated 8192: 8 warps take the whole 64K register file → 1 block.
    ((80, 255, 8, 0, 0), dict(registers=1, threads=8, shared=164, tmem=32, blocks=32)),
    # 16 such warps need 128K registers, more than a block may have: the launch would fail → 0.
    ((90, 255, 16, 0, 0), dict(registers=0, threads=4, shared=228, tmem=32, blocks=32)),
    # sm_100's tensor memory: 512 columns per SM, 256 per block → 2.
    ((100, 64, 4, 1024, 256), dict(registers=8, threads=16, shared=114, tmem=2, blocks=32)),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=lambda c: str(c))
def test_ctas_per_sm(args, expected) -> None:
    assert ctas_per_sm(*args) == expected


def _result(**changes) -> AotResult:
    base = AotResult(name="k", arch=90, num_warps=4, num_stages=3, registers=128, stack_bytes=0, spill_stores=0,
                     spill_loads=0, shared_bytes=101_000, static_shared_bytes=1024, tensor_memory=0,
                     mma_ops={"HGMMA.64x64x16.F32.BF16": 8, "IMMA.16816.S32.S8": 2})
    return dataclasses.replace(base, **changes)


def test_result_limits() -> None:
    r = _result()
    assert r.shared_total == 102_024 and r.fits_shared_memory and r.tensor_cores
    assert r.mma_families == {"HGMMA": 8, "IMMA": 2}
    # 4096 regs per warp: 16 warps → 4 blocks of 4; shared: 233472 // (102144 + 1024) → 2.
    assert (r.ctas_per_sm, r.occupancy_limiter) == (2, "shared")
    # The same build judged by sm_89's limits (99 KiB per block): it no longer fits, and HGMMA is not
    # sm_89's tensor-core instruction.
    on_89 = r.on(89)
    assert (on_89.arch, on_89.built_for) == (89, 90)
    assert not on_89.fits_shared_memory and not on_89.tensor_cores
    # Dynamic plus static shared memory is what must fit: exactly the limit passes, a byte more fails.
    assert _result(arch=86, shared_bytes=99 * 1024 - 1024).fits_shared_memory
    assert not _result(arch=86, shared_bytes=99 * 1024 - 1023).fits_shared_memory


def test_same_build_is_same_resources() -> None:
    """sm_89 runs sm_86's build in the compile gates: rebuild one sm_89 variant of each kernel with a
    matmul for sm_89 itself and compare what the two use."""
    pytest.importorskip("triton")
    import test_flash_attention_compile as fa_gate
    import test_similarity_ce_compile as ce_gate
    import test_swin_attention_compile as sa_gate

    sample = {}
    for gate in (fa_gate, sa_gate, ce_gate):
        for v in gate.VARIANTS:
            key = (gate.__name__, v.kernel)
            if v.arch == 89 and v.kernel != "delta" and key not in sample:
                sample[key] = v.request()
    assert len(sample) == 8, sample.keys()  # flash: fwd, bwd, dkdv, dq; swin: fwd, bwd; clip: lse, grad
    pairs = [(req, dataclasses.replace(req, arch=a)) for req in sample.values() for a in SAME_BUILD]
    built = compile_all([r for pair in pairs for r in pair])
    for (req, _), shared, own in zip(pairs, built[::2], built[1::2]):
        for r in (shared, own):
            if isinstance(r, Exception):
                raise r
        fields = ("registers", "stack_bytes", "spill_stores", "spill_loads", "shared_bytes", "static_shared_bytes",
                  "tensor_memory", "mma_ops")
        assert [getattr(own, f) for f in fields] == [getattr(shared, f) for f in fields], req.describe()
