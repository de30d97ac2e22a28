"""Stochastic trace estimators: Girard-Hutchinson, Hutch++ and XTrace.

All three see the operator only through block products ``A @ V`` (``matmat``), so one block
costs one pass over the data for fastcurv operators. The shared input checks of the spectral
estimators (square real operator, positive integers, probe blocks) live here too.
"""

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from .._validation import as_int, make_rng

METHODS = ("hutchinson", "hutch++", "xtrace")


class TraceEstimate(NamedTuple):
    """``trace``: the estimate of ``tr(A)`` (float); ``std_error``: its estimated standard error
    (see :func:`trace` for each method's; NaN when it cannot be estimated, 0 when the trace was
    computed exactly); ``n_matvecs``: products with ``A`` used; ``method``: the method's name."""

    trace: float
    std_error: float
    n_matvecs: int
    method: str


# ---------------------------------------------------------------------------------------------
# shared helpers of trace_estimators.py, eigen.py, density.py and diagonal.py


def _as_operator(op, symmetric=False):
    """``(LinearOperator, P, dtype)`` for a square real (P, P) operator.

    Accepts a scipy ``LinearOperator``, any object with ``shape`` and ``matmat`` (and
    optionally ``dtype``), or anything :func:`scipy.sparse.linalg.aslinearoperator` takes
    (dense arrays, sparse matrices). ``dtype`` is the floating type probes are built in: the
    operator's own float32/float64, float64 for anything else (integers, unknown). The
    returned operator raises FloatingPointError on a product with inf or NaN (estimates
    would be NaN, or fail deep inside ARPACK or LAPACK). ``symmetric``: an explicit matrix
    (dense or sparse) must be symmetric to rounding (the eigenvalue tools assume it; a
    matrix-free operator is taken as symmetric).
    """
    shape = getattr(op, "shape", None)
    if shape is None and hasattr(op, "hvp") and hasattr(op, "n_params"):
        raise TypeError(
            f"op must be an operator, got the problem {type(op).__name__}; pass the curvature "
            "at a point, e.g. fc.HessianOperator(p, theta) (the exact diagonal of a small "
            "problem is p.hessian_diag(theta))")
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"op must be a square (P, P) operator, got shape {shape}")
    P = int(shape[0])
    if P < 1:
        raise ValueError("op must have at least one row and column, got shape (0, 0)")
    raw = getattr(op, "dtype", None)
    raw = np.dtype(raw) if raw is not None else None
    if raw is not None and raw.kind == "c":
        raise TypeError(f"op must be real symmetric, got the complex dtype {raw}")
    # (``None in (...)`` is True: numpy compares None equal to float64's dtype)
    floats = (np.dtype(np.float32), np.dtype(np.float64))
    dtype = raw if raw is not None and raw in floats else np.dtype(np.float64)
    if symmetric and not isinstance(op, LinearOperator) and not hasattr(op, "matmat"):
        _check_symmetric(op, dtype)
    if isinstance(op, LinearOperator):
        lin = op
    elif hasattr(op, "matmat"):
        def matmat(V):
            return np.asarray(op.matmat(V)).reshape(P, -1)

        def matvec(v):
            return matmat(np.asarray(v).reshape(P, 1))[:, 0]

        lin = LinearOperator((P, P), matvec=matvec, matmat=matmat, rmatvec=matvec,
                             rmatmat=matmat, dtype=dtype)
    else:
        lin = aslinearoperator(op)
    return _finite_products(lin, P, dtype), P, dtype


def _finite_products(lin, P, dtype):
    """``lin`` whose every product is checked for inf and NaN, and for complex values (their
    imaginary parts were dropped with only a ComplexWarning: a trace of 0.0 for ``(1+1j) I``)."""
    def check(out):
        out = np.asarray(out)
        if np.iscomplexobj(out):
            if np.any(out.imag != 0):
                raise TypeError("the operator returned complex values for a real vector; the "
                                "estimators take real symmetric operators")
            out = out.real
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(
                "the operator returned non-finite values (inf or NaN) for a finite vector: "
                "its entries overflow or are not numbers")
        return out

    # numpy's warnings are silenced: a non-finite product raises below instead
    def matvec(v):
        with np.errstate(over="ignore", invalid="ignore"):
            return check(lin.matvec(v))

    def matmat(V):
        with np.errstate(over="ignore", invalid="ignore"):
            return check(lin.matmat(V))

    return LinearOperator((P, P), matvec=matvec, matmat=matmat, rmatvec=matvec,
                          rmatmat=matmat, dtype=dtype)


