"""glm_diagnostics: leverage, Cook's distance, DFBETA(S), studentized residuals.

Oracles:

* statsmodels' ``GLMInfluence`` (logistic, poisson; binomial with trials) and ``OLSInfluence``
  (gaussian) on the datasets statsmodels ships (loaded offline), at statsmodels' own fitted
  parameters so that no optimizer noise enters. statsmodels' ``dfbeta``/``d_params`` is
  ``params_full − params_loo``, our sign too. ``sm.add_constant`` puts the constant first by
  default; fastcurv's intercept is last, so those comparisons permute parameters.
* A dense brute force written here from the formulas, independent of the library's code
  path: explicit per-row Jacobians ``kron(x̃_i, I_K)``, a pseudo-inverse of the dense Hessian,
  the leave-one-out Newton step with the downdated Hessian (no Sherman-Morrison), the
  residual covariance ``(I − 𝔾) Σ (I − 𝔾)ᵀ`` of the full nK x nK generalized hat matrix, and
  exact leave-one-out refits for the gaussian family (dfbeta and s₍₋ᵢ₎, ridge included).
  With λ > 0 the studentized residuals follow the stated plug-in formula (I − G_i) S_i.

Both routes to the information factor are exercised: longley, scotland and star98 take the
Householder QR (ill-conditioned), the others the Gram-matrix Cholesky factor;
test_row_blocks_and_factorizations_agree forces each route and tiny row blocks.

Tolerances: 1e-9 (normwise relative) against statsmodels (observed 1e-16 to 2e-12), except
1e-8 for ``dfbetas``: statsmodels' ``bse`` comes from the last IRLS weights, one iterate behind
the returned params (~1e-10 relative on spector); 1e-9 against the brute force
(pseudo-inverses of condition ~1e3-1e4); float32 against float64 at 2e-3.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from cases import assert_close
from statsmodels_data import arrays as _arrays
from statsmodels_data import dataset as _dataset
from statsmodels_data import first_to_last as _first_to_last

import fastcurv as fc
import fastcurv.influence.diagnostics as diag_module
from fastcurv.influence.diagnostics import MAX_PARAMS, glm_diagnostics

sm = pytest.importorskip("statsmodels.api")

FIELDS = ("leverage", "cooks_distance", "dfbeta", "dfbetas", "resid_studentized")


# ------------------------------------------------------------------------ data
def _random_problem(family, n=60, d=3, K=3, seed=0, weights=None):
    """Data with a moderate signal (finite MLE); weights None, "random" (some 0) or "int"."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.array([1.0, 3.0, 0.2])[:d]
    eta = X @ (rng.standard_normal((d, K)) * 0.5) + 0.3
    if family == "gaussian":
        y = eta[:, 0] + rng.standard_normal(n)
    elif family == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta[:, 0]))).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta[:, 0])).astype(float)
    else:
        P = np.exp(eta - eta.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        y = np.array([rng.choice(K, p=pi) for pi in P], dtype=float)
    w = None
    if weights == "random":
        w = rng.uniform(0.2, 2.0, n)
        w[[3, 17]] = 0.0
    elif weights == "int":
        w = rng.integers(0, 4, n).astype(float)
    return X, y, w


def _fit(p):
    res = fc.newton_cg(p, gtol=1e-13, max_iter=200)
    return res.x


# ------------------------------------------------------------------------ brute force
def _pinv(H, K):
    """Pseudo-inverse after scaling each row j of W̃ (its K parameters alike) to unit
    curvature: such a scaling commutes with the softmax null space, so this is exactly H⁺,
    without the spurious truncation of badly scaled columns."""
    dq = np.sqrt(np.diag(H).reshape(-1, K).mean(1))
    D = np.repeat(1.0 / dq, K)
    Hs = D[:, None] * H * D[None, :]
    return D[:, None] * np.linalg.pinv(Hs, rcond=1e-10, hermitian=True) * D[None, :], \
        np.linalg.matrix_rank(Hs, tol=1e-10 * np.abs(Hs).max(), hermitian=True)


def _brute(p, theta, exact_gaussian_loo=False):
    """Every diagnostic from dense matrices, following the textbook definitions."""
    X = p.X.toarray() if sp.issparse(p.X) else np.asarray(p.X)
    X = X.astype(np.float64)
    n, d = X.shape
    K, fam, l2 = p.n_outputs, p.family, p.l2
    Xt = np.hstack([X, np.ones((n, 1))]) if p.fit_intercept else X
    q = Xt.shape[1]
    P = q * K
    theta = np.asarray(theta, dtype=np.float64)
    eta = Xt @ theta.reshape(q, K)
    w = np.asarray(p.sample_weight, dtype=np.float64)
    W = w.sum()
    a = w / W
    y = np.asarray(p.y, dtype=np.float64).reshape(n, -1)
    if fam == "multinomial":
        Y = np.eye(K)[y[:, 0].astype(int)]
        mu = np.exp(eta - eta.max(1, keepdims=True))
        mu /= mu.sum(1, keepdims=True)
        S = [np.diag(m) - np.outer(m, m) for m in mu]
    else:
        Y = y
        mu = {"gaussian": eta, "logistic": 1 / (1 + np.exp(-eta)), "poisson": np.exp(eta)}[fam]
        V = {"gaussian": np.ones_like(mu), "logistic": mu * (1 - mu), "poisson": mu}[fam]
        S = [np.diag(v) for v in V]
    e = Y - mu
    J = [np.kron(Xt[i][:, None], np.eye(K)) for i in range(n)]  # (P, K)
    mask = np.r_[np.ones(d * K), np.zeros(P - d * K)]
    H = sum(a[i] * J[i] @ S[i] @ J[i].T for i in range(n)) + l2 * np.diag(mask)
    Hp, rank = _pinv(H, K)
    G = [a[i] * S[i] @ J[i].T @ Hp @ J[i] for i in range(n)]
    lev_k = np.array([np.diag(g) for g in G])
    # leave-one-out Newton step from theta with the downdated Hessian (W kept)
    dfbeta = np.empty((n, P))
    for i in range(n):
        Hi = H - a[i] * J[i] @ S[i] @ J[i].T
        dfbeta[i] = _pinv(Hi, K)[0] @ (a[i] * J[i] @ e[i])
    npos = np.count_nonzero(w > 0)
    if fam == "gaussian":
        df = npos - lev_k.sum(0)
        phi = (w[:, None] * e**2).sum(0) / df
    else:
        df = None
        phi = np.ones(K)
    col_k = np.arange(P) % K
    se_unit = np.sqrt(np.diag(Hp) / W)  # standard errors for φ = 1
    # Cook: dfbetaᵀ (information / φ) dfbeta / k, information = W H (φ per output)
    Ainf = W * H / np.sqrt(np.outer(phi[col_k], phi[col_k]))
    cooks = np.einsum("ij,jk,ik->i", dfbeta, Ainf, dfbeta) / rank
    # studentized: e over the sd of e from the plug-in covariance (I - G_i) S_i / w_i
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.array([np.diag((np.eye(K) - G[i]) @ S[i]) for i in range(n)])
        stud = np.where(w[:, None] > 0, np.sqrt(w)[:, None] * e / np.sqrt(phi * var), 0.0)
    sigma = np.broadcast_to(np.sqrt(phi), (n, K))
    if exact_gaussian_loo:  # exact refits: dfbeta and s_(i) of the leave-one-out fit
        pen = W * l2 * np.diag(mask)
        s_loo = np.empty((n, K))
        for i in range(n):
            wi = w.copy()
            wi[i] = 0.0
            A = (Xt * wi[:, None]).T @ Xt
            B = np.linalg.solve(np.kron(A, np.eye(K)) + pen, (Xt * wi[:, None]).T.dot(Y)
                                .reshape(-1))
            dfbeta[i] = theta - B if w[i] > 0 else 0.0
            ri = Y - Xt @ B.reshape(q, K)
            s_loo[i] = np.sqrt((wi[:, None] * ri**2).sum(0) / (df - 1))
        sigma = np.where(w[:, None] > 0, s_loo, np.sqrt(phi))
    dfbetas = dfbeta / (sigma[:, col_k] * se_unit)
    out = dict(leverage=lev_k.sum(1), cooks_distance=cooks, dfbeta=dfbeta, dfbetas=dfbetas,
               resid_studentized=stud[:, 0] if K == 1 else stud)
    extra = dict(J=J, S=S, a=a, w=w, Hp=Hp, e=e, rank=rank, phi=phi)
    return out, extra


def _compare(res, ref, rtol, fields=FIELDS):
    for f in fields:
        assert_close(getattr(res, f), ref[f], rtol, f)


# ------------------------------------------------------------------------ statsmodels
def _check_sm(res, infl, perm_first, rtol=1e-9, rtol_bse=1e-8):
    fix = _first_to_last if perm_first else (lambda a, axis=-1: np.asarray(a))
    assert_close(res.leverage, infl.hat_matrix_diag, rtol, "leverage")
    assert_close(res.cooks_distance, infl.cooks_distance[0], rtol, "cooks")
    assert_close(res.resid_studentized, infl.resid_studentized, rtol, "resid_studentized")
    dfb = infl.d_params if hasattr(infl, "d_params") else infl.dfbeta
    assert_close(res.dfbeta, fix(dfb, axis=1), rtol, "dfbeta")
    assert_close(res.dfbetas, fix(infl.dfbetas, axis=1), rtol_bse, "dfbetas")


def test_logistic_spector_matches_glminfluence():
    X, y = _arrays(_dataset("spector"))
    sres = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial()).fit(tol=1e-12)
    p = fc.GLM(X, y, family="logistic")
    res = glm_diagnostics(p, _first_to_last(sres.params))
    _check_sm(res, sres.get_influence(), perm_first=True)
    assert res.scale == 1.0
    np.testing.assert_allclose(res.df_resid, sres.df_resid, rtol=1e-12)


