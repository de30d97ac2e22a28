"""Fused one-pass GLM kernels on dense ``X`` (n, d).

Notation: ``a_i = w_i / W`` are the normalized sample weights, ``x_i`` the rows of ``X``,
``eta_i = x_i W + b`` the linear predictor (K values), ``r_i = dl/deta`` the residual and
``H_i = d2l/deta2`` the per-sample loss curvature.

Every kernel reads each row once from memory and uses it twice while it sits in cache: first
for the products ``x_i . v`` (forward), then for the accumulation ``out += t_i x_i``
(backward). The single-output kernels go four rows at a time (in L1); the K-output ones in
blocks of ``BLOCK`` rows (in L2), with register tiles in explicit vectors (:mod:`.simd`).
Rows are processed in a fixed partition ``starts`` (see :mod:`.reduce`); chunk ``c`` writes
its partial sums to ``gbuf[c]`` (float64), which the caller adds in chunk order. Inside a
chunk, sums are accumulated in the dtype of ``X`` for ``FLUSH`` rows at a time and then added
into the float64 chunk buffer, so float32 data keep float32 speed without float32 error growth
over long chunks.

The "general" kernels work on ``L`` columns at once (K outputs times m vectors); parameter
blocks are passed transposed, ``Vt`` of shape (L, d), so that the inner loops run over the
contiguous feature axis.
"""

import numpy as np
from numba import literally, prange

from ._jit import jit
from .losses import MULTINOMIAL, pointwise, softmax_row, weighted
from .schedule import claim
from .simd import (
    VECTOR_REGISTERS,
    WIDE_BYTES,
    is_float32,
    prefetch,
    vbcast,
    vfma,
    vload,
    vstore,
    vsum,
    vwidth,
    vzero,
    wbcast,
    wload,
    wstore,
    wwidth,
    wzero,
)

#: rows accumulated in the data dtype before they are added into the float64 chunk buffer. A
#: float32 running sum of F equal terms is off by ~F/10 float32 eps of their absolute sum:
#: with 256 the dense float32 gradient and products of one-hot features were 15-34 eps off
#: (CSR, summing in float64: 0.3), with 64 3-7 (a review). The 200,000 x 500 float32 HVP
#: takes 1-2% longer than with 256 (alternating calls, 80 rounds; 2.8% with 32), the
#: float64 one 0.6% (within noise)
FLUSH = 64
#: what a fused pass computes: the loss, gradient and per-sample curvature at parameters, or
#: a curvature-vector product with per-sample curvature computed before
VALUE_GRAD = 0
CURVATURE = 1
#: the per-row curvature of a K-output pass (see ``_apply_curvature``): diagonal only, diagonal
#: plus a rank-one term, or the softmax Hessian a (diag(p) − p pᵀ)
CURV_DIAG = 0
CURV_RANK1 = 1
CURV_SOFTMAX = 2
#: VALUE_GRAD plus the exact curvature diagonal sum_i a_i l''_i x_ij^2 in the same pass
#: (single-output kernels only: there the extra arithmetic hides under the memory traffic)
VALUE_GRAD_DIAG = 2


# ----------------------------------------------------------------------------- helpers
# Register tiles for L columns (K outputs times m vectors), written with explicit vectors
# (:mod:`.simd`, W lanes: 4 float64 or 8 float32). AVX2 has 16 vector registers:
# * forward: two rows times 5 (or 4) columns of ``U = X Vt^T``, vectorized along the feature
#   axis j: 10 accumulators, the two rows' vectors, ``Vt``'s vectors as memory operands;
# * backward: 5 (or 4) columns times 2 W features of ``acc += T^T X``: 10 accumulators held
#   over all rows of a block, one vector load of each row and one broadcast of each T value.
# Rows go in blocks of ``BLOCK``: the forward tiles of a block read its rows from memory, the
# backward tiles read them again from L2, and ``Vt`` (Lp x d) and the accumulator tiles stay
# in L1 over a block instead of streaming from L2 for every 4 rows. Meanwhile a block
# prefetches the next one's rows from inside the tile loops, one line per two vectors read: the
# forward tiles its first HALF rows, the backward tiles the others, so that the requests spread
# over the whole block and memory traffic overlaps the arithmetic (without prefetching, a
# forward sweep over 240 MB ran at 6.5 GMAC/s on one core against 18 in L2; a burst of
# prefetches per row pair overlapped much less than prefetches inside the loops).
# ``Vt`` comes padded with zero rows to the tiles' columns (``tile_split``).

#
# With 32 vector registers (AVX-512VL: ymm0-31) the tiles are twice as large: forward four
# rows times 5 (or 4) columns, 20 accumulators, so each load of ``Vt`` serves four rows; the
# backward tile two adjacent column tiles at once (8 to 10 columns times 2 W features, up to
# 20 accumulators), so a block's rows come from L2 once per 2 W features instead of once per
# column tile. On the AVX-512 Xeon of 2026-11-29 (multinomial HVP, n = 100,000, d = 300,
# K = 10, float64, two threads, alternating calls) that took 33.0 ms to 27.3. The sums are
# the same, in the same order: the bits do not change.

#: rows per block: 32 rows of 300 float64 features are 77 KB, well inside L2 (512 KB)
BLOCK = 32
#: the forward tiles prefetch the next block's first HALF rows, the backward tiles the others
HALF = BLOCK // 2
#: the larger tiles (``_fwd4``, ``_bwd_pair``) fit in the registers
BIG_TILES = VECTOR_REGISTERS >= 32
#: lines the single-output pass prefetches per wide vector of its accumulation
#: (:func:`_axpy4`): one per 32 bytes, i.e. half the lines of the next four rows
PF_PER_WIDE = WIDE_BYTES // 32
#: float32's normal range: a row weight outside it keeps its digits only in float64 (``_put``)
F32_TINY = float(np.finfo(np.float32).tiny)
F32_MAX = float(np.finfo(np.float32).max)


@jit
def tile_split(L):
    """Column tiles for ``L`` columns, least padding: ``(n5, Lp)``, the first ``n5`` tiles 5
    wide and the rest 4 wide, covering ``Lp >= L`` columns (9 = 5 + 4, 10 = 5 + 5, 11 -> 12 =
    4 + 4 + 4). ``nt = ceil(L / 5)`` tiles are needed; they cover L exactly unless L < 4 nt."""
    nt = (L + 4) // 5
    if L >= 4 * nt:
        return L - 4 * nt, L
    return 0, 4 * nt


