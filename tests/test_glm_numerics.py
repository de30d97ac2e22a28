"""Numerical behaviour: float32 vs float64, stability at extreme linear predictors,
bitwise determinism across thread counts and repeated calls.
"""

import dataclasses
import math
from decimal import Decimal

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from cases import CASES, assert_close
from fastcurv.kernels import reduce
from reference import hp_logistic, hp_poisson, hp_value_grad

import fastcurv as fc

EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------- float32
@pytest.fixture(params=CASES, ids=lambda c: c.name + "-f32")
def case32(request):
    """Float32 twin of each catalogue case, with n = 301 (more than one 256-row block of the
    float32 partial sums)."""
    return dataclasses.replace(request.param, n=301, dtype=np.float32)


def test_float32_matches_float64_reference(case32):
    """float32 data and θ give float32 results within 50 float32 eps (normwise) of the float64
    reference on the same (float32-representable) numbers.

    Budget: d-term float32 dot products for η, float32 partial sums over blocks of rows before
    float64 accumulation, and the final rounding to float32; the worst case observed over the
    catalogue is ~4 eps, and any float32 error growth with n would exceed 50 eps quickly.
    """
    case = case32
    p, ref = case.glm(), case.ref()
    theta, v, V = case.theta(), case.vectors(), case.vectors(m=2)
    assert p.dtype == np.dtype(np.float32)
    tol = 50 * EPS32
    val = p.value(theta)
    assert isinstance(val, float)
    np.testing.assert_allclose(val, ref.value(theta), rtol=tol)
    H = ref.hessian(theta)
    out = {
        "grad": (p.grad(theta), ref.grad(theta)),
        "hvp": (p.hvp(theta, v), H @ v),
        "block hvp": (p.hvp(theta, V), H @ V),
        "fisher_vp": (p.fisher_vp(theta, v), ref.fisher(theta) @ v),
        "hessian_diag": (p.hessian_diag(theta), np.diag(H)),
        "hessian": (p.hessian(theta), H),
        "per_sample_grads": (p.per_sample_grads(theta), ref.per_sample_grads(theta)),
        "jvp": (p.jvp(theta, v), ref.jacobian_rows() @ v),
    }
    for key, (got, want) in out.items():
        assert got.dtype == np.float32, f"{key} dtype {got.dtype}"
        assert_close(got, want, tol, f"float32 {key}")


# ---------------------------------------------------------------------- extreme η
def _hp_check(p, family, Xt, y, theta, w, rtol):
    """Value and gradient of ``p`` at θ against the decimal (60-digit) reference."""
    K = p.n_outputs
    value, g = hp_value_grad(family, Xt, y, theta.reshape(Xt.shape[1], K).astype(np.float64), w)
    got_v, got_g = p.value_and_grad(theta)
    assert np.isfinite(got_v) and np.all(np.isfinite(got_g))
    np.testing.assert_allclose(got_v, value, rtol=rtol)
    assert_close(got_g, g, rtol, f"{family} grad at extreme η")


# rows with coordinates in {±1, ±1/2, ±1/20}: every η = x θ below is exact in float32/64
_X1 = np.array([[1.0], [-1.0], [0.5], [-0.5], [1.0], [-1.0], [0.05], [-0.05]])
_Y1 = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.25])


@pytest.mark.parametrize("dtype,big", [(np.float64, 700.0), (np.float32, 80.0)],
                         ids=["f64-700", "f32-80"])
def test_logistic_extreme_eta(dtype, big):
    """η in {±big, ±big/2, ±big/20}, correctly and wrongly classified: finite and accurate."""
    X = _X1.astype(dtype)
    w = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0])
    p = fc.GLM(X, _Y1, family="logistic", sample_weight=w)
    theta = np.array([big, 0.0], dtype=dtype)
    Xt = np.hstack([_X1, np.ones((8, 1))])
    rtol = 1e-12 if dtype == np.float64 else 50 * EPS32
    _hp_check(p, "logistic", Xt, _Y1, theta, w, rtol)
    # curvature: tiny but finite, non-negative, accurate
    h = np.array([hp_logistic(big * x, yy)[2] for x, yy in zip(_X1[:, 0], _Y1, strict=True)])
    a = w / w.sum()
    expected = np.array([np.sum(a * _X1[:, 0] ** 2 * h), np.sum(a * h)])
    d = p.hessian_diag(theta)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    assert_close(d, expected, rtol, "logistic hessian_diag at extreme η")
    Hv = p.hvp(theta, np.ones(2, dtype=dtype))
    assert np.all(np.isfinite(Hv))
    assert np.all(np.isfinite(p.fisher_vp(theta, np.ones(2, dtype=dtype))))
    assert np.all(np.isfinite(p.ggn_diag(theta, mc_samples=4, seed=0)))


def test_logistic_tiny_loss_keeps_its_digits():
    """Every sample right with margin 30..40: F ≈ 1e-14 must still be accurate to 1e-12
    relative (log1p(e^-η), σ - 1 = -e^-η/(1 + e^-η); a naive 1 - σ loses every digit)."""
    X = np.array([[1.0], [0.75], [0.875], [-1.0], [-0.8125]])
    y = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    p = fc.GLM(X, y, family="logistic", fit_intercept=False)
    theta = np.array([40.0])
    value, g = hp_value_grad("logistic", X, y, theta.reshape(1, 1), np.ones(5))
    assert 0 < value < 1e-12
    np.testing.assert_allclose(p.value(theta), value, rtol=1e-12)
    np.testing.assert_allclose(p.grad(theta), g, rtol=1e-12)


