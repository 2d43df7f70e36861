"""Compile gate for the fused window-attention kernels: every tile of kernels/tiles.json ("window.fwd",
"window.bwd") builds for every GPU it runs on (no GPU needed; see tests/kernels/aot.py).

Each GPU row's configuration is built for every architecture of its tile families (sm_80: 80; sm_86:
86, 89, 120; sm_90: 90, 100; sm_89 runs sm_86's build, judged by sm_89's limits; aot.FAMILY_ARCHS), in
every numerics of the dtype classes the launcher sends to it (16bit: float16 and bfloat16; fp32:
"tf32" and "ieee"), for the Swin windows it takes among 7 (49 tokens: one 64-token tile) and 12 (144
tokens: several tiles), specialized like a launch at the Swin-T stage-1 shape (B=64, 56×56 map, 3
heads): shifted at the largest head dim the launcher sends to the row (the most shared memory and
registers), and in bfloat16 also unshifted at head dim 32 (every Swin). 128 builds (156 variants):
about three minutes on 2 cores with a cold Triton cache. The launch that gathers each kind of
window's bias and shift mask (`_score_add_kernel`, no matmul) builds per architecture, window and
table dtype.

Asserted: it compiles, fits shared (and tensor) memory, runs its matmuls on the arch's tensor cores
(HMMA on sm_8x and sm_120, HGMMA on sm_90, UTCHMMA on sm_100; none for "ieee"). On sm_90 the forward
never spills, and the backward does not spill at head dim 32 in 16-bit; wider or float32 backward
tiles do spill some registers, which the table (printed with ``-s``: registers, spills, shared
memory and its limit, CTAs per SM and what limits them) shows. Swin's own case, window 7 at head dim
32 in 16-bit, holds at least two CTAs per SM on sm_80 and sm_90, forward and backward: one program
alone leaves the SM waiting on memory between its matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("triton")

from aot import (CLASS_NUMERICS, AotRequest, build_all, build_arch, build_label, check_build,  # noqa: E402
                 family_archs, launch_request, row_uses)
from vitfast.kernels import swin_attention as sa  # noqa: E402
from vitfast.kernels import tables  # noqa: E402

B, H, W, HEADS = 64, 56, 56, 3
WINDOWS = (7, 12)
HEAD_DIMS = range(16, 129, 8)  # what the launcher takes: multiples of 8 from 16 to 128
SWIN_HEAD_DIM = 32
# Swin's window-7, head-dim-32 16-bit kernels hold at least this many CTAs per SM on these archs.
MIN_CTAS_PER_SM, OCCUPANCY_ARCHS = 2, (80, 90)


@dataclass(frozen=True)
class Variant:
    kernel: str  # "fwd" or "bwd"
    config: tables.TileConfig
    dtype: str
    precision: str
    window: int
    shifted: bool
    head_dim: int
    arch: int  # whose limits apply; the build is for build_arch(arch)

    @property
    def id(self) -> str:
        label = build_label(self.config, self.dtype, self.precision)
        return f"{self.kernel}-{label}-w{self.window}{'-shift' if self.shifted else ''}-d{self.head_dim}-sm{self.arch}"

    def request(self) -> AotRequest:
        window, head_dim, block = self.window, self.head_dim, self.config["BLOCK"]
        C = HEADS * head_dim
        hp, wp = -(-H // window) * window, -(-W // window) * window
        shift = window // 2 if self.shifted else 0
        n_win = (hp // window) * (wp // window)
        tiles = -(-window * window // block)
        map_strides = {"stride_b": H * W * 3 * C, "stride_h": W * 3 * C, "stride_w": 3 * C, "stride_c": 1}
        out_strides = {"stride_b": H * W * C, "stride_h": W * C, "stride_w": C, "stride_c": 1}
        geometry = {"H": H, "W": W, "C": C, "heads": HEADS, "n_win_x": wp // window, "n_win": n_win,
                    "sh": shift, "sw": shift}
        meta = dict(WH=window, WW=window, HEAD_DIM=head_dim, BLOCK_D=max(16, 1 << (head_dim - 1).bit_length()),
                    BLOCK=block, TILES=tiles, HAS_SHIFT=self.shifted, HAS_QKV_BIAS=True, PRECISION=self.precision)
        pointers = {p: "*" + self.dtype for p in ("QKV", "QKV_BIAS", "OUT")} | {"ADD": "*fp32", "LSE": "*fp32"}
        if self.kernel == "fwd":
            args = pointers | map_strides | {k.replace("stride_", "stride_o"): v for k, v in out_strides.items()}
            groups = sa.forward_head_groups(B * n_win * tiles, HEADS, sm_count=132)  # an H100
            args |= geometry | {"heads_per_program": -(-HEADS // groups), "head_groups": groups,
                                "scale_log2": head_dim**-0.5 * sa.LOG2E}
        else:
            args = pointers | {"DOUT": "*" + self.dtype, "DQKV": "*" + self.dtype}
            args |= {name: "*fp32" for name in ("DBIAS", "DPAD", "DQ_ACC")}
            args |= map_strides
            for prefix, strides in (("o", out_strides), ("d", out_strides), ("g", map_strides)):
                args |= {k.replace("stride_", "stride_" + prefix): v for k, v in strides.items()}
            chunks = sa.backward_chunks(B * n_win, HEADS, sm_count=132)  # an H100
            args |= {"items": B * n_win, "items_per_chunk": -(-B * n_win // chunks)}
            args |= geometry | {"scale": head_dim**-0.5, "scale_log2": head_dim**-0.5 * sa.LOG2E}
            meta |= dict(HAS_PAD=hp != H)
        fn = sa._window_attn_fwd_kernel if self.kernel == "fwd" else sa._window_attn_bwd_kernel
        return launch_request(fn, args, meta, arch=build_arch(self.arch), num_warps=self.config.num_warps,
                              num_stages=self.config.num_stages)


def _launched(kernel: str, use, head_dim: int, window: int) -> bool:
    """Whether the launcher takes `use`'s row at this head dim and window (row_uses reports the head dims and
    sizes a row is reached at separately, not which pairs)."""
    rows = tables.tile_rows(f"window.{kernel}")
    first = next(i for i, r in enumerate(rows) if r.matches(use.family, use.dtype_class, head_dim, window * window))
    return first == use.index


def _variants() -> list[Variant]:
    out: dict[str, Variant] = {}
    for kernel in ("fwd", "bwd"):
        for use in row_uses(f"window.{kernel}", HEAD_DIMS, [w * w for w in WINDOWS]):
            for arch in family_archs([use.family]):
                for dtype, precision in CLASS_NUMERICS[use.dtype_class]:
                    for window in (w for w in WINDOWS if w * w in use.sizes):
                        head_dims = [d for d in use.head_dims if _launched(kernel, use, d, window)]
                        if not head_dims:
                            continue
                        # Shifted at the widest head dim the row takes (the most shared memory and
                        # registers); in bfloat16 (the default autocast dtype; float16 shares its layouts)
                        # also unshifted at Swin's own head dim, where the row takes it.
                        shapes = {(True, head_dims[-1])}
                        if dtype == "bf16" and SWIN_HEAD_DIM in head_dims:
                            shapes.add((False, SWIN_HEAD_DIM))
                        for shifted, head_dim in sorted(shapes):
                            v = Variant(kernel, use.row.config, dtype, precision, window, shifted, head_dim, arch)
                            out.setdefault(v.id, v)
    return list(out.values())


VARIANTS = _variants()


@pytest.fixture(scope="module")
def builds():
    return build_all("window-attention compile gate", {v.id: (v.arch, v.request()) for v in VARIANTS})


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_compiles(builds, variant: Variant) -> None:
    result = builds[variant.id]
    if not isinstance(result, Exception):
        assert (result.num_warps, result.num_stages) == (variant.config.num_warps, variant.config.num_stages)
    check_build(result, variant.id, precision=variant.precision,
                no_spills=variant.kernel == "fwd" or (variant.head_dim == SWIN_HEAD_DIM and variant.dtype != "fp32"))
    if (variant.window, variant.head_dim, variant.dtype != "fp32") == (7, SWIN_HEAD_DIM, True) \
            and variant.arch in OCCUPANCY_ARCHS:
        assert result.ctas_per_sm >= MIN_CTAS_PER_SM, (
            f"{variant.id} holds {result.ctas_per_sm} CTA per SM (limited by {result.occupancy_limiter}); Swin's "
            f"window-7 kernels need {MIN_CTAS_PER_SM}. Fewer warps, registers or stages in its tiles.json row.")


def test_occupancy_is_asserted_for_both_families() -> None:
    swin = {v.arch for v in VARIANTS if (v.window, v.head_dim) == (7, SWIN_HEAD_DIM) and v.dtype != "fp32"}
    assert {"fwd", "bwd"} == {v.kernel for v in VARIANTS if v.window == 7 and v.arch in OCCUPANCY_ARCHS}
    assert set(OCCUPANCY_ARCHS) <= swin


def _score_add_request(window: int, table_dtype: str, arch: int) -> AotRequest:
    """The launch that gathers bias and shift mask per kind of window (sa._score_additions), shifted."""
    hp = -(-H // window) * window
    args = {"TABLE": "*" + table_dtype, "ADD": "*fp32", "stride_t_row": HEADS, "stride_t_head": 1, "heads": HEADS,
            "Hp": hp, "Wp": hp, "sh": window // 2, "sw": window // 2, "TH": window, "TW": window}
    block = 64
    meta = dict(WH=window, WW=window, BLOCK=block, TILES=-(-window * window // block), HAS_SHIFT=True)
    return launch_request(sa._score_add_kernel, args, meta, arch=build_arch(arch), num_warps=4)


SCORE_ADD = {f"score-add-w{w}-{dt}-sm{a}": (a, _score_add_request(w, dt, a))
             for w in WINDOWS for dt in ("fp32", "bf16") for a in family_archs(("sm_80", "sm_86", "sm_90"))}


@pytest.fixture(scope="module")
def score_add_builds():
    return build_all("window score additions", SCORE_ADD)


@pytest.mark.parametrize("name", SCORE_ADD)
def test_score_additions_kernel_compiles(score_add_builds, name: str) -> None:
    """The small gather launch (no matmul) builds for every architecture, without spills on sm_90."""
    check_build(score_add_builds[name], name, precision=None, no_spills=True)
