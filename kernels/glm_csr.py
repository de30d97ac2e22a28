"""Fused one-pass GLM kernels on CSR ``X`` given as ``(data, indices, indptr)``.

Same products as :mod:`.glm_dense` (see its notation). Each row's nonzeros are read once:
first gathered against the parameter vector, then scattered into the chunk's float64
accumulator. ``indices`` must be an unsigned view (uint32 or uint64) of validated, in-range
column indices: unsigned indices spare Numba's negative-index wraparound test, which otherwise
blocks vectorization of the inner loops. Parameter blocks are (d, L) in C order, so the L
values of one feature are contiguous.
"""

import numpy as np
from numba import prange

from ._jit import jit
from .glm_dense import (
    CURVATURE,
    VALUE_GRAD,
    VALUE_GRAD_DIAG,
    _row_value_grad,
    _rows_curvature,
    _rows_value_grad,
)


@jit(parallel=True)
def pass_k1(data, indices, indptr, starts, v, vb, mode, fam, y, a, cw, eta, r, h,
            lbuf, dbuf, gbuf, gbbuf):
    """One fused pass of a single-output GLM (see ``glm_dense.pass_k1``); ``gbuf[c]`` (d,)."""
    n_chunks = starts.shape[0] - 1
    diag = mode == VALUE_GRAD_DIAG
    for c in prange(n_chunks):
        acc = gbuf[c]
        dacc = dbuf[0]  # a placeholder unless the diagonal is asked for
        if diag:
            dacc = dbuf[c]
        lsum = 0.0
        bsum = 0.0
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            s = 0.0
            for p in range(lo, hi):
                s += data[p] * v[indices[p]]
            if mode != CURVATURE:
                t, li = _row_value_grad(fam, s + vb, y[i], a[i], i, eta, r, h)
                lsum += li
            else:
                t = cw[i] * (s + vb)
            bsum += t
            if diag:
                w = a[i] * h[i]
                for p in range(lo, hi):
                    x = data[p]
                    acc[indices[p]] += t * x
                    dacc[indices[p]] += w * x * x
            else:
                for p in range(lo, hi):
                    acc[indices[p]] += t * data[p]
        gbbuf[c] = bsum
        lbuf[c] = lsum


@jit(parallel=True)
def pass_gen(data, indices, indptr, starts, V, vb, mode, fam, y, a, eta, r, h, Dw, Q, qa,
             use_q, m, lbuf, gbuf, gbbuf):
    """One fused pass of a K-output GLM over L columns (see ``glm_dense.pass_gen``).

    V (d, L) and vb (L,) in C order, unpadded; ``gbuf[c]`` is (d, L).
    """
    n_chunks = starts.shape[0] - 1
    L = V.shape[1]
    for c in prange(n_chunks):
        acc = gbuf[c]
        U = np.zeros((1, L))
        T = np.zeros((1, L))
        w1 = np.zeros(L)
        w2 = np.zeros(L)
        w3 = np.zeros(L)
        lsum = 0.0
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            for l in range(L):
                U[0, l] = vb[l]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for l in range(L):
                    U[0, l] += x * V[j, l]
            if mode == VALUE_GRAD:
                lsum += _rows_value_grad(fam, U, T, 1, i, y, a, eta, r, h, w1, w2, w3,
                                         gbbuf[c])
            else:
                _rows_curvature(U, T, 1, i, Dw, Q, qa, use_q, m, w1, w2, gbbuf[c])
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for l in range(L):
                    acc[j, l] += x * T[0, l]
        lbuf[c] = lsum


@jit(parallel=True)
def weighted_sq_colsum(data, indices, indptr, starts, cw, gbuf):
    """``gbuf[c][j, k] = sum_i cw[i, k] X[i, j]^2`` over the rows of chunk c; gbuf (C, d, K)."""
    n_chunks = starts.shape[0] - 1
    K = cw.shape[1]
    for c in prange(n_chunks):
        acc = gbuf[c]
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            for p in range(lo, hi):
                x2 = data[p] * data[p]
                j = indices[p]
                for k in range(K):
                    acc[j, k] += x2 * cw[i, k]


@jit(parallel=True)
def forward(data, indices, indptr, starts, V, vb, out):
    """``out[i, l] = x_i . V[:, l] + vb[l]`` (float64 out); V (d, L) in C order."""
    n_chunks = starts.shape[0] - 1
    L = V.shape[1]
    for c in prange(n_chunks):
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            for l in range(L):
                out[i, l] = vb[l]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for l in range(L):
                    out[i, l] += x * V[j, l]