# multinomial rows and weights: η = x W with W = big * [[1, 0, -1], [0, 1/2, -1/2]]
_XM = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [0.5, -1.0],
                [0.0, 0.0], [0.05, 0.0]])
_YM = np.array([0, 0, 2, 1, 1, 2, 1, 0])


@pytest.mark.parametrize("dtype,big", [(np.float64, 700.0), (np.float32, 80.0)],
                         ids=["f64-700", "f32-80"])
def test_multinomial_extreme_eta(dtype, big):
    p = fc.GLM(_XM.astype(dtype), _YM, family="multinomial", n_classes=3)
    Wt = np.zeros((3, 3))
    Wt[0] = [big, 0.0, -big]
    Wt[1] = [0.0, big / 2, -big / 2]
    theta = Wt.reshape(-1).astype(dtype)
    eta = _XM @ Wt[:2]
    assert np.abs(eta).max() == big
    Xt = np.hstack([_XM, np.ones((8, 1))])
    rtol = 1e-12 if dtype == np.float64 else 50 * EPS32
    _hp_check(p, "multinomial", Xt, _YM, theta, np.ones(8), rtol)
    H = p.hessian(theta).astype(np.float64)
    assert np.all(np.isfinite(H))
    eig = np.linalg.eigvalsh(0.5 * (H + H.T))
    assert eig.min() >= -1e-6 * max(eig.max(), 1e-30)  # PSD up to the data precision
    assert np.all(np.isfinite(p.hvp(theta, np.ones(9, dtype=dtype))))
    assert np.all(np.isfinite(p.fisher_vp(theta, np.ones(9, dtype=dtype))))
    assert np.all(np.isfinite(p.ggn_diag(theta, mc_samples=4, seed=0)))