@jit
def _fwd2x5(X, i, Vt, l, U, q, pr):
    """``U[q + r, l + c] = X[i + r] . Vt[l + c]`` for r < 2, c < 5; meanwhile prefetch row
    ``pr`` (one line per 2 W features read)."""
    d = Vt.shape[1]
    W = vwidth(X)
    d2 = d - d % (2 * W)
    dv = d - d % W
    a00 = a01 = a02 = a03 = a04 = a10 = a11 = a12 = a13 = a14 = vzero(X)
    for j in range(0, d2, 2 * W):
        prefetch(X, pr, j)
        x0 = vload(X, i, j)
        x1 = vload(X, i + 1, j)
        v = vload(Vt, l, j)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
        v = vload(Vt, l + 4, j)
        a04 = vfma(x0, v, a04)
        a14 = vfma(x1, v, a14)
        j1 = j + W
        x0 = vload(X, i, j1)
        x1 = vload(X, i + 1, j1)
        v = vload(Vt, l, j1)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j1)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j1)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j1)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
        v = vload(Vt, l + 4, j1)
        a04 = vfma(x0, v, a04)
        a14 = vfma(x1, v, a14)
    if dv > d2:
        j = d2
        x0 = vload(X, i, j)
        x1 = vload(X, i + 1, j)
        v = vload(Vt, l, j)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
        v = vload(Vt, l + 4, j)
        a04 = vfma(x0, v, a04)
        a14 = vfma(x1, v, a14)
    s00, s01, s02, s03, s04 = vsum(a00), vsum(a01), vsum(a02), vsum(a03), vsum(a04)
    s10, s11, s12, s13, s14 = vsum(a10), vsum(a11), vsum(a12), vsum(a13), vsum(a14)
    for j in range(dv, d):
        x0 = X[i, j]
        x1 = X[i + 1, j]
        s00 += x0 * Vt[l, j]
        s01 += x0 * Vt[l + 1, j]
        s02 += x0 * Vt[l + 2, j]
        s03 += x0 * Vt[l + 3, j]
        s04 += x0 * Vt[l + 4, j]
        s10 += x1 * Vt[l, j]
        s11 += x1 * Vt[l + 1, j]
        s12 += x1 * Vt[l + 2, j]
        s13 += x1 * Vt[l + 3, j]
        s14 += x1 * Vt[l + 4, j]
    U[q, l] = s00
    U[q, l + 1] = s01
    U[q, l + 2] = s02
    U[q, l + 3] = s03
    U[q, l + 4] = s04
    U[q + 1, l] = s10
    U[q + 1, l + 1] = s11
    U[q + 1, l + 2] = s12
    U[q + 1, l + 3] = s13
    U[q + 1, l + 4] = s14


@jit
def _fwd2x4(X, i, Vt, l, U, q, pr):
    """``U[q + r, l + c] = X[i + r] . Vt[l + c]`` for r < 2, c < 4; meanwhile prefetch row
    ``pr`` (one line per 2 W features read)."""
    d = Vt.shape[1]
    W = vwidth(X)
    d2 = d - d % (2 * W)
    dv = d - d % W
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero(X)
    for j in range(0, d2, 2 * W):
        prefetch(X, pr, j)
        x0 = vload(X, i, j)
        x1 = vload(X, i + 1, j)
        v = vload(Vt, l, j)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
        j1 = j + W
        x0 = vload(X, i, j1)
        x1 = vload(X, i + 1, j1)
        v = vload(Vt, l, j1)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j1)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j1)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j1)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
    if dv > d2:
        j = d2
        x0 = vload(X, i, j)
        x1 = vload(X, i + 1, j)
        v = vload(Vt, l, j)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        v = vload(Vt, l + 1, j)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        v = vload(Vt, l + 2, j)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        v = vload(Vt, l + 3, j)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
    s00, s01, s02, s03 = vsum(a00), vsum(a01), vsum(a02), vsum(a03)
    s10, s11, s12, s13 = vsum(a10), vsum(a11), vsum(a12), vsum(a13)
    for j in range(dv, d):
        x0 = X[i, j]
        x1 = X[i + 1, j]
        s00 += x0 * Vt[l, j]
        s01 += x0 * Vt[l + 1, j]
        s02 += x0 * Vt[l + 2, j]
        s03 += x0 * Vt[l + 3, j]
        s10 += x1 * Vt[l, j]
        s11 += x1 * Vt[l + 1, j]
        s12 += x1 * Vt[l + 2, j]
        s13 += x1 * Vt[l + 3, j]
    U[q, l] = s00
    U[q, l + 1] = s01
    U[q, l + 2] = s02
    U[q, l + 3] = s03
    U[q + 1, l] = s10
    U[q + 1, l + 1] = s11
    U[q + 1, l + 2] = s12
    U[q + 1, l + 3] = s13


@jit
def _fwd1(X, i, Vt, U, q):
    """``U[q, l] = X[i] . Vt[l]`` for every l."""
    L, d = Vt.shape
    for l in range(L):
        s = X[i, 0] - X[i, 0]  # zero in the data dtype (X[i, 0] * 0 would be float64)
        for j in range(d):
            s += X[i, j] * Vt[l, j]
        U[q, l] = s


@jit
def _bwd5(X, i, nr, T, l, acc, j, two, pr, plast):
    """``acc[l + c, j : j + w] += sum_q T[q, l + c] X[i + q, j : j + w]`` over q < nr, for
    c < 5 and w = 2 W features (``two``) or W. With ``two``, row q also prefetches the line of
    row ``min(pr + q % HALF, plast)`` at column j."""
    W = vwidth(X)
    a00 = vload(acc, l, j)
    a10 = vload(acc, l + 1, j)
    a20 = vload(acc, l + 2, j)
    a30 = vload(acc, l + 3, j)
    a40 = vload(acc, l + 4, j)
    if two:
        a01 = vload(acc, l, j + W)
        a11 = vload(acc, l + 1, j + W)
        a21 = vload(acc, l + 2, j + W)
        a31 = vload(acc, l + 3, j + W)
        a41 = vload(acc, l + 4, j + W)
        for q in range(nr):
            prefetch(X, min(pr + q % HALF, plast), j)
            x0 = vload(X, i + q, j)
            x1 = vload(X, i + q, j + W)
            t = vbcast(T, q, l)
            a00 = vfma(x0, t, a00)
            a01 = vfma(x1, t, a01)
            t = vbcast(T, q, l + 1)
            a10 = vfma(x0, t, a10)
            a11 = vfma(x1, t, a11)
            t = vbcast(T, q, l + 2)
            a20 = vfma(x0, t, a20)
            a21 = vfma(x1, t, a21)
            t = vbcast(T, q, l + 3)
            a30 = vfma(x0, t, a30)
            a31 = vfma(x1, t, a31)
            t = vbcast(T, q, l + 4)
            a40 = vfma(x0, t, a40)
            a41 = vfma(x1, t, a41)
        vstore(acc, l, j + W, a01)
        vstore(acc, l + 1, j + W, a11)
        vstore(acc, l + 2, j + W, a21)
        vstore(acc, l + 3, j + W, a31)
        vstore(acc, l + 4, j + W, a41)
    else:
        for q in range(nr):
            x0 = vload(X, i + q, j)
            a00 = vfma(x0, vbcast(T, q, l), a00)
            a10 = vfma(x0, vbcast(T, q, l + 1), a10)
            a20 = vfma(x0, vbcast(T, q, l + 2), a20)
            a30 = vfma(x0, vbcast(T, q, l + 3), a30)
            a40 = vfma(x0, vbcast(T, q, l + 4), a40)
    vstore(acc, l, j, a00)
    vstore(acc, l + 1, j, a10)
    vstore(acc, l + 2, j, a20)
    vstore(acc, l + 3, j, a30)
    vstore(acc, l + 4, j, a40)


