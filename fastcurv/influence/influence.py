"""Influence functions: which training points drive a prediction."""

import hashlib
import json
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

from .. import _validation as val
from . import solvers as S_

#: training rows scored per block (times the number of test points: the score block)
_SCORE_BLOCK_ELEMENTS = 2**22


def _weights(p, idx):
    """``c_i = w_i / W`` of the rows ``idx`` of a problem."""
    if hasattr(p, "_row_weights"):  # rows spread over Dask workers
        return p._row_weights(idx)
    return (p._cw if hasattr(p, "_cw") else p._a)[idx]


def _row_data(p):
    """Stored values per row of ``p``'s data: its features (dense), its mean count of
    nonzeros (sparse), 1 where the data are elsewhere (Dask workers)."""
    X = getattr(p, "X", None)
    if X is None or not hasattr(X, "shape") or X.shape[0] == 0:
        return 1
    if sp.issparse(X):
        return int(np.ceil(X.nnz / X.shape[0]))
    return int(X.shape[1])


def _model(p):
    """What two problems must share for one's factors to score the other's rows."""
    if hasattr(p, "sizes"):
        return ("MLP", tuple(p.sizes), tuple(p.activations), p.loss)
    return ("GLM", p.family, p.fit_intercept, p.n_outputs, p.n_features)


