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
from .losses import weighted
from .schedule import claim

#: a row block holds at most this many rows and (unless one row has more) this many nonzeros:
#: ~0.8 MB of float64 values and uint32 indices, so the block is still in L2/L3 when the
#: scatter phase reads it again
BLOCK_ROWS = 1024
BLOCK_NNZ = 65536


@jit
def _block_end(indptr, i0, stop):
    """End of the row block that starts at ``i0``: at least one row, at most ``BLOCK_ROWS``
    rows and, past the first row, at most ``BLOCK_NNZ`` nonzeros."""
    lim = min(stop, i0 + BLOCK_ROWS)
    base = indptr[i0]
    i1 = i0 + 1
    while i1 < lim and indptr[i1 + 1] - base <= BLOCK_NNZ:
        i1 += 1
    return i1


@jit(inline=True)
def _row_weight(mode, diag, fam, s, vb, y, a, cw, i, eta, r, h):
    """Row ``i``'s ``(t_i, a_i l_i, w_i)`` from its gather ``s = x_i . v`` (see ``pass_k1``);
    ``w_i = a_i l''_i`` is 0 unless the diagonal is asked for."""
    if mode == CURVATURE:
        return cw[i] * (s + vb), 0.0, 0.0
    t, li = _row_value_grad(fam, s + vb, y[i], a[i], i, eta, r, h)
    return t, li, weighted(a[i], h[i]) if diag else 0.0


@jit(inline=True)
def _scatter(data, indices, lo, hi, t, w, acc, dacc):
    """``acc += t x_i`` and, for ``w != 0``, ``dacc += w x_i²`` over the nonzeros
    ``lo:hi`` of row ``i`` (a row of weight 0 adds nothing to ``dacc``, whatever its x)."""
    if w != 0.0:
        for p in range(lo, hi):
            x = data[p]
            acc[indices[p]] += t * x
            dacc[indices[p]] += w * x * x
    else:
        for p in range(lo, hi):
            acc[indices[p]] += t * data[p]


@jit(parallel=True)
def pass_k1(data, indices, indptr, starts, v, vb, mode, fam, y, a, cw, eta, r, h,
            lbuf, dbuf, gbuf, gbbuf, rowwise):
    """One fused pass of a single-output GLM (see ``glm_dense.pass_k1``); ``gbuf[c]`` (d,),
    and ``dbuf[c]`` with the diagonal, are zeroed by chunk c before it adds into them (the
    caller need not: the zeros are written in parallel, by the core that then fills them).

    Rows go in blocks (``_block_end``). With ``rowwise`` each row is gathered
    (``s_i = x_i . v``), weighted and scattered (``acc += t_i x_i``) before the next; without
    it a block runs in three phases: the gathers of the whole block, its per-row weights, then
    its scatters while the block's nonzeros are still in cache. The phases let the random
    reads of ``v`` and the read-modify-writes of ``acc`` each run without waiting on the
    other, and keep the loss's exp/log1p chain of one row from holding back the next row's
    gathers: that wins where ``v`` and the accumulator miss the core's L2 (AMD EPYC, 512 KB
    L2, 500,000 x 50,000 with 60 nonzeros per row: HVP 45 ms against 67), and loses where
    they fit, the second read of the block then being pure cost (Intel Xeon, 2 MB L2: 40
    against 49 ms). The caller chooses (``CSRDesign``). Both orders do the same arithmetic
    in the same order: the same bits.
    """
    n_chunks = starts.shape[0] - 1
    diag = mode == VALUE_GRAD_DIAG
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = gbuf[c]
            acc[:] = 0.0
            dacc = dbuf[0]  # a placeholder unless the diagonal is asked for
            if diag:
                dacc = dbuf[c]
                dacc[:] = 0.0
            tb = np.empty(BLOCK_ROWS)
            wb = np.zeros(BLOCK_ROWS)
            lb = np.zeros(BLOCK_ROWS)
            lsum = 0.0
            bsum = 0.0
            i0 = starts[c]
            stop = starts[c + 1]
            while i0 < stop:
                i1 = _block_end(indptr, i0, stop)
                if rowwise:
                    for i in range(i0, i1):
                        lo = np.uint64(indptr[i])
                        hi = np.uint64(indptr[i + 1])
                        s = 0.0
                        for p in range(lo, hi):
                            s += data[p] * v[indices[p]]
                        t, lb[i - i0], w = _row_weight(mode, diag, fam, s, vb, y, a, cw, i, eta,
                                                       r, h)
                        tb[i - i0] = t
                        _scatter(data, indices, lo, hi, t, w, acc, dacc)
                else:
                    for i in range(i0, i1):
                        s = 0.0
                        for p in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
                            s += data[p] * v[indices[p]]
                        tb[i - i0] = s
                    for i in range(i0, i1):
                        tb[i - i0], lb[i - i0], wb[i - i0] = _row_weight(
                            mode, diag, fam, tb[i - i0], vb, y, a, cw, i, eta, r, h)
                    for i in range(i0, i1):
                        _scatter(data, indices, np.uint64(indptr[i]), np.uint64(indptr[i + 1]),
                                 tb[i - i0], wb[i - i0], acc, dacc)
                # the sums in loops that only load (see _jit, "Reductions"), in row order
                for i in range(i0, i1):
                    bsum += tb[i - i0]
                if mode != CURVATURE:
                    for i in range(i0, i1):
                        lsum += lb[i - i0]
                i0 = i1
            gbbuf[c] = bsum
            lbuf[c] = lsum


