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
from .losses import MULTINOMIAL, pointwise, softmax_row

#: rows accumulated in the data dtype before they are added into the float64 chunk buffer
FLUSH = 256


# ----------------------------------------------------------------------------- helpers
@jit
def _fwd4(X, i, Vt, vb, U):
    """``U[r, l] = X[i + r] . Vt[l] + vb[l]`` for r = 0..3."""
    L, d = Vt.shape
    for l in range(L):
        s0 = X[i, 0] * Vt[l, 0]
        s1 = X[i + 1, 0] * Vt[l, 0]
        s2 = X[i + 2, 0] * Vt[l, 0]
        s3 = X[i + 3, 0] * Vt[l, 0]
        for j in range(1, d):
            v = Vt[l, j]
            s0 += X[i, j] * v
            s1 += X[i + 1, j] * v
            s2 += X[i + 2, j] * v
            s3 += X[i + 3, j] * v
        U[0, l] = s0 + vb[l]
        U[1, l] = s1 + vb[l]
        U[2, l] = s2 + vb[l]
        U[3, l] = s3 + vb[l]


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
def _bwd4(X, i, T, acc):
    """``acc[l] += sum_r T[r, l] X[i + r]`` for r = 0..3."""
    L, d = acc.shape
    for l in range(L):
        t0 = T[0, l]
        t1 = T[1, l]
        t2 = T[2, l]
        t3 = T[3, l]
        for j in range(d):
            acc[l, j] += t0 * X[i, j] + t1 * X[i + 1, j] + t2 * X[i + 2, j] + t3 * X[i + 3, j]


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
def _apply_curvature(u, t, i, Dw, Q, qa, use_q, m):
    """``t = Dw[i] * u + qa[i] (Q[i] . u) Q[i]`` for each of the m vectors in ``u``.

    ``u`` and ``t`` hold L = K m values with vector ``mm``'s output ``k`` at ``k m + mm``.
    """
    K = Dw.shape[1]
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
@jit(parallel=True)
def value_grad_k1(X, starts, coef, b, y, a, fam, eta, r, h, gbuf, gbbuf, lbuf):
    """Loss, gradient and curvature weights of a single-output GLM in one pass.

    In: X (n, d), coef (d,) and scalar ``b`` (X's dtype), y (n,), a (n,) float64, ``fam``.
    Out: eta (n,), r (n,) = l'(eta), h (n,) = l''(eta) (float64, unweighted);
    ``gbuf[c] = sum a_i r_i x_i``, ``gbbuf[c] = sum a_i r_i``, ``lbuf[c] = sum a_i l_i``
    over the rows of chunk c.
    """
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    for c in prange(n_chunks):
        acc = np.zeros(d, dtype=X.dtype)
        tcast = np.zeros(1, dtype=X.dtype)
        lsum = 0.0
        bsum = 0.0
        count = 0
        for i in range(starts[c], starts[c + 1]):
            s = X[i, 0] * coef[0]
            for j in range(1, d):
                s += X[i, j] * coef[j]
            e = np.float64(s) + b
            loss, d1, d2 = pointwise(fam, e, y[i])
            eta[i] = e
            r[i] = d1
            h[i] = d2
            t = a[i] * d1
            lsum += a[i] * loss
            bsum += t
            tcast[0] = t
            tt = tcast[0]
            for j in range(d):
                acc[j] += tt * X[i, j]
            count += 1
            if count == FLUSH:
                for j in range(d):
                    gbuf[c, j] += acc[j]
                    acc[j] = 0
                count = 0
        for j in range(d):
            gbuf[c, j] += acc[j]
        gbbuf[c] = bsum
        lbuf[c] = lsum