class _Progress:
    """A one-line text progress bar on stderr (``enabled=False``: silent)."""

    def __init__(self, enabled, total, what):
        self.enabled, self.total, self.what = enabled, max(int(total), 1), what
        self.t0 = time.perf_counter()
        self.done = 0

    def update(self, k):
        if not self.enabled:
            return
        self.done += k
        f = min(1.0, self.done / self.total)
        bar = "#" * int(30 * f)
        el = time.perf_counter() - self.t0
        eta = el / f - el if f > 0 else float("nan")
        sys.stderr.write(f"\r{self.what} [{bar:<30}] {100 * f:5.1f}% {el:6.1f}s "
                         f"(~{eta:.0f}s left)")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Influence:
    r"""Influence of training points on test predictions at fitted parameters ``θ̂``.

    Conventions (DESIGN.md). With ``H`` the Hessian of the objective ``F`` at ``θ̂`` (penalty
    included; ``curvature="ggn"`` uses the Gauss-Newton matrix), ``δ`` the damping and
    ``g`` per-sample loss gradients (no weight, no penalty):

    .. math::

        \mathrm{score}(t, i) = g_t^\top (H + \delta I)^{-1} g_i .

    Positive means *helpful*: removing training point ``i`` raises the loss of test point
    ``t`` by about ``(w_i / W) · score(t, i)``, and changes the parameters by about
    ``(w_i / W) (H + δI)⁻¹ g_i`` (:meth:`params_change`). The self-influence
    ``g_iᵀ (H + δI)⁻¹ g_i`` ranks the training points the fit leans on most (mislabeled
    points come first).

    Methods (``method=``) for ``(H + δI)⁻¹``:

    * ``"direct"``: Cholesky of the dense matrix, once (up to 20,000 parameters); a
      singular or indefinite matrix at ``δ = 0`` raises a ``ValueError``.
    * ``"cg"``: conjugate gradients for all right-hand sides at once (one data pass per
      iteration for the block); options ``rtol`` (1e-8, > 0), ``maxiter``, ``preconditioner``
      (None, ``"diag"``, ``"kfac"``, ``"nystrom"``).
    * ``"lissa"``: the Neumann series with its scale from the top eigenvalue; options
      ``depth``, ``tol`` (1e-10; 1.2e-6 for float32 data), ``scale``, ``batch_size``,
      ``repeats``, ``seed``.
    * ``"arnoldi"``: top-``rank`` eigenpairs (Lanczos, from a fixed start vector);
      ``"nystrom"``: randomized Nyström sketch of rank ``rank``, drawn from ``seed`` (None: a
      fresh draw every time; pass an integer for reproducible scores); both exact at full
      rank.
    * ``"kfac"`` / ``"ekfac"``: the damped inverse of type-2 K-FAC / EK-FAC, with the L2
      penalty folded into the damping (approximations of the Gauss-Newton matrix: their
      ``curvature`` is ``"ggn"``, and ``curvature="hessian"`` is refused); options ``fisher``
      ("type2"; "mc", sampled from ``seed`` with ``mc_samples`` labels per row; or
      "empirical", from the observed labels), as :class:`fastcurv.KFACOperator`.

    Softmax models have exact null directions (the common shift of the K outputs): every
    method returns the pseudo-inverse solution there (see :mod:`fastcurv.influence.solvers`).

    Scoring never forms the per-sample gradients of the training points: for a GLM a score
    is ``Σ_k ℓ'_ik x̃_iᵀ s_k`` (one product of the rows of ``X`` with all factors), for an MLP
    ``ℓ'_iᵀ (J_i s)`` (one Jacobian-vector product per test point and row block).

    Parameters
    ----------
    p : fastcurv.GLM or fastcurv.MLP
        The training problem.
    theta : array (P,)
        Fitted parameters.
    method : str, default "cg"
    damping : float >= 0
    curvature : {"hessian", "ggn"}, optional
        Default ``"hessian"``; ``"ggn"`` for ``"kfac"``/``"ekfac"`` (the only one they
        approximate).
    progress : bool, default False
        Show a text progress bar on stderr for long work.
    **options
        Method options (above). Unknown options raise a ``TypeError``.
    """

    def __init__(self, p, theta, method="cg", damping=0.0, *, curvature=None,
                 progress=False, **options):
        if method not in S_.METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, S_.METHODS))}, "
                             f"got {method!r}")
        kfac = method in ("kfac", "ekfac")
        if curvature is None:
            curvature = "ggn" if kfac else "hessian"
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        if kfac and curvature != "ggn":
            raise ValueError(f"method={method!r} approximates the Gauss-Newton matrix, not the "
                             "Hessian: leave curvature unset (or 'ggn'), or use an exact "
                             "method ('direct', 'cg', 'arnoldi', 'nystrom', 'lissa') for "
                             "curvature='hessian'")
        self.p = p
        self.theta = val.check_problem(p)._check_theta(theta).copy()
        self.method = method
        self.damping = val.as_float_scalar(damping, "damping", low=0.0)
        self.curvature = curvature
        self.progress = val.as_flag(progress, "progress")
        opts = dict(options)
        self.solver = S_.METHODS[method](p, self.theta, self.damping, curvature, opts)
        if opts:
            raise TypeError(f"unknown option(s) for method={method!r}: {', '.join(opts)}")

    # ------------------------------------------------------------------ pieces
    def _check_test(self, test_p, name="test_p"):
        p = self.p
        if (not hasattr(test_p, "per_sample_grads") or not hasattr(test_p, "n_params")
                or test_p.n_params != p.n_params):
            raise TypeError(
                f"{name} must be a problem of the same model as the training problem "
                f"({type(p).__name__}, {p.n_params} parameters); build it with "
                f"p.with_data(X_test, y_test)"
            )
        if _model(test_p) != _model(p):
            raise TypeError(f"{name} is another model than the training problem: "
                            f"{_model(test_p)} vs {_model(p)}; build it with "
                            f"p.with_data(X_test, y_test)")
        if name == "against" and np.dtype(test_p.dtype) != np.dtype(p.dtype):
            # its rows are scored at the training problem's θ, in its kernels
            raise TypeError(f"against holds {np.dtype(test_p.dtype).name} data but the "
                            f"training problem {np.dtype(p.dtype).name}; build it with "
                            "p.with_data(X, y) (the data are converted)")
        return test_p

    def _grads(self, q, rows=None):
        G = q.per_sample_grads(self.theta, rows)
        G = G.toarray() if sp.issparse(G) else G
        return np.asarray(G, dtype=np.float64)

    def solve(self, B):
        """``(H + δI)⁻¹ B`` for a (P,) vector or (P, m) block (float64)."""
        B = np.asarray(B, dtype=np.float64)
        one = B.ndim == 1
        if B.ndim not in (1, 2) or B.shape[0] != self.p.n_params:
            raise ValueError(f"B must have shape ({self.p.n_params},) or "
                             f"({self.p.n_params}, m), got {B.shape}")
        if not np.all(np.isfinite(B)):
            raise ValueError("B contains NaN or inf")
        out = self._solve(B.reshape(self.p.n_params, -1), "B")
        return out[:, 0] if one else out

    def _solve(self, B, what):
        """``(H + δI)⁻¹ B`` with each column scaled by a power of two for the solver (its
        largest entry into [1, 2)) and the solution scaled back. Every solver is linear in B,
        so this changes no bit where B is of ordinary size; a huge column no longer
        overflows the curvature products (CG raised about a NaN in "v" at B = 1e200), a tiny
        one no longer underflows the norms (CG took ``‖b‖`` of a subnormal B as 0 and returned
        zeros, LiSSA lost half its value). ``what`` names B in the error raised when the
        solution itself is beyond float64."""
        top = np.max(np.abs(B), axis=0) if B.size else np.zeros(B.shape[1])
        e = np.where(top > 0, np.frexp(top)[1] - 1, 0)
        with np.errstate(over="ignore"):  # an overflow is raised below, by name
            out = np.ldexp(self.solver.solve(np.ldexp(B, -e)), e)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(
                f"(H + damping I)^-1 {what} overflows float64 (largest |{what}| "
                f"{top.max():.3g}): scale {what} down, or pass damping > 0 if the curvature "
                "is nearly singular")
        return out

    def factors(self, test_p, rows=None):
        """``s_t = (H + δI)⁻¹ g_t`` for the test points (rows of ``test_p``), (m_test, P)."""
        G = self._grads(self._check_test(test_p), rows)
        if G.shape[0] == 0:
            return np.empty((0, self.p.n_params))
        return np.ascontiguousarray(self._solve(G.T, "the test gradients").T)

    def _row_blocks(self, idx, m):
        # bounded by the scores (m per row) and by the rows' data (d per row): a block of
        # rows is converted (float32 data meet float64 factors) or gathered (rows that are
        # not one run), and one block of all n rows copied the whole of X
        width = max(m, _row_data(self.p), 1)
        block = max(1, _SCORE_BLOCK_ELEMENTS // width)
        # contiguous runs of rows are scored straight from the problem's data
        for a in range(0, idx.size, block):
            yield a, min(idx.size, a + block)

    def _dots(self, S, idx, a, b, target=None):
        """``S @ g_iᵀ`` for the rows ``idx[a:b]`` of ``target`` (default the training
        problem)."""
        q = self.p if target is None else target
        rows = idx[a:b]
        if hasattr(q, "_grad_dots_rows"):  # rows spread over Dask workers
            return q._grad_dots_rows(self.theta, S, rows)
        if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
            return q._grad_dots(self.theta, S, int(rows[0]), int(rows[-1]) + 1)
        # per-sample gradients do not depend on the weights: rows of weight 0 are scored too
        return q._rows_problem(rows)._grad_dots(self.theta, S, 0, rows.size)

    # ------------------------------------------------------------------ scores
    def scores(self, test_p, rows=None, *, out=None, test_rows=None, against=None):
        """``score(t, i) = g_tᵀ (H + δI)⁻¹ g_i`` for every test point ``t`` and training row
        ``i`` in ``rows`` (default all): (m_test, n_rows) float64.

        ``against``: score the rows of another problem of the same model instead of the
        training rows (``H`` stays the training Hessian), so that
        ``scores(test_p) == scores(p, against=test_p).T``.

        One pass over the training rows per call (blocks of rows against all test factors).
        ``out``: a ``.npy`` path to write the scores to as they are produced (a memmap is
        returned); if the file exists from an interrupted run of the same call (the same
        solver, test factors and rows, and the same scores of the first block, which is
        computed again to check), the blocks already written (recorded in
        ``out + '.progress.json'``) are skipped, so a run resumes where it stopped; a file
        from any other call is overwritten."""
        if test_rows is not None:
            test_rows = val.check_rows(test_rows, self._check_test(test_p).n_samples, "test_rows")
        S = self.factors(test_p, test_rows)
        target = self.p if against is None else self._check_test(against, "against")
        idx = val.check_rows(rows, target.n_samples)
        m = S.shape[0]
        blocks = list(self._row_blocks(idx, m))
        first = None
        if out is None:
            res = np.empty((m, idx.size))
            done = set()
            log = None
        else:
            # the first block's scores fingerprint the rows actually scored (``rows``,
            # ``against``): a file from another call is never taken for this one's
            first = self._dots(S, idx, *blocks[0], target) if blocks else np.empty((m, 0))
            res, done, log = _open_output(out, (m, idx.size), blocks,
                                          self._signature(S, idx, first))
        bar = _Progress(self.progress, idx.size, "scoring")
        for k, (a, b) in enumerate(blocks):
            if k in done:
                bar.update(b - a)
                continue
            res[:, a:b] = first if k == 0 and first is not None else self._dots(
                S, idx, a, b, target)
            if log is not None:
                res.flush()
                done.add(k)
                log(done)
            bar.update(b - a)
        return res

    def _signature(self, S, idx, first):
        """What a resumed ``scores(out=...)`` must share with the run that wrote the file:
        the solver, the test factors ``S``, the rows and the first block of scores."""
        def digest(a):
            return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

        return dict(method=self.method, damping=self.damping, shape=list(S.shape),
                    factors=digest(S), rows=digest(np.asarray(idx, dtype=np.int64)),
                    first_block=digest(first))

    def top_k(self, test_p, k=10, helpful=True, rows=None):
        """The ``k`` most helpful (largest scores) or harmful (``helpful=False``: most negative)
        training rows for each test point, streamed over blocks of training rows with a
        bounded candidate set (the (m_test, n) score matrix is never built).

        Returns ``(indices, scores)``, each (m_test, min(k, n_rows)), best first (indices
        into the training rows; ``n_rows`` the number of rows searched: all, or ``rows``)."""
        k = val.as_int(k, "k")
        S = self.factors(test_p)
        idx = val.check_rows(rows, self.p.n_samples)
        m = S.shape[0]
        k = min(int(k), idx.size)
        sign = 1.0 if val.as_flag(helpful, "helpful") else -1.0
        best_v = np.full((m, 0), -np.inf)
        best_i = np.zeros((m, 0), dtype=np.int64)
        bar = _Progress(self.progress, idx.size, "top_k")
        for a, b in self._row_blocks(idx, m):
            v = sign * self._dots(S, idx, a, b)
            cv = np.concatenate([best_v, v], axis=1)
            ci = np.concatenate([best_i, np.broadcast_to(idx[a:b], v.shape)], axis=1)
            if cv.shape[1] > k:
                cv, ci = _keep_top(cv, ci, k)
            best_v, best_i = cv, ci
            bar.update(b - a)
        # best first; ties broken by the smaller row index
        order = np.lexsort((best_i, -best_v), axis=1)
        return (np.take_along_axis(best_i, order, axis=1),
                sign * np.take_along_axis(best_v, order, axis=1))

    def self_influence(self, rows=None):
        """``g_iᵀ (H + δI)⁻¹ g_i`` for the training rows ``rows`` (default all), (n_rows,).

        Costs one inverse-curvature solve per row (in blocks): cheap for ``direct``,
        ``arnoldi``, ``nystrom`` and ``kfac``; with ``cg`` or ``lissa`` choose the rows."""
        idx = val.check_rows(rows, self.p.n_samples)
        out = np.empty(idx.size)
        block = max(1, min(256, 2**24 // max(self.p.n_params, 1)))
        bar = _Progress(self.progress, idx.size, "self-influence")
        for a in range(0, idx.size, block):
            b = min(idx.size, a + block)
            G = self._grads(self.p, idx[a:b])
            X = self._solve(G.T, "the gradients")
            out[a:b] = np.einsum("ip,pi->i", G, X)
            bar.update(b - a)
        return out

    def params_change(self, rows):
        """Approximate change of the parameters when each training row is removed (its weight
        set to 0, ``W`` kept): ``(w_i / W) (H + δI)⁻¹ g_i``, (m, P)."""
        idx = val.check_rows(rows, self.p.n_samples)
        if idx.size == 0:
            return np.empty((0, self.p.n_params))
        G = self._grads(self.p, idx)
        X = self._solve(G.T, "the gradients").T
        return _weights(self.p, idx)[:, None] * X

    def __repr__(self):
        return (f"Influence(method={self.method!r}, damping={self.damping}, "
                f"curvature={self.curvature!r}, P={self.p.n_params})")


def _keep_top(cv, ci, k):
    """Per row, the ``k`` largest values of ``cv`` and their indices ``ci``, ties at the
    k-th place going to the smaller index (so the result does not depend on how the rows
    were blocked). ``argpartition`` finds the k-th value; only the candidates at or above it
    are sorted."""
    m = cv.shape[0]
    kth = -np.partition(-cv, k - 1, axis=1)[:, k - 1]
    out_v = np.empty((m, k))
    out_i = np.empty((m, k), dtype=ci.dtype)
    for t in range(m):
        cand = np.flatnonzero(cv[t] >= kth[t])
        order = np.lexsort((ci[t, cand], -cv[t, cand]))[:k]
        out_v[t] = cv[t, cand[order]]
        out_i[t] = ci[t, cand[order]]
    return out_v, out_i


def _open_output(path, shape, blocks, signature):
    """A .npy memmap for the scores and the set of blocks already written (resume)."""
    path = os.fspath(path)
    meta = path + ".progress.json"
    done = set()
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as f:
            info = json.load(f)
        arr = np.load(path, mmap_mode="r+")
        if (arr.shape == shape and info.get("signature") == signature
                and info.get("n_blocks") == len(blocks)):
            done = set(info.get("done", []))
        else:
            del arr
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)
    else:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)

    def log(done_set):
        tmp = meta + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(signature=signature, n_blocks=len(blocks),
                           done=sorted(done_set)), f)
        os.replace(tmp, meta)

    log(done)
    return arr, done, log
