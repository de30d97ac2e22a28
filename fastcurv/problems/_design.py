"""Design matrices: one class per storage (dense, CSR) that runs the GLM kernels on it.

A design knows its row partition and turns kernel calls with per-chunk buffers into plain
float64 results. It holds no model state; :class:`fastcurv.GLM` does.

Curvature "weights" are passed as one of two forms:

* ``("k1", cw)``: a single output and one vector, ``t_i = cw_i u_i`` (cw (n,) float64);
* ``("gen", Dw, Q, qa, top, kind, m)``: ``t_i = Dw_i * u_i + qa_i (Q_i . u_i) Q_i`` applied to
  each of the m vectors (Dw, Q (n, K); qa (n,)); ``kind`` is one of ``glm_dense.CURV_*`` (the
  multinomial Hessian, ``CURV_SOFTMAX``, is applied in a form without cancellation, relative
  to the most probable class of each row, ``top`` (n,) int64: :func:`softmax_top`; other
  kinds ignore ``top``).

The softmax Hessian ``S_i = diag(p_i) − p_i p_iᵀ`` has ``S_i 1 = 0``, so the dense pass may
read ``V`` shifted by one of its own classes ``f`` (``V_k − V_f``; column f is then 0 and left
out: K − 1 columns in the forward tiles). It does so only when ``|V_f| <= |V_k|`` entry by
entry for every k (as when a class of V is 0), where the shift keeps every class block to its
own digits (see ``_softmax_shift``). Not done, as a review found (tests/test_dense_tiles.py):
shifting by the class of smallest ``max |V_f|`` (with features of different scales its
``V_f . x_i`` can be the largest) and restoring one class's block of the product as minus the
sum of the others (``1ᵀ S_i = 0``; a class near p = 1 has a block at rounding level of theirs,
and any class can for some direction).
"""

import numpy as np
import scipy.sparse as sp

from .. import _blas
from .._cpu import l2_bytes
from ..kernels import glm_csr, glm_dense, reduce
from ..kernels.glm_dense import CURV_DIAG, CURV_SOFTMAX, CURVATURE, VALUE_GRAD, VALUE_GRAD_DIAG
from ..kernels.losses import MULTINOMIAL


def _reduce(buf):
    """Sum per-chunk buffers (C, ...) (C-contiguous float64, C >= 1) in chunk order into one
    float64 array of shape (...), a fixed order whatever the thread count. Small buffers go
    to NumPy's ``sum(axis=0)`` (row after row: the same bits, and no kernel call, which cost
    microseconds per product of a small problem); large ones to the parallel
    :func:`reduce.sum_chunks`."""
    if buf.size <= reduce.SUM_BLOCK * buf.shape[0]:
        return buf.sum(axis=0)
    flat = buf.reshape(buf.shape[0], -1)
    out = np.empty(flat.shape[1])
    reduce.sum_chunks(flat, reduce.column_blocks(flat.shape[1]), out)
    return out.reshape(buf.shape[1:])


def _padded_t(V, vb):
    """``V.T`` (L, d) and ``vb`` zero-padded to the dense kernels' column tiles."""
    L, d = V.shape[1], V.shape[0]
    Lp = _tiled(L)
    Vt = np.zeros((Lp, d), dtype=V.dtype)
    Vt[:L] = V.T
    vbp = np.zeros(Lp, dtype=V.dtype)
    vbp[:L] = vb
    return Vt, vbp


def _tiled(L):
    """Columns of the dense kernels' tiles for L columns (``glm_dense.tile_split``)."""
    return int(glm_dense.tile_split(L)[1])


def _others(K, m, ref):
    """(K − 1, m) class indices: column mm lists the classes other than ``ref[mm]``."""
    k = np.arange(K - 1)[:, None]
    return k + (k >= ref[None, :])


def _softmax_shift(V, vb, K, m):
    """Each vector's classes minus a class ``f`` with ``|V_f| <= |V_k|`` entry by entry (with
    the intercept) for every k: ``(Vs (d, (K − 1) m), vbs, reff (m,))``, vector mm's class
    k ≠ reff[mm] at column ``(k − [k > reff[mm]]) m + mm``, in the data dtype (one rounding
    of each difference, at most ``eps |V_k|``); None when some vector has no such class.

    Then ``u_k − u_f`` comes out of ``(V_k − V_f) · x`` with an error of at most
    ``eps (|V_k| + |V_f|) |x| <= 2 eps |V_k| |x|`` on every row, within that of the product
    ``V_k · x`` itself. (The smallest ``max |V_f|`` gives no such bound: a small ``V_f`` on a
    feature of large scale makes ``u_f`` the largest, and its rounding then swamps every
    ``u_k − u_r`` of a row where class f has probability ~0.)"""
    d = V.shape[0]
    Vr = V.reshape(d, K, m)
    br = vb.reshape(K, m)
    A = np.abs(np.concatenate([Vr, br[None]], axis=0))  # (d + 1, K, m)
    ok = (A <= A.min(axis=1, keepdims=True)).all(axis=0)  # (K, m): elementwise smallest
    if not ok.any(axis=0).all():
        return None
    reff = np.argmax(ok, axis=0).astype(np.int64)
    idx = _others(K, m, reff)
    cols = np.arange(m)
    Vs = np.take_along_axis(Vr, idx[None], axis=1) - Vr[:, reff, cols][:, None, :]
    bs = np.take_along_axis(br, idx, axis=0) - br[reff, cols][None, :]
    return (np.ascontiguousarray(Vs.reshape(d, (K - 1) * m)), bs.reshape((K - 1) * m),
            reff)