def test_poisson_cpunish_matches_glminfluence():
    X, y = _arrays(_dataset("cpunish"))
    X[:, 3] = np.log(X[:, 3])
    sres = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson()).fit(
        tol=1e-12)
    p = fc.GLM(X, y, family="poisson")
    _check_sm(glm_diagnostics(p, np.asarray(sres.params)), sres.get_influence(), False)


def test_poisson_randhie_matches_glminfluence():
    """20,190 rows: several row blocks of the kernels' partition."""
    X, y = _arrays(_dataset("randhie"))
    sres = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson()).fit(
        tol=1e-12)
    p = fc.GLM(X, y, family="poisson")
    _check_sm(glm_diagnostics(p, np.asarray(sres.params)), sres.get_influence(), False)


def test_binomial_star98_trials_as_weights():
    """Binomial counts = proportions with the number of trials as sample weights."""
    X, Y = _arrays(_dataset("star98"))
    trials = Y.sum(1)
    sres = sm.GLM(Y, sm.add_constant(X, prepend=False), family=sm.families.Binomial()).fit(
        tol=1e-13)
    p = fc.GLM(X, Y[:, 0] / trials, family="logistic", sample_weight=trials)
    res = glm_diagnostics(p, np.asarray(sres.params))
    _check_sm(res, sres.get_influence(), False)