@jit(parallel=True)
def weighted_gram_vec_k1(X, starts, v, vb, cw, gbuf, gbbuf):
    """Hessian-vector product of a single-output GLM: ``sum_i cw_i (x_i . v + vb) x_i``.

    ``cw_i = a_i l''_i`` (or ``a_i r_i^2`` for the empirical Fisher). Out: ``gbuf[c]`` (d,)
    and ``gbbuf[c]`` (the intercept part, ``sum cw_i (x_i . v + vb)``) per chunk.
    """
    n_chunks = starts.shape[0] - 1
    d = X.shape[1]
    for c in prange(n_chunks):
        acc = np.zeros(d, dtype=X.dtype)
        tcast = np.zeros(1, dtype=X.dtype)
        bsum = 0.0
        count = 0
        for i in range(starts[c], starts[c + 1]):
            s = X[i, 0] * v[0]
            for j in range(1, d):
                s += X[i, j] * v[j]
            t = cw[i] * (np.float64(s) + vb)
            bsum += t
            tcast[0] = t
            tt = tcast[0]
            for j in range(d):
                acc[j] += tt * X[i, j]
            count += 1
            if count == FLUSH:
                for j in range(d):
                    gbuf[c, j] += acc[j]
                    acc[j] = 0
                count = 0
        for j in range(d):
            gbuf[c, j] += acc[j]
        gbbuf[c] = bsum


# ------------------------------------------------------------------------- L columns
@jit(parallel=True)
def value_grad_gen(X, starts, Wt, b, y, a, fam, eta, r, h, gbuf, gbbuf, lbuf):
    """Loss, gradient and curvature of a K-output GLM (multinomial or multi-output) in one pass.

    In: Wt (K, d) the transposed weights, b (K,) (X's dtype), y (n, Ky) (labels in column 0
    for the multinomial), a (n,). Out: eta, r (n, K); h (n, K) = diag of l'' (for the
    multinomial, h = p, with l'' = diag(p) - p p^T); ``gbuf[c]`` (K, d) = sum a_i r_i x_i^T,
    ``gbbuf[c]`` (K,), ``lbuf[c]``.
    """
    n_chunks = starts.shape[0] - 1
    K, d = Wt.shape
    for c in prange(n_chunks):
        acc = np.zeros((K, d), dtype=X.dtype)
        U = np.zeros((4, K), dtype=X.dtype)
        T = np.zeros((4, K), dtype=X.dtype)
        e64 = np.zeros(K)
        p64 = np.zeros(K)
        r64 = np.zeros(K)
        lsum = 0.0
        count = 0
        i = starts[c]
        stop = starts[c + 1]
        while i < stop:
            nr = min(4, stop - i)
            if nr == 4:
                _fwd4(X, i, Wt, b, U)
            else:
                for q in range(nr):
                    _fwd1(X, i + q, Wt, b, U, q)
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
                lsum += a[row] * loss
                for k in range(K):
                    t = a[row] * r[row, k]
                    T[q, k] = t
                    gbbuf[c, k] += t
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


@jit(parallel=True)
def weighted_gram_vec_gen(X, starts, Vt, vb, Dw, Q, qa, use_q, m, gbuf, gbbuf):
    """Curvature-vector products of a K-output GLM for m vectors at once, in one pass.

    ``out = sum_i x~_i (x) (H~_i (V~^T x~_i))`` with ``H~_i = diag(Dw_i) + qa_i Q_i Q_i^T``
    applied to each of the m vectors: the multinomial Hessian is ``Dw = a p``, ``Q = p``,
    ``qa = -a``; the empirical Fisher ``Dw = 0``, ``Q = r``, ``qa = a``.
    In: Vt (L, d) and vb (L,) with L = K m (X's dtype). Out: ``gbuf[c]`` (L, d), ``gbbuf[c]`` (L,).
    """
    n_chunks = starts.shape[0] - 1
    L, d = Vt.shape
    for c in prange(n_chunks):
        acc = np.zeros((L, d), dtype=X.dtype)
        U = np.zeros((4, L), dtype=X.dtype)
        T = np.zeros((4, L), dtype=X.dtype)
        u64 = np.zeros(L)
        t64 = np.zeros(L)
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
            for q in range(nr):
                for l in range(L):
                    u64[l] = U[q, l]
                _apply_curvature(u64, t64, i + q, Dw, Q, qa, use_q, m)
                for l in range(L):
                    T[q, l] = t64[l]
                    gbbuf[c, l] += t64[l]
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
