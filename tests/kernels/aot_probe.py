"""A tiny kernel with one matmul: aot.targetable builds it to learn which architectures the installed
Triton can target. Its own module, since a compile worker imports the kernels it builds."""

import triton
import triton.language as tl


@triton.jit
def probe_dot(X, Y, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tile = tl.load(X + offs[:, None] * BLOCK + offs[None, :])
    tl.store(Y + offs[:, None] * BLOCK + offs[None, :], tl.dot(tile, tile))