@pytest.mark.parametrize("name", ["stackloss", "longley", "scotland"])
def test_gaussian_matches_olsinfluence(name):
    """OLSInfluence: dfbeta from exact refits, dfbetas with the leave-one-out s_(i).
    longley is the classic ill-conditioned design (cond ≈ 4e4 after column scaling)."""
    X, y = _arrays(_dataset(name))
    sres = sm.OLS(y, sm.add_constant(X)).fit()
    p = fc.GLM(X, y, family="gaussian")
    res = glm_diagnostics(p, _first_to_last(sres.params))
    ols = sres.get_influence()
    _check_sm(res, ols, perm_first=True, rtol=1e-9, rtol_bse=1e-9)
    np.testing.assert_allclose(res.scale, sres.scale, rtol=1e-10)
    np.testing.assert_allclose(res.df_resid, sres.df_resid, rtol=1e-10)
    # GLMInfluence(gaussian) agrees except that its dfbetas divide by s, not s_(i)
    gres = sm.GLM(y, sm.add_constant(X)).fit()
    ginf = gres.get_influence()
    assert_close(res.dfbeta, _first_to_last(ginf.d_params, axis=1), 1e-9, "glm d_params")
    s_loo = np.sqrt(ols.sigma2_not_obsi)
    assert_close(res.dfbetas * (s_loo / np.sqrt(res.scale))[:, None],
                 _first_to_last(ginf.dfbetas, axis=1), 1e-9, "glm dfbetas")