def test_multinomial_tiny_loss_keeps_its_digits():
    """Labels on the top class with margins 30..40: the loss log1p(Σ_{k≠y} e^{η_k-η_y}) and
    the residual p_y - 1 keep full relative precision."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.125], [0.125, 0.875]])
    y = np.array([0, 1, 0, 1])
    W = np.array([[40.0, 0.0, 0.0], [0.0, 40.0, 0.0]])  # margins 40, 40, 35, 30
    p = fc.GLM(X, y, family="multinomial", n_classes=3, fit_intercept=False)
    value, g = hp_value_grad("multinomial", X, y, W, np.ones(4))
    assert 0 < value < 1e-12
    np.testing.assert_allclose(p.value(W.reshape(-1)), value, rtol=1e-12)
    assert_close(p.grad(W.reshape(-1)), g, 1e-12, "tiny multinomial gradient")


@pytest.mark.parametrize("dtype,big", [(np.float64, 700.0), (np.float32, 80.0)],
                         ids=["f64-700", "f32-80"])
def test_poisson_extreme_eta(dtype, big):
    """e^η up to e^700 ≈ 1e304 (float64) / e^80 ≈ 5.5e34 (float32) stays finite."""
    X = _X1.astype(dtype)
    y = np.array([3.0, 0.0, 1.0, 7.0, 2.0, 0.0, 1.0, 4.0])
    p = fc.GLM(X, y, family="poisson")
    theta = np.array([big, 0.0], dtype=dtype)
    Xt = np.hstack([_X1, np.ones((8, 1))])
    rtol = 1e-12 if dtype == np.float64 else 50 * EPS32
    _hp_check(p, "poisson", Xt, y, theta, np.ones(8), rtol)
    mu = np.array([hp_poisson(big * x, 0.0)[2] for x in _X1[:, 0]])
    expected = np.array([np.mean(_X1[:, 0] ** 2 * mu), np.mean(mu)])
    assert_close(p.hessian_diag(theta), expected, rtol, "poisson hessian_diag at extreme η")


def test_poisson_mc_ggn_diag_large_eta():
    """The MC diagonal must stay usable where the exact one is (η = 50 here, e^η ≈ 5e21)."""
    X = np.array([[1.0], [-1.0], [0.5], [0.05]])
    y = np.array([1.0, 0.0, 3.0, 2.0])
    p = fc.GLM(X, y, family="poisson")
    theta = np.array([50.0, 0.0])
    est = p.ggn_diag(theta, mc_samples=2000, seed=0)
    assert np.all(np.isfinite(est)) and np.all(est >= 0)
    assert_close(est, p.hessian_diag(theta), 0.2, "MC diagonal at large Poisson mean")


def test_decimal_reference_sanity():
    """The high-precision reference itself keeps e^-700 next to 1 (no cancellation)."""
    tiny = float(Decimal(-700).exp())
    loss, d1, d2 = hp_logistic(700.0, 0.0)
    assert loss == 700.0 and d1 == 1.0
    np.testing.assert_allclose(d2, tiny, rtol=1e-12)
    loss, d1, _ = hp_logistic(700.0, 1.0)
    np.testing.assert_allclose([loss, -d1], [tiny, tiny], rtol=1e-12)


# ---------------------------------------------------------------------- determinism
def _outputs(p, theta, v, V):
    return {
        "value": np.array([p.value(theta)]),
        "grad": p.grad(theta),
        "hvp": p.hvp(theta, v),
        "block_hvp": p.hvp(theta, V),
        "ggn_vp": p.ggn_vp(theta, v),
        "fisher_vp": p.fisher_vp(theta, v),
        "block_fisher_vp": p.fisher_vp(theta, V),
        "hessian_diag": p.hessian_diag(theta),
        "ggn_diag_mc": p.ggn_diag(theta, mc_samples=2, seed=3),
        "jvp": p.jvp(theta, v),
        "block_jvp": p.jvp(theta, V),
        "value_along": np.array([p.value_along(theta, v)(0.7)]),
    }


def _big_problems():
    rng = np.random.default_rng(42)
    n, d = 5000, 5
    X = rng.standard_normal((n, d))
    Xs = sp.random(4000, 40, density=0.65, format="csr", random_state=rng)
    Xs.data = rng.standard_normal(Xs.nnz)
    assert len(reduce.row_partition(n)) - 1 >= 8
    assert len(reduce.nnz_partition(Xs.indptr, Xs.shape[1])) - 1 >= 3
    yl = (rng.random(n) < 0.5).astype(float)
    ym = rng.integers(0, 3, n)
    yp = rng.poisson(1.0, (n, 2)).astype(float)
    w = rng.uniform(0.0, 2.0, n)
    ysl = (rng.random(4000) < 0.5).astype(float)
    ysm = rng.integers(0, 3, 4000)
    return {
        "dense-logistic": lambda: fc.GLM(X, yl, "logistic", l2=0.1, sample_weight=w),
        "dense-multinomial": lambda: fc.GLM(X, ym, "multinomial", l2=0.1, sample_weight=w),
        "dense-poisson2": lambda: fc.GLM(0.3 * X, yp, "poisson"),
        "csr-logistic": lambda: fc.GLM(Xs, ysl, "logistic", l2=0.1),
        "csr-multinomial": lambda: fc.GLM(Xs, ysm, "multinomial"),
    }


@pytest.fixture
def restore_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with fewer than 2 threads")
    old = numba.get_num_threads()
    yield
    numba.set_num_threads(old)


def test_bitwise_identical_across_thread_counts_and_calls(restore_threads):
    for name, make in _big_problems().items():
        p0 = make()
        rng = np.random.default_rng(0)
        theta = (0.2 * rng.standard_normal(p0.n_params)).astype(p0.dtype)
        v = rng.standard_normal(p0.n_params)
        V = rng.standard_normal((p0.n_params, 3))
        results = []
        for threads in (1, 2, 1, 2):
            numba.set_num_threads(threads)
            results.append(_outputs(make(), theta, v, V))  # a fresh problem: no cached state
        numba.set_num_threads(2)
        p = make()
        results.append(_outputs(p, theta, v, V))
        results.append(_outputs(p, theta, v, V))  # repeated calls on one problem
        for key in results[0]:
            for r in results[1:]:
                assert np.array_equal(results[0][key], r[key]), f"{name}: {key} differs"


def test_multinomial_curvature_of_confident_rows_keeps_its_digits():
    """Rows whose top class has margin 30..300: p_top rounds to 1, and the curvature
    ``p_k (u_k − pᵀu)`` and its diagonal ``p_k (1 − p_k)`` are tiny. Every component of the
    products, the diagonal and the dense Hessian agrees with a 60-digit mpmath reference to
    1e-12 (``1 − p_top`` formed directly gave 0 instead of 4e-18 at margin 40)."""
    mpmath = pytest.importorskip("mpmath")
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.125], [0.125, 0.875], [7.5, 0.0]])
    y = np.array([0, 1, 0, 1, 0])
    W = np.array([[40.0, 0.0, 3.0], [0.0, 40.0, 1.0]])  # margins 37, 39, 37, 30.4, 277.5
    theta = W.reshape(-1)
    v = np.random.default_rng(5).standard_normal(6)
    V = v.reshape(2, 3)
    with mpmath.workdps(60):
        hv = [[mpmath.mpf(0)] * 3 for _ in range(2)]
        diag = [[mpmath.mpf(0)] * 3 for _ in range(2)]
        for x in X:
            eta = [sum(mpmath.mpf(x[j]) * W[j, k] for j in range(2)) for k in range(3)]
            e = [mpmath.exp(t) for t in eta]
            p = [t / sum(e) for t in e]
            u = [sum(mpmath.mpf(x[j]) * V[j, k] for j in range(2)) for k in range(3)]
            pu = sum(p[k] * u[k] for k in range(3))
            for j in range(2):
                for k in range(3):
                    hv[j][k] += x[j] * p[k] * (u[k] - pu) / len(X)
                    diag[j][k] += x[j] ** 2 * p[k] * (1 - p[k]) / len(X)
        hv = np.array([[float(t) for t in row] for row in hv]).reshape(-1)
        diag = np.array([[float(t) for t in row] for row in diag]).reshape(-1)
    assert np.abs(diag).min() < 1e-15  # the regime where cancellation would show
    p = fc.GLM(X, y, family="multinomial", n_classes=3, fit_intercept=False)
    for name, got in (("hvp", p.hvp(theta, v)), ("ggn_vp", p.ggn_vp(theta, v)),
                      ("hessian @ v", p.hessian(theta) @ v)):
        np.testing.assert_allclose(got, hv, rtol=1e-12, atol=0, err_msg=name)
    for name, got in (("hessian_diag", p.hessian_diag(theta)), ("ggn_diag", p.ggn_diag(theta)),
                      ("diag of hessian", np.diag(p.hessian(theta)))):
        np.testing.assert_allclose(got, diag, rtol=1e-12, atol=0, err_msg=name)
    # the same model as a network without hidden layers (its weights carry a bias row)
    m = fc.MLP(X, y, sizes=(2, 3), activation="identity", loss="softmax_cross_entropy")
    tm = np.vstack([W, np.zeros((1, 3))]).reshape(-1)
    vm = np.concatenate([v, np.zeros(3)])
    for name, got in (("MLP hvp", m.hvp(tm, vm)), ("MLP ggn_vp", m.ggn_vp(tm, vm))):
        np.testing.assert_allclose(got[:6], hv, rtol=1e-12, atol=0, err_msg=name)


def test_value_along_small_float32_step_keeps_its_digits():
    """``φ(α) − φ(0)`` of a float32 line search along a step 1e-5 the size of θ: from
    ``X(θ + d) − Xθ`` it carried the rounding of both η (2.5e-4 relative here); Xd computed
    itself gives the float64 difference to 1e-6."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 10)).astype(np.float32)
    y = (rng.random(2000) < 0.5).astype(float)
    p32 = fc.GLM(X, y, l2=1e-3)
    p64 = fc.GLM(X.astype(np.float64), y, l2=1e-3)
    theta = (rng.standard_normal(11) * 3).astype(np.float32)
    d = (rng.standard_normal(11) * 3e-5).astype(np.float32)
    p32.value_and_grad(theta)
    p32.value_and_grad(theta + d)  # the state a line search's first trial leaves
    phi = p32.value_along(theta, d)
    t64, d64 = theta.astype(np.float64), d.astype(np.float64)
    for a in (1.0, 0.5, 0.25):
        ref = p64.value(t64 + a * d64) - p64.value(t64)
        assert abs((phi(a) - phi(0)) / ref - 1) < 1e-6, a


