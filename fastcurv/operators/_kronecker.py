"""Block-diagonal operators with Kronecker-structured blocks (shared by K-FAC and EK-FAC).

Layer ``l`` owns the slice ``θ[o_l : o_l + n_A n_out]``, read as a C-ordered (n_A, n_out)
matrix ``V``; in that layout ``(A ⊗ G) vec(V) = vec(A V G)`` for symmetric ``G``.
"""

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._validation import add_damping, check_damping_fits, finite_as, finite_result, plain_array


def layer_views(X, blocks):
    """Per layer, the (m, n_A, n_out) view of a (P, m) block ``X``'s rows."""
    m = X.shape[1]
    return [np.moveaxis(X[o:o + na * w].reshape(na, w, m), 2, 0) for o, na, w in blocks]


class _BlockOperator(LinearOperator):
    """Symmetric (P, P) operator acting layer by layer on a (P, m) block, plus ``δ I``."""

    def __init__(self, blocks, P, dtype, damping=0.0):
        self._layers = blocks
        self.damping = float(damping)
        check_damping_fits(self.damping, dtype)
        super().__init__(dtype=np.dtype(dtype), shape=(P, P))

    def _layer(self, l, V):
        raise NotImplementedError

    def _matmat(self, X):
        X = plain_array(X, "v")
        if X.dtype.kind not in "biuf":
            raise TypeError(f"the vector must be real, got dtype {X.dtype}")
        X = finite_as(X, self.dtype, "the vector")
        out = np.empty(X.shape, dtype=self.dtype)
        Vs = layer_views(X, self._layers)
        Os = layer_views(out, self._layers)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            for l, (V, O) in enumerate(zip(Vs, Os, strict=True)):
                O[...] = self._layer(l, V)
        # finite factors and v: inf or NaN here is an overflow of the products
        finite_result(out, "the product", advice=(
            ": v is too large for this operator's range; scale it down (the product is "
            "linear in it) and the result up, or use float64 data"))
        if self.damping:
            out = add_damping(out, self.damping, X)
        return out

    def _matvec(self, x):
        return self._matmat(plain_array(x, "v").reshape(-1, 1))[:, 0]

    def _rmatvec(self, x):
        return self._matvec(x)

    def _rmatmat(self, X):
        return self._matmat(X)

    def _adjoint(self):
        return self


class KroneckerBlocks(_BlockOperator):
    """``V_l ↦ A_l V_l G_l`` per layer (two matrix products), plus ``δ V``."""

    def __init__(self, blocks, P, dtype, left, right, damping=0.0):
        super().__init__(blocks, P, dtype, damping)
        self._left = [np.ascontiguousarray(a, dtype=dtype) for a in left]
        self._right = [np.ascontiguousarray(g, dtype=dtype) for g in right]

    def _layer(self, l, V):
        return np.matmul(np.matmul(self._left[l], V), self._right[l])


class EigenKroneckerBlocks(_BlockOperator):
    """``V_l ↦ Q_A [(Q_Aᵀ V_l Q_G) ⊙ D_l] Q_Gᵀ`` per layer (four matrix products): a matrix
    diagonal in the Kronecker eigenbasis ``Q_A ⊗ Q_G`` with entries ``D_l`` (n_A, n_out),
    plus ``δ V``."""

    def __init__(self, blocks, P, dtype, bases, diags, damping=0.0):
        super().__init__(blocks, P, dtype, damping)
        self._qa = [np.ascontiguousarray(qa, dtype=dtype) for qa, _ in bases]
        self._qat = [np.ascontiguousarray(qa.T, dtype=dtype) for qa, _ in bases]
        self._qg = [np.ascontiguousarray(qg, dtype=dtype) for _, qg in bases]
        self._qgt = [np.ascontiguousarray(qg.T, dtype=dtype) for _, qg in bases]
        self._d = [np.ascontiguousarray(d, dtype=dtype) for d in diags]

    def _layer(self, l, V):
        R = np.matmul(np.matmul(self._qat[l], V), self._qg[l])
        R *= self._d[l]
        return np.matmul(np.matmul(self._qa[l], R), self._qgt[l])


def psd_eigh(M):
    """Eigenvalues (ascending, negatives from rounding set to 0) and eigenvectors of a
    symmetric positive semidefinite float64 matrix."""
    lam, Q = np.linalg.eigh(np.asarray(M, dtype=np.float64))
    return np.maximum(lam, 0.0), Q


def pinv_entries(D, size, dtype):
    """``1 / D`` elementwise, with entries at or below ``size · ε · max(D)`` set to 0 (a
    pseudo-inverse on numerically null directions instead of inf or NaN).

    ``ε`` is the machine epsilon of ``dtype``, the operator's: factors built from float32
    data carry float32 rounding (a softmax null eigenvalue of ``G`` comes out near
    ``ε_32² max``, not 0), so a float64 ``ε`` would invert that rounding into entries of
    1e8 to 1e14."""
    top = float(D.max()) if D.size else 0.0
    tol = size * float(np.finfo(dtype).eps) * top
    out = np.zeros_like(D)
    keep = D > tol
    out[keep] = 1.0 / D[keep]
    return out


def pinv_psd(lam, Q, shift, size, dtype):
    """``(M + shift I)⁺ = Q diag(1 / (λ + shift))⁺ Qᵀ`` from ``M = Q diag(λ) Qᵀ`` (entries
    dropped as in :func:`pinv_entries`)."""
    inv = pinv_entries(lam + shift, size, dtype)
    return (Q * inv) @ Q.T