def test_gaussian_weights_match_var_weights_and_exact_refits():
    """Sample weights are statsmodels' var_weights; dfbeta and s_(i) are exact refits."""
    X, y = _arrays(_dataset("scotland"))
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    sres = sm.GLM(y, sm.add_constant(X, prepend=False), var_weights=w).fit()
    p = fc.GLM(X, y, family="gaussian", sample_weight=w)
    res = glm_diagnostics(p, np.asarray(sres.params))
    ginf = sres.get_influence()
    for f, s in [("leverage", ginf.hat_matrix_diag), ("cooks_distance", ginf.cooks_distance[0]),
                 ("resid_studentized", ginf.resid_studentized), ("dfbeta", ginf.d_params)]:
        assert_close(getattr(res, f), s, 1e-9, f)
    np.testing.assert_allclose(res.scale, sres.scale, rtol=1e-10)
    ref, _ = _brute(p, np.asarray(sres.params), exact_gaussian_loo=True)
    _compare(res, ref, 1e-9, ("dfbeta", "dfbetas"))
    # the gaussian diagnostics do not depend on the overall scale of the weights
    res2 = glm_diagnostics(fc.GLM(X, y, family="gaussian", sample_weight=w / 7.0),
                           np.asarray(sres.params))
    _compare(res2, res._asdict(), 1e-10)


def test_poisson_weights_match_var_weights():
    X, y = _arrays(_dataset("cpunish"))
    X[:, 3] = np.log(X[:, 3])
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(y))
    sres = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson(),
                  var_weights=w).fit(tol=1e-13)
    p = fc.GLM(X, y, family="poisson", sample_weight=w)
    _check_sm(glm_diagnostics(p, np.asarray(sres.params)), sres.get_influence(), False)


# ------------------------------------------------------------------------ brute force
@pytest.mark.parametrize("family", ["gaussian", "logistic", "poisson", "multinomial"])
@pytest.mark.parametrize("config", [(True, None, 0.0), (True, "random", 0.05),
                                    (False, "int", 0.02), (False, None, 0.0)])
def test_matches_brute_force(family, config):
    fit_intercept, weights, l2 = config
    X, y, w = _random_problem(family, seed=3, weights=weights)
    p = fc.GLM(X, y, family=family, l2=l2, fit_intercept=fit_intercept, sample_weight=w)
    theta = _fit(p)
    res = glm_diagnostics(p, theta)
    ref, ex = _brute(p, theta, exact_gaussian_loo=family == "gaussian")
    _compare(res, ref, 1e-9)
    assert res.dfbeta.shape == res.dfbetas.shape == (p.n_samples, p.n_params)
    assert res.resid_studentized.shape == ((60,) if family != "multinomial" else (60, 3))
    if w is not None:  # rows of zero weight have no influence
        zero = w == 0
        assert np.all(res.leverage[zero] == 0) and np.all(res.dfbeta[zero] == 0)
        assert np.all(res.cooks_distance[zero] == 0)
    if l2 == 0.0:  # trace of the hat matrix = number of identified parameters
        np.testing.assert_allclose(res.leverage.sum(), ex["rank"], rtol=1e-10)


def test_multinomial_unpenalized_residual_covariance():
    """Unpenalized, (I − G_i) S_i / w_i is the covariance of e_i from the full hat matrix."""
    X, y, _ = _random_problem("multinomial", n=50, seed=4)
    p = fc.GLM(X, y, family="multinomial")
    theta = _fit(p)
    res = glm_diagnostics(p, theta)
    _, ex = _brute(p, theta)
    n, K = 50, 3
    Jall = np.vstack([j.T for j in ex["J"]])  # (nK, P)
    Sblk = np.zeros((n * K, n * K))
    for i, s in enumerate(ex["S"]):
        Sblk[i * K:(i + 1) * K, i * K:(i + 1) * K] = s
    hat = Sblk @ Jall @ ex["Hp"] @ Jall.T * np.repeat(ex["a"], K)[None, :]  # ∂μ/∂y
    cov_y = Sblk / np.repeat(ex["w"], K)[:, None]
    I = np.eye(n * K)
    cov_e = (I - hat) @ cov_y @ (I - hat).T
    stud = ex["e"].reshape(-1) / np.sqrt(np.diag(cov_e))
    assert_close(res.resid_studentized.reshape(-1), stud, 1e-9, "stud")
    np.testing.assert_allclose(res.leverage, np.diag(hat).reshape(n, K).sum(1), atol=1e-12)
    np.testing.assert_allclose(np.trace(hat), (X.shape[1] + 1) * (K - 1), rtol=1e-10)


