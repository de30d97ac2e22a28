"""Leave-one-out refits: the actual effect of removing a training point, to check influence."""

import warnings
from typing import NamedTuple

import numpy as np

from .. import _validation as val
from ..newton import newton_cg
from ..problems.glm import GLM


class LooResult(NamedTuple):
    """``rows`` (r,) the removed training rows; ``actual`` and ``predicted`` (m_test, r) the
    change of each test point's loss when the row is removed (refit minus fit, and
    ``(w_i / W) · score``); ``params_actual`` (r, P) the refit parameters minus ``θ``;
    ``n_iter`` (r,) Newton iterations of each refit; ``pearson`` the correlation of
    ``actual`` and ``predicted`` over all entries."""

    rows: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    params_actual: np.ndarray
    n_iter: np.ndarray
    pearson: float


def test_losses(test_p, theta):
    """Per-point losses ``ℓ(y_t, f(x_t; θ))`` of a test problem (no weight, no penalty)."""
    out = np.empty(test_p.n_samples)
    y = test_p._y2[:, 0] if test_p._y2.shape[1] == 1 else test_p._y2
    for t in range(test_p.n_samples):
        q = _with(test_p, test_p.X[t:t + 1], y[t:t + 1], None, 0.0)
        out[t] = q.value(theta)
    return out


def _with(p, X, y, w, l2):
    """The same model on other data with the penalty ``l2``."""
    old = p.l2
    try:
        p.l2 = l2
        return p.with_data(X, y, sample_weight=w)
    finally:
        p.l2 = old


def _drop_one(p, i):
    """The problem with row ``i``'s weight set to 0 and ``W`` kept.

    Minimizing ``(1/W) Σ_{j≠i} w_j ℓ_j + (λ/2)‖coef‖²`` (``W = Σ_j w_j``) is minimizing the
    fastcurv objective of the weights ``w'`` (``w'_i = 0``, normalized by ``W' = W − w_i``)
    with ``λ' = λ W / W'``: the two differ by the factor ``W / W'``."""
    w = np.array(p._w, dtype=np.float64)
    W = w.sum()
    Wp = W - w[i]
    if not Wp > 0:
        raise ValueError(f"row {i} carries all the weight: it cannot be left out")
    w[i] = 0.0
    X = p.X
    y = p._y2[:, 0] if p._y2.shape[1] == 1 else p._y2
    return _with(p, X, y, w, p.l2 * W / Wp)


#: warn when the Newton step from theta is this large against the median predicted change
_STATIONARY_TOL = 0.1


def _check_minimizer(p, theta, influence, idx):
    """Warn if ``θ`` is not a minimizer: every refit then also moves by the Newton step
    ``(H + δI)⁻¹ ∇F(θ)`` of ``θ`` itself, which swamps the effects of single rows once it is
    a tenth of their median size (a θ with gradient norm 0.13 took the correlation of
    actual and predicted changes from 0.9998 to 0.14)."""
    if idx.size == 0:
        return
    g = np.asarray(p.grad(theta), dtype=np.float64)
    step = float(np.linalg.norm(influence.solve(g)))
    typical = float(np.median(np.linalg.norm(influence.params_change(idx), axis=1)))
    if step > _STATIONARY_TOL * typical:
        warnings.warn(
            f"loo_refit: theta is not a minimizer of the objective (its Newton step has size "
            f"{step:.2g}, the median predicted change of a refit {typical:.2g}): every refit "
            "also converges from theta, so actual and predicted changes will disagree. Fit "
            "with fastcurv.newton_cg(p, gtol=1e-10) first", RuntimeWarning, stacklevel=3)


def loo_refit(p, theta, rows, test_p, influence=None, *, gtol=None, max_iter=200,
              method=None):
    """Refit with each training row in ``rows`` removed and compare with the prediction.

    For each row ``i``: the objective with ``w_i = 0`` and ``W`` kept (DESIGN.md) is minimized
    by Newton-CG warm-started at ``θ`` to ``gtol`` (default 1e-10 in float64, 1e-5 in
    float32) with ``method`` (:func:`fastcurv.newton_cg`'s; default "line-search" for a GLM,
    whose objective is convex, and "trust-region" for other models: a leave-one-out MLP
    objective can be indefinite at ``θ``, and line-search Newton-CG then crawled, 1,323
    iterations against 22); ``actual`` is the change of every test loss, ``predicted`` is
    ``(w_i / W) · score(t, i)`` from ``influence`` (default: ``Influence(p, θ, "direct")`` for
    up to 20,000 parameters, else ``"cg"``).

    Parameters
    ----------
    p : fastcurv.GLM or fastcurv.MLP, fitted at ``theta``
    theta : (P,) fitted parameters
    rows : training rows to remove one at a time
    test_p : test problem of the same model (``p.with_data(X_test, y_test)``)
    influence : fastcurv.Influence, optional
    gtol, max_iter : refit tolerance (max-norm of the gradient) and Newton iterations
    method : "line-search" or "trust-region", optional

    Returns
    -------
    LooResult
    """
    from .influence import Influence, _weights

    if hasattr(p, "chunk_starts"):
        raise TypeError("loo_refit refits in this process and needs the training rows here; "
                        "for a DaskGLM, validate on an in-memory sample: "
                        "p.subset(rows) gives one")
    theta = val.check_problem(p)._check_theta(theta).copy()
    idx = val.check_rows(rows, p.n_samples)
    if gtol is None:
        gtol = 1e-10 if p.dtype == np.float64 else 1e-5
    if method is None:
        method = "line-search" if isinstance(p, GLM) else "trust-region"
    elif method not in ("line-search", "trust-region"):
        raise ValueError(f"method must be 'line-search' or 'trust-region', got {method!r}")
    if influence is None:
        influence = Influence(p, theta, method="direct" if p.n_params <= 20_000 else "cg")
    elif not isinstance(influence, Influence):
        raise TypeError(f"influence must be a fastcurv.Influence, got "
                        f"{type(influence).__name__}")
    elif influence.p is not p or not np.array_equal(influence.theta, theta):
        raise ValueError("influence was built for another problem or another theta: build "
                         "it as fastcurv.Influence(p, theta, ...) with this p and theta")
    influence._check_test(test_p)
    base = test_losses(test_p, theta)
    scores = influence.scores(test_p, rows=idx)
    c = _weights(p, idx)
    predicted = scores * c[None, :]
    _check_minimizer(p, theta, influence, idx)
    actual = np.empty_like(predicted)
    dparams = np.empty((idx.size, p.n_params))
    iters = np.empty(idx.size, dtype=np.int64)
    for j, i in enumerate(idx):
        q = _drop_one(p, int(i))
        res = newton_cg(q, theta, gtol=gtol, max_iter=max_iter, method=method)
        if not res.success:
            raise RuntimeError(f"the refit without row {i} did not converge: {res.message}")
        actual[:, j] = test_losses(test_p, res.x) - base
        dparams[j] = res.x.astype(np.float64) - theta
        iters[j] = res.n_iter
    if idx.size and not np.any(iters) and np.any(c > 0):
        # every leave-one-out problem already met gtol at theta: "actual" is all zeros
        warnings.warn(
            f"loo_refit: no refit moved from theta: every leave-one-out problem's max|grad| "
            f"at theta is at most gtol={gtol:g}, so the actual changes are all 0; use a "
            "smaller gtol (the default is 1e-10 in float64, 1e-5 in float32)",
            RuntimeWarning, stacklevel=2)
    a, b = actual.ravel(), predicted.ravel()
    r = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else np.nan
    return LooResult(idx, actual, predicted, dparams, iters, r)
