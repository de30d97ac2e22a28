"""statsmodels as an established oracle, on the datasets it ships (loaded offline).

At statsmodels' fitted, unpenalized maximum-likelihood parameters with unit weights, the
fastcurv Hessian H is that of the MEAN loss, so the observed information is n·H and, for the
binomial and Poisson families (dispersion 1), ``cov = inv(n H)`` and ``bse = sqrt(diag(cov))``.
With frequency weights the information is W·H with W = Σ w_i. statsmodels orders parameters as
its design matrix does (``add_constant`` puts the constant first by default); fastcurv's
intercept is last, so the comparisons permute explicitly.

Tolerances: the Hessian against statsmodels' analytic ``model.hessian(params)`` to 1e-12
(normwise); standard errors from the IRLS fit to 1e-8 relative (statsmodels takes its
covariance from the last IRLS weights, one iterate behind the returned params; at tol=1e-12
that lag is ~1e-10 on spector); log-likelihoods to 1e-12.
"""

import numpy as np
import pytest
from cases import assert_close
from scipy.special import gammaln
from statsmodels_data import arrays as _arrays
from statsmodels_data import dataset as _dataset
from statsmodels_data import first_to_last as _first_to_last

import fastcurv as fc

sm = pytest.importorskip("statsmodels.api")


def _grad_scale(X, y, mu):
    """Per-coordinate scale of a mean-loss gradient: mean |x̃_j| (|y| + |μ|)."""
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    return np.mean(np.abs(Xt) * (np.abs(y) + np.abs(mu))[:, None], axis=0)


def test_logit_spector_standard_errors():
    ds = _dataset("spector")
    X, y = _arrays(ds)
    n = len(y)
    res = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial()).fit(tol=1e-12)
    theta = _first_to_last(res.params)
    p = fc.GLM(X, y, family="logistic")
    H = p.hessian(theta)
    bse = np.sqrt(np.diag(np.linalg.inv(n * H)))
    np.testing.assert_allclose(bse, _first_to_last(res.bse), rtol=1e-8)
    # the observed information itself, from statsmodels' analytic Hessian
    perm = np.r_[1:X.shape[1] + 1, 0]
    Hs = -res.model.hessian(np.asarray(res.params))[np.ix_(perm, perm)]
    assert_close(n * H, Hs, 1e-12, "n H vs statsmodels hessian")
    # the objective is the mean negative log-likelihood, stationary at the MLE
    np.testing.assert_allclose(n * p.value(theta), -res.llf, rtol=1e-12)
    mu = res.fittedvalues
    assert np.all(np.abs(p.grad(theta)) <= 1e-8 * _grad_scale(X, y, mu))
    # and the discrete-choice Logit agrees as well
    logit = sm.Logit(y, sm.add_constant(X)).fit(method="newton", tol=1e-12, disp=0)
    np.testing.assert_allclose(bse, _first_to_last(logit.bse), rtol=1e-8)


def _cpunish():
    ds = _dataset("cpunish")
    X, y = _arrays(ds)
    X[:, 3] = np.log(X[:, 3])  # as in statsmodels' own example
    return X, y


def test_poisson_cpunish_standard_errors():
    X, y = _cpunish()
    n = len(y)
    # constant last here (prepend=False): the same order as fastcurv, no permutation
    res = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson()).fit(
        tol=1e-12)
    theta = np.asarray(res.params)
    p = fc.GLM(X, y, family="poisson")
    H = p.hessian(theta)
    bse = np.sqrt(np.diag(np.linalg.inv(n * H)))
    np.testing.assert_allclose(bse, np.asarray(res.bse), rtol=1e-8)
    assert_close(n * H, -res.model.hessian(theta), 1e-12, "n H vs statsmodels hessian")
    # F drops log(y!) from the Poisson log-likelihood
    np.testing.assert_allclose(n * p.value(theta) + gammaln(y + 1).sum(), -res.llf, rtol=1e-12)
    assert np.all(np.abs(p.grad(theta)) <= 1e-8 * _grad_scale(X, y, res.fittedvalues))