@jit
def _bwd4(X, i, nr, T, l, acc, j, two, pr, plast):
    """:func:`_bwd5` for 4 columns."""
    W = vwidth(X)
    a00 = vload(acc, l, j)
    a10 = vload(acc, l + 1, j)
    a20 = vload(acc, l + 2, j)
    a30 = vload(acc, l + 3, j)
    if two:
        a01 = vload(acc, l, j + W)
        a11 = vload(acc, l + 1, j + W)
        a21 = vload(acc, l + 2, j + W)
        a31 = vload(acc, l + 3, j + W)
        for q in range(nr):
            prefetch(X, min(pr + q % HALF, plast), j)
            x0 = vload(X, i + q, j)
            x1 = vload(X, i + q, j + W)
            t = vbcast(T, q, l)
            a00 = vfma(x0, t, a00)
            a01 = vfma(x1, t, a01)
            t = vbcast(T, q, l + 1)
            a10 = vfma(x0, t, a10)
            a11 = vfma(x1, t, a11)
            t = vbcast(T, q, l + 2)
            a20 = vfma(x0, t, a20)
            a21 = vfma(x1, t, a21)
            t = vbcast(T, q, l + 3)
            a30 = vfma(x0, t, a30)
            a31 = vfma(x1, t, a31)
        vstore(acc, l, j + W, a01)
        vstore(acc, l + 1, j + W, a11)
        vstore(acc, l + 2, j + W, a21)
        vstore(acc, l + 3, j + W, a31)
    else:
        for q in range(nr):
            x0 = vload(X, i + q, j)
            a00 = vfma(x0, vbcast(T, q, l), a00)
            a10 = vfma(x0, vbcast(T, q, l + 1), a10)
            a20 = vfma(x0, vbcast(T, q, l + 2), a20)
            a30 = vfma(x0, vbcast(T, q, l + 3), a30)
    vstore(acc, l, j, a00)
    vstore(acc, l + 1, j, a10)
    vstore(acc, l + 2, j, a20)
    vstore(acc, l + 3, j, a30)


@jit
def _fwd4(X, i, Vt, l, n, U, q, pr):
    """``U[q + r, l + c] = X[i + r] . Vt[l + c]`` for r < 4, c < n (n = 4 or 5; 20
    accumulators: :data:`BIG_TILES` only); meanwhile prefetch row ``pr`` (one line per 2 W
    features read). Each dot product adds its vectors in the order of :func:`_fwd2x5`."""
    literally(n)  # compiled for n = 4 and 5 apart: no test of ``five`` in the loops
    d = Vt.shape[1]
    W = vwidth(X)
    five = n == 5
    a00 = a01 = a02 = a03 = a04 = a10 = a11 = a12 = a13 = a14 = vzero(X)
    a20 = a21 = a22 = a23 = a24 = a30 = a31 = a32 = a33 = a34 = vzero(X)
    for j in range(0, d - d % W, W):
        if j % (2 * W) == 0:
            prefetch(X, pr, j)
        x0 = vload(X, i, j)
        x1 = vload(X, i + 1, j)
        x2 = vload(X, i + 2, j)
        x3 = vload(X, i + 3, j)
        v = vload(Vt, l, j)
        a00 = vfma(x0, v, a00)
        a10 = vfma(x1, v, a10)
        a20 = vfma(x2, v, a20)
        a30 = vfma(x3, v, a30)
        v = vload(Vt, l + 1, j)
        a01 = vfma(x0, v, a01)
        a11 = vfma(x1, v, a11)
        a21 = vfma(x2, v, a21)
        a31 = vfma(x3, v, a31)
        v = vload(Vt, l + 2, j)
        a02 = vfma(x0, v, a02)
        a12 = vfma(x1, v, a12)
        a22 = vfma(x2, v, a22)
        a32 = vfma(x3, v, a32)
        v = vload(Vt, l + 3, j)
        a03 = vfma(x0, v, a03)
        a13 = vfma(x1, v, a13)
        a23 = vfma(x2, v, a23)
        a33 = vfma(x3, v, a33)
        if five:
            v = vload(Vt, l + 4, j)
            a04 = vfma(x0, v, a04)
            a14 = vfma(x1, v, a14)
            a24 = vfma(x2, v, a24)
            a34 = vfma(x3, v, a34)
    for r in range(4):
        if r == 0:
            s0, s1, s2, s3, s4 = vsum(a00), vsum(a01), vsum(a02), vsum(a03), vsum(a04)
        elif r == 1:
            s0, s1, s2, s3, s4 = vsum(a10), vsum(a11), vsum(a12), vsum(a13), vsum(a14)
        elif r == 2:
            s0, s1, s2, s3, s4 = vsum(a20), vsum(a21), vsum(a22), vsum(a23), vsum(a24)
        else:
            s0, s1, s2, s3, s4 = vsum(a30), vsum(a31), vsum(a32), vsum(a33), vsum(a34)
        for j in range(d - d % W, d):
            x = X[i + r, j]
            s0 += x * Vt[l, j]
            s1 += x * Vt[l + 1, j]
            s2 += x * Vt[l + 2, j]
            s3 += x * Vt[l + 3, j]
            if five:
                s4 += x * Vt[l + 4, j]
        U[q + r, l] = s0
        U[q + r, l + 1] = s1
        U[q + r, l + 2] = s2
        U[q + r, l + 3] = s3
        if five:
            U[q + r, l + 4] = s4


