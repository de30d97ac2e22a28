r"""Classical GLM diagnostics: leverage, Cook's distance, DFBETA(S), studentized residuals.

Everything is computed from one Cholesky factor ``R`` of the (P, P) information matrix (from its
Gram matrix, or from a Householder QR of its square-root rows when that is ill-conditioned) and
row blocks of ``X``: ``R⁻ᵀ x̃_i`` is solved for a block of rows at once, and no (n, n) matrix is
ever formed.
The definitions follow statsmodels' ``GLMInfluence`` (``OLSInfluence`` for the gaussian family)
and extend them to sample weights, ridge penalties, several outputs and the multinomial; see
:func:`glm_diagnostics` for the formulas.
"""

import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from ..problems.glm import GLM

#: parameter counts above this are refused: the dense (P, P) factor would not fit in memory
MAX_PARAMS = 20_000

#: float64 entries per working block (rows x columns): about 32 MB
_BLOCK_ELEMENTS = 2**22

#: |R_jj| / (norm of column j) below this means "not identified" (column j is a combination
#: of the previous ones to 10 digits)
_PIVOT_TOL = 1e-10

#: the Gram-matrix Cholesky factor is used when its equilibrated reciprocal condition number
#: is at least this (relative errors ~ 1e-16 / rcond); otherwise a Householder QR
_GRAM_RCOND = 1e-5

#: rows with det(I − G_i) (1 − h_ii for one output) below this get NaN leave-one-out measures
_UNDEFINED_TOL = 1e-10

#: warn when theta is this many standard errors (along some coordinate) from the minimizer
_STATIONARY_TOL = 0.1


class GLMDiagnostics(NamedTuple):
    """Regression diagnostics of a fitted GLM (see :func:`glm_diagnostics` for definitions).

    Attributes
    ----------
    leverage : ndarray (n,)
        Diagonal of the hat matrix; the trace of the K x K per-row hat block when K > 1.
    cooks_distance : ndarray (n,)
    dfbeta : ndarray (n, P)
        ``θ̂ − θ̂₍₋ᵢ₎``: full-data parameters minus those without row i (one-step estimate;
        exact for the gaussian family), in fastcurv's parameter layout.
    dfbetas : ndarray (n, P)
        ``dfbeta`` in units of the parameters' standard errors.
    resid_studentized : ndarray (n,) or (n, K)
        Internally studentized Pearson residuals; one column per output or class when K > 1.
    scale : float or ndarray (K,)
        The dispersion φ used: 1 for logistic, poisson and multinomial, the Pearson estimate for
        the gaussian family (one per output for K gaussian outputs).
    df_resid : float or ndarray (K,)
        Residual degrees of freedom: the number of rows with positive weight (times K − 1 for the
        multinomial) minus the trace of the hat matrix; per output for K independent outputs.
    """

    leverage: np.ndarray
    cooks_distance: np.ndarray
    dfbeta: np.ndarray
    dfbetas: np.ndarray
    resid_studentized: np.ndarray
    scale: object
    df_resid: object


