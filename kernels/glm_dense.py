"""Fused one-pass GLM kernels on dense ``X`` (n, d).

Notation: ``a_i = w_i / W`` are the normalized sample weights, ``x_i`` the rows of ``X``,
``eta_i = x_i W + b`` the linear predictor (K values), ``r_i = dl/deta`` the residual and
``H_i = d2l/deta2`` the per-sample loss curvature.

Every kernel reads each row once from memory and uses it twice while it sits in L1: first for
the products ``x_i . v`` (forward), then for the accumulation ``out += t_i x_i`` (backward).
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
from numba import prange

from ._jit import jit
from .losses import MULTINOMIAL, pointwise, softmax_hess_row, softmax_row, weighted

#: rows accumulated in the data dtype before they are added into the float64 chunk buffer
FLUSH = 256
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
# Register tiles for L columns, vectorized along the feature axis j. AVX2 has 16 vector
# registers, so a tile must keep its accumulators and operands within about 14 of them: the
# forward tile is two rows times 5 (or 4) columns (10 accumulators, the two rows' vectors, the
# parameters as memory operands); the backward tile is four rows times two columns (eight
# loop-invariant weights, one load and store of each accumulator element per four rows).
# The earlier 4 x 5 tiles needed 20 accumulators and spilled 15 of them to the stack on every
# iteration (AVX2; they were written for AVX-512's 32 registers). In cache, fused forward +
# backward on two cores (multinomial K = 10, d = 300), these tiles were faster in three of
# five paired measurements (23.1 vs 13.9 GMAC/s at best) and tied in two; on a noisy shared
# machine. ``Vt`` comes padded with zero rows to a multiple of the forward tile width (see
# ``tile_width``).


@jit
def tile_width(L):
    """Forward tile width (4 or 5) that pads ``L`` columns least; ties go to 5."""
    p5 = (L + 4) // 5 * 5
    p4 = (L + 3) // 4 * 4
    return 5 if p5 <= p4 else 4


@jit
def _fwd2x5(X, i, Vt, l, U, q):
    """``U[q + r, l + c] = X[i + r] . Vt[l + c]`` for r < 2, c < 5."""
    d = Vt.shape[1]
    z = X[i, 0] - X[i, 0]  # zero in the data dtype (X[i, 0] * 0 would be float64)
    s00 = s01 = s02 = s03 = s04 = s10 = s11 = s12 = s13 = s14 = z
    for j in range(d):
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
    U[q, l], U[q, l + 1], U[q, l + 2], U[q, l + 3], U[q, l + 4] = s00, s01, s02, s03, s04
    U[q + 1, l], U[q + 1, l + 1], U[q + 1, l + 2] = s10, s11, s12
    U[q + 1, l + 3], U[q + 1, l + 4] = s13, s14


@jit
def _fwd2x4(X, i, Vt, l, U, q):
    """``U[q + r, l + c] = X[i + r] . Vt[l + c]`` for r < 2, c < 4."""
    d = Vt.shape[1]
    z = X[i, 0] - X[i, 0]  # zero in the data dtype (X[i, 0] * 0 would be float64)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    for j in range(d):
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
    U[q, l], U[q, l + 1], U[q, l + 2], U[q, l + 3] = s00, s01, s02, s03
    U[q + 1, l], U[q + 1, l + 1], U[q + 1, l + 2], U[q + 1, l + 3] = s10, s11, s12, s13


@jit
def _fwd4(X, i, Vt, vb, U):
    """``U[r, l] = X[i + r] . Vt[l] + vb[l]`` for r = 0..3 (Vt padded to the tile width)."""
    Lp = Vt.shape[0]
    if Lp % 5 == 0:
        for l in range(0, Lp, 5):
            _fwd2x5(X, i, Vt, l, U, 0)
            _fwd2x5(X, i + 2, Vt, l, U, 2)
    else:
        for l in range(0, Lp, 4):
            _fwd2x4(X, i, Vt, l, U, 0)
            _fwd2x4(X, i + 2, Vt, l, U, 2)
    for r in range(4):
        for l in range(Lp):
            U[r, l] += vb[l]


@jit
def _fwd1(X, i, Vt, vb, U, r):
    """``U[r, l] = X[i] . Vt[l] + vb[l]``."""
    L, d = Vt.shape
    for l in range(L):
        s = X[i, 0] * Vt[l, 0]
        for j in range(1, d):
            s += X[i, j] * Vt[l, j]
        U[r, l] = s + vb[l]


@jit
def _bwd4x2(X, i, T, l, acc):
    """``acc[l + c] += sum_r T[r, l + c] X[i + r]`` for r < 4, c < 2."""
    d = acc.shape[1]
    t00, t01 = T[0, l], T[0, l + 1]
    t10, t11 = T[1, l], T[1, l + 1]
    t20, t21 = T[2, l], T[2, l + 1]
    t30, t31 = T[3, l], T[3, l + 1]
    for j in range(d):
        x0 = X[i, j]
        x1 = X[i + 1, j]
        x2 = X[i + 2, j]
        x3 = X[i + 3, j]
        acc[l, j] += t00 * x0 + t10 * x1 + t20 * x2 + t30 * x3
        acc[l + 1, j] += t01 * x0 + t11 * x1 + t21 * x2 + t31 * x3


@jit
def _bwd4x1(X, i, T, l, acc):
    """``acc[l] += sum_r T[r, l] X[i + r]`` for r < 4."""
    d = acc.shape[1]
    t0, t1, t2, t3 = T[0, l], T[1, l], T[2, l], T[3, l]
    for j in range(d):
        acc[l, j] += t0 * X[i, j] + t1 * X[i + 1, j] + t2 * X[i + 2, j] + t3 * X[i + 3, j]


@jit
def _bwd4(X, i, T, acc):
    """``acc[l] += sum_r T[r, l] X[i + r]`` for r = 0..3 and every column l of ``acc``."""
    Lp = acc.shape[0]
    for l in range(0, Lp - 1, 2):
        _bwd4x2(X, i, T, l, acc)
    if Lp % 2 == 1:
        _bwd4x1(X, i, T, Lp - 1, acc)


@jit
def _bwd1(X, i, T, r, acc):
    """``acc[l] += T[r, l] X[i]``."""
    L, d = acc.shape
    for l in range(L):
        t = T[r, l]
        for j in range(d):
            acc[l, j] += t * X[i, j]


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
    (``kind`` CURV_RANK1; CURV_DIAG: ``t = Dw[i] * u``; CURV_SOFTMAX, the multinomial Hessian
    with ``Dw = a p``, ``Q = p``, ``qa = −a``: :func:`.losses.softmax_hess_row`, which forms
    it without cancellation).

    ``u`` and ``t`` hold L = K m values with vector ``mm``'s output ``k`` at ``k m + mm``.
    """
    K = Dw.shape[1]
    if kind == CURV_SOFTMAX:
        for mm in range(m):
            softmax_hess_row(Q[i], u[mm::m], -qa[i], t[mm::m])
        return
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
def _dot4(X, i, v):
    """``(X[i + r] . v for r = 0..3)`` sharing each load of ``v``."""
    d = X.shape[1]
    s0 = X[i, 0] * v[0]
    s1 = X[i + 1, 0] * v[0]
    s2 = X[i + 2, 0] * v[0]
    s3 = X[i + 3, 0] * v[0]
    for j in range(1, d):
        vj = v[j]
        s0 += X[i, j] * vj
        s1 += X[i + 1, j] * vj
        s2 += X[i + 2, j] * vj
        s3 += X[i + 3, j] * vj
    return s0, s1, s2, s3


