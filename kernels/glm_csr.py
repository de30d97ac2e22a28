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
from .glm_dense import _apply_curvature
from .losses import MULTINOMIAL, pointwise, softmax_row


@jit(parallel=True)
def value_grad_k1(data, indices, indptr, starts, coef, b, y, a, fam, eta, r, h, gbuf, gbbuf, lbuf):
    """Single-output loss, gradient and curvature in one pass (see ``glm_dense.value_grad_k1``)."""
    n_chunks = starts.shape[0] - 1
    for c in prange(n_chunks):
        acc = gbuf[c]
        lsum = 0.0
        bsum = 0.0
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            s = 0.0
            for p in range(lo, hi):
                s += data[p] * coef[indices[p]]
            e = s + b
            loss, d1, d2 = pointwise(fam, e, y[i])
            eta[i] = e
            r[i] = d1
            h[i] = d2
            t = a[i] * d1
            lsum += a[i] * loss
            bsum += t
            for p in range(lo, hi):
                acc[indices[p]] += t * data[p]
        gbbuf[c] = bsum
        lbuf[c] = lsum


@jit(parallel=True)
def weighted_gram_vec_k1(data, indices, indptr, starts, v, vb, cw, gbuf, gbbuf):
    """``sum_i cw_i (x_i . v + vb) x_i`` in one pass (see ``glm_dense.weighted_gram_vec_k1``)."""
    n_chunks = starts.shape[0] - 1
    for c in prange(n_chunks):
        acc = gbuf[c]
        bsum = 0.0
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            s = 0.0
            for p in range(lo, hi):
                s += data[p] * v[indices[p]]
            t = cw[i] * (s + vb)
            bsum += t
            for p in range(lo, hi):
                acc[indices[p]] += t * data[p]
        gbbuf[c] = bsum


@jit(parallel=True)
def value_grad_gen(data, indices, indptr, starts, Wm, b, y, a, fam, eta, r, h, gbuf, gbbuf, lbuf):
    """K-output loss, gradient and curvature in one pass (see ``glm_dense.value_grad_gen``).

    Wm (d, K) weights in C order; ``gbuf[c]`` is (d, K).
    """
    n_chunks = starts.shape[0] - 1
    K = Wm.shape[1]
    for c in prange(n_chunks):
        acc = gbuf[c]
        e64 = np.zeros(K)
        p64 = np.zeros(K)
        r64 = np.zeros(K)
        t64 = np.zeros(K)
        lsum = 0.0
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            for k in range(K):
                e64[k] = b[k]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for k in range(K):
                    e64[k] += x * Wm[j, k]
            for k in range(K):
                eta[i, k] = e64[k]
            if fam == MULTINOMIAL:
                loss = softmax_row(e64, int(y[i, 0]), p64, r64)
                for k in range(K):
                    r[i, k] = r64[k]
                    h[i, k] = p64[k]
            else:
                loss = 0.0
                for k in range(K):
                    lk, d1, d2 = pointwise(fam, e64[k], y[i, k])
                    loss += lk
                    r[i, k] = d1
                    h[i, k] = d2
            lsum += a[i] * loss
            for k in range(K):
                t64[k] = a[i] * r[i, k]
                gbbuf[c, k] += t64[k]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for k in range(K):
                    acc[j, k] += x * t64[k]
        lbuf[c] = lsum


@jit(parallel=True)
def weighted_gram_vec_gen(data, indices, indptr, starts, V, vb, Dw, Q, qa, use_q, m, gbuf, gbbuf):
    """Curvature-vector products for m vectors at once (see ``glm_dense.weighted_gram_vec_gen``).

    V (d, L) and vb (L,) with L = K m; ``gbuf[c]`` is (d, L).
    """
    n_chunks = starts.shape[0] - 1
    L = V.shape[1]
    for c in prange(n_chunks):
        acc = gbuf[c]
        u64 = np.zeros(L)
        t64 = np.zeros(L)
        for i in range(starts[c], starts[c + 1]):
            lo = np.uint64(indptr[i])
            hi = np.uint64(indptr[i + 1])
            for l in range(L):
                u64[l] = vb[l]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for l in range(L):
                    u64[l] += x * V[j, l]
            _apply_curvature(u64, t64, i, Dw, Q, qa, use_q, m)
            for l in range(L):
                gbbuf[c, l] += t64[l]
            for p in range(lo, hi):
                x = data[p]
                j = indices[p]
                for l in range(L):
                    acc[j, l] += x * t64[l]


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
