"""The known exact null directions of a softmax model's curvature, and the projection off them.

A softmax model's curvature (multinomial GLM, MLP with ``softmax_cross_entropy``) is singular
along the common shift of its K outputs: the output biases always, every weight row of the
last layer as well when ``l2 = 0`` (DESIGN.md, "Null directions"). Gradients have no part
along them. The influence solvers return the pseudo-inverse solution there, and Newton-CG's
Cholesky preconditioner projects them out (a shifted factor is 1/ε times larger along them).
``N`` (an orthonormal basis) is never formed for the projection: ``Π = I − N Nᵀ`` subtracts,
in each of those K-rows of the last layer's (n_in + 1, K) parameter block, the row's mean.
"""

import numpy as np


def null_rows(p):
    """The known exact null directions of a softmax model's curvature as ``(a, b, K)``: the
    constant vectors of each K-row of ``θ[a:b]`` read as a (-1, K) matrix (rows of the last
    layer's parameter block); None if there are none."""
    loss = getattr(p, "loss", None) or getattr(p, "family", None)
    if loss not in ("softmax_cross_entropy", "multinomial"):
        return None
    layers, offsets = p._kfac_layout()
    n_in, K, bias = layers[-1]
    o = offsets[len(layers) - 1]
    first = 0 if p.l2 == 0.0 else n_in  # all rows, or the bias row only
    last = n_in + 1 if bias else n_in
    if first >= last:
        return None
    return o + first * K, o + last * K, K


def null_gram(null, P):
    """``N Nᵀ`` (P, P) of the orthonormal basis ``N`` of the directions ``null_rows``
    returns: a block ``1/K`` (K, K) per row."""
    M = np.zeros((P, P))
    if null is not None:
        a, b, K = null
        for r in range(a, b, K):
            M[r:r + K, r:r + K] = 1.0 / K
    return M


def project_out(null, X):
    """``Π X = X − N Nᵀ X`` for a (P, m) block, in place: each K-row of ``X[a:b]`` minus its
    mean (O(P m), where the dense ``N`` would cost O(P r m) for r null directions)."""
    if null is not None:
        a, b, K = null
        V = X[a:b].reshape(-1, K, X.shape[1])
        X[a:b] = (V - V.mean(axis=1, keepdims=True)).reshape(b - a, X.shape[1])
    return X