def test_poisson_randhie_standard_errors():
    """A larger dataset (20,190 rows: a multi-chunk partition)."""
    ds = _dataset("randhie")
    X, y = _arrays(ds)
    n = len(y)
    res = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson()).fit(
        tol=1e-12)
    theta = np.asarray(res.params)
    p = fc.GLM(X, y, family="poisson")
    bse = np.sqrt(np.diag(np.linalg.inv(n * p.hessian(theta))))
    np.testing.assert_allclose(bse, np.asarray(res.bse), rtol=1e-8)
    # the diagonal and the products agree with statsmodels' Hessian too
    Hs = -res.model.hessian(theta) / n
    assert_close(p.hessian_diag(theta), np.diag(Hs), 1e-12, "hessian_diag vs statsmodels")
    v = np.linspace(-1.0, 1.0, p.n_params)
    assert_close(p.hvp(theta, v), Hs @ v, 1e-12, "hvp vs statsmodels")


def test_poisson_frequency_weights_standard_errors():
    """Integer sample weights are frequency weights: cov = inv(W H), W = Σ w_i."""
    X, y = _cpunish()
    fw = np.random.default_rng(0).integers(1, 4, len(y)).astype(np.float64)
    res = sm.GLM(y, sm.add_constant(X, prepend=False), family=sm.families.Poisson(),
                 freq_weights=fw).fit(tol=1e-12)
    theta = np.asarray(res.params)
    p = fc.GLM(X, y, family="poisson", sample_weight=fw)
    bse = np.sqrt(np.diag(np.linalg.inv(fw.sum() * p.hessian(theta))))
    np.testing.assert_allclose(bse, np.asarray(res.bse), rtol=1e-8)


def test_ols_stackloss_standard_errors():
    """Gaussian: bse = sqrt(σ̂² diag(inv(n H))) with σ̂² = SSR/(n - P) = 2 n F/(n - P)."""
    ds = _dataset("stackloss")
    X, y = _arrays(ds)
    n = len(y)
    res = sm.OLS(y, sm.add_constant(X)).fit()
    theta = _first_to_last(res.params)
    p = fc.GLM(X, y, family="gaussian")
    scale = 2 * n * p.value(theta) / (n - p.n_params)
    np.testing.assert_allclose(scale, res.scale, rtol=1e-12)
    bse = np.sqrt(scale * np.diag(np.linalg.inv(n * p.hessian(theta))))
    np.testing.assert_allclose(bse, _first_to_last(res.bse), rtol=1e-10)


def test_mnlogit_anes96_standard_errors():
    """statsmodels' MNLogit fixes class 0's parameters at zero. At its MLE, the fastcurv model
    with column 0 of W̃ set to zero is stationary, and the block of n H over classes 1..K-1 is
    MNLogit's observed information."""
    ds = _dataset("anes96")
    X, y = _arrays(ds)
    y = y.astype(np.int64)
    n, d = X.shape
    K = int(y.max()) + 1
    res = sm.MNLogit(y, sm.add_constant(X, prepend=False)).fit(
        method="newton", tol=1e-12, maxiter=100, disp=0)
    B = np.asarray(res.params)  # (d + 1, K - 1), constant last
    Wt = np.zeros((d + 1, K))
    Wt[:, 1:] = B
    theta = Wt.reshape(-1)
    p = fc.GLM(X, y, family="multinomial")
    assert p.n_outputs == K
    g = p.grad(theta)
    assert np.abs(g).max() <= 1e-10 * np.abs(X).mean()
    idx = np.array([[j * K + k for k in range(1, K)] for j in range(d + 1)])  # (d + 1, K - 1)
    H = p.hessian(theta)
    sub = idx.reshape(-1)
    bse = np.sqrt(np.diag(np.linalg.inv(n * H[np.ix_(sub, sub)]))).reshape(d + 1, K - 1)
    np.testing.assert_allclose(bse, np.asarray(res.bse), rtol=1e-8)
    # statsmodels' parameter vector is class-major (params.ravel(order="F"))
    subF = idx.reshape(-1, order="F")
    Hs = -res.model.hessian(B.reshape(-1, order="F"))
    assert_close(n * H[np.ix_(subF, subF)], Hs, 1e-12, "n H block vs MNLogit hessian")