# ---------------------------------------------------------------------- overflow
def test_huge_parameters_without_penalty_keep_a_finite_value():
    """With l2 = 0 the penalty is 0, not 0 * inf: at |θ| = 1e200 the logistic loss is the
    finite softplus of η (it was NaN, from 0 * (λ/2)‖W‖² with ‖W‖² = inf)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = (rng.random(40) < 0.5).astype(float)
    theta = np.array([1e200, -2e200, 3e200, 1e199])
    p = fc.GLM(X, y, l2=0.0)
    eta = X @ theta[:3] + theta[3]
    want = np.mean(np.logaddexp(0.0, eta) - y * eta)  # numpy's own softplus
    np.testing.assert_allclose(p.value(theta), want, rtol=1e-12)
    np.testing.assert_allclose(p.value_along(np.zeros(4), theta)(1.0), want, rtol=1e-12)
    g = p.grad(theta)
    np.testing.assert_allclose(g[:3], X.T @ ((eta > 0) - y) / 40, rtol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "gaussian"])
def test_overflowing_objective_is_inf_and_its_derivatives_raise(family):
    """Where the objective overflows float64, value() is +inf (never NaN) and every
    derivative raises FloatingPointError naming the cause, instead of returning inf/NaN."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 2))
    y = rng.poisson(2.0, 30).astype(float)
    p = fc.GLM(X, y, family=family, l2=1e-3)
    theta = np.array([0.0, 0.0, 800.0 if family == "poisson" else 1e160])
    assert p.value(theta) == np.inf
    assert p.value_along(np.zeros(3), theta)(1.0) == np.inf
    v = np.ones(3)
    for call in (lambda: p.grad(theta), lambda: p.value_and_grad(theta),
                 lambda: p.hvp(theta, v), lambda: p.fisher_vp(theta, v),
                 lambda: p.hessian_diag(theta), lambda: p.hessian(theta),
                 lambda: p.per_sample_grads(theta)):
        with pytest.raises(FloatingPointError, match="overflows"):
            call()
    # the derivatives at a finite point are unaffected, and a huge v is named
    assert np.isfinite(p.hvp(np.zeros(3), v)).all()
    with pytest.raises(FloatingPointError, match="v, or the data and curvature"):
        p.hvp(np.zeros(3), np.full(3, 1.5e308))


def test_linear_predictor_overflow_is_named():
    X = np.array([[1.0, 2.0], [3.0, -1.0]])
    p = fc.GLM(X, np.array([0.0, 1.0]))
    theta = np.array([1e308, 1e308, 0.0])
    assert p.value(theta) == np.inf
    with pytest.raises(FloatingPointError, match="X theta itself overflows float64"):
        p.grad(theta)


def test_penalty_and_line_search_values_overflow_only_beyond_float64():
    """(λ/2)‖W‖² is scaled by max|W| (‖W‖² alone overflows from |W| ~ 1e154), and
    value_along recomputes X d when X(θ + d) of the last evaluated point overflowed."""
    X = np.array([[10.0], [-10.0]])
    y = np.array([0.0, 1.0])
    p = fc.GLM(X, y, l2=1e-3, fit_intercept=False)
    th = np.array([1e155])
    eta = X[:, 0] * th[0]
    want = np.mean(np.logaddexp(0.0, eta) - y * eta) + (0.5e-3 * 1e155) * 1e155
    np.testing.assert_allclose(p.value(th), want, rtol=1e-12)
    q = fc.GLM(X, y, fit_intercept=False)
    th, d = np.array([1e307]), np.array([1e307])
    with pytest.raises(FloatingPointError):
        q.value_and_grad(th + d)  # X(θ + d) = ±inf, now the last evaluated point
    eta = X[:, 0] * 1.5e307
    np.testing.assert_allclose(q.value_along(th, d)(0.5),
                               np.sum((np.logaddexp(0.0, eta) - y * eta) / 2), rtol=1e-12)