def test_gaussian_ridge_dfbeta_is_exact_leave_one_out():
    """Gaussian + ridge: removing row i (weight 0, W kept) changes θ by exactly dfbeta."""
    X, y, w = _random_problem("gaussian", n=40, seed=5, weights="random")
    p = fc.GLM(X, y, family="gaussian", l2=0.3, sample_weight=w)
    theta = _fit(p)
    res = glm_diagnostics(p, theta)
    W = w.sum()
    for i in [0, 5, 17, 39]:
        wi = w.copy()
        wi[i] = 0.0
        loo = fc.GLM(X, y, family="gaussian", l2=0.3 * W / wi.sum(), sample_weight=wi)
        np.testing.assert_allclose(theta - _fit(loo), res.dfbeta[i], atol=1e-9)


def test_logistic_dfbeta_sign_and_size_against_refits():
    """θ̂ − θ̂₍₋ᵢ₎ from actual refits agrees with the one-step dfbeta (to second order)."""
    X, y, _ = _random_problem("logistic", n=300, seed=6)
    p = fc.GLM(X, y, family="logistic")
    theta = _fit(p)
    res = glm_diagnostics(p, theta)
    rows = np.argsort(res.cooks_distance)[-3:]
    for i in rows:
        loo = p.subset(np.delete(np.arange(300), i))
        actual = theta - _fit(loo)
        assert np.linalg.norm(actual - res.dfbeta[i]) <= 0.05 * np.linalg.norm(actual)
    # DESIGN.md's first-order change a_i H⁻¹ g_i has the opposite sign (and no 1/(1-h))
    g = p.per_sample_grads(theta, rows)
    first = (np.linalg.solve(p.hessian(theta), g.T) / 300).T
    np.testing.assert_allclose(-first / (1 - res.leverage[rows, None]), res.dfbeta[rows],
                               rtol=1e-8, atol=1e-14)


