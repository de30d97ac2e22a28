"""Design matrices: one class per storage (dense, CSR) that runs the GLM kernels on it.

A design knows its row partition and turns kernel calls with per-chunk buffers into plain
float64 results. It holds no model state; :class:`fastcurv.GLM` does.

Curvature "weights" are passed as one of two forms:

* ``("k1", cw)``: a single output and one vector, ``t_i = cw_i u_i`` (cw (n,) float64);
* ``("gen", Dw, Q, qa, use_q)``: ``t_i = Dw_i * u_i + qa_i (Q_i . u_i) Q_i`` applied to each of
  the m vectors (Dw, Q (n, K); qa (n,)).
"""

import numpy as np
import scipy.sparse as sp

from ..kernels import glm_csr, glm_dense, reduce
from ..kernels.losses import MULTINOMIAL


def _reduce(buf):
    """Sum per-chunk buffers (C, ...) in chunk order into one float64 array of shape (...).

    NumPy reduces over the leading axis of a C-contiguous array row after row (pairwise
    summation only applies along the contiguous axis), single-threaded: a fixed order.
    """
    return buf.sum(axis=0)


def _padded_t(V, vb):
    """``V.T`` (L, d) and ``vb`` zero-padded to a multiple of the dense kernels' tile width."""
    L, d = V.shape[1], V.shape[0]
    Lp = -(-L // int(glm_dense.tile_width(L))) * int(glm_dense.tile_width(L))
    Vt = np.zeros((Lp, d), dtype=V.dtype)
    Vt[:L] = V.T
    vbp = np.zeros(Lp, dtype=V.dtype)
    vbp[:L] = vb
    return Vt, vbp


class DenseDesign:
    """Dense ``X`` (n, d), float32 or float64, any memory layout; never copied."""

    is_sparse = False

    def __init__(self, X):
        self.X = X
        self.n, self.d = X.shape
        self.dtype = X.dtype
        self.starts = reduce.row_partition(self.n)
        self.n_chunks = len(self.starts) - 1

    # -------------------------------------------------------------- fused passes
    def value_grad(self, Wmat, b, y2, a, fam):
        """Loss sum, gradient (d, K), intercept gradient (K,) and the (n, K) state."""
        n, d, C = self.n, self.d, self.n_chunks
        K = Wmat.shape[1]
        eta = np.empty((n, K))
        r = np.empty((n, K))
        h = np.empty((n, K))
        lbuf = np.zeros(C)
        gbbuf = np.zeros((C, K))
        if K == 1 and fam != MULTINOMIAL:
            gbuf = np.zeros((C, d))
            glm_dense.value_grad_k1(
                self.X, self.starts, np.ascontiguousarray(Wmat[:, 0]), float(b[0]),
                np.ascontiguousarray(y2[:, 0]), a, fam,
                eta.reshape(n), r.reshape(n), h.reshape(n), gbuf, gbbuf.reshape(C), lbuf,
            )
            g = _reduce(gbuf).reshape(d, 1)
        else:
            Wt, bp = _padded_t(Wmat, b)
            gbuf = np.zeros((C, Wt.shape[0], d))
            glm_dense.value_grad_gen(
                self.X, self.starts, Wt, bp, y2, a, fam, eta, r, h, gbuf, gbbuf, lbuf
            )
            g = _reduce(gbuf)[:K].T
        return float(lbuf.sum()), g, _reduce(gbbuf), eta, r, h

    def curv_vec(self, V, vb, weights):
        """``sum_i x~_i (x) t_i`` with ``t_i`` from ``weights`` applied to ``u_i = x_i V + vb``.

        V (d, L) and vb (L,) in the data dtype. Returns (d, L) and (L,) float64.
        """
        C, d = self.n_chunks, self.d
        L = V.shape[1]
        gbbuf = np.zeros((C, L))
        if weights[0] == "k1":
            gbuf = np.zeros((C, d))
            glm_dense.weighted_gram_vec_k1(
                self.X, self.starts, np.ascontiguousarray(V[:, 0]), float(vb[0]), weights[1],
                gbuf, gbbuf.reshape(C),
            )
            return _reduce(gbuf).reshape(d, 1), _reduce(gbbuf)
        _, Dw, Q, qa, use_q, m = weights
        Vt, vbp = _padded_t(V, vb)
        gbuf = np.zeros((C, Vt.shape[0], d))
        glm_dense.weighted_gram_vec_gen(
            self.X, self.starts, Vt, vbp, Dw, Q, qa, use_q, m, gbuf, gbbuf
        )
        return _reduce(gbuf)[:L].T, _reduce(gbbuf)

    def sq_colsum(self, cw):
        """``sum_i cw[i, k] x_ij^2`` as (d, K) float64."""
        K = cw.shape[1]
        gbuf = np.zeros((self.n_chunks, K, self.d))
        glm_dense.weighted_sq_colsum(self.X, self.starts, cw, gbuf)
        return _reduce(gbuf).T

    # -------------------------------------------------------------- plain products
    def forward(self, V, vb):
        """``X @ V + vb`` as (n, L) float64, one parallel pass (V (d, L), vb (L,), data dtype)."""
        L = V.shape[1]
        out = np.empty((self.n, L))
        if L == 1:
            glm_dense.forward_k1(self.X, self.starts, np.ascontiguousarray(V[:, 0]),
                                 float(vb[0]), out.reshape(self.n))
        else:
            Vt, vbp = _padded_t(V, vb)
            glm_dense.forward_gen(self.X, self.starts, Vt, vbp, out)
        return out

    def rmatmul(self, U):
        """``X^T @ U`` for U (n, L)."""
        return self.X.T @ U

    def dense_rows(self, lo, hi):
        """Rows ``lo:hi`` as a dense float64 array."""
        return np.asarray(self.X[lo:hi], dtype=np.float64)

    def take(self, rows):
        return np.ascontiguousarray(self.X[rows])


class CSRDesign:
    """CSR ``X`` (validated: sorted, unique, in-range indices); kernels see unsigned indices."""

    is_sparse = True

    def __init__(self, X):
        self.X = X
        self.n, self.d = X.shape
        self.dtype = X.data.dtype
        self.data = X.data
        self.indptr = X.indptr
        utype = np.uint32 if X.indices.dtype.itemsize == 4 else np.uint64
        self.indices = X.indices.view(utype)
        self.starts = reduce.nnz_partition(self.indptr)
        self.n_chunks = len(self.starts) - 1

    def _args(self):
        return self.data, self.indices, self.indptr, self.starts

    def value_grad(self, Wmat, b, y2, a, fam):
        n, d, C = self.n, self.d, self.n_chunks
        K = Wmat.shape[1]
        eta = np.empty((n, K))
        r = np.empty((n, K))
        h = np.empty((n, K))
        lbuf = np.zeros(C)
        gbbuf = np.zeros((C, K))
        if K == 1 and fam != MULTINOMIAL:
            gbuf = np.zeros((C, d))
            glm_csr.value_grad_k1(
                *self._args(), np.ascontiguousarray(Wmat[:, 0]), float(b[0]),
                np.ascontiguousarray(y2[:, 0]), a, fam,
                eta.reshape(n), r.reshape(n), h.reshape(n), gbuf, gbbuf.reshape(C), lbuf,
            )
            g = _reduce(gbuf).reshape(d, 1)
        else:
            gbuf = np.zeros((C, d, K))
            glm_csr.value_grad_gen(
                *self._args(), np.ascontiguousarray(Wmat), b, y2, a, fam,
                eta, r, h, gbuf, gbbuf, lbuf,
            )
            g = _reduce(gbuf)
        return float(lbuf.sum()), g, _reduce(gbbuf), eta, r, h

    def curv_vec(self, V, vb, weights):
        C, d = self.n_chunks, self.d
        L = V.shape[1]
        gbbuf = np.zeros((C, L))
        if weights[0] == "k1":
            gbuf = np.zeros((C, d))
            glm_csr.weighted_gram_vec_k1(
                *self._args(), np.ascontiguousarray(V[:, 0]), float(vb[0]), weights[1],
                gbuf, gbbuf.reshape(C),
            )
            return _reduce(gbuf).reshape(d, 1), _reduce(gbbuf)
        _, Dw, Q, qa, use_q, m = weights
        gbuf = np.zeros((C, d, L))
        glm_csr.weighted_gram_vec_gen(
            *self._args(), np.ascontiguousarray(V), vb, Dw, Q, qa, use_q, m, gbuf, gbbuf
        )
        return _reduce(gbuf), _reduce(gbbuf)

    def sq_colsum(self, cw):
        gbuf = np.zeros((self.n_chunks, self.d, cw.shape[1]))
        glm_csr.weighted_sq_colsum(*self._args(), cw, gbuf)
        return _reduce(gbuf)

    def forward(self, V, vb):
        out = np.empty((self.n, V.shape[1]))
        glm_csr.forward(*self._args(), np.ascontiguousarray(V), vb, out)
        return out

    def rmatmul(self, U):
        return np.asarray(self.X.T @ U)

    def dense_rows(self, lo, hi):
        return self.X[lo:hi].toarray().astype(np.float64, copy=False)

    def take(self, rows):
        return self.X[rows]


def make_design(X):
    """The design class for a validated ``X``."""
    return CSRDesign(X) if sp.issparse(X) else DenseDesign(X)