def _check_symmetric(A, dtype):
    """ValueError unless the dense or sparse matrix ``A`` equals its transpose to rounding
    (``max|A − Aᵀ| <= 64 eps max|A|``, eps of ``dtype``)."""
    import scipy.sparse as sp

    if sp.issparse(A):
        D = abs(A - A.T)
        gap = float(D.max()) if D.nnz else 0.0
        top = float(abs(A).max()) if A.nnz else 0.0
    else:
        M = np.asarray(A)
        if M.ndim != 2 or M.dtype.kind not in "biuf":
            return  # aslinearoperator names what is wrong
        # in row blocks: a large matrix is neither copied nor differenced whole
        gap = top = 0.0
        step = max(1, (1 << 20) // max(1, M.shape[0]))
        with np.errstate(invalid="ignore"):  # inf - inf: the products' check names it
            for i in range(0, M.shape[0], step):
                rows = np.asarray(M[i:i + step], dtype=np.float64)
                cols = np.asarray(M[:, i:i + step], dtype=np.float64).T
                gap = max(gap, float(np.max(np.abs(rows - cols))))
                top = max(top, float(np.max(np.abs(rows))))
    if np.isfinite(gap) and gap > 64 * float(np.finfo(dtype).eps) * top:  # (inf/NaN: later)
        raise ValueError(f"op must be symmetric: max|A - A.T| = {gap:.3g} against max|A| = "
                         f"{top:.3g}; pass (A + A.T) / 2 if that is the matrix meant")


def _apply(lin, V, dtype, block):
    """``A @ V`` in float64 for a (P, m) float64 block ``V``: cast to the operator's dtype and
    applied ``block`` columns per ``matmat`` call."""
    P, m = V.shape
    out = np.empty((P, m))
    for start in range(0, m, block):
        cols = slice(start, min(start + block, m))
        Vb = np.ascontiguousarray(V[:, cols], dtype=dtype)
        out[:, cols] = np.asarray(lin.matmat(Vb), dtype=np.float64).reshape(P, -1)
    return out


def _rademacher(rng, P, m):
    """(P, m) float64 matrix of independent uniform ±1 entries, C order. The stream is drawn
    probe by probe (as (m, P), then transposed), so probe j is the same whatever the sizes of
    the groups the probes are drawn in: results do not depend on ``block``."""
    return np.ascontiguousarray((2.0 * rng.integers(0, 2, size=(m, P)) - 1.0).T)


def _mean_and_se(values):
    """Sample mean and standard error (sample standard deviation / sqrt(n); NaN for n = 1).

    The spread is computed on the values divided by the power of two nearest their largest
    magnitude, so that it neither underflows to 0 (which would read "exact") for values of
    1e-160 nor overflows for values of 1e160."""
    n = values.size
    mean = float(values.mean())
    if n == 1:
        return mean, float("nan")
    top = float(np.max(np.abs(values)))
    scale = 2.0 ** np.floor(np.log2(top)) if top > 0 and np.isfinite(top) else 1.0
    se = float(scale * (values / scale).std(ddof=1) / np.sqrt(n))
    return mean, se


# ---------------------------------------------------------------------------------------------
# the estimators


def _hutchinson(lin, P, dtype, n, rng, block):
    # probes are drawn block by block, so only ``block`` of them are ever held at once
    vals = np.empty(n)
    for start in range(0, n, block):
        m = min(block, n - start)
        Z = _rademacher(rng, P, m)
        vals[start:start + m] = np.einsum("pm,pm->m", Z, _apply(lin, Z, dtype, block))
    mean, se = _mean_and_se(vals)
    return TraceEstimate(mean, se, n, "hutchinson")


def _hutchpp(lin, P, dtype, n, rng, block):
    s = n // 3
    S = _rademacher(rng, P, s)
    Q, _ = np.linalg.qr(_apply(lin, S, dtype, block))  # (P, s) orthonormal, spans A S
    low_rank = float(np.einsum("pk,pk->", Q, _apply(lin, Q, dtype, block)))  # tr(QᵀAQ)
    # Hutchinson on (I - QQᵀ) A (I - QQᵀ) with the remaining n - 2s >= s probes:
    # gᵀ(I-QQᵀ)A(I-QQᵀ)g = g'ᵀ A g' with g' = (I - QQᵀ) g
    G = _rademacher(rng, P, n - 2 * s)
    G -= Q @ (Q.T @ G)
    vals = np.einsum("pm,pm->m", G, _apply(lin, G, dtype, block))
    mean, se = _mean_and_se(vals)
    return TraceEstimate(low_rank + mean, se, n, "hutch++")


def _xtrace(lin, P, dtype, n, rng, block):
    m = n // 2
    Om = _rademacher(rng, P, m)
    Y = _apply(lin, Om, dtype, block)  # A Ω, (P, m)
    Q, R = np.linalg.qr(Y)
    # Leave-one-out bases without new products: range(A Ω_{-i}) is range(Q) minus the
    # direction Q s_i with s_i ∝ R⁻ᵀ e_i (orthogonal to every R e_j, j != i), so
    # Q_(i) Q_(i)ᵀ = Q (I - s_i s_iᵀ) Qᵀ. When A has rank < m, R has rounding-sized pivots and
    # s_i points into those noise directions, which keeps range(A) inside every Q_(i) (so the
    # estimate stays exact); an exactly zero pivot is replaced by a tiny one to the same effect.
    # R is divided by its largest entry first: only the directions of R⁻ᵀ e_i matter, and
    # at ‖A‖ = 1e±160 the entries of R⁻ᵀ would overflow or underflow the norms below
    top = np.abs(R).max()
    R = R / top if top > 0 else R.copy()
    d = np.abs(np.diag(R))
    zero = d == 0
    R[zero, zero] = np.finfo(np.float64).eps
    S = solve_triangular(R, np.eye(m), lower=False).T  # column i is R⁻ᵀ e_i
    S /= np.max(np.abs(S), axis=0)  # entries in [-1, 1]: the norms cannot overflow
    S /= np.linalg.norm(S, axis=0)
    Z = _apply(lin, Q, dtype, block)  # A Q, (P, m)
    H = Q.T @ Z  # QᵀAQ, (m, m)
    H = 0.5 * (H + H.T)
    W = Q.T @ Om  # Qᵀ ω_i in columns
    # (I - Q_(i)Q_(i)ᵀ) ω_i = r_i + u_i with r_i = ω_i - Q w_i (outside range Q) and
    # u_i = Q s_i (s_iᵀ w_i); A r_i = y_i - Z w_i and A u_i = Z s_i (s_iᵀ w_i).
    c = np.einsum("ki,ki->i", S, W)
    Rres = Om - Q @ W
    ARres = Y - Z @ W
    U = Q @ (S * c)
    AU = Z @ (S * c)
    residual = np.einsum("pi,pi->i", Rres + U, ARres + AU)
    low_rank = np.trace(H) - np.einsum("ki,kl,li->i", S, H, S)  # tr(Q_(i)ᵀ A Q_(i))
    ests = low_rank + residual
    mean, se = _mean_and_se(ests)
    return TraceEstimate(mean, se, 2 * m, "xtrace")


def _exact(lin, P, dtype, block, method):
    total = 0.0
    for start in range(0, P, block):
        cols = np.arange(start, min(start + block, P))
        E = np.zeros((P, cols.size))
        E[cols, np.arange(cols.size)] = 1.0
        total += float(_apply(lin, E, dtype, block)[cols, np.arange(cols.size)].sum())
    return TraceEstimate(total, 0.0, P, method)


def trace(op, n_probes, method="hutch++", seed=None, block=32):
    r"""Estimate ``tr(A)`` of a symmetric (P, P) operator from ``n_probes`` products with it.

    Every method draws Rademacher test vectors (uniform ±1 entries, ``E[ω ωᵀ] = I``) and is
    unbiased.

    ``"hutchinson"`` (Girard 1989; Hutchinson 1990)
        .. math:: \widehat{\mathrm{tr}} = \frac1S \sum_{s=1}^S \omega_s^\top A \omega_s,

        with ``S = n_probes``. Its variance is ``2 (‖A‖_F² − Σ_j A_jj²) / S``: the error
        falls like ``1/√S``. ``std_error`` is the sample standard deviation of the
        ``S`` quadratic forms over ``√S`` (NaN for one probe).

    ``"hutch++"`` (Meyer, Musco, Musco & Woodruff, *Hutch++: optimal stochastic trace
    estimation*, SOSA 2021, Algorithm 1)
        Split the budget: ``s = n_probes // 3`` sketch vectors ``S``, ``Q = orth(A S)`` (P, s),
        then

        .. math:: \widehat{\mathrm{tr}} = \mathrm{tr}(Q^\top A Q)
                  + \frac1{S'} \sum_{s=1}^{S'} g_s^\top (I - QQ^\top) A (I - QQ^\top) g_s

        with the remaining ``S' = n_probes − 2s >= s`` probes ``g_s``. The first term is exact
        on the top of the spectrum that ``A S`` captures, so for a decaying spectrum the error
        falls faster than ``1/√n`` (like ``1/n`` for PSD ``A``), and it is exact (to rounding)
        when ``rank(A) <= s``. ``std_error`` is the standard error of the Hutchinson part,
        which is the only random term given ``Q``.

    ``"xtrace"`` (Epperly, Tropp & Webber, *XTrace: making the most of every sample in
    stochastic trace estimation*, SIMAX 45(1), 2024: the basic XTrace estimator)
        With ``m = n_probes // 2`` test vectors ``Ω = [ω_1 … ω_m]`` and
        ``Q_(i) = orth(A Ω_{−i})`` (leave ``ω_i`` out),

        .. math:: \widehat{\mathrm{tr}}_i = \mathrm{tr}(Q_{(i)}^\top A Q_{(i)})
                  + \omega_i^\top (I - Q_{(i)}Q_{(i)}^\top) A (I - Q_{(i)}Q_{(i)}^\top)
                  \omega_i, \qquad
                  \widehat{\mathrm{tr}}_X = \frac1m \sum_{i=1}^m \widehat{\mathrm{tr}}_i.

        Each ``ω_i`` serves both in the low-rank part (of the others) and as a probe. All
        ``m`` leave-one-out bases come from one QR ``A Ω = Q R`` by downdating
        (``Q_(i)Q_(i)ᵀ = Q (I − s_i s_iᵀ) Qᵀ``, ``s_i ∝ R⁻ᵀ e_i``), so the cost is
        ``2m`` products (``A Ω`` and ``A Q``) and ``O(P m²)`` flops. ``std_error`` is the
        paper's error estimate ``sqrt(Σ_i (tr_i − tr_X)² / (m (m − 1)))``, the standard error
        of the mean of the ``m`` leave-one-out estimates. The leave-one-out estimates are
        correlated, so at small budgets this understates the real spread (a review measured
        1.3 reported against 3.3 over seeds for P = 7, ``n_probes = 6``): read it as a rough
        scale there, not a calibrated error bar. Exact (to rounding) when ``rank(A) < m``.
        An odd ``n_probes`` leaves one product unused.

    When ``n_probes >= P``, ``"hutch++"`` and ``"xtrace"`` return the exact trace
    ``Σ_j e_jᵀ A e_j`` from ``P`` products instead (``std_error = 0``): it costs no more and
    their sketches would span the whole space anyway. ``"hutchinson"`` always samples.

    Parameters
    ----------
    op : scipy.sparse.linalg.LinearOperator, or anything with ``shape``, ``dtype`` and
        ``matmat`` (dense or sparse matrices are accepted too)
        Symmetric (P, P), real. Test vectors are passed in the operator's dtype (float32
        operators get float32 blocks); everything else is computed in float64.
    n_probes : int
        Budget of products with ``A``: >= 1 for ``"hutchinson"``, >= 3 for ``"hutch++"``,
        >= 2 for ``"xtrace"``.
    method : {"hutch++", "hutchinson", "xtrace"}
    seed : int or numpy.random.Generator, optional
        The same seed gives the same result.
    block : int, default 32
        Columns per ``matmat`` call (memory holds ``P × block`` per call; Hutch++ and XTrace
        also keep their ``P × n_probes/3`` and ``P × n_probes/2`` sketches).

    Returns
    -------
    TraceEstimate(trace, std_error, n_matvecs, method)
        ``trace`` and ``std_error`` as Python floats.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> A = aslinearoperator(np.diag([5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    >>> est = trace(A, 6, method="hutch++", seed=0)   # rank 2 = n_probes // 3: exact
    >>> round(est.trace, 10), est.n_matvecs
    (6.0, 6)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = as_int(n_probes, "n_probes")
    if method == "hutch++" and n < 3:
        raise ValueError(
            f"n_probes must be >= 3 for method='hutch++' (a third sketches, a third projects, "
            f"a third probes), got {n}"
        )
    if method == "xtrace" and n < 2:
        raise ValueError(
            f"n_probes must be >= 2 for method='xtrace' (it uses pairs of products), got {n}"
        )
    block = as_int(block, "block")
    lin, P, dtype = _as_operator(op)
    rng = make_rng(seed)
    if method == "hutchinson":
        return _hutchinson(lin, P, dtype, n, rng, block)
    if n >= P:
        return _exact(lin, P, dtype, block, method)
    if method == "hutch++":
        return _hutchpp(lin, P, dtype, n, rng, block)
    return _xtrace(lin, P, dtype, n, rng, block)