@jit
def _bwd_pair(X, i, nr, T, l, n, acc, j, pr, plast):
    """:func:`_bwd5` (with ``two``) for the n = 8, 9 or 10 columns of two adjacent column
    tiles at once (up to 20 accumulators: :data:`BIG_TILES` only), so that the block's rows
    are read once for both: ``acc[l + c, j : j + 2 W] += sum_q T[q, l + c] X[i + q, j : j +
    2 W]`` for c < n, q < nr; row q prefetches the line of row ``min(pr + q % HALF, plast)`` at
    column j."""
    literally(n)  # compiled for each n apart: no test of ``nine``/``ten`` in the loop
    W = vwidth(X)
    nine = n >= 9
    ten = n == 10
    a00 = vload(acc, l, j)
    a01 = vload(acc, l, j + W)
    a10 = vload(acc, l + 1, j)
    a11 = vload(acc, l + 1, j + W)
    a20 = vload(acc, l + 2, j)
    a21 = vload(acc, l + 2, j + W)
    a30 = vload(acc, l + 3, j)
    a31 = vload(acc, l + 3, j + W)
    a40 = vload(acc, l + 4, j)
    a41 = vload(acc, l + 4, j + W)
    a50 = vload(acc, l + 5, j)
    a51 = vload(acc, l + 5, j + W)
    a60 = vload(acc, l + 6, j)
    a61 = vload(acc, l + 6, j + W)
    a70 = vload(acc, l + 7, j)
    a71 = vload(acc, l + 7, j + W)
    a80 = a81 = a90 = a91 = vzero(X)
    if nine:
        a80 = vload(acc, l + 8, j)
        a81 = vload(acc, l + 8, j + W)
    if ten:
        a90 = vload(acc, l + 9, j)
        a91 = vload(acc, l + 9, j + W)
    for q in range(nr):
        prefetch(X, min(pr + q % HALF, plast), j)
        x0 = vload(X, i + q, j)
        x1 = vload(X, i + q, j + W)
        t = vbcast(T, q, l)
        a00 = vfma(x0, t, a00)
        a01 = vfma(x1, t, a01)
        t = vbcast(T, q, l + 1)
        a10 = vfma(x0, t, a10)
        a11 = vfma(x1, t, a11)
        t = vbcast(T, q, l + 2)
        a20 = vfma(x0, t, a20)
        a21 = vfma(x1, t, a21)
        t = vbcast(T, q, l + 3)
        a30 = vfma(x0, t, a30)
        a31 = vfma(x1, t, a31)
        t = vbcast(T, q, l + 4)
        a40 = vfma(x0, t, a40)
        a41 = vfma(x1, t, a41)
        t = vbcast(T, q, l + 5)
        a50 = vfma(x0, t, a50)
        a51 = vfma(x1, t, a51)
        t = vbcast(T, q, l + 6)
        a60 = vfma(x0, t, a60)
        a61 = vfma(x1, t, a61)
        t = vbcast(T, q, l + 7)
        a70 = vfma(x0, t, a70)
        a71 = vfma(x1, t, a71)
        if nine:
            t = vbcast(T, q, l + 8)
            a80 = vfma(x0, t, a80)
            a81 = vfma(x1, t, a81)
        if ten:
            t = vbcast(T, q, l + 9)
            a90 = vfma(x0, t, a90)
            a91 = vfma(x1, t, a91)
    vstore(acc, l, j, a00)
    vstore(acc, l, j + W, a01)
    vstore(acc, l + 1, j, a10)
    vstore(acc, l + 1, j + W, a11)
    vstore(acc, l + 2, j, a20)
    vstore(acc, l + 2, j + W, a21)
    vstore(acc, l + 3, j, a30)
    vstore(acc, l + 3, j + W, a31)
    vstore(acc, l + 4, j, a40)
    vstore(acc, l + 4, j + W, a41)
    vstore(acc, l + 5, j, a50)
    vstore(acc, l + 5, j + W, a51)
    vstore(acc, l + 6, j, a60)
    vstore(acc, l + 6, j + W, a61)
    vstore(acc, l + 7, j, a70)
    vstore(acc, l + 7, j + W, a71)
    if nine:
        vstore(acc, l + 8, j, a80)
        vstore(acc, l + 8, j + W, a81)
    if ten:
        vstore(acc, l + 9, j, a90)
        vstore(acc, l + 9, j + W, a91)