# placeholders for the arguments a pass of the other mode does not touch
_NO1 = np.zeros(1)
_NO2 = np.zeros((1, 1))
#: ``top`` of the curvature kinds other than CURV_SOFTMAX (unread)
NO_TOP = np.zeros(1, dtype=np.int64)


def softmax_top(p):
    """The first most probable class of each row of ``p`` (n, K), as int64: the reference
    class of the softmax Hessian's rows (``glm_dense._rows_softmax_hess``), found once per θ
    and used by every product there."""
    return np.argmax(p, axis=1).astype(np.int64)


class _Design:
    """The fused passes, written once over the storage-specific ``_run_k1`` / ``_run_gen``."""

    def value_grad(self, Wmat, b, y2, a, fam, want_diag=False):
        """Loss sum, gradient (d, K), intercept gradient (K,) and the (n, K) state
        ``eta, r = l', h = diag l''`` (for the multinomial, h = p) in one pass.

        With ``want_diag`` a single-output pass also returns ``sum_i a_i h_i x_i^2`` (d, 1)
        (the data part of the Hessian diagonal); otherwise, or for K outputs, that is None.
        """
        n, K = self.n, Wmat.shape[1]
        eta = np.empty((n, K))
        r = np.empty((n, K))
        h = np.empty((n, K))
        lbuf = np.zeros(self.n_chunks)
        diag = None
        if K == 1 and fam != MULTINOMIAL:
            dbuf = np.zeros((self.n_chunks, self.d)) if want_diag else _NO2
            g, gb = self._run_k1(Wmat[:, 0], b[0], VALUE_GRAD_DIAG if want_diag else VALUE_GRAD,
                                 fam, y2[:, 0], a, _NO1, eta.reshape(n), r.reshape(n),
                                 h.reshape(n), lbuf, dbuf)
            if want_diag:
                diag = _reduce(dbuf).reshape(self.d, 1)
        else:
            g, gb = self._run_gen(Wmat, b, VALUE_GRAD, fam, y2, a, eta, r, h,
                                  _NO2, _NO2, _NO1, NO_TOP, CURV_DIAG, 1, lbuf)
        return float(lbuf.sum()), g, gb, eta, r, h, diag

    def rmatmul(self, U):
        """``Xᵀ U`` as (d, L) float64 for U (n, L) in the data dtype.

        float64 data: one BLAS product. float32 data: the sum over rows is taken in float64,
        over blocks of rows converted to float64 (each product ``x_ij u_il`` of two float32
        numbers is exact there), as the fused passes do; a float32 ``X.T @ U`` adds the n
        rows in float32, and its error grows with n (200,000 CSR rows: 1.3e-5 relative).
        """
        # NumPy's BLAS on one thread: a threaded product splits the sum over rows by thread
        # count, which changed the last bits of a vjp (1e-12 here) with it
        token = _blas.one_thread(("numpy",))
        try:
            if self.dtype == np.float64:
                return np.asarray(self.X.T @ U, dtype=np.float64)
            out = None
            bounds = self._rmatmul_bounds()
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                part = np.asarray(self._rows64(lo, hi).T
                                  @ np.asarray(U[lo:hi], dtype=np.float64))
                if out is None:
                    out = part
                else:
                    out += part
            return out
        finally:
            _blas.restore(token)

    def curv_vec(self, V, vb, weights):
        """``sum_i x~_i (x) t_i`` with ``t_i`` from ``weights`` applied to ``u_i = x_i V + vb``.

        V (d, L) and vb (L,) in the data dtype. Returns (d, L) and (L,) float64.
        """
        lbuf = np.zeros(self.n_chunks)
        if weights[0] == "k1":
            return self._run_k1(V[:, 0], vb[0], CURVATURE, 0, _NO1, _NO1, weights[1],
                                _NO1, _NO1, _NO1, lbuf, _NO2)
        _, Dw, Q, qa, top, kind, m = weights
        return self._run_gen(V, vb, CURVATURE, 0, _NO2, _NO1, _NO2, _NO2, _NO2,
                             Dw, Q, qa, top, kind, m, lbuf)