def test_derived_results_that_overflow_raise():
    """Where the loss and gradient are finite but a derived result overflows (a feature of
    1e160 squared in the curvature diagonal), the result raises FloatingPointError instead of
    returning inf, here and in the K-FAC factors; jvp/vjp name their product."""
    X = np.array([[1e160, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    p = fc.GLM(X, y)
    th = np.zeros(3)
    assert np.isfinite(p.grad(th)).all()
    for call, what in ((lambda: p.hessian_diag(th), "curvature diagonal"),
                       (lambda: p.fisher_diag(th), "curvature diagonal"),
                       (lambda: p.hessian(th), "dense Hessian"),
                       (lambda: fc.KFACOperator(p, th, fisher="type2"), "K-FAC input factor"),
                       (lambda: p.jvp(th, np.array([1e160, 0.0, 0.0])), "J v"),
                       (lambda: p.vjp(th, np.full(4, 1e160)), "Jᵀ u")):
        with pytest.raises(FloatingPointError, match=what):
            call()


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_a_zero_weight_row_whose_loss_overflows_adds_nothing(sparse):
    """A row of weight 0 (an excluded outlier) whose own exp(η) overflows contributes exactly
    nothing (it contributed 0 · inf = NaN): every product equals the problem without the row,
    and newton_cg reaches that problem's optimum. Its own per-sample gradient still raises."""
    rng = np.random.default_rng(0)
    n = 200
    x = rng.uniform(0.0, 1.0, n)
    y = rng.poisson(np.exp(x)).astype(float)
    X = np.r_[x, 1000.0][:, None]
    if sparse:
        X = sp.csr_matrix(X)
    p = fc.GLM(X, np.r_[y, 0.0], family="poisson", sample_weight=np.r_[np.ones(n), 0.0])
    q = fc.GLM(x[:, None], y, family="poisson")
    th, v = np.array([1.0, 0.0]), np.array([0.3, -1.0])
    np.testing.assert_allclose(p.value(th), q.value(th), rtol=1e-13)
    for name in ("grad", "hessian_diag", "fisher_diag", "hessian"):
        np.testing.assert_allclose(getattr(p, name)(th), getattr(q, name)(th), rtol=1e-13,
                                   err_msg=name)
    for name in ("hvp", "fisher_vp"):
        np.testing.assert_allclose(getattr(p, name)(th, v), getattr(q, name)(th, v),
                                   rtol=1e-13, err_msg=name)
    np.testing.assert_allclose(fc.KFACOperator(p, th, fisher="empirical").matvec(v),
                               fc.KFACOperator(q, th, fisher="empirical").matvec(v), rtol=1e-12)
    np.testing.assert_allclose(p.value_along(th, v)(0.5), q.value_along(th, v)(0.5), rtol=1e-13)
    r, ref = fc.newton_cg(p, gtol=1e-10), fc.newton_cg(q, gtol=1e-10)
    assert r.success, r.message
    np.testing.assert_allclose(r.x, ref.x, rtol=1e-10)
    with pytest.raises(FloatingPointError):
        p.per_sample_grads(th, rows=[n])


def test_value_along_after_the_full_step_in_float32_with_many_features():
    """A line search's first trial evaluates θ + d; value_along may then take Xd as
    X(θ + d) − Xθ. With 4,000 float32 inputs per row the rounding of the two η reached
    2e-3 of Xd at a step of 1.3e-3 |θ| (the rule ignored the number of inputs), and the
    decrease along d was 3.6e-4 off; now it is as accurate as a fresh problem's."""
    rng = np.random.default_rng(3)
    n, D = 1000, 4000
    X = rng.standard_normal((n, D)).astype(np.float32)
    y = rng.standard_normal(n)
    theta = np.ones(D + 1, np.float32)
    d = np.zeros(D + 1, np.float32)
    d[0] = 1.3e-3
    p = fc.GLM(X, y, family="gaussian")
    p.value(theta + d)
    phi = p.value_along(theta, d)
    X64, t64, d64 = X.astype(float), theta.astype(float), d.astype(float)

    def F(t):
        r = X64 @ t[:-1] + t[-1] - y
        return 0.5 * np.mean(r * r)

    for a in (1.0, 0.5, 0.1):
        exact = F(t64 + a * d64) - F(t64)
        assert abs((phi(a) - phi(0.0)) - exact) <= 1e-6 * abs(exact)


def test_l2_reassigned_is_checked():
    """p.l2 may be reassigned (loo_refit does), and is checked as in the constructor: a
    negative value gave negative curvature diagonals in silence, NaN a misleading overflow."""
    X = np.random.default_rng(0).standard_normal((30, 3))
    p = fc.GLM(X, (X[:, 0] > 0).astype(float), l2=1e-2)
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="l2"):
            p.l2 = bad
    p.l2 = 0.5
    assert p.l2 == 0.5
    np.testing.assert_allclose(p.hessian_diag(np.zeros(4))[:3],
                               fc.GLM(X, p.y, l2=0.5).hessian_diag(np.zeros(4))[:3],
                               rtol=1e-15)


@pytest.mark.parametrize("family", ["logistic", "multinomial"])
def test_an_l2_that_overflows_is_named_as_the_cause(family):
    """With λ = 1e300 the penalty (λ/2)‖W‖² and the product's λ v overflow float64 while the
    data terms are finite: the error names l2, instead of advising to add an L2 penalty; with
    λ = 1e-3 and parameters of 1e300 the error is about the parameters, as before."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 3 if family == "multinomial" else 2, 40).astype(float)
    p = fc.GLM(X, y, family=family, l2=1e300)
    theta = np.full(p.n_params, 1e5)
    with pytest.raises(FloatingPointError, match=r"penalty alone overflows.*l2=1e\+300.*"
                                                 r"use a smaller l2") as e:
        p.grad(theta)
    assert "add an L2" not in str(e.value)
    assert p.value(theta) == np.inf
    v = np.full(p.n_params, 1e10)
    with np.errstate(all="raise"):  # no RuntimeWarning from the penalty's term
        with pytest.raises(FloatingPointError, match=r"l2 \* v alone overflows.*smaller l2"):
            p.hvp(np.zeros(p.n_params), v)
    assert np.isfinite(p.hvp(np.zeros(p.n_params), np.ones(p.n_params))).all()
    q = fc.GLM(X, y, family=family, l2=1e-3)
    with pytest.raises(FloatingPointError, match="largest \\|X theta\\|") as e:
        q.grad(np.full(p.n_params, 1e300))
    assert "l2" not in str(e.value) and "add an L2" not in str(e.value)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_float32_vjp_sums_many_rows_in_float64(sparse):
    """``vjp`` = ``Σ_i x̃_i ⊗ u_i`` over n = 200,000 rows of positive-mean data: every term of a
    column's sum has the same sign, so a sum accumulated in float32 loses about ``n eps`` of it
    relative (CSR: 1.3e-5). The float64 twin on the same float32-exact numbers is the
    reference; with float64 sums only the final rounding to float32 is left (``eps/2``)."""
    rng = np.random.default_rng(5)
    n, d = 200_000, 4
    X = (1.0 + rng.standard_normal((n, d))).astype(np.float32)
    X = sp.csr_matrix(X) if sparse else X
    y = rng.integers(0, 3, n).astype(float)
    u = rng.random((n, 3)).astype(np.float32)
    p32 = fc.GLM(X, y, family="multinomial")
    p64 = fc.GLM(X.astype(np.float64), y, family="multinomial")
    theta = np.zeros(p64.n_params)
    out = p32.vjp(theta.astype(np.float32), u)
    ref = p64.vjp(theta, u.astype(np.float64))
    assert out.dtype == np.float32
    err = np.abs(out.astype(np.float64) - ref) / np.abs(ref)
    assert np.max(err) <= 2 * EPS32, np.max(err)


@pytest.mark.parametrize("data", ["one-hot", "identical-rows"])
def test_dense_float32_sums_of_equal_terms_stay_within_a_few_eps(data):
    """Terms of one size and sign (one-hot features and a constant column, or identical
    rows; logistic at θ = 0, every residual ±1/2): the dense kernels sum ``FLUSH`` rows in
    float32 before adding them in float64. With 256 rows the gradient and the HVP were
    15-34 float32 eps of the terms' absolute sum off (a review; CSR, summing in float64:
    0.3). Against float64 sums of the same float32-exact terms, normwise per entry."""
    rng = np.random.default_rng(0)
    n, C = 10_007, 20
    if data == "one-hot":
        X = np.zeros((n, C + 1), np.float32)
        X[np.arange(n), rng.integers(0, C, n)] = 1.0
        X[:, C] = 1.0
    else:
        X = np.tile(rng.uniform(0.5, 2.0, C + 1).astype(np.float32), (n, 1))
    y = (rng.random(n) < 0.02).astype(float)
    p = fc.GLM(X, y, family="logistic")
    theta = np.zeros(p.n_params, np.float32)
    X64 = np.c_[X.astype(np.float64), np.ones(n)]
    t = (0.5 - y) / n  # a_i ℓ'_i at η = 0
    g = p.grad(theta).astype(np.float64)
    err = np.abs(g - X64.T @ t) / (np.abs(X64).T @ np.abs(t))
    assert err.max() <= 10 * EPS32, err.max() / EPS32
    v = np.zeros(p.n_params, np.float32)
    v[-1] = 1.0  # the intercept: x̃_i · v = 1 exactly, only the sum of rows is tested
    hv = p.hvp(theta, v).astype(np.float64)
    w = np.full(n, 0.25 / n)  # a_i ℓ''_i (x̃_i · v)
    err = np.abs(hv - X64.T @ w) / (np.abs(X64).T @ np.abs(w))
    assert err.max() <= 10 * EPS32, err.max() / EPS32


@pytest.mark.parametrize("fused", [False, True], ids=["own-pass", "fused"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_float32_diagonals_square_and_weigh_in_float64(sparse, fused):
    """The exact diagonal ``(1/W) Σ w_i ℓ''_i x_ij²`` of float32 data is summed in float64:

    * at |η| = 100 the per-row weights ``ℓ'' ≈ e^-100`` lie below float32's range; the dense
      pass rounded them to float32 and returned 0 for a diagonal entry of 3.7e-36;
    * ``x = 2e19`` has a square beyond float32's range but the entry (~6e37) is finite; the
      pass squared in float32 and raised a false overflow error.

    The reference is the float64 twin on the same float32-exact numbers: within 2 eps32 (the
    float32 rounding of the result). ``fused``: the diagonal comes from the value-and-gradient
    pass (``fuse_diag``, as ``newton_cg`` with the Jacobi preconditioner asks)."""
    rng = np.random.default_rng(3)
    n = 600
    y = (rng.random(n) < 0.5).astype(float)
    for scale, theta in ((1e4, [0.01, 0.0]), (2e19, [0.0, 0.1])):
        X = (scale * rng.uniform(0.5, 1.0, (n, 1))).astype(np.float32)
        if scale == 1e4:
            X[:] = 1e4  # eta = 100 on every row
        p32 = fc.GLM(sp.csr_matrix(X) if sparse else X, y)
        p64 = fc.GLM(X.astype(np.float64), y)
        th = np.array(theta)
        ref = p64.hessian_diag(th)
        for p in (p32, p64):
            p.fuse_diag = fused
            p.value_and_grad(th.astype(p.dtype))
        out = p32.hessian_diag(th.astype(np.float32))
        # the intercept entry of the first case (3.7e-44) is a float32 subnormal: its spacing
        np.testing.assert_allclose(out, ref, rtol=2 * EPS32, atol=1.5e-45, err_msg=str(scale))
        np.testing.assert_allclose(p32.ggn_diag(th.astype(np.float32)), ref, rtol=2 * EPS32,
                                   atol=1.5e-45)


@pytest.mark.parametrize("family", ["logistic", "multinomial"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_float32_row_weights_below_float32_range_keep_their_digits(sparse, family):
    """Float32 data whose per-row weights ``ℓ'``, ``ℓ''`` lie below float32's range while
    their products with ``x`` do not: at η = 96.25 and 110 the weights are ~1e-42 and ~1e-48
    (a subnormal with three digits left, and 0, in float32) and ``x`` of 2^38 to 2^40 brings
    each product back to ~1e-37..1e-24. The dense pass stored the weights in float32 tiles
    and lost their digits (or returned 0) in gradients, Hessian- and Gauss-Newton-vector
    products, and ``per_sample_grads`` rounded ``ℓ'`` to float32 before multiplying.

    η is exact in float32 (``x θ = 110 k / 8``), so the float64 model on the same numbers is
    the reference: within 1e-5 relative (float32 sums of 40 rows; the failure was 0)."""
    rng = np.random.default_rng(11)
    n = 40
    k = rng.integers(7, 9, n)  # 7 or 8
    X = np.zeros((n, 2), np.float32)
    X[:, 0] = 2.0**40 * k / 8
    X[:, 1] = 2.0**38 * rng.integers(1, 9, n)  # its parameter is 0: no rounding in η
    if family == "logistic":
        y = np.ones(n)  # ℓ' = σ(η) − 1 ≈ −e^-η
        th = np.array([110 * 2.0**-40, 0.0])
    else:
        y = np.zeros(n, dtype=np.int64)  # class 0 is the most probable one
        th = np.zeros(6)
        th[0] = 110 * 2.0**-40
    kw = dict(family=family, fit_intercept=False)
    if family == "multinomial":
        kw["n_classes"] = 3
    p32 = fc.GLM(sp.csr_matrix(X) if sparse else X, y, **kw)
    p64 = fc.GLM(X.astype(np.float64), y, **kw)
    v = rng.uniform(0.5, 1.0, th.size).astype(np.float32)
    if family == "multinomial":
        v[1::3] = 0.0  # classes must differ (S 1 = 0): u_0 > u_1 = 0
    t32 = th.astype(np.float32)
    # (the empirical Fisher's weights ℓ'² ~ 1e-96 give products below float32's range)
    for name in ("grad", "per_sample_grads", "hvp", "ggn_vp"):
        args = (t32,) if name in ("grad", "per_sample_grads") else (t32, v)
        got = getattr(p32, name)(*args)
        got = got.toarray() if sp.issparse(got) else got  # per_sample_grads of CSR data
        want = getattr(p64, name)(*(a.astype(np.float64) for a in args))
        assert got.dtype == np.float32, name
        assert np.all(np.abs(want) > np.finfo(np.float32).tiny), name  # float32 normals
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("fused", [False, True], ids=["own-pass", "fused"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_a_zero_weight_row_with_a_huge_x_adds_nothing_to_the_diagonals(sparse, dtype, fused):
    """A row of weight 0 whose ``x`` squares to inf (float64: 1e160; float32: 3e38, whose
    float64 square is finite) adds nothing (its weight times ``x²`` was ``0 · inf = NaN``).
    ``fused``: the Hessian diagonal from the value-and-gradient pass."""
    rng = np.random.default_rng(4)
    n = 300
    x = rng.standard_normal(n)
    y = (rng.random(n) < 0.5).astype(float)
    big = 1e160 if dtype == np.float64 else 3e38
    X = np.r_[x, big][:, None].astype(dtype)
    p = fc.GLM(sp.csr_matrix(X) if sparse else X, np.r_[y, 1.0],
               sample_weight=np.r_[np.ones(n), 0.0])
    q = fc.GLM(x[:, None].astype(dtype), y)
    th = np.array([1e-200 if dtype == np.float64 else 0.0, 0.2], dtype=dtype)
    tol = 2 * float(np.finfo(dtype).eps)
    if fused:
        p.fuse_diag = True
        p.value_and_grad(th)
    for name in ("hessian_diag", "ggn_diag", "fisher_diag"):
        np.testing.assert_allclose(getattr(p, name)(th), getattr(q, name)(th), rtol=tol,
                                   err_msg=name)


def test_a_zero_weight_row_with_a_huge_residual_adds_nothing_to_the_fisher_product():
    """Gaussian row of weight 0 with target 1e200: its ``r² = inf``, weighted by 0, was NaN in
    ``fisher_vp`` (a false overflow error); it adds nothing."""
    rng = np.random.default_rng(6)
    n = 50
    X = rng.standard_normal((n + 1, 2))
    y = np.r_[rng.standard_normal(n), 1e200]
    p = fc.GLM(X, y, family="gaussian", sample_weight=np.r_[np.ones(n), 0.0])
    q = fc.GLM(X[:n], y[:n], family="gaussian")
    th, v = np.array([0.1, -0.2, 0.3]), np.array([1.0, 2.0, -1.0])
    np.testing.assert_allclose(p.fisher_vp(th, v), q.fisher_vp(th, v), rtol=1e-14)
    np.testing.assert_allclose(p.fisher_diag(th), q.fisher_diag(th), rtol=1e-14)


def test_csr_partition_keeps_the_chunk_accumulators_small():
    """At most nnz / (32 d) chunks, but 4 where the nonzeros allow and each chunk keeps 4 d
    of them: on wide data each chunk's d-long float64 accumulator costs more than its share
    of the pass (1e5 x 1e7 with 10 per row: four chunks made the Hessian diagonal 10x
    scipy's products, a review's finding); the chunks still cover every row once, in order."""
    for n, d, per_row, want in ((400_000, 100, 40, 32), (500_000, 50_000, 60, 18),
                                (400_000, 200_000, 40, 4), (400_000, 10**6, 40, 4),
                                (1000, 10**6, 3, 1), (2000, 10**6, 40, 1),
                                (100_000, 10**7, 10, 1), (100_000, 10**6, 80, 2)):
        indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int64)
        starts = reduce.nnz_partition(indptr, d)
        assert len(starts) - 1 == want, (n, d, len(starts) - 1)
        assert starts[0] == 0 and starts[-1] == n and np.all(np.diff(starts) > 0)


@pytest.mark.parametrize("shape", [(1, 7), (3, 0), (5, 4096), (32, 50_001)])
def test_chunk_sums_add_the_chunks_in_their_order(shape):
    """``reduce.sum_chunks`` adds chunk 0, then 1, ... for every column, in parallel over
    column blocks: the bits of a row-after-row loop (and of NumPy's axis-0 sum), whatever the
    thread count. The values cancel heavily, so any other order would change the bits."""
    rng = np.random.default_rng(shape[1])
    buf = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 9, size=shape)
    want = buf[0].copy()
    for c in range(1, shape[0]):
        want += buf[c]
    got = []
    before = numba.get_num_threads()
    try:
        for t in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(t)
            out = np.full(shape[1], np.nan)
            reduce.sum_chunks(buf, reduce.column_blocks(shape[1]), out)
            got.append(out)
    finally:
        numba.set_num_threads(before)
    for out in got:
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(got[0], buf.sum(axis=0))


def test_csr_kernels_zero_their_own_chunk_accumulators():
    """The CSR passes write their chunk buffers (the caller allocates them uninitialized):
    buffers full of NaN give the same products as the dense route."""
    from fastcurv.kernels import glm_csr
    from fastcurv.kernels.glm_dense import CURVATURE

    rng = np.random.default_rng(3)
    n, d = 40_000, 30
    X = sp.random(n, d, density=0.2, format="csr", random_state=4)
    Xd = X.toarray()
    design = fc.GLM(X, (rng.random(n) < 0.5).astype(float), family="logistic")._design
    assert design.n_chunks > 1
    C = design.n_chunks
    ind = design.indices
    cw = rng.random(n)
    v = rng.standard_normal(d)
    no1, no2 = np.zeros(1), np.zeros((1, 1))
    gbuf, gbbuf, lbuf = np.full((C, d), np.nan), np.zeros(C), np.zeros(C)
    for rowwise in (True, False):
        glm_csr.pass_k1(X.data, ind, X.indptr, design.starts, v, 0.5, CURVATURE, 0, no1, no1,
                        cw, no1, no1, no1, lbuf, no2, gbuf, gbbuf, rowwise)
        np.testing.assert_allclose(gbuf.sum(axis=0), Xd.T @ (cw * (Xd @ v + 0.5)), rtol=1e-12)
        gbuf[:] = np.nan
    cw2 = rng.random((n, 2))
    sq = np.full((C, d, 2), np.nan)
    glm_csr.weighted_sq_colsum(X.data, ind, X.indptr, design.starts, cw2, sq)
    np.testing.assert_allclose(sq.sum(axis=0), (Xd ** 2).T @ cw2, rtol=1e-12)
    V = rng.standard_normal((d, 2))
    Dw = rng.random((n, 2))
    g2, gb2 = np.full((C, d, 2), np.nan), np.zeros((C, 2))
    glm_csr.pass_gen(X.data, ind, X.indptr, design.starts, V, np.zeros(2), CURVATURE, 0, no2,
                     no1, no2, no2, no2, Dw, no2, no1, np.zeros(1, dtype=np.int64), 0, 1, lbuf,
                     g2, gb2)
    np.testing.assert_allclose(g2.sum(axis=0), Xd.T @ (Dw * (Xd @ V)), rtol=1e-12)


def test_softmax_loss_value_at_large_logits_keeps_its_digits():
    """``(m − η_label) + log s`` was reassociated by LLVM into ``(log s + m) − η_label``, whose
    rounding is that of the largest logit: exact logits [700, 699, 698] with label 1 gave a
    loss 154 eps off. The exact value is ``1 + log(1 + e^-1 + e^-2)``."""
    X = np.ones((1, 1))
    p = fc.GLM(X, np.array([1]), family="multinomial", n_classes=3, fit_intercept=False)
    theta = np.array([700.0, 699.0, 698.0])
    want = 1.0 + math.log1p(math.exp(-1.0) + math.exp(-2.0))
    assert abs(p.value(theta) - want) <= 2 * np.finfo(float).eps * want
    assert abs(p.value_and_grad(theta)[0] - want) <= 2 * np.finfo(float).eps * want