@jit
def _dot1(X, i, v):
    d = X.shape[1]
    s = X[i, 0] * v[0]
    for j in range(1, d):
        s += X[i, j] * v[j]
    return s


@jit
def _axpy4(X, i, t, acc):
    """``acc += sum_r t[r] X[i + r]`` for r = 0..3 (one load and store of acc per 4 rows)."""
    d = X.shape[1]
    t0 = t[0]
    t1 = t[1]
    t2 = t[2]
    t3 = t[3]
    for j in range(d):
        acc[j] += t0 * X[i, j] + t1 * X[i + 1, j] + t2 * X[i + 2, j] + t3 * X[i + 3, j]


@jit
def _axpy1(X, i, t, acc):
    d = X.shape[1]
    for j in range(d):
        acc[j] += t * X[i, j]


@jit
def _sqaxpy4(X, i, w, acc):
    """``acc += sum_r w[r] X[i + r]^2`` for r = 0..3."""
    d = X.shape[1]
    w0 = w[0]
    w1 = w[1]
    w2 = w[2]
    w3 = w[3]
    for j in range(d):
        x0 = X[i, j]
        x1 = X[i + 1, j]
        x2 = X[i + 2, j]
        x3 = X[i + 3, j]
        acc[j] += w0 * x0 * x0 + w1 * x1 * x1 + w2 * x2 * x2 + w3 * x3 * x3