@jit(parallel=True)
def pass_gen(data, indices, indptr, starts, V, vb, mode, fam, y, a, eta, r, h, Dw, Q, qa,
             top, kind, m, lbuf, gbuf, gbbuf):
    """One fused pass of a K-output GLM over L columns (see ``glm_dense.pass_gen``).

    V (d, L) and vb (L,) in C order, unpadded; ``gbuf[c]`` is (d, L), zeroed here. Rows go
    in blocks of two phases like ``pass_k1``: gathers and per-row curvature for the block, then
    scatters.
    """
    n_chunks = starts.shape[0] - 1
    L = V.shape[1]
    noref = np.full(m, -1, dtype=np.int64)  # every class in U (see glm_dense.pass_gen)
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = gbuf[c]
            acc[:] = 0.0
            U = np.zeros((BLOCK_ROWS, L))
            T = np.zeros((BLOCK_ROWS, L))  # float64: no weight needs spilling (glm_dense._put)
            S = np.zeros((1, 1))
            w1 = np.zeros(L)
            w2 = np.zeros(L)
            w3 = np.zeros(L)
            lsum = 0.0
            i0 = starts[c]
            stop = starts[c + 1]
            while i0 < stop:
                i1 = _block_end(indptr, i0, stop)
                for i in range(i0, i1):
                    q = i - i0
                    for l in range(L):
                        U[q, l] = vb[l]
                    for p in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
                        x = data[p]
                        j = indices[p]
                        for l in range(L):
                            U[q, l] += x * V[j, l]
                if mode == VALUE_GRAD:
                    lsum += _rows_value_grad(fam, U, T, S, i1 - i0, i0, y, a, eta, r, h, w1, w2,
                                             w3, gbbuf[c])
                else:
                    _rows_curvature(U, T, S, i1 - i0, i0, Dw, Q, qa, top, kind, m, noref, w1, w2,
                                    gbbuf[c])
                for i in range(i0, i1):
                    q = i - i0
                    for p in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
                        x = data[p]
                        j = indices[p]
                        for l in range(L):
                            acc[j, l] += x * T[q, l]
                i0 = i1
            lbuf[c] = lsum


@jit(parallel=True)
def weighted_sq_colsum(data, indices, indptr, starts, cw, gbuf):
    """``gbuf[c][j, k] = sum_i cw[i, k] X[i, j]^2`` over the rows of chunk c; gbuf (C, d, K),
    in float64, written here (see ``glm_dense.weighted_sq_colsum``)."""
    n_chunks = starts.shape[0] - 1
    K = cw.shape[1]
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            acc = gbuf[c]
            acc[:] = 0.0
            for i in range(starts[c], starts[c + 1]):
                lo = np.uint64(indptr[i])
                hi = np.uint64(indptr[i + 1])
                for p in range(lo, hi):
                    x = np.float64(data[p])  # exact, and no overflow, for float32 data
                    x2 = x * x
                    j = indices[p]
                    for k in range(K):
                        if cw[i, k] != 0.0:  # a weight of 0 adds nothing, whatever x
                            acc[j, k] += x2 * cw[i, k]


@jit(parallel=True)
def forward(data, indices, indptr, starts, V, vb, out):
    """``out[i, l] = x_i . V[:, l] + vb[l]`` (float64 out); V (d, L) in C order."""
    n_chunks = starts.shape[0] - 1
    L = V.shape[1]
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
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