def glm_diagnostics(p, theta):
    r"""Leverage, Cook's distance, DFBETA, DFBETAS and studentized residuals of a fitted GLM.

    Let ``a_i = w_i / W`` (``W = Σ w_i``), ``r_i = ℓ'(η_i)`` the (K,) loss derivative (so
    ``e_i = y_i − μ_i = −r_i`` for every family here), ``S_i = ℓ''(η_i)`` the K x K curvature
    (``diag ℓ''`` for independent outputs, ``diag(p_i) − p_i p_iᵀ`` for the softmax),
    ``J_i = x̃_i ⊗ I_K`` (P, K) with ``x̃_i = [x_i, 1]`` (no 1 without an intercept), and ``H``
    the Hessian of the objective at ``θ̂`` (DESIGN.md normalization, penalty included)

    .. math::

        H = \sum_i a_i J_i S_i J_i^T + \lambda\,\mathrm{mask},\qquad
        M_i = J_i^T H^{-1} J_i,\qquad G_i = a_i S_i M_i .

    ``W H = X̃ᵀ diag(w ℓ'') X̃ + W λ mask`` is the (penalized) Fisher information. For one output
    and ``λ = 0``, ``G_i = w_i ℓ''_i x̃_iᵀ (X̃ᵀ diag(w ℓ'') X̃)⁻¹ x̃_i`` is the diagonal of the IRLS
    hat matrix ``V^{1/2} X̃ (X̃ᵀ V X̃)⁻¹ X̃ᵀ V^{1/2}``, ``V = diag(w ℓ'')``. ``G_i`` is also the
    generalized leverage ``∂μ̂_i/∂y_i``.

    * ``leverage_i = tr G_i``: the hat diagonal for one output; for K > 1 the trace of the
      K x K hat block of row i (the sum of the per-output leverages for independent outputs).
      Unpenalized and of full rank, the leverages sum to the number of identified parameters.
    * ``dfbeta_i = θ̂ − θ̂₍₋ᵢ₎ ≈ −a_i H⁻¹ J_i (I − G_i)⁻¹ r_i``: one Newton step from ``θ̂`` on the
      objective with ``w_i = 0`` and ``W`` kept (the leave-one-out problem of DESIGN.md); exact
      for the gaussian family. For one output this is ``(X̃ᵀVX̃ + Wλ mask)⁻¹ x̃_i w_i e_i /
      (1 − h_ii)``, statsmodels' ``d_params``/``dfbeta`` with statsmodels' sign (full minus
      leave-one-out). It is the *negative* of DESIGN.md's influence prediction "removing
      point i changes the parameters by about ``a_i H⁻¹ g_i``" (``g_i = J_i r_i``), corrected by
      the factor ``(I − G_i)⁻¹`` (``1/(1 − h_ii)``, the Sherman-Morrison update of ``H``).
    * ``resid_studentized_ik = √w_i e_ik / √(φ_k [(I − G_i) S_i]_kk)``: for one output
      ``√w_i (y_i − μ_i) / √(φ V(μ_i) (1 − h_ii))``, the Pearson residual over its standard
      deviation (statsmodels' ``resid_studentized``, the *internally* studentized residual).
      For K > 1 it has one column per output or class (``(I − G_i) S_i / w_i`` is the
      covariance of ``e_i`` to first order, for ``λ = 0``); a two-class multinomial gives
      ±(the logistic one).
    * ``cooks_distance_i = dfbeta_iᵀ (W H / φ) dfbeta_i / k = w_i a_i u_iᵀ M_i u_i / (φ k)``
      with ``u_i = (I − G_i)⁻¹ r_i`` and ``k`` the number of identified parameters (``P``;
      for the multinomial ``P`` minus the dimension of the null space below). For one output
      this is statsmodels' ``t_i² h_ii / ((1 − h_ii) k)``.
    * ``dfbetas_ij = dfbeta_ij / (σ_i √([(W H)⁻¹]_jj))`` (σ of output ``j mod K``). For
      logistic, poisson and multinomial ``σ_i = √φ = 1`` (statsmodels' ``GLMInfluence.dfbetas``,
      ``d_params / bse``). For the gaussian family ``σ_i = s₍₋ᵢ₎``, the residual standard
      deviation of the leave-one-out fit, ``s₍₋ᵢ₎² = RSS₍₋ᵢ₎ / (df − 1)`` with its exact
      residual sum of squares
      ``RSS₍₋ᵢ₎ = df φ − w_i e_i² / (1 − h_ii) + W λ (‖θ̂_w‖² − ‖θ̂_w − dfbeta_{i,w}‖²)``
      (statsmodels' ``OLSInfluence``, Belsley-Kuh-Welsch; the last term, the change of the
      penalty, vanishes for ``λ = 0``; ``θ_w`` are the penalized coefficients).

    The dispersion ``φ`` is 1 for logistic, poisson and multinomial and, for the gaussian family,
    the Pearson estimate ``φ = Σ w_i e_i² / df`` with ``df = n₊ − Σ_i leverage_i`` (``n₊`` rows
    of positive weight; ``df = n − P`` for an unpenalized, unweighted fit, as in statsmodels).
    Sample weights enter as statsmodels' ``var_weights``: row i counts ``w_i`` times in the
    likelihood and once in the residual degrees of freedom, and "removing row i" sets its weight
    to zero. So a row of integer weight c has the summed leverage of its c copies in the
    duplicated data, but its other diagnostics describe removing all c copies at once. The
    gaussian diagnostics do not change when all weights are scaled by a constant; with the
    fixed dispersion of the other families, scaling the weights by c scales the information
    (and so ``resid_studentized`` and ``dfbetas`` by √c, Cook's distance by c).

    With ``l2 = λ > 0`` every quantity uses the penalized ``H`` above (ridge leverage, ridge
    standard errors ``√(φ [(WH)⁻¹]_jj)``, ``df`` the effective residual degrees of freedom).
    ``resid_studentized`` then uses the plug-in variance ``(1 − h_ii)`` (exact only for
    ``λ = 0``), and the gaussian ``dfbeta`` is the exact change of the ridge solution.

    Multinomial null directions: the softmax Hessian is singular along ``N`` = every
    ``u ⊗ 1_K`` (a common shift of all classes' coefficients; with ``l2 > 0`` only the common
    intercept shift). Every vector used here (``J_i S_i``, ``J_i r_i``) is orthogonal to ``N``,
    so ``H⁻¹`` above is the pseudo-inverse ``H⁺``: it is computed exactly by factoring
    ``H + B`` with ``B = C ⊗ 1 1ᵀ/K`` (C diagonal positive, one entry per row of ``W̃`` involved,
    scaled like that row's curvature), which agrees with ``H⁺`` on ``N⊥`` (``B`` vanishes there);
    the standard errors are those of the minimum-norm parametrization, ``diag(H⁺)``.

    Parameters
    ----------
    p : fastcurv.GLM
        The problem (family, data, weights, penalty, intercept).
    theta : array_like (P,)
        The fitted parameters (the minimizer of ``p``'s objective), in fastcurv's layout
        ``[coef (d, K) C-order, intercept (K)]`` (the intercept last). A RuntimeWarning is
        raised if ``theta`` is more than 0.1 standard errors (along some coordinate) from the
        minimizer, as the formulas assume a minimizer.

    Returns
    -------
    GLMDiagnostics
        ``leverage (n,)``, ``cooks_distance (n,)``, ``dfbeta (n, P)``, ``dfbetas (n, P)``,
        ``resid_studentized`` ((n,) for one output, (n, K) otherwise), ``scale``, ``df_resid``;
        arrays in the dtype of ``X`` (computed in float64). Rows of zero weight get zeros.
        A row that alone determines some parameter (``h_ii = 1``; ``det(I − G_i) ≤ 1e-10``)
        gets its leverage and NaN for the leave-one-out quantities (Cook's distance, dfbeta,
        dfbetas, resid_studentized), which are undefined there.

    Raises
    ------
    TypeError
        If ``p`` is not a :class:`fastcurv.GLM`.
    ValueError
        If ``theta`` has the wrong shape or non-finite entries; if ``P > 20,000`` (the dense
        (P, P) factorization would need ``8 P²`` bytes and ``P³/3`` flops); if the information
        matrix is singular (collinear or all-zero columns without a penalty).

    Notes
    -----
    The factor ``R`` (``RᵀR = H``, a Cholesky factor of the information matrix) comes from the
    Gram matrix of square-root rows of ``H`` (``√(a_i ℓ''_i) x̃_i``; K rows per sample for
    K > 1; then the penalty rows), equilibrated to unit diagonal; if LAPACK estimates its
    condition number above 1e5 (where forming ``X̃ᵀ V X̃`` would cost accuracy, since its
    condition number is the square of the weighted design's), ``R`` comes instead from a
    blocked Householder QR of those rows, which never forms it. Then ``R⁻ᵀ J_i`` is solved for
    a block of rows at a time; no (n, n) matrix is ever formed.

    Cost: ``n K' P²`` flops for the Gram matrix (``K' = 1`` for one output, K otherwise;
    about 4x that for the QR), ``P³/3`` for the factor, ``2 n K P²`` for the triangular solves
    and ``P³/3`` for the standard errors. Memory: up to two (P, P) float64 arrays plus blocks
    of about 32 MB, plus the (n, P) outputs ``dfbeta`` and ``dfbetas``.

    Examples
    --------
    >>> import numpy as np, fastcurv as fc
    >>> from fastcurv.influence.diagnostics import glm_diagnostics
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3)); y = X @ [1.0, -2.0, 0.5] + rng.standard_normal(50)
    >>> p = fc.GLM(X, y, family="gaussian")
    >>> res = glm_diagnostics(p, fc.newton_cg(p, gtol=1e-12).x)
    >>> bool(np.isclose(res.leverage.sum(), p.n_params))
    True
    """
    if not isinstance(p, GLM):
        raise TypeError(
            f"glm_diagnostics needs a fastcurv.GLM, got {type(p).__name__}; for other models "
            "use the influence-function tools (fastcurv.Influence)"
        )
    P, K, d = p.n_params, p.n_outputs, p.n_features
    theta = p._check_theta(theta)
    if P > MAX_PARAMS:
        raise ValueError(
            f"glm_diagnostics factors the dense ({P}, {P}) information matrix, which needs "
            f"{8 * P * P / 1e9:.1f} GB and about {P**3 / 3e12:.0f}e12 flops; it is limited to "
            f"P <= {MAX_PARAMS} parameters. Use fastcurv.Influence with an iterative method, "
            "or diagnose a subset of the features"
        )
    st = p._state_at(theta)
    multinomial = p.family == "multinomial"
    fi = int(p.fit_intercept)
    n = p.n_samples
    a = p._a
    w = p._w
    W = float(w.sum())

    null_rows = _null_rows(p) if multinomial else np.zeros(0, dtype=np.int64)
    fac = _Factor(p, st, null_rows)
    inv_diag = fac.inv_diag()  # diag((H + B)⁻¹)
    if null_rows.size:
        Hv = inv_diag.reshape(d + fi, K)
        Hv[null_rows] -= 1.0 / (K * fac.rho[:, None])  # diag(B⁺) = 1 / (K ρ_j)
    k_ident = P - null_rows.size

    # ---------------------------------------------------------------- row blocks
    lev_k = np.empty((n, K))  # diag(G_i)
    var_k = np.empty((n, K))  # diag((I - G_i) S_i)
    quad_k = np.empty((n, K))  # w_i a_i u_ik (M_i u_i)_k
    undefined = np.zeros(n, dtype=bool)  # det(I - G_i) = 0: leave-one-out undefined
    dfbeta = np.empty((n, P), dtype=p.dtype)
    ridge = p.family == "gaussian" and p.l2 != 0.0
    if ridge:
        pen_k = np.zeros((n, K))  # change of the penalty W λ ‖W‖² when row i is removed
        theta_w = theta[: d * K].astype(np.float64).reshape(d, K)
    block = max(1, _BLOCK_ELEMENTS // (P * K))
    eyeK = np.eye(K)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        m = hi - lo
        Xb = _rows(p, lo, hi)  # (m, d + fi)
        if K == 1:
            E = Xb.T
        else:
            E = np.zeros((d + fi, K, m, K))
            for k in range(K):
                E[:, k, :, k] = Xb.T
            E = E.reshape(P, m * K)
        Z = fac.forward(E).reshape(P, m, K)  # R⁻ᵀ J_i e_k
        M = np.einsum("pik,pil->ikl", Z, Z)  # (m, K, K)
        S = _row_curvature(st.h[lo:hi], multinomial)
        ab = a[lo:hi]
        G = ab[:, None, None] * (S @ M)
        r = st.r[lo:hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            if K == 1:
                u = r / (1.0 - G[:, :, 0])
                undefined[lo:hi] = 1.0 - G[:, 0, 0] <= _UNDEFINED_TOL
            else:
                u = _solve_rows(eyeK - G, r)
                undefined[lo:hi] = np.linalg.det(eyeK - G) <= _UNDEFINED_TOL
            lev_k[lo:hi] = np.diagonal(G, axis1=1, axis2=2)
            var_k[lo:hi] = np.diagonal(S - G @ S, axis1=1, axis2=2)
            quad_k[lo:hi] = (w[lo:hi] * ab)[:, None] * u * np.einsum("ikl,il->ik", M, u)
            Y = np.einsum("pik,ik->pi", Z, u * ab[:, None])
        delta = -fac.backward(Y).T  # (m, P)
        dfbeta[lo:hi] = delta
        if ridge:  # Wλ (‖θ̂_w‖² − ‖θ̂_w − δ_w‖²) per output
            dw = delta[:, : d * K].reshape(m, d, K)
            pen_k[lo:hi] = W * p.l2 * np.einsum("idk,idk->ik", dw, 2.0 * theta_w - dw)

    # ---------------------------------------------------------------- dispersion
    e = -st.r  # y - μ
    n_pos = float(np.count_nonzero(w > 0))
    if multinomial:
        df = np.array([n_pos * (K - 1) - lev_k.sum()])
    else:
        df = n_pos - lev_k.sum(axis=0)  # (K,)
    if p.family == "gaussian":
        with np.errstate(divide="ignore", invalid="ignore"):
            phi = np.where(df > 0, (w[:, None] * e * e).sum(axis=0) / df, np.nan)
        if np.any(df <= 1):
            warnings.warn(
                f"glm_diagnostics: only {df.min():.3g} residual degrees of freedom (rows of "
                "positive weight minus the trace of the hat matrix); the gaussian scale and the "
                "quantities scaled by it are NaN or unreliable",
                RuntimeWarning, stacklevel=2)
    else:
        phi = np.ones(df.shape)
    phi_k = np.broadcast_to(phi, (K,))

    # ---------------------------------------------------------------- outputs
    sdiag = st.h * (1.0 - st.h) if multinomial else st.h  # diag(S_i)
    with np.errstate(divide="ignore", invalid="ignore"):
        stud = np.sqrt(w)[:, None] * e / np.sqrt(phi_k * var_k)
        stud = np.where((w[:, None] == 0) | ((sdiag == 0) & (e == 0)), 0.0, stud)
        cooks = (quad_k / phi_k).sum(axis=1) / k_ident
        se_unit = np.sqrt(inv_diag / W)  # standard errors for φ = 1
        if p.family == "gaussian":
            # leave-one-out residual variance per row and output: the exact residual sum of
            # squares of the leave-one-out fit (OLS identity, plus the change of the penalty)
            rss = df * phi - w[:, None] * e * e / (1.0 - lev_k)
            if ridge:
                rss = rss + pen_k
            s2 = rss / (df - 1.0)
            sigma = np.sqrt(np.where(w[:, None] > 0, s2, phi))
        else:
            sigma = np.broadcast_to(np.sqrt(phi_k), (n, K))
        col_k = np.arange(P) % K
        dfbetas = np.empty_like(dfbeta)
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            dfbetas[lo:hi] = dfbeta[lo:hi] / (sigma[lo:hi][:, col_k] * se_unit)

    if np.any(undefined):  # the row alone determines some parameter
        for arr in (stud, cooks, dfbeta, dfbetas):
            arr[undefined] = np.nan
    _check_stationary(p, theta, st, fac, inv_diag, W, phi_k, null_rows)

    dt = p.dtype
    single = K == 1 or multinomial
    return GLMDiagnostics(
        leverage=lev_k.sum(axis=1).astype(dt),
        cooks_distance=cooks.astype(dt),
        dfbeta=dfbeta,
        dfbetas=dfbetas,
        resid_studentized=(stud[:, 0] if K == 1 else stud).astype(dt),
        scale=float(phi[0]) if single else phi,
        df_resid=float(df[0]) if single else df,
    )


# -------------------------------------------------------------------- helpers
def _rows(p, lo, hi):
    """Augmented rows ``x̃_i = [x_i, 1]`` (no 1 without an intercept), dense float64."""
    Xb = p._design.dense_rows(lo, hi)
    if p.fit_intercept:
        Xb = np.hstack([Xb, np.ones((hi - lo, 1))])
    return Xb


def _row_curvature(h, multinomial):
    """Per-row K x K curvature ``S_i``: ``diag(ℓ'')``, or ``diag(p) − p pᵀ`` for the softmax."""
    m, K = h.shape
    if multinomial:
        S = -h[:, :, None] * h[:, None, :]
    else:
        S = np.zeros((m, K, K))
    idx = np.arange(K)
    S[:, idx, idx] += h
    return S


def _weighted_rows(p, st, lo, hi):
    """Rows ``b`` of a square root of the data part of ``H`` (``Σ b bᵀ = Σ a_i J_i S_i J_iᵀ``).

    Row i gives K rows ``√a_i x̃_i ⊗ R_i[:, j]`` with ``R_i R_iᵀ = S_i``: ``R_i = diag(√ℓ''_i)``
    (one row for one output), or ``R_i[:, j] = √p_j (e_j − p)`` for the softmax.
    Returns ((hi - lo) K', P) float64 (K' = 1 for one output, else K).
    """
    K = p.n_outputs
    Xb = _rows(p, lo, hi)
    sa = np.sqrt(p._a[lo:hi])
    h = st.h[lo:hi]
    m, q = Xb.shape
    if K == 1:
        return Xb * (sa * np.sqrt(h[:, 0]))[:, None]
    if p.family == "multinomial":
        sp_ = np.sqrt(h)
        root = -sp_[:, :, None] * h[:, None, :]  # root[i, j, k] = √p_j (δ_jk − p_k)
        idx = np.arange(K)
        root[:, idx, idx] += sp_
        out = (sa[:, None, None, None] * Xb[:, None, :, None]) * root[:, :, None, :]
    else:
        out = np.zeros((m, K, q, K))
        s = sa[:, None] * np.sqrt(h)
        for k in range(K):
            out[:, k, :, k] = Xb * s[:, k, None]
    return out.reshape(m * K, q * K)


def _null_rows(p):
    """Rows j of ``W̃`` whose class-shift ``e_j ⊗ 1_K`` is a null direction of the softmax H."""
    d, fi = p.n_features, int(p.fit_intercept)
    if p.l2 == 0.0:
        return np.arange(d + fi)
    return np.array([d]) if fi else np.zeros(0, dtype=np.int64)


class _Factor:
    r"""Upper-triangular ``R`` with ``RᵀR = H + B`` (``B`` the null-direction curvature).

    ``H + B`` is the Gram matrix of the stacked square-root rows ``[b_1; …; b_n; √λ e_j
    (penalized j); √(ρ_j/K) (e_j ⊗ 1_K) (null rows j)]``, ``ρ_j`` the trace of H's K x K
    diagonal block of row j (so the added curvature has the size of the curvature it stands in
    for). Two ways to the same factor:

    * fast: form the Gram matrix from row blocks (BLAS), equilibrate it to unit diagonal and
      take its Cholesky factor. Its accuracy goes with the *square* of the condition number
      of the weighted design, so it is used only when LAPACK's estimate of the reciprocal
      condition number of the equilibrated matrix is at least ``_GRAM_RCOND`` (relative
      errors then stay below about 1e-11);
    * accurate, otherwise: a blocked Householder QR (TSQR) of the stacked rows, whose accuracy
      goes with the condition number itself (on statsmodels' ``longley`` data the Cholesky
      route lost 5 more digits). It costs about 4x the Gram matrix.
    """

    def __init__(self, p, st, null_rows):
        P, K, d = p.n_params, p.n_outputs, p.n_features
        rows = max(P, _BLOCK_ELEMENTS // P)  # stacked rows per block: at least P, ~32 MB
        per = max(1, rows // K)
        H = np.zeros((P, P))
        for lo in range(0, p.n_samples, per):
            B = _weighted_rows(p, st, lo, min(p.n_samples, lo + per))
            H += B.T @ B
        extra = []
        if p.l2 != 0.0:
            extra.append(np.sqrt(p.l2) * np.eye(P)[: d * K])
        self.rho = np.zeros(0)
        if null_rows.size:
            blocks = np.diag(H).reshape(-1, K).sum(axis=1)[null_rows]
            self.rho = np.where(blocks > 0, blocks, 1.0)  # zero rows fail the pivot test below
            Bn = np.zeros((null_rows.size, P // K, K))
            Bn[np.arange(null_rows.size), null_rows, :] = np.sqrt(self.rho / K)[:, None]
            extra.append(Bn.reshape(null_rows.size, P))
        for Bx in extra:
            H += Bx.T @ Bx
        R = _gram_factor(H)
        del H
        if R is None:
            R = np.zeros((0, P))
            for lo in range(0, p.n_samples, per):
                R = _qr_r([R, _weighted_rows(p, st, lo, min(p.n_samples, lo + per))])
            if extra:
                R = _qr_r([R] + extra)
            if R.shape[0] < P:  # fewer stacked rows than parameters
                R = np.vstack([R, np.zeros((P - R.shape[0], P))])
        # pivot test, invariant to column scaling: |R_jj| / ‖column j of the stacked rows‖
        norms = np.sqrt(np.einsum("ij,ij->j", R, R))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(norms > 0, np.abs(np.diag(R)) / norms, 0.0)
        if not np.all(ratio > _PIVOT_TOL):
            j = int(np.argmin(ratio))
            why = ("it has no curvature: that column of X is zero on the rows with positive "
                   "weight and curvature" if norms[j] == 0 else
                   "it is (numerically) a combination of the others: collinear columns of X, "
                   "or fitted probabilities/means of exactly 0 or 1")
            raise ValueError(
                f"the information matrix X̃ᵀ diag(w ℓ'') X̃ is singular along "
                f"{_param_name(p, j)}; {why}. The parameters are not identified: drop redundant "
                "columns or set l2 > 0"
            )
        self.R = R

    def forward(self, E):
        """``R⁻ᵀ E`` (so that ``‖R⁻ᵀ x‖² = xᵀ H⁻¹ x``)."""
        return sla.solve_triangular(self.R, E, trans="T", check_finite=False)

    def backward(self, Y):
        """``R⁻¹ Y`` (so that ``backward(forward(E)) = H⁻¹ E``)."""
        return sla.solve_triangular(self.R, Y, check_finite=False)

    def inv_diag(self):
        """``diag(H⁻¹)``: squared column norms of ``R⁻ᵀ``, a block of columns at a time."""
        P = self.R.shape[0]
        out = np.empty(P)
        block = max(1, _BLOCK_ELEMENTS // P)
        for lo in range(0, P, block):
            hi = min(P, lo + block)
            E = np.zeros((P, hi - lo))
            E[np.arange(lo, hi), np.arange(hi - lo)] = 1.0
            Z = self.forward(E)
            out[lo:hi] = np.einsum("pi,pi->i", Z, Z)
        return out


def _gram_factor(H):
    """``R = U D⁻¹`` from the Cholesky factor ``U`` of the equilibrated ``D H D``
    (``D = diag(H)^-½``), or None if that is not accurate enough (see :class:`_Factor`)."""
    dg = np.diag(H)
    if not np.all(dg > 0):
        return None
    D = 1.0 / np.sqrt(dg)
    Hs = H * D[:, None]
    Hs *= D[None, :]
    anorm = float(np.abs(Hs).sum(axis=0).max())
    try:
        U = sla.cholesky(Hs, lower=False, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    rcond, info = sla.lapack.dpocon(U, anorm)
    if info != 0 or not rcond >= _GRAM_RCOND:
        return None
    U /= D[None, :]
    return U


def _qr_r(blocks):
    """The R factor of the stacked ``blocks`` (Householder QR, LAPACK ``dgeqrf`` in place on
    one Fortran-ordered copy: about twice as fast as ``numpy.linalg.qr(mode="r")``)."""
    rows = sum(b.shape[0] for b in blocks)
    A = np.empty((rows, blocks[0].shape[1]), order="F")
    lo = 0
    for b in blocks:
        A[lo:lo + b.shape[0]] = b
        lo += b.shape[0]
    qr, _, _, info = sla.lapack.dgeqrf(A, overwrite_a=1)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise RuntimeError(f"LAPACK dgeqrf failed with info={info}")
    return np.triu(qr[: min(rows, A.shape[1])])


def _solve_rows(A, b):
    """Solve ``A_i u_i = b_i`` for a stack (m, K, K); rows with a singular ``A_i`` give NaN."""
    try:
        return np.linalg.solve(A, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        out = np.full(b.shape, np.nan)
        for i in range(A.shape[0]):
            try:
                out[i] = np.linalg.solve(A[i], b[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _param_name(p, j):
    K, d = p.n_outputs, p.n_features
    row, k = divmod(int(j), K)
    name = "the intercept" if row == d else f"column {row} of X"
    return name + (f" (output {k})" if K > 1 else "")


def _check_stationary(p, theta, st, fac, inv_diag, W, phi_k, null_rows):
    """Warn if ``θ`` is far from the minimizer: the Newton step in standard-error units."""
    K = p.n_outputs
    Wmat, _ = p._split(theta)
    gW = st.gW + p.l2 * Wmat.astype(np.float64)
    g = np.concatenate([gW.reshape(-1), st.gb.reshape(-1)] if p.fit_intercept
                       else [gW.reshape(-1)])
    if null_rows.size:  # drop the (tiny, round-off) component along N
        gv = g.reshape(-1, K)
        gv[null_rows] -= gv[null_rows].mean(axis=1, keepdims=True)
    step = fac.backward(fac.forward(g[:, None]))[:, 0]
    se = np.sqrt(phi_k[np.arange(p.n_params) % K] * inv_diag / W)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(step) / se
    if not np.any(np.isfinite(ratio)):  # no usable scale (e.g. no residual df)
        return
    j = int(np.nanargmax(ratio))
    dist = ratio[j]
    if dist > _STATIONARY_TOL:
        warnings.warn(
            f"glm_diagnostics: theta is not a minimizer of the objective (a Newton step moves "
            f"{_param_name(p, j)} by {dist:.2g} standard errors); the diagnostics assume the "
            "fitted parameters. Fit with fastcurv.newton_cg(p, gtol=1e-10) first",
            RuntimeWarning, stacklevel=3)
