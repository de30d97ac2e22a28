"""Extreme eigenvalues of a symmetric operator by implicitly restarted Lanczos (ARPACK)."""

import inspect

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from .._validation import as_flag, as_float_scalar, as_int, make_rng
from .trace_estimators import _apply, _as_operator

WHICH = ("LA", "SA", "LM", "BE")

# scipy >= 1.15 draws ARPACK's restart vectors from an ``rng`` argument (older versions from
# numpy's global state): pass it when it exists so a seed fixes the whole run
_EIGSH_TAKES_RNG = "rng" in inspect.signature(eigsh).parameters


def _dense_select(w, V, k, which):
    """The ``k`` eigenpairs ``which`` selects from the full ascending decomposition ``w, V``."""
    P = w.size
    if which == "LA":
        idx = np.arange(P - k, P)
    elif which == "SA":
        idx = np.arange(k)
    elif which == "LM":
        idx = np.argsort(np.abs(w), kind="stable")[P - k:]
    else:  # "BE": k // 2 from the bottom, the rest (one more when k is odd) from the top
        lo = k // 2
        idx = np.concatenate([np.arange(lo), np.arange(P - (k - lo), P)])
    return w[idx], V[:, idx]


def top_eigenvalues(op, k, which="LA", return_eigenvectors=False, tol=0, seed=None):
    r"""The ``k`` extreme eigenvalues of a symmetric (P, P) operator, sorted descending.

    ``A = Σ_j λ_j u_j u_jᵀ``; ``which`` picks the ``k`` eigenpairs:

    - ``"LA"``: largest algebraic (``λ_1 >= … >= λ_k`` at the top), e.g. the sharpest
      directions of a Hessian or the top of a GGN spectrum;
    - ``"SA"``: smallest algebraic, the most negative eigenvalues of an indefinite Hessian
      (returned descending too, so the most negative comes last);
    - ``"LM"``: largest magnitude ``|λ|``;
    - ``"BE"``: both ends, ``k // 2`` from the bottom and ``k − k // 2`` from the top.

    Computed by the implicitly restarted Lanczos method of ARPACK
    (:func:`scipy.sparse.linalg.eigsh`; Lehoucq, Sorensen & Yang, *ARPACK Users' Guide*, 1998)
    from a seeded Gaussian start vector ``v0``, touching the operator only through ``matvec``.
    ARPACK runs in the operator's precision: a float32 operator is multiplied with float32
    vectors (eigsh's work arrays take ``op.dtype``), and the eigenvalues come back float32,
    accurate to about ``tol`` (machine precision of that dtype when ``tol = 0``) relative to
    ``‖A‖`` at any scale (ARPACK runs on ``A / s``, ``s`` the power of two at or below
    ``‖A v0‖`` for a unit ``v0``, because its convergence test has an absolute floor of
    ``eps^(2/3)``; a zero operator returns zeros and the first ``k`` coordinate vectors).
    For tiny problems (``k >= P − 1``, where ARPACK cannot run) the dense matrix
    ``A @ I`` is formed from P products, symmetrized and decomposed with
    :func:`numpy.linalg.eigh` instead.

    Parameters
    ----------
    op : scipy.sparse.linalg.LinearOperator, or anything with ``shape``, ``dtype`` and
        ``matmat`` (dense or sparse matrices are accepted too)
        Real symmetric (P, P).
    k : int, 1 <= k <= P
    which : {"LA", "SA", "LM", "BE"}
    return_eigenvectors : bool, default False
    tol : float, default 0
        Relative accuracy of the Ritz values requested from ARPACK (0: machine precision).
    seed : int or numpy.random.Generator, optional
        Seeds the start vector (and, with scipy >= 1.15, ARPACK's restarts).

    Returns
    -------
    eigenvalues : (k,) array, descending, in the operator's dtype (float64 for non-float ones)
    eigenvectors : (P, k) array, column ``j`` for ``eigenvalues[j]``; only if
        ``return_eigenvectors``

    Raises
    ------
    ValueError
        For ``k`` outside ``[1, P]``, an unknown ``which``, a negative ``tol``, a non-square
        operator.
    scipy.sparse.linalg.ArpackNoConvergence
        When ARPACK does not converge (it carries the eigenvalues that did): loosen ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> A = aslinearoperator(np.diag(np.arange(-5.0, 15.0)))
    >>> top_eigenvalues(A, 3, seed=0)
    array([14., 13., 12.])
    >>> top_eigenvalues(A, 2, which="BE", seed=0)
    array([14., -5.])
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    lin, P, dtype = _as_operator(op, symmetric=True)
    k = as_int(k, "k")
    if k > P:
        raise ValueError(f"k must be <= P = {P} (the operator's size), got {k}")
    tol = as_float_scalar(tol, "tol", low=0.0)
    return_eigenvectors = as_flag(return_eigenvectors, "return_eigenvectors")
    rng = make_rng(seed)
    if k >= P - 1:
        M = _apply(lin, np.eye(P), dtype, 64).astype(dtype)
        w, V = np.linalg.eigh(0.5 * (M + M.T))
        w, V = _dense_select(w, V, k, which)
    else:
        g = rng.standard_normal(P)
        # a unit start vector: A v0 stays within the operator's norm (entries up to ~3.5
        # overflowed float32 operators of norm ~1e38)
        v0 = (g / np.linalg.norm(g)).astype(dtype)
        # ARPACK's convergence test has an absolute floor (eps^(2/3): 1.5e-5 in float32), so
        # an operator of norm 1e-12 would be "converged" after one sweep: run it on A / s,
        # s the power of two at or below ‖A v0‖ / ‖v0‖ (an exact scaling), and scale back
        Av0 = np.asarray(lin.matvec(v0), dtype=np.float64).reshape(-1)
        top = float(np.max(np.abs(Av0)))
        if top == 0.0:
            # A v0 = 0 for a random v0: A = 0 (almost surely), every vector an eigenvector
            w = np.zeros(k)
            V = np.eye(P, k)
        else:
            size = top * float(np.linalg.norm(Av0 / top))  # ‖A v0‖ without overflow
            # rounded down: 2^128 (‖A‖ near float32's top) is inf in float32
            s = 2.0 ** np.floor(np.log2(size / float(np.linalg.norm(v0))))
            # in ``dtype``, not ``lin.dtype``: an integer operator (an int array or sparse
            # matrix) would truncate s = 1/8 to 0 and hand ARPACK inf and NaN
            s_dt = np.asarray(s, dtype=dtype)
            scaled = LinearOperator(
                (P, P), dtype=dtype,
                matvec=lambda x: np.asarray(lin.matvec(x), dtype=dtype) / s_dt,
                matmat=lambda X: np.asarray(lin.matmat(X), dtype=dtype) / s_dt)
            extra = {"rng": rng} if _EIGSH_TAKES_RNG else {}
            # ARPACK refuses "BE" for one eigenvalue; k - k // 2 = 1 from the top is "LA"
            arpack_which = "LA" if (which == "BE" and k == 1) else which
            out = eigsh(scaled, k=k, which=arpack_which, v0=v0, tol=float(tol),
                        return_eigenvectors=return_eigenvectors, **extra)
            w, V = out if return_eigenvectors else (out, None)
            w = np.asarray(w, dtype=np.float64) * s
    order = np.argsort(w, kind="stable")[::-1]
    w = np.asarray(w[order], dtype=dtype)
    if return_eigenvectors:
        return w, np.asarray(V[:, order], dtype=dtype)
    return w