@jit
def _sqaxpy1(X, i, w, acc):
    d = X.shape[1]
    for j in range(d):
        acc[j] += w * X[i, j] * X[i, j]


@jit
def _flush1(acc, buf):
    for j in range(acc.shape[0]):
        buf[j] += acc[j]
        acc[j] = 0


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

    Rows go four at a time: one load of ``v`` and one update of the accumulator per four rows.
    """
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    diag = mode == VALUE_GRAD_DIAG
    for c in prange(n_chunks):
        acc = np.zeros(d, dtype=X.dtype)
        dacc = np.zeros(d if diag else 1, dtype=X.dtype)
        w = np.zeros(4, dtype=X.dtype)
        t = np.zeros(4, dtype=X.dtype)
        s = np.zeros(4)
        lsum = 0.0
        bsum = 0.0
        count = 0
        i = starts[c]
        stop = starts[c + 1]
        while i < stop:
            nr = min(4, stop - i)
            if nr == 4:
                s[0], s[1], s[2], s[3] = _dot4(X, i, v)
            else:
                for q in range(nr):
                    s[q] = _dot1(X, i + q, v)
            for q in range(nr):
                row = i + q
                if mode != CURVATURE:
                    tq, lq = _row_value_grad(fam, s[q] + vb, y[row], a[row], row, eta, r, h)
                    lsum += lq
                    w[q] = weighted(a[row], h[row])
                else:
                    tq = cw[row] * (s[q] + vb)
                bsum += tq
                t[q] = tq
            if nr == 4:
                _axpy4(X, i, t, acc)
                if diag:
                    _sqaxpy4(X, i, w, dacc)
            else:
                for q in range(nr):
                    _axpy1(X, i + q, t[q], acc)
                    if diag:
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
def _rows_value_grad(fam, U, T, nr, i, y, a, eta, r, h, e64, p64, r64, gb):
    """K outputs: per row of the block, store ``eta, l', l''`` (for the multinomial h = p),
    set ``T[q] = a l'`` and add it to ``gb`` (in float64); return the block's ``sum a l``."""
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
            T[q, k] = t
            gb[k] += t
    return lsum


@jit
def _rows_curvature(U, T, nr, i, Dw, Q, qa, kind, m, u64, t64, gb):
    """``T[q] = H~_{i+q} U[q]`` for each row of the block (see ``_apply_curvature``), also
    added to ``gb`` in float64."""
    L = Dw.shape[1] * m
    for q in range(nr):
        for l in range(L):
            u64[l] = U[q, l]
        _apply_curvature(u64, t64, i + q, Dw, Q, qa, kind, m)
        for l in range(L):
            T[q, l] = t64[l]
            gb[l] += t64[l]


@jit(parallel=True)
def pass_gen(X, starts, Vt, vb, mode, fam, y, a, eta, r, h, Dw, Q, qa, kind, m,
             lbuf, gbuf, gbbuf):
    """One fused pass of a K-output GLM over L columns: ``U_i = Vt x_i + vb``,
    ``T_i = f(U_i)``, ``gbuf[c] += sum T_i x_i^T``, ``gbbuf[c] += sum T_i``.

    ``Vt`` (Lp, d) and ``vb`` (Lp,) are zero-padded to a multiple of ``tile_width(L)``, and so
    is ``gbuf[c]`` (Lp, d) (its padding rows stay 0).

    ``mode == VALUE_GRAD`` (L = K): Vt, vb are the transposed weights and the intercepts;
    ``f = a_i l'(U_i)``; eta, r, h (n, K) receive ``U_i``, ``l'_i`` and the diagonal of
    ``l''_i`` (for the multinomial, h = p with ``l'' = diag(p) - p p^T``); y (n, Ky) holds
    labels in column 0 for the multinomial; ``lbuf[c] = sum a_i l_i``.
    ``mode == CURVATURE`` (L = K m, m vectors, vector mm's output k in column k m + mm):
    ``f = H~_i U_i`` with ``H~_i = diag(Dw_i) + qa_i Q_i Q_i^T`` per vector: the multinomial
    Hessian is ``Dw = a p, Q = p, qa = -a``; the empirical Fisher ``Dw = 0, Q = r, qa = a``.
    """
    n_chunks = starts.shape[0] - 1
    Lp, d = Vt.shape
    L = eta.shape[1] if mode == VALUE_GRAD else Dw.shape[1] * m
    for c in prange(n_chunks):
        acc = np.zeros((Lp, d), dtype=X.dtype)
        U = np.zeros((4, Lp), dtype=X.dtype)
        T = np.zeros((4, Lp), dtype=X.dtype)
        w1 = np.zeros(L)
        w2 = np.zeros(L)
        w3 = np.zeros(L)
        lsum = 0.0
        count = 0
        i = starts[c]
        stop = starts[c + 1]
        while i < stop:
            nr = min(4, stop - i)
            if nr == 4:
                _fwd4(X, i, Vt, vb, U)
            else:
                for q in range(nr):
                    _fwd1(X, i + q, Vt, vb, U, q)
            if mode == VALUE_GRAD:
                lsum += _rows_value_grad(fam, U, T, nr, i, y, a, eta, r, h, w1, w2, w3,
                                         gbbuf[c])
            else:
                _rows_curvature(U, T, nr, i, Dw, Q, qa, kind, m, w1, w2, gbbuf[c])
            if nr == 4:
                _bwd4(X, i, T, acc)
            else:
                for q in range(nr):
                    _bwd1(X, i + q, T, q, acc)
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
    """Diagonal of a GLM curvature: ``gbuf[c][k, j] = sum_i cw[i, k] X[i, j]^2`` over chunk c."""
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    K = cw.shape[1]
    for c in prange(n_chunks):
        acc = np.zeros((K, d), dtype=X.dtype)
        tcast = np.zeros(K, dtype=X.dtype)
        count = 0
        for i in range(starts[c], starts[c + 1]):
            for k in range(K):
                tcast[k] = cw[i, k]
            for k in range(K):
                t = tcast[k]
                for j in range(d):
                    acc[k, j] += t * (X[i, j] * X[i, j])
            count += 1
            if count == FLUSH:
                _flush(acc, gbuf[c])
                count = 0
        _flush(acc, gbuf[c])


# ----------------------------------------------------------------------------- forward
@jit(parallel=True)
def forward_k1(X, starts, v, vb, out):
    """``out[i] = x_i . v + vb`` (float64 out), four rows at a time."""
    n_chunks = starts.shape[0] - 1
    for c in prange(n_chunks):
        i = starts[c]
        stop = starts[c + 1]
        while i + 4 <= stop:
            s0, s1, s2, s3 = _dot4(X, i, v)
            out[i] = s0 + vb
            out[i + 1] = s1 + vb
            out[i + 2] = s2 + vb
            out[i + 3] = s3 + vb
            i += 4
        while i < stop:
            out[i] = _dot1(X, i, v) + vb
            i += 1


@jit(parallel=True)
def forward_gen(X, starts, Vt, vb, out):
    """``out[i, l] = x_i . Vt[l] + vb[l]`` for the first L = out.shape[1] columns.

    Vt (Lp, d) and vb (Lp,) zero-padded to a multiple of ``tile_width(L)``.
    """
    n_chunks = starts.shape[0] - 1
    Lp = Vt.shape[0]
    L = out.shape[1]
    for c in prange(n_chunks):
        U = np.zeros((4, Lp), dtype=X.dtype)
        i = starts[c]
        stop = starts[c + 1]
        while i < stop:
            nr = min(4, stop - i)
            if nr == 4:
                _fwd4(X, i, Vt, vb, U)
            else:
                for q in range(nr):
                    _fwd1(X, i + q, Vt, vb, U, q)
            for q in range(nr):
                for l in range(L):
                    out[i + q, l] = U[q, l]
            i += nr