class DenseDesign(_Design):
    """Dense ``X`` (n, d), float32 or float64, any memory layout; never copied."""

    is_sparse = False

    def __init__(self, X):
        self.X = X
        self.n, self.d = X.shape
        self.dtype = X.dtype
        self.starts = reduce.row_partition(self.n)
        self.n_chunks = len(self.starts) - 1

    def _run_k1(self, v, vb, *args):
        C, d = self.n_chunks, self.d
        gbuf = np.zeros((C, d))
        gbbuf = np.zeros(C)
        glm_dense.pass_k1(self.X, self.starts, np.ascontiguousarray(v), float(vb), *args,
                          gbuf, gbbuf)
        return _reduce(gbuf).reshape(d, 1), _reduce(gbbuf).reshape(1)

    def _run_gen(self, V, vb, mode, fam, y, a, eta, r, h, Dw, Q, qa, top, kind, m, lbuf):
        L = V.shape[1]
        reff = np.full(m, -1, dtype=np.int64)
        if mode == CURVATURE and kind == CURV_SOFTMAX and m > 0:
            shifted = _softmax_shift(V, vb, L // m, m)
            if shifted is not None:
                V, vb, reff = shifted
        Vt, vbp = _padded_t(V, vb)
        gbuf = np.zeros((self.n_chunks, _tiled(L), self.d))
        gbbuf = np.zeros((self.n_chunks, L))
        glm_dense.pass_gen(self.X, self.starts, Vt, vbp, mode, fam, y, a, eta, r, h, Dw, Q,
                           qa, top, kind, m, reff, lbuf, gbuf, gbbuf)
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

    def _rmatmul_bounds(self):
        """Row blocks of :meth:`rmatmul`, converted to float64 one at a time: at most 2^20
        values each."""
        step = max(1, (1 << 20) // max(1, self.d))
        return list(range(0, self.n, step)) + [self.n]

    def _rows64(self, lo, hi):
        return np.asarray(self.X[lo:hi], dtype=np.float64)

    def dense_rows(self, lo, hi):
        """Rows ``lo:hi`` as a dense float64 array."""
        return np.asarray(self.X[lo:hi], dtype=np.float64)

    def take(self, rows):
        return np.ascontiguousarray(self.X[rows])


class CSRDesign(_Design):
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
        self.starts = reduce.nnz_partition(self.indptr, self.d)
        self.n_chunks = len(self.starts) - 1
        self.rowwise = rowwise_fits(self.d)

    def _args(self):
        return self.data, self.indices, self.indptr, self.starts

    def _run_k1(self, v, vb, *args):
        C, d = self.n_chunks, self.d
        gbuf = np.empty((C, d))  # each chunk zeroes its own (in parallel, into its cache)
        gbbuf = np.zeros(C)
        glm_csr.pass_k1(*self._args(), np.ascontiguousarray(v), float(vb), *args, gbuf, gbbuf,
                        self.rowwise)
        return _reduce(gbuf).reshape(d, 1), _reduce(gbbuf).reshape(1)

    def _run_gen(self, V, vb, *args):
        L = V.shape[1]
        gbuf = np.empty((self.n_chunks, self.d, L))  # zeroed by each chunk
        gbbuf = np.zeros((self.n_chunks, L))
        glm_csr.pass_gen(*self._args(), np.ascontiguousarray(V), vb, *args, gbuf, gbbuf)
        return _reduce(gbuf), _reduce(gbbuf)

    def sq_colsum(self, cw):
        gbuf = np.empty((self.n_chunks, self.d, cw.shape[1]))  # zeroed by each chunk
        glm_csr.weighted_sq_colsum(*self._args(), cw, gbuf)
        return _reduce(gbuf)

    def forward(self, V, vb):
        out = np.empty((self.n, V.shape[1]))
        glm_csr.forward(*self._args(), np.ascontiguousarray(V), vb, out)
        return out

    def _rmatmul_bounds(self):
        """Row blocks of :meth:`rmatmul` of about ``max(2^20, d)`` nonzeros each: each
        block's product costs a dense (d, L) result besides its nonzeros, so blocks of 4,096
        rows made a float32 vjp on 1e6 rows x 1e6 columns 12x scipy's float64 product."""
        nnz = int(self.indptr[-1])
        target = max(1 << 20, self.d)
        cuts = np.searchsorted(self.indptr, np.arange(target, nnz, target), side="left")
        return sorted({0, self.n, *(int(c) for c in cuts if 0 < c < self.n)})

    def _rows64(self, lo, hi):
        return self.X[lo:hi].astype(np.float64)

    def dense_rows(self, lo, hi):
        return self.X[lo:hi].toarray().astype(np.float64, copy=False)

    def take(self, rows):
        return self.X[rows]


def rowwise_fits(d):
    """Whether the single-output CSR pass runs row by row (``glm_csr.pass_k1``): where what
    it reads and writes at random, ``v`` and the float64 accumulator (16 d bytes), fits in
    half of one core's L2 cache (the other half for the streamed rows). Unknown L2: no.
    (Intel Xeon, 2 MB L2, d = 50,000: HVP 40 against 49 ms, value+grad 48.5 against 51.3.)"""
    l2 = l2_bytes()
    return l2 is not None and 16 * d <= l2 // 2


def make_design(X):
    """The design class for a validated ``X``."""
    return CSRDesign(X) if sp.issparse(X) else DenseDesign(X)