def test_two_class_multinomial_equals_logistic():
    """A 2-class softmax with θ_k = ±β/2 is the logistic model: same leverage, Cook's distance,
    studentized residuals, and dfbeta(s) split as ∓(the logistic ones)/2 (minimum-norm
    parametrization, standard errors halved)."""
    X, y = _arrays(_dataset("spector"))
    sres = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Binomial()).fit(
        tol=1e-13)
    beta = np.asarray(sres.params)
    lg = glm_diagnostics(fc.GLM(X, y, family="logistic"), beta)
    theta = np.stack([-beta / 2, beta / 2], axis=1).reshape(-1)
    mn = glm_diagnostics(fc.GLM(X, y, family="multinomial"), theta)
    for f in ("leverage", "cooks_distance"):
        assert_close(getattr(mn, f), getattr(lg, f), 1e-10, f)
    assert_close(mn.resid_studentized, np.stack([-lg.resid_studentized,
                                                 lg.resid_studentized], 1), 1e-10, "stud")
    assert_close(mn.dfbeta, np.stack([-lg.dfbeta / 2, lg.dfbeta / 2], 2).reshape(32, -1),
                 1e-10, "dfbeta")
    assert_close(mn.dfbetas, np.stack([-lg.dfbetas, lg.dfbetas], 2).reshape(32, -1), 1e-10,
                 "dfbetas")


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_multi_output_equals_separate_fits(family):
    """K independent outputs: per-output residuals, leverage summed over outputs."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((45, 3))
    eta = X @ rng.standard_normal((3, 2)) * 0.4
    Y = eta + rng.standard_normal(eta.shape) if family == "gaussian" \
        else rng.poisson(np.exp(eta)).astype(float)
    p = fc.GLM(X, Y, family=family, l2=0.01)
    theta = _fit(p)
    res = glm_diagnostics(p, theta)
    Th = theta.reshape(4, 2)
    singles = [glm_diagnostics(fc.GLM(X, Y[:, k], family=family, l2=0.01), Th[:, k])
               for k in range(2)]
    assert_close(res.leverage, singles[0].leverage + singles[1].leverage, 1e-10, "leverage")
    for k in range(2):
        assert_close(res.resid_studentized[:, k], singles[k].resid_studentized, 1e-10, "stud")
        assert_close(res.dfbeta[:, k::2], singles[k].dfbeta, 1e-10, "dfbeta")
        assert_close(res.dfbetas[:, k::2], singles[k].dfbetas, 1e-10, "dfbetas")
    if family == "gaussian":
        np.testing.assert_allclose(res.scale, [s.scale for s in singles], rtol=1e-10)


@pytest.mark.parametrize("family,fit_intercept,l2", [("logistic", True, 0.0),
                                                     ("gaussian", False, 0.1),
                                                     ("multinomial", True, 0.0),
                                                     ("multinomial", True, 0.05)])
def test_row_blocks_and_factorizations_agree(family, fit_intercept, l2, monkeypatch):
    """Tiny row blocks (many blocks in every loop) and both routes to the factor (Cholesky of
    the Gram matrix, Householder QR of its square-root rows) give the same numbers."""
    X, y, w = _random_problem(family, n=50, seed=13, weights="random")
    p = fc.GLM(X, y, family=family, l2=l2, fit_intercept=fit_intercept, sample_weight=w)
    theta = _fit(p)
    base = glm_diagnostics(p, theta)._asdict()
    monkeypatch.setattr(diag_module, "_BLOCK_ELEMENTS", 40)
    for rcond in (0.0, 2.0):  # always the Gram matrix / always the QR
        monkeypatch.setattr(diag_module, "_GRAM_RCOND", rcond)
        _compare(glm_diagnostics(p, theta), base, 1e-10)


# ------------------------------------------------------------------------ storage, dtype, weights
@pytest.mark.parametrize("family", ["logistic", "multinomial"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_csr_equals_dense(family, fit_intercept):
    X, y, w = _random_problem(family, n=50, seed=8, weights="random")
    X[np.abs(X) < 0.5] = 0.0
    pd_ = fc.GLM(X, y, family=family, l2=0.1, fit_intercept=fit_intercept, sample_weight=w)
    ps = fc.GLM(sp.csr_matrix(X), y, family=family, l2=0.1, fit_intercept=fit_intercept,
                sample_weight=w)
    theta = _fit(pd_)
    a, b = glm_diagnostics(pd_, theta), glm_diagnostics(ps, theta)
    _compare(b, a._asdict(), 1e-12)


@pytest.mark.parametrize("family", ["gaussian", "poisson", "multinomial"])
def test_float32_close_to_float64(family):
    X, y, w = _random_problem(family, n=50, seed=9, weights="random")
    p64 = fc.GLM(X, y, family=family, l2=0.05, sample_weight=w)
    p32 = fc.GLM(X.astype(np.float32), y, family=family, l2=0.05, sample_weight=w)
    theta = _fit(p64)
    r64, r32 = glm_diagnostics(p64, theta), glm_diagnostics(p32, theta.astype(np.float32))
    for f in FIELDS:
        assert getattr(r32, f).dtype == np.float32
        assert_close(getattr(r32, f), getattr(r64, f), 2e-3, f)
    # F-ordered, read-only data give the same numbers
    Xf = np.asfortranarray(X)
    Xf.setflags(write=False)
    rf = glm_diagnostics(fc.GLM(Xf, y, family=family, l2=0.05, sample_weight=w), theta)
    _compare(rf, r64._asdict(), 1e-12)


@pytest.mark.parametrize("family,l2", [("logistic", 0.0), ("poisson", 0.1),
                                       ("multinomial", 0.05)])
def test_integer_weights_leverage_equals_duplicated_rows(family, l2):
    """A row of integer weight c carries the leverage of its c copies (the hat matrix of the
    duplicated data, summed over the copies); the objective and so θ̂ are identical."""
    X, y, w = _random_problem(family, n=40, seed=10, weights="int")
    p = fc.GLM(X, y, family=family, l2=l2, sample_weight=w)
    rep = np.repeat(np.arange(40), w.astype(int))
    pdup = fc.GLM(X[rep], y[rep], family=family, l2=l2)
    theta = _fit(p)
    lev = glm_diagnostics(p, theta).leverage
    lev_dup = glm_diagnostics(pdup, theta).leverage
    np.testing.assert_allclose(lev, np.bincount(rep, lev_dup, minlength=40), atol=1e-12)
    if l2 == 0.0:
        np.testing.assert_allclose(lev.sum(), p.n_params, rtol=1e-10)


def test_leverage_one_row_gives_inf_not_error():
    """A row that alone determines a parameter has h_ii = 1: inf/NaN as in statsmodels."""
    X, y, _ = _random_problem("gaussian", n=30, seed=11)
    X = np.hstack([X, np.zeros((30, 1))])
    X[4, -1] = 1.0  # a dummy of row 4
    p = fc.GLM(X, y, family="gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = glm_diagnostics(p, _fit(p))
    np.testing.assert_allclose(res.leverage[4], 1.0, atol=1e-12)
    for f in ("cooks_distance", "dfbeta", "dfbetas", "resid_studentized"):
        v = getattr(res, f)
        assert np.all(np.isnan(v[4])) and np.all(np.isfinite(np.delete(v, 4, axis=0))), f


# ------------------------------------------------------------------------ errors
def test_bad_inputs():
    X, y, _ = _random_problem("logistic", n=30, seed=12)
    p = fc.GLM(X, y, family="logistic")
    theta = _fit(p)
    with pytest.raises(ValueError, match="theta must have shape"):
        glm_diagnostics(p, theta[:-1])
    bad = theta.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        glm_diagnostics(p, bad)
    with pytest.raises(TypeError, match="fastcurv.GLM"):
        glm_diagnostics("not a problem", theta)
    mlp = fc.MLP(X, y, sizes=(3, 2, 1), loss="sigmoid_cross_entropy")
    with pytest.raises(TypeError, match="fastcurv.GLM"):
        glm_diagnostics(mlp, mlp.init(seed=0))
    # collinear columns and an all-zero column are not identified without a penalty
    pc = fc.GLM(np.hstack([X, X[:, :1] * 2.0]), y, family="logistic")
    with pytest.raises(ValueError, match="singular along column 3 of X.*l2 > 0"):
        glm_diagnostics(pc, np.r_[theta[:3], 0.0, theta[3]])
    pz = fc.GLM(np.hstack([X, np.zeros((30, 1))]), y, family="logistic")
    with pytest.raises(ValueError, match="no curvature"):
        glm_diagnostics(pz, np.r_[theta[:3], 0.0, theta[3]])
    # ... and are fine with one
    pr = fc.GLM(np.hstack([X, X[:, :1] * 2.0]), y, family="logistic", l2=0.1)
    assert np.all(np.isfinite(glm_diagnostics(pr, _fit(pr)).leverage))
    # theta far from the minimizer
    with pytest.warns(RuntimeWarning, match="not a minimizer"):
        glm_diagnostics(p, theta + 0.5)


def test_gaussian_without_residual_degrees_of_freedom_warns():
    X, y, _ = _random_problem("gaussian", n=5, seed=14)
    p = fc.GLM(X, y, family="gaussian")  # P = 4: one residual degree of freedom
    with pytest.warns(RuntimeWarning, match="residual degrees of freedom"):
        res = glm_diagnostics(p, _fit(p))
    assert np.all(np.isfinite(res.leverage)) and np.isfinite(res.scale)


def test_too_many_parameters():
    d = MAX_PARAMS
    p = fc.GLM(sp.csr_matrix((3, d)), np.array([0.0, 1.0, 0.0]), family="logistic")
    with pytest.raises(ValueError, match=r"P <= 20000"):
        glm_diagnostics(p, np.zeros(d + 1))