@jit
def _block(X, i, nr, Vt, vb, U, T, acc, n5, backward):
    """The tiles of one block of ``nr <= BLOCK`` rows from row ``i``: the forward
    ``U[q] = Vt X[i + q] + vb``, which prefetches the next block's rows as it goes, or, with
    ``backward``, ``acc += T[:nr]^T X[i : i + nr]`` (its rows then come from L2). The caller
    applies the per-row curvature between the two calls. The columns (of ``Vt`` forward, of
    ``acc`` backward) go in tiles of 5 for the first ``n5`` tiles, then of 4 (``tile_split``)."""
    d = X.shape[1]
    W = vwidth(X)
    last = X.shape[0] - 1
    if not backward:
        Lp = Vt.shape[0]
        q = 0
        while BIG_TILES and q + 4 <= nr:
            # four rows prefetch two rows of the next block (those of row pairs q/2 and
            # q/2 + 1 in the two-row tiles): the first column tile one, the second the other
            # (a second prefetch in the first tile's loop ran ~8% slower); later tiles re-touch
            # a row they read. With a single column tile (Lp <= 5) the forward prefetches
            # half as many rows as the two-row tiles; the rest come on demand.
            ahead = min(i + nr + q // 2, last)
            second = 5 if n5 > 0 else 4
            l = 0
            while l < Lp:
                pr = ahead if l == 0 else (min(ahead + 1, last) if l == second else i + q)
                if l < 5 * n5:
                    _fwd4(X, i + q, Vt, l, 5, U, q, pr)
                    l += 5
                else:
                    _fwd4(X, i + q, Vt, l, 4, U, q, pr)
                    l += 4
            q += 4
        while q + 2 <= nr:
            ahead = min(i + nr + q // 2, last)
            l = 0
            while l < Lp:
                # the first column tile prefetches a row of the next block; the others
                # re-touch a row they read (a prefetch of a line in cache costs one instruction)
                pr = ahead if l == 0 else i + q
                if l < 5 * n5:
                    _fwd2x5(X, i + q, Vt, l, U, q, pr)
                    l += 5
                else:
                    _fwd2x4(X, i + q, Vt, l, U, q, pr)
                    l += 4
            q += 2
        if q < nr:
            _fwd1(X, i + q, Vt, U, q)
        for q in range(nr):
            for l in range(Lp):
                U[q, l] += vb[l]
        return
    Lp = acc.shape[0]
    step = 2 * W
    d2 = d - d % step
    ahead = min(i + nr + HALF, last)
    for j in range(0, d2, step):
        l = 0
        while BIG_TILES and l < Lp:
            w1 = 5 if l < 5 * n5 else 4
            if l + w1 >= Lp:
                break  # one tile left: below
            w2 = 5 if l + w1 < 5 * n5 else 4
            pr = ahead if l == 0 else i
            if w1 + w2 == 10:
                _bwd_pair(X, i, nr, T, l, 10, acc, j, pr, last)
            elif w1 + w2 == 9:
                _bwd_pair(X, i, nr, T, l, 9, acc, j, pr, last)
            else:
                _bwd_pair(X, i, nr, T, l, 8, acc, j, pr, last)
            l += w1 + w2
        while l < Lp:
            pr = ahead if l == 0 else i
            if l < 5 * n5:
                _bwd5(X, i, nr, T, l, acc, j, True, pr, last)
                l += 5
            else:
                _bwd4(X, i, nr, T, l, acc, j, True, pr, last)
                l += 4
    j = d2
    if d - j >= W:
        l = 0
        while l < Lp:
            if l < 5 * n5:
                _bwd5(X, i, nr, T, l, acc, j, False, i, last)
                l += 5
            else:
                _bwd4(X, i, nr, T, l, acc, j, False, i, last)
                l += 4
        j += W
    for q in range(nr):
        for l in range(Lp):
            t = T[q, l]
            for jj in range(j, d):
                acc[l, jj] += t * X[i + q, jj]


@jit
def _flush(acc, buf):
    """``buf += acc`` (float64) and ``acc = 0``."""
    L, d = acc.shape
    for l in range(L):
        for j in range(d):
            buf[l, j] += acc[l, j]
            acc[l, j] = 0


@jit
def _apply_curvature(u, t, i, Dw, Q, qa, kind, m):
    """``t = Dw[i] * u + qa[i] (Q[i] . u) Q[i]`` for each of the m vectors in ``u``
    (``kind`` CURV_RANK1; CURV_DIAG: ``t = Dw[i] * u``). CURV_SOFTMAX, the multinomial Hessian
    with ``Dw = a p``, ``Q = p``, ``qa = −a``, goes to :func:`_rows_softmax_hess`, which forms
    it without cancellation.

    ``u`` and ``t`` hold L = K m values with vector ``mm``'s output ``k`` at ``k m + mm``.
    """
    K = Dw.shape[1]
    use_q = kind == CURV_RANK1
    for mm in range(m):
        for k in range(K):
            t[k * m + mm] = Dw[i, k] * u[k * m + mm]
        if use_q:
            s = 0.0
            for k in range(K):
                s += Q[i, k] * u[k * m + mm]
            s *= qa[i]
            for k in range(K):
                t[k * m + mm] += s * Q[i, k]


# ----------------------------------------------------------------------- single output
@jit
def _dot4(X, i, V):
    """``(X[i + r] . V[0] for r = 0..3)`` in wide vectors (:func:`.simd.wload`), each load of
    ``V`` (1, d) shared by the four rows, two accumulators per row (even and odd vectors: the
    FMA chains are half as long); lanes added by ``vsum``, the last ``d % W`` features in
    scalars. (Two accumulators per row ran ~3% faster than one, 37.6 against 39.0 ms per HVP
    on 200,000 x 500 float64, alternating calls.)"""
    d = X.shape[1]
    W = wwidth(X)
    d2 = d - d % (2 * W)
    dv = d - d % W
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = wzero(X)
    for j in range(0, d2, 2 * W):
        v = wload(V, 0, j)
        a0 = vfma(wload(X, i, j), v, a0)
        a1 = vfma(wload(X, i + 1, j), v, a1)
        a2 = vfma(wload(X, i + 2, j), v, a2)
        a3 = vfma(wload(X, i + 3, j), v, a3)
        j1 = j + W
        v = wload(V, 0, j1)
        b0 = vfma(wload(X, i, j1), v, b0)
        b1 = vfma(wload(X, i + 1, j1), v, b1)
        b2 = vfma(wload(X, i + 2, j1), v, b2)
        b3 = vfma(wload(X, i + 3, j1), v, b3)
    if dv > d2:
        v = wload(V, 0, d2)
        a0 = vfma(wload(X, i, d2), v, a0)
        a1 = vfma(wload(X, i + 1, d2), v, a1)
        a2 = vfma(wload(X, i + 2, d2), v, a2)
        a3 = vfma(wload(X, i + 3, d2), v, a3)
    s0 = vsum(a0) + vsum(b0)
    s1 = vsum(a1) + vsum(b1)
    s2 = vsum(a2) + vsum(b2)
    s3 = vsum(a3) + vsum(b3)
    for j in range(dv, d):
        vj = V[0, j]
        s0 += X[i, j] * vj
        s1 += X[i + 1, j] * vj
        s2 += X[i + 2, j] * vj
        s3 += X[i + 3, j] * vj
    return s0, s1, s2, s3


@jit
def _dot1(X, i, V):
    d = X.shape[1]
    s = X[i, 0] * V[0, 0]
    for j in range(1, d):
        s += X[i, j] * V[0, j]
    return s


@jit
def _axpy4(X, i, T, acc, pf):
    """``acc[0] += sum_r T[0, r] X[i + r]`` for r = 0..3 (one load and store of ``acc``
    (1, d) per 4 rows), in wide vectors; meanwhile prefetch the first half of the lines of
    rows ``pf .. pf + 3`` (the next four rows), in the order the next :func:`_dot4` reads
    them (all four rows' first lines, then their second ones, ...).

    The prefetch keeps memory busy while this loop works from L1: the dot product of the next
    rows must otherwise wait for its first lines to arrive. Half the lines of the next four
    rows, :data:`PF_PER_WIDE` per wide vector here, ran fastest: on the AVX-512 Xeon of
    2026-11-29 (200,000 x 500, two threads, alternating calls) an HVP took 37.6 ms against
    41.2 without (float64) and 19.9 against 21.7 (float32), where NumPy's one ``X @ v`` took
    37.8 and 19.3; a quarter of the lines or all of them gained less."""
    d = X.shape[1]
    W = wwidth(X)
    dv = d - d % W
    lw = 64 // X.itemsize  # elements per cache line
    k = 0  # lines prefetched so far: line k >> 2 of row pf + (k & 3)
    t0 = wbcast(T, 0, 0)
    t1 = wbcast(T, 0, 1)
    t2 = wbcast(T, 0, 2)
    t3 = wbcast(T, 0, 3)
    for j in range(0, dv, W):
        for _ in range(PF_PER_WIDE):
            jp = (k >> 2) * lw
            if jp < d:
                prefetch(X, pf + (k & 3), jp)
            k += 1
        a = wload(acc, 0, j)
        a = vfma(wload(X, i, j), t0, a)
        a = vfma(wload(X, i + 1, j), t1, a)
        a = vfma(wload(X, i + 2, j), t2, a)
        a = vfma(wload(X, i + 3, j), t3, a)
        wstore(acc, 0, j, a)
    for j in range(dv, d):
        acc[0, j] += (T[0, 0] * X[i, j] + T[0, 1] * X[i + 1, j] + T[0, 2] * X[i + 2, j]
                      + T[0, 3] * X[i + 3, j])


@jit
def _axpy1(X, i, t, acc):
    d = X.shape[1]
    for j in range(d):
        acc[0, j] += t * X[i, j]


@jit
def _sqaxpy4(X, i, w, acc):
    """``acc[0] += sum_r w[r] X[i + r]^2`` for r = 0..3, in float64 (w and acc float64): the
    square of a float32 ``x`` is exact there and cannot overflow, and a weight below float32's
    range keeps its digits. Rows of weight 0 are left to the caller (``0 · x²`` is NaN where
    ``x²`` overflows float64)."""
    d = X.shape[1]
    w0 = w[0]
    w1 = w[1]
    w2 = w[2]
    w3 = w[3]
    for j in range(d):
        x0 = np.float64(X[i, j])
        x1 = np.float64(X[i + 1, j])
        x2 = np.float64(X[i + 2, j])
        x3 = np.float64(X[i + 3, j])
        acc[0, j] += w0 * (x0 * x0) + w1 * (x1 * x1) + w2 * (x2 * x2) + w3 * (x3 * x3)


@jit
def _sqaxpy1(X, i, w, acc):
    d = X.shape[1]
    for j in range(d):
        x = np.float64(X[i, j])
        acc[0, j] += w * (x * x)


@jit(inline=True)
def _put(T, S, q, l, t):
    """``T[q, l] = t`` for a row weight ``t`` (float64); for a float32 ``T`` also ``S[q, l] =
    t`` (float64), for :func:`_spill`."""
    T[q, l] = t
    if is_float32(T):
        S[q, l] = t


@jit(inline=True)
def _outside_f32(t):
    """1 if the float64 ``t`` is nonzero and outside float32's normal range, else 0."""
    a = abs(t)
    return 1 if (a < F32_TINY and a != 0.0) or a > F32_MAX else 0


@jit
def _spill(X, i, nr, T, S, out):
    """Float32 tiles: each weight ``t = S[q, l]`` (q < nr) outside float32's normal range
    (nonzero) is taken out of ``T`` (``T[q, l] = 0``) and its row added in float64, ``out[l]
    += t X[i + q]``. Stored in float32 the weight would lose its digits or vanish (``a l'' =
    1e-50`` is 0 there) although its products with ``x`` are ordinary float32 numbers
    (``1e-50 * 1e30``). Compiled out for float64 data; otherwise a count of such weights
    (a loop without branches) decides whether anything is to be done."""
    if not is_float32(T):
        return
    L = S.shape[1]
    bad = 0
    for q in range(nr):
        for l in range(L):
            bad += _outside_f32(S[q, l])
    if bad == 0:
        return
    for q in range(nr):
        for l in range(L):
            t = S[q, l]
            if _outside_f32(t):
                T[q, l] = 0.0
                for j in range(X.shape[1]):
                    out[l, j] += t * np.float64(X[i + q, j])


@jit
def _flush1(acc, buf):
    """``buf += acc[0]`` and ``acc[0] = 0``; ``acc`` (1, d)."""
    for j in range(acc.shape[1]):
        buf[j] += acc[0, j]
        acc[0, j] = 0


@jit
def _row_value_grad(fam, e, y, a, row, eta, r, h):
    """Single output: store ``eta, l', l''`` of row ``row`` at ``e``; return (a l', a l)."""
    loss, d1, d2 = pointwise(fam, e, y)
    eta[row] = e
    r[row] = d1
    h[row] = d2
    return weighted(a, d1), weighted(a, loss)


@jit(parallel=True)
def pass_k1(X, starts, v, vb, mode, fam, y, a, cw, eta, r, h, lbuf, dbuf, gbuf, gbbuf):
    """One fused pass of a single-output GLM: ``s_i = x_i . v + vb``, ``t_i = f(s_i)``,
    ``gbuf[c] += sum t_i x_i``, ``gbbuf[c] = sum t_i`` over the rows of chunk c.

    ``mode == VALUE_GRAD``: v, vb are the parameters; ``f = a_i l'(s_i)``; ``eta, r, h``
    (n,) receive ``s_i, l'_i, l''_i`` (float64, unweighted) and ``lbuf[c] = sum a_i l_i``.
    ``mode == VALUE_GRAD_DIAG``: the same, and ``dbuf[c] = sum a_i l''_i x_i^2`` (the
    Hessian diagonal's data part) from the rows while they are in cache.
    ``mode == CURVATURE``: ``f = cw_i s_i`` with ``cw_i = a_i l''_i`` (Hessian) or
    ``a_i r_i^2`` (empirical Fisher); y, a, eta, r, h, lbuf and dbuf are not touched.

    Rows go four at a time: one load of ``v`` and one update of the accumulator per four rows,
    in wide vectors (:func:`_dot4`, :func:`_axpy4`). On the AVX-512 Xeon of 2026-11-29 (200,000
    x 500 float64, two threads, alternating calls) 512-bit vectors took 37.9 ms per HVP
    against 42.1 with LLVM's 256-bit vectorization of the same loops, against 36.0 for NumPy's
    one ``X @ v``; in float32 19.1 against 19.8. The accumulation prefetches half of the next
    four rows (:func:`_axpy4`): 41.2 -> 37.6 ms (float64) and 21.7 -> 19.9 (float32) in a later
    session, as fast as NumPy's one ``X @ v``.
    """
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    diag = mode == VALUE_GRAD_DIAG
    V = v.reshape((1, d))
    last4 = max(X.shape[0] - 4, 0)  # the last rows _axpy4 may prefetch (as pf .. pf + 3)
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = np.zeros((1, d), dtype=X.dtype)
            dacc = np.zeros((1, d if diag else 1))  # float64, see _sqaxpy4
            w = np.zeros(4)
            t = np.zeros((1, 4), dtype=X.dtype)
            t64 = np.zeros((1, 4))  # float32 data: t in float64 (_spill)
            bad = 0
            out = gbuf[c].reshape((1, d))
            s = np.zeros(4)
            tv = np.zeros(4)  # t in float64, for the sum
            lv = np.zeros(4)
            lsum = 0.0
            bsum = 0.0
            count = 0
            i = starts[c]
            stop = starts[c + 1]
            while i < stop:
                nr = min(4, stop - i)
                if nr == 4:
                    s[0], s[1], s[2], s[3] = _dot4(X, i, V)
                else:
                    for q in range(nr):
                        s[q] = _dot1(X, i + q, V)
                for q in range(nr):
                    row = i + q
                    if mode != CURVATURE:
                        tq, lv[q] = _row_value_grad(fam, s[q] + vb, y[row], a[row], row, eta, r, h)
                        w[q] = weighted(a[row], h[row])
                    else:
                        tq = cw[row] * (s[q] + vb)
                    tv[q] = tq
                    t[0, q] = tq
                    if is_float32(t):
                        t64[0, q] = tq
                        bad += _outside_f32(tq)
                if bad:
                    _spill(X, i, nr, t.T, t64.T, out)
                    bad = 0
                # the sums in a loop that only loads (see _jit, "Reductions")
                for q in range(nr):
                    bsum += tv[q]
                    lsum += lv[q]
                if nr == 4:
                    _axpy4(X, i, t, acc, min(i + 4, last4))
                    if diag:
                        if w[0] != 0.0 and w[1] != 0.0 and w[2] != 0.0 and w[3] != 0.0:
                            _sqaxpy4(X, i, w, dacc)
                        else:  # a row of weight 0 adds nothing, whatever its x
                            for q in range(4):
                                if w[q] != 0.0:
                                    _sqaxpy1(X, i + q, w[q], dacc)
                else:
                    for q in range(nr):
                        _axpy1(X, i + q, t[0, q], acc)
                        if diag and w[q] != 0.0:
                            _sqaxpy1(X, i + q, w[q], dacc)
                i += nr
                count += nr
                if count >= FLUSH:
                    _flush1(acc, gbuf[c])
                    if diag:
                        _flush1(dacc, dbuf[c])
                    count = 0
            _flush1(acc, gbuf[c])
            if diag:
                _flush1(dacc, dbuf[c])
            gbbuf[c] = bsum
            lbuf[c] = lsum


@jit
def _rows_value_grad(fam, U, T, S, nr, i, y, a, eta, r, h, e64, p64, r64, gb):
    """K outputs: per row of the block, store ``eta, l', l''`` (for the multinomial h = p),
    set ``T[q] = a l'`` (through :func:`_put`, with ``S``) and add it to ``gb`` (in
    float64); return the block's ``sum a l``."""
    K = eta.shape[1]
    lsum = 0.0
    for q in range(nr):
        row = i + q
        for k in range(K):
            e64[k] = U[q, k]
            eta[row, k] = U[q, k]
        if fam == MULTINOMIAL:
            loss = softmax_row(e64, int(y[row, 0]), p64, r64)
            for k in range(K):
                r[row, k] = r64[k]
                h[row, k] = p64[k]
        else:
            loss = 0.0
            for k in range(K):
                lk, d1, d2 = pointwise(fam, e64[k], y[row, k])
                loss += lk
                r[row, k] = d1
                h[row, k] = d2
        lsum += weighted(a[row], loss)
        for k in range(K):
            t = weighted(a[row], r[row, k])
            _put(T, S, q, k, t)
            gb[k] += t
    return lsum


@jit
def shifted_col(k, ref, m, mm):
    """Column of class ``k``, vector ``mm`` in a layout of m vectors without class ``ref``
    (``(k − [k > ref]) m + mm``); with ``ref < 0`` the plain ``k m + mm``."""
    if ref >= 0 and k > ref:
        return (k - 1) * m + mm
    return k * m + mm


@jit(strict=True)  # no reassociation, as softmax_hess_row: (u_k − u_r) − s must stay
def _rows_softmax_hess(U, T, S, nr, i, P, qa, top, m, reff, u64, gb):
    """``T[q] = −qa_i (diag(p_i) − p_i p_iᵀ) U[q]`` for the rows ``i + q`` of a block and
    each of the m vectors: :func:`.losses.softmax_hess_row` (the same formula, in float64,
    relative to the most probable class ``r = top[i]``: ``c p_k ((u_k − u_r) − Σ_j p_j (u_j −
    u_r))``, whose j = r term is exactly 0) written out over the block, without per-row array
    views. ``top`` (n,): the first class of largest ``p`` per row, found once per θ by the
    caller (``np.argmax``; finding it here, a chain of compares per row and product, took
    half of this function's time).

    ``U`` may leave out one class, as the softmax Hessian allows (``S 1 = 0``): vector mm's
    ``U`` then holds ``u − u_{reff[mm]}`` without that class's (zero) column; ``reff[mm] < 0``
    means all K columns (:func:`shifted_col`). ``T`` has all K m columns, and ``gb``
    receives every class's ``t`` in float64."""
    K = P.shape[1]
    for q in range(nr):
        row = i + q
        r = top[row]
        c = -qa[row]
        for mm in range(m):
            rf = reff[mm]
            for k in range(K):
                if k == rf:
                    u64[k] = 0.0
                else:
                    u64[k] = np.float64(U[q, shifted_col(k, rf, m, mm)])
            ur = u64[r]
            s = 0.0
            for k in range(K):
                s += P[row, k] * (u64[k] - ur)
            for k in range(K):
                t = c * P[row, k] * ((u64[k] - ur) - s)
                gb[k * m + mm] += t
                _put(T, S, q, k * m + mm, t)


@jit
def _rows_curvature(U, T, S, nr, i, Dw, Q, qa, top, kind, m, reff, u64, t64, gb):
    """``T[q] = H~_{i+q} U[q]`` for each row of the block (see ``_apply_curvature``), also
    added to ``gb`` in float64. ``top`` (the most probable class per row) and ``reff`` (the
    class left out of ``U`` per vector): CURV_SOFTMAX only; see :func:`_rows_softmax_hess`."""
    L = Dw.shape[1] * m
    if kind == CURV_SOFTMAX:
        _rows_softmax_hess(U, T, S, nr, i, Q, qa, top, m, reff, u64, gb)
        return
    for q in range(nr):
        for l in range(L):
            u64[l] = U[q, l]
        _apply_curvature(u64, t64, i + q, Dw, Q, qa, kind, m)
        for l in range(L):
            _put(T, S, q, l, t64[l])
            gb[l] += t64[l]


@jit(parallel=True)
def pass_gen(X, starts, Vt, vb, mode, fam, y, a, eta, r, h, Dw, Q, qa, top, kind, m, reff,
             lbuf, gbuf, gbbuf):
    """One fused pass of a K-output GLM over L columns: ``U_i = Vt x_i + vb``,
    ``T_i = f(U_i)``, ``gbuf[c] += sum T_i x_i^T``, ``gbbuf[c] += sum T_i``.

    ``Vt`` (Lfp, d) and ``vb`` (Lfp,) are zero-padded to ``tile_split(Lf)[1]`` rows, and
    ``gbuf[c]`` (Lbp, d) to ``tile_split(L)[1]`` (its padding rows stay 0), where ``Lf = L``
    except for the softmax Hessian with ``reff[0] >= 0`` (``Lf = L − m``: ``Vt`` holds each
    vector's columns minus the column of its class ``reff[mm]``, which is left out; see
    :func:`_rows_softmax_hess`). ``gbbuf[c]`` is (L,).

    ``mode == VALUE_GRAD`` (L = K): Vt, vb are the transposed weights and the intercepts;
    ``f = a_i l'(U_i)``; eta, r, h (n, K) receive ``U_i``, ``l'_i`` and the diagonal of
    ``l''_i`` (for the multinomial, h = p with ``l'' = diag(p) - p p^T``); y (n, Ky) holds
    labels in column 0 for the multinomial; ``lbuf[c] = sum a_i l_i``.
    ``mode == CURVATURE`` (L = K m, m vectors, vector mm's output k in column k m + mm):
    ``f = H~_i U_i`` with ``H~_i = diag(Dw_i) + qa_i Q_i Q_i^T`` per vector: the multinomial
    Hessian is ``Dw = a p, Q = p, qa = -a`` and ``top`` (n,) the most probable class per
    row (``np.argmax(p, axis=1)``); the empirical Fisher ``Dw = 0, Q = r, qa = a``. ``top``
    is read for CURV_SOFTMAX only.
    """
    n_chunks = starts.shape[0] - 1
    Lfp, d = Vt.shape
    Lbp = gbuf.shape[1]
    L = eta.shape[1] if mode == VALUE_GRAD else Dw.shape[1] * m
    n5f, lf = tile_split(L - m if reff[0] >= 0 else L)
    n5b, lb = tile_split(L)
    if lf != Lfp or lb != Lbp or vb.shape[0] != Lfp or gbbuf.shape[1] != L:
        raise ValueError("pass_gen: Vt, vb, gbuf or gbbuf not padded as tile_split says")
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = np.zeros((Lbp, d), dtype=X.dtype)
            U = np.zeros((BLOCK, Lfp), dtype=X.dtype)
            T = np.zeros((BLOCK, Lbp), dtype=X.dtype)
            S = np.zeros((BLOCK, Lbp))  # float32 data: T in float64 (_put, _spill)
            w1 = np.zeros(L)
            w2 = np.zeros(L)
            w3 = np.zeros(L)
            lsum = 0.0
            count = 0
            i = starts[c]
            stop = starts[c + 1]
            while i < stop:
                nr = min(BLOCK, stop - i)
                _block(X, i, nr, Vt, vb, U, T, acc, n5f, False)
                if mode == VALUE_GRAD:
                    lsum += _rows_value_grad(fam, U, T, S, nr, i, y, a, eta, r, h, w1, w2, w3,
                                             gbbuf[c])
                else:
                    _rows_curvature(U, T, S, nr, i, Dw, Q, qa, top, kind, m, reff, w1, w2,
                                    gbbuf[c])
                _spill(X, i, nr, T, S, gbuf[c])
                _block(X, i, nr, Vt, vb, U, T, acc, n5b, True)
                count += nr
                if count >= FLUSH:
                    _flush(acc, gbuf[c])
                    count = 0
                i += nr
            _flush(acc, gbuf[c])
            lbuf[c] = lsum


# ---------------------------------------------------------------------------- diagonal
@jit(parallel=True)
def weighted_sq_colsum(X, starts, cw, gbuf):
    """Diagonal of a GLM curvature: ``gbuf[c][k, j] = sum_i cw[i, k] X[i, j]^2`` over chunk c.

    In float64 whatever the data dtype: the square of a float32 ``x`` is exact and cannot
    overflow, and a weight below float32's range (``a p (1 - p)`` at |eta| > ~87) keeps its
    digits. A weight of 0 adds nothing, whatever ``x``.
    """
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    K = cw.shape[1]
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = gbuf[c]
            for i in range(starts[c], starts[c + 1]):
                for k in range(K):
                    t = cw[i, k]
                    if t == 0.0:
                        continue
                    for j in range(d):
                        x = np.float64(X[i, j])
                        acc[k, j] += t * (x * x)


# ----------------------------------------------------------------------------- forward
@jit(parallel=True)
def forward_k1(X, starts, v, vb, out):
    """``out[i] = x_i . v + vb`` (float64 out), four rows at a time."""
    n_chunks = starts.shape[0] - 1
    V = v.reshape((1, X.shape[1]))
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            i = starts[c]
            stop = starts[c + 1]
            while i + 4 <= stop:
                s0, s1, s2, s3 = _dot4(X, i, V)
                out[i] = s0 + vb
                out[i + 1] = s1 + vb
                out[i + 2] = s2 + vb
                out[i + 3] = s3 + vb
                i += 4
            while i < stop:
                out[i] = _dot1(X, i, V) + vb
                i += 1


@jit(parallel=True)
def forward_gen(X, starts, Vt, vb, out):
    """``out[i, l] = x_i . Vt[l] + vb[l]`` for the first L = out.shape[1] columns.

    Vt (Lp, d) and vb (Lp,) zero-padded to ``Lp = tile_split(L)[1]`` rows.
    """
    n_chunks = starts.shape[0] - 1
    Lp = Vt.shape[0]
    L = out.shape[1]
    n5 = tile_split(L)[0]
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            U = np.zeros((BLOCK, Lp), dtype=X.dtype)
            i = starts[c]
            stop = starts[c + 1]
            while i < stop:
                nr = min(BLOCK, stop - i)
                _block(X, i, nr, Vt, vb, U, U, U, n5, False)
                for q in range(nr):
                    for l in range(L):
                        out[i + q, l] = U[q, l]
                i += nr
