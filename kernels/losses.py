"""Per-sample GLM losses and their first two derivatives in the linear predictor ``eta``.

Family codes (shared with :mod:`fastcurv.problems.families`)::

    GAUSSIAN = 0     l = (y - eta)^2 / 2          l' = eta - y        l'' = 1
    LOGISTIC = 1     l = log(1 + e^eta) - y eta   l' = sigma - y      l'' = sigma (1 - sigma)
    POISSON = 2      l = e^eta - y eta            l' = e^eta - y      l'' = e^eta
    MULTINOMIAL = 3  l = logsumexp(eta) - eta_y   l' = p - e_y        l'' = diag(p) - p p^T

All arithmetic is float64 whatever the data dtype. The forms are chosen so that nothing
overflows for |eta| up to 700 and no digits are lost to cancellation where the maths allows:
``log(1 + e^eta) - eta`` is evaluated as ``log1p(e^-eta)``, ``sigma - 1`` as ``-e^-eta / (1 +
e^-eta)``, ``p_y - 1`` as ``-sum_{k != y} p_k``.
"""

import math

import numpy as np
from numba import prange

from ._jit import jit
from .schedule import claim

GAUSSIAN = 0
LOGISTIC = 1
POISSON = 2
MULTINOMIAL = 3


@jit
def _argmax(a):
    """Index of the first largest value of the 1-D array ``a`` (not empty)."""
    top = 0
    for k in range(1, a.shape[0]):
        if a[k] > a[top]:
            top = k
    return top


@jit
def weighted(a, x):
    """``a x``, and 0 when ``a = 0``: a row of weight zero adds nothing to a sum, also where
    its own loss or derivative overflows (never ``0 · inf = NaN``)."""
    return a * x if a != 0.0 else 0.0


@jit
def pointwise(fam, eta, y):
    """``(l, l', l'')`` of a single-output family at ``eta`` (float64) for target ``y``."""
    if fam == LOGISTIC:
        if eta >= 0.0:
            z = math.exp(-eta)
            loss = (1.0 - y) * eta + math.log1p(z)
            d1 = (1.0 - y) - z / (1.0 + z)
        else:
            z = math.exp(eta)
            loss = -y * eta + math.log1p(z)
            d1 = z / (1.0 + z) - y
        d2 = z / ((1.0 + z) * (1.0 + z))
        return loss, d1, d2
    if fam == POISSON:
        mu = math.exp(eta)
        return mu - y * eta, mu - y, mu
    # GAUSSIAN
    res = eta - y
    return 0.5 * res * res, res, 1.0


@jit(strict=True)
def softmax_row(eta, label, p, r):
    """Softmax cross-entropy of one row.

    Writes the probabilities ``p = softmax(eta)`` and the residual ``r = p - e_label``
    (both length K, float64) and returns the loss ``logsumexp(eta) - eta[label]``.

    Compiled without reassociation: with it, LLVM turned ``(m − η_label) + log s`` into
    ``(log s + m) − η_label``, whose rounding is that of ``m`` (a review against mpmath:
    logits [700, 699, 698], label 1, 154 eps off; 0.16 eps in this order).
    """
    K = eta.shape[0]
    top = _argmax(eta)
    m = eta[top]
    for k in range(K):
        p[k] = math.exp(eta[k] - m)
    # summed in a loop of its own (see _jit, "Reductions"): the order of the sum must not
    # depend on where p lies in memory
    s = 0.0
    for k in range(K):
        s += p[k]
    # sum of the unnormalized probabilities of the classes other than the label,
    # summed directly so that p_label - 1 = -others / s keeps all its digits
    others = 0.0
    for k in range(K):
        if k != label:
            others += p[k]
    inv = 1.0 / s
    for k in range(K):
        p[k] *= inv
        r[k] = p[k]
    r[label] = -others * inv
    if label == top:
        return math.log1p(others)
    return (m - eta[label]) + math.log(s)


@jit(strict=True)  # no reassociation: ``(u_k − u_r) − s`` must not become ``u_k − (u_r + s)``
def softmax_hess_row(p, u, c, out):
    """``out_k = c p_k (u_k − pᵀu)``: the softmax cross-entropy Hessian ``c (diag(p) − p pᵀ)``
    applied to ``u`` for one row (K values each; strided views allowed).

    Formed as ``c p_k ((u_k − u_r) − Σ_{j≠r} p_j (u_j − u_r))`` with ``r`` the most probable
    class (equal since ``Σ p = 1``). The direct form subtracts ``p_r (pᵀu)`` from ``p_r u_r``
    and loses every digit of ``1 − p_r`` once ``p_r`` rounds to 1 (margins beyond ~37 in
    float64); this one sums only the small ``p_j``, ``j ≠ r``.
    """
    K = p.shape[0]
    r = _argmax(p)
    ur = u[r]
    s = 0.0
    for k in range(K):
        if k != r:
            s += p[k] * (u[k] - ur)
    for k in range(K):
        out[k] = c * p[k] * ((u[k] - ur) - s)


@jit(parallel=True)
def loss_along(fam, eta, u, alpha, y, a, starts, lbuf):
    """``lbuf[c] = sum_i a_i l(y_i, eta_i + alpha u_i)`` over the rows of chunk c.

    eta, u (n, K) float64; y (n, Ky); a (n,). A line-search trial in O(n K), no pass over X.
    """
    n_chunks = starts.shape[0] - 1
    K = eta.shape[1]
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            e = np.zeros(K)
            p = np.zeros(K)
            r = np.zeros(K)
            s = 0.0
            for i in range(starts[c], starts[c + 1]):
                for k in range(K):
                    e[k] = eta[i, k] + alpha * u[i, k]
                if fam == MULTINOMIAL:
                    li = softmax_row(e, int(y[i, 0]), p, r)
                else:
                    li = 0.0
                    for k in range(K):
                        li += pointwise(fam, e[k], y[i, k])[0]
                s += weighted(a[i], li)
            lbuf[c] = s
