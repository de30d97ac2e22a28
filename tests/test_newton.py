"""newton_cg against established solvers: scikit-learn (LogisticRegression, Ridge,
PoissonRegressor) and statsmodels GLM, plus the result fields and the edge cases.

Conventions mapped onto the oracles (DESIGN.md objective F = (1/W) Σ w_i ℓ_i + λ/2 ‖coef‖²):
* LogisticRegression minimizes C Σ w_i ℓ_i + ½‖coef‖²  ->  C = 1 / (W λ);
* Ridge minimizes Σ w_i (y_i − η_i)² + α‖coef‖²         ->  α = W λ;
* PoissonRegressor minimizes (1/W) Σ w_i ½ deviance_i + α/2 ‖coef‖², and ½ deviance is the
  Poisson loss e^η − yη plus a constant in η                  ->  α = λ;
* statsmodels GLM (Binomial, Poisson) is the unpenalized maximum-likelihood fit (λ = 0).
sklearn's multinomial coef_ is (K, d), fastcurv's (d, K); the softmax is invariant to a common
shift of the K intercepts, so intercepts are compared centered (and probabilities directly).

Tolerances:
* optimum vs oracle: 1e-6 normwise relative at gtol = 1e-8 (the default). For μ-strongly
  convex F, ‖θ − θ*‖ ≤ ‖∇F(θ)‖/μ ≤ sqrt(P)·gtol/μ; on these data μ ≥ 0.05 and P ≤ 18, so the
  solver's own error is below 1e-6 of the coefficient scale (~0.3–1); the oracles are run at
  tol = 1e-12.
* gradient at the returned point: max|∇F| ≤ gtol, with ∇F from the dense float64 reference
  (tests/reference.py), plus 1e-13 for the rounding difference between the two routes.
* float32 data: gtol = 1e-4 (float32 carries ~7 digits; the objective's rounding, ~6e-8 ·|F|,
  hides decreases below ‖g‖²/h ≈ eps·|F|, i.e. ‖g‖ ≈ 1e-4). The float64 reference gradient at
  the float32 answer must be ≤ gtol + 1e-5 (float32 rounding of a sum of 400 terms of size
  ~1: ≤ 400 · 6e-8 ≈ 2.4e-5 worst case, ~1e-6 typical), and its distance to the oracle is
  bounded by 2 ‖∇F‖/μ.
"""

import warnings

import numpy as np
import pytest
from cases import assert_close, synthetic
from reference import RefGLM, dense64

import fastcurv as fc

sm = pytest.importorskip("statsmodels.api")
sklm = pytest.importorskip("sklearn.linear_model")

GTOL = 1e-8
RTOL = 1e-6


# ---------------------------------------------------------------------- oracles
def _center(theta, d, K, fit_intercept=True):
    """θ with the K intercepts shifted to mean zero (the multinomial's null direction)."""
    theta = np.array(theta, dtype=np.float64)
    if fit_intercept and K > 1:
        theta[d * K:] -= theta[d * K:].mean()
    return theta


def oracle(family, X, y, l2, sample_weight=None, fit_intercept=True):
    """The minimizer of F in fastcurv's layout [coef (d, K) C-order, intercept (K)], from
    scikit-learn (l2 > 0) or statsmodels (l2 = 0); multinomial intercepts centered."""
    Xd = dense64(X)
    n, d = Xd.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    W = w.sum()
    if l2 == 0.0:
        assert family in ("logistic", "poisson") and fit_intercept
        fam = sm.families.Binomial() if family == "logistic" else sm.families.Poisson()
        res = sm.GLM(y, sm.add_constant(Xd, prepend=False, has_constant="add"), family=fam,
                     freq_weights=w).fit(tol=1e-13, maxiter=200)
        return np.asarray(res.params, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at tol=1e-12 is about rounding
        if family in ("logistic", "multinomial"):
            m = sklm.LogisticRegression(C=1.0 / (W * l2), solver="newton-cholesky", tol=1e-12,
                                        max_iter=1000, fit_intercept=fit_intercept)
        elif family == "gaussian":
            m = sklm.Ridge(alpha=W * l2, fit_intercept=fit_intercept, solver="cholesky")
        elif family == "poisson":
            m = sklm.PoissonRegressor(alpha=l2, solver="newton-cholesky", tol=1e-12,
                                      max_iter=1000, fit_intercept=fit_intercept)
        m.fit(Xd, y, sample_weight=w)
    coef = np.atleast_2d(m.coef_)  # (K, d)
    K = coef.shape[0]
    parts = [coef.T.reshape(-1)]
    if fit_intercept:
        parts.append(np.atleast_1d(m.intercept_).astype(np.float64))
    return _center(np.concatenate(parts), d, K, fit_intercept)


def _ref(family, X, y, l2, w=None, fit_intercept=True, K=1):
    return RefGLM(dense64(X), y, family, K, l2, fit_intercept, w)


def _weights(n, seed=5):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 3.0, n)
    w[:5] = 0.0
    return w


def _assert_same_optimum(ref, x1, x2):
    """Two points that each meet a gradient tolerance are as close as strong convexity allows:
    ``|x1 - x2| <= (|g1| + |g2|) / mu`` with ``mu`` the smallest eigenvalue of the (reference)
    Hessian there, and their objective values agree to rounding. The solver stops CG at the
    residual that gtol needs, so iterates are not converged far past gtol: comparing them
    coordinate-wise at a fixed tolerance would test the conditioning, not the solver."""
    mu = np.linalg.eigvalsh(ref.hessian(x1))[0]
    assert mu > 0
    gap = (np.linalg.norm(ref.grad(x1)) + np.linalg.norm(ref.grad(x2))) / mu
    assert np.linalg.norm(x1 - x2) <= 2 * gap
    np.testing.assert_allclose(ref.value(x1), ref.value(x2), rtol=1e-13)


def _check_gradient(ref, x, gtol):
    g = ref.grad(np.asarray(x, dtype=np.float64))
    assert np.max(np.abs(g)) <= gtol + 1e-13, f"max|grad| {np.max(np.abs(g)):.3e} > {gtol}"


# ---------------------------------------------------------------------- vs oracles, float64
FITS = [
    # family, storage, method, preconditioner, weighted
    ("logistic", "dense", "line-search", None, False),
    ("logistic", "csr", "line-search", "diag", True),
    ("logistic", "csr", "trust-region", None, False),
    ("logistic", "dense", "trust-region", "diag", True),
    ("multinomial", "dense", "line-search", "diag", False),
    ("multinomial", "csr", "trust-region", None, True),
    ("gaussian", "dense", "line-search", None, True),
    ("gaussian", "csr", "trust-region", "diag", False),
    ("poisson", "csr", "line-search", "diag", True),
    ("poisson", "dense", "trust-region", None, False),
]


@pytest.mark.parametrize("family,storage,method,precond,weighted", FITS,
                         ids=["-".join(str(t) for t in f) for f in FITS])
def test_optimum_matches_sklearn(family, storage, method, precond, weighted):
    l2 = 1e-2
    X, y = synthetic(family, seed=1, density=0.6 if storage == "csr" else None)
    w = _weights(len(y)) if weighted else None
    p = fc.GLM(X, y, family=family, l2=l2, sample_weight=w)
    K = p.n_outputs
    res = fc.newton_cg(p, method=method, preconditioner=precond)
    assert res.success, res.message
    assert res.x.dtype == np.float64 and res.x.shape == (p.n_params,)
    expected = oracle(family, X, y, l2, w)
    assert_close(_center(res.x, p.n_features, K), expected, RTOL, "newton_cg vs sklearn")
    ref = _ref(family, X, y, l2, w, K=K)
    _check_gradient(ref, res.x, GTOL)
    np.testing.assert_allclose(res.fun, ref.value(res.x), rtol=1e-12)
    np.testing.assert_allclose(res.grad_norm, np.max(np.abs(ref.grad(res.x))), rtol=1e-6,
                               atol=1e-14)


def test_multinomial_probabilities_match_sklearn():
    X, y = synthetic("multinomial", seed=2, K=4)
    l2 = 3e-3
    p = fc.GLM(X, y, family="multinomial", l2=l2)
    res = fc.newton_cg(p, method="trust-region", preconditioner="diag")
    assert res.success, res.message
    m = sklm.LogisticRegression(C=1.0 / (len(y) * l2), solver="lbfgs", tol=1e-12,
                                max_iter=10_000).fit(X, y)
    Wt = res.x.reshape(X.shape[1] + 1, 4)
    eta = X @ Wt[:-1] + Wt[-1]
    prob = np.exp(eta - eta.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    # lbfgs (tol 1e-12) agrees with newton-cholesky to ~1e-8 relative on these problems
    np.testing.assert_allclose(prob, m.predict_proba(X), rtol=1e-6, atol=1e-9)
    assert_close(Wt[:-1], m.coef_.T, RTOL, "coef")


@pytest.mark.parametrize("family,method", [("logistic", "trust-region"),
                                           ("poisson", "line-search")])
def test_unpenalized_matches_statsmodels(family, method):
    X, y = synthetic(family, n=500, d=4, seed=3)
    p = fc.GLM(X, y, family=family, l2=0.0)
    res = fc.newton_cg(p, method=method, preconditioner="diag")
    assert res.success, res.message
    assert_close(res.x, oracle(family, X, y, 0.0), RTOL, f"{family} vs statsmodels GLM")
    _check_gradient(_ref(family, X, y, 0.0), res.x, GTOL)


def test_statsmodels_frequency_weights():
    """Integer weights = repeated rows; statsmodels freq_weights is the oracle."""
    X, y = synthetic("poisson", n=300, d=3, seed=4)
    w = np.random.default_rng(6).integers(0, 4, len(y)).astype(np.float64)
    p = fc.GLM(X, y, family="poisson", sample_weight=w)
    res = fc.newton_cg(p, method="trust-region")
    assert res.success, res.message
    assert_close(res.x, oracle("poisson", X, y, 0.0, w), RTOL, "weighted Poisson")


@pytest.mark.parametrize("curvature,damping", [("ggn", 0.0), ("hessian", 0.5), ("ggn", 0.1)])
def test_curvature_and_damping_do_not_move_the_optimum(curvature, damping):
    """The GGN equals the Hessian for canonical-link GLMs; damping changes steps, not F.

    Damped Newton converges linearly, at rate about δ/(μ + δ) with μ ≈ 0.1 here (0.83 for
    δ = 0.5: ~100 iterations from ‖g‖ = 0.1 to 1e-8), hence max_iter=300."""
    X, y = synthetic("logistic", seed=7)
    p = fc.GLM(X, y, family="logistic", l2=1e-2)
    res = fc.newton_cg(p, curvature=curvature, damping=damping, max_iter=300)
    assert res.success, res.message
    assert_close(res.x, oracle("logistic", X, y, 1e-2), RTOL, f"{curvature}, δ={damping}")


# ---------------------------------------------------------------------- float32
F32 = [
    ("logistic", "dense", "line-search", None),
    ("multinomial", "csr", "trust-region", "diag"),
    ("gaussian", "dense", "line-search", "diag"),
    ("poisson", "dense", "trust-region", None),
]


@pytest.mark.parametrize("family,storage,method,precond", F32,
                         ids=["-".join(str(t) for t in f) for f in F32])
def test_float32(family, storage, method, precond):
    gtol = 1e-4
    l2 = 1e-2
    X, y = synthetic(family, seed=8, density=0.6 if storage == "csr" else None,
                     dtype=np.float32)
    p = fc.GLM(X, y, family=family, l2=l2)
    assert p.dtype == np.float32
    res = fc.newton_cg(p, gtol=gtol, method=method, preconditioner=precond)
    assert res.success, res.message
    assert res.x.dtype == np.float32
    K = p.n_outputs
    ref = _ref(family, X, y, l2, K=K)  # the float32 numbers, in float64
    x = res.x.astype(np.float64)
    g = ref.grad(x)
    assert np.max(np.abs(g)) <= gtol + 1e-5
    x_star = oracle(family, X, y, l2)
    H = ref.hessian(x_star)
    ev = np.linalg.eigvalsh(H)
    mu = ev[ev > 1e-10 * ev[-1]][0]  # skip the multinomial intercept null direction
    dist = np.linalg.norm(_center(x, p.n_features, K) - x_star)
    assert dist <= 2 * np.linalg.norm(g) / mu + 1e-6 * np.abs(x_star).max()


# ---------------------------------------------------------------------- result, callback, progress
def test_result_fields_history_callback_and_progress(capsys):
    X, y = synthetic("logistic", seed=9)
    p = fc.GLM(X, y, family="logistic", l2=1e-2)
    ref = _ref("logistic", X, y, 1e-2)
    calls = []
    res = fc.newton_cg(p, callback=lambda th, info: calls.append((th.copy(), dict(info))),
                       progress=True)
    out = capsys.readouterr().out
    assert isinstance(res, fc.NewtonResult)
    assert res.success is True and isinstance(res.message, str) and "onverged" in res.message
    assert isinstance(res.n_iter, int) and res.n_iter >= 1
    assert isinstance(res.n_hvp, int) and isinstance(res.n_cg, int)
    assert res.n_hvp >= res.n_cg >= res.n_iter  # at least one CG iteration per Newton step
    assert isinstance(res.fun, float) and isinstance(res.grad_norm, float)
    np.testing.assert_allclose(res.fun, ref.value(res.x), rtol=1e-12)
    # history: one dict per iteration, iteration 0 being the starting point
    assert isinstance(res.history, list) and len(res.history) == res.n_iter + 1
    keys = {"iter", "fun", "grad_norm", "n_cg", "step", "time"}
    for i, row in enumerate(res.history):
        assert isinstance(row, dict) and keys <= set(row)
        assert row["iter"] == i
    assert sum(row["n_cg"] for row in res.history) == res.n_cg
    np.testing.assert_allclose(res.history[0]["fun"], np.log(2.0), rtol=1e-14)  # θ = 0
    assert res.history[-1]["grad_norm"] == res.grad_norm
    # the objective decreases along a line-search run
    funs = [row["fun"] for row in res.history]
    assert all(b <= a for a, b in zip(funs[:-1], funs[1:], strict=True))
    # callback: once per iteration, with the iterate and its history row
    assert [info["iter"] for _, info in calls] == list(range(res.n_iter + 1))
    for th, info in calls:
        np.testing.assert_allclose(info["fun"], ref.value(th), rtol=1e-12)
    np.testing.assert_array_equal(calls[-1][0], res.x)
    # progress: a header and one line per iteration, starting with the iteration number
    lines = [ln for ln in out.splitlines() if ln.strip()]
    it_lines = [ln for ln in lines if ln.split()[0].isdigit()]
    assert [int(ln.split()[0]) for ln in it_lines] == list(range(res.n_iter + 1))


def test_progress_false_prints_nothing(capsys):
    X, y = synthetic("gaussian", n=100, d=3, seed=10)
    fc.newton_cg(fc.GLM(X, y, family="gaussian", l2=1e-2))
    assert capsys.readouterr().out == ""


def test_trust_region_history_and_callback():
    X, y = synthetic("poisson", seed=11)
    p = fc.GLM(X, y, family="poisson", l2=1e-2)
    iters = []
    res = fc.newton_cg(p, method="trust-region", callback=lambda th, info: iters.append(
        info["iter"]))
    assert res.success, res.message
    assert iters == list(range(res.n_iter + 1)) and len(res.history) == res.n_iter + 1


# ---------------------------------------------------------------------- edge cases
def test_one_feature():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((200, 1))
    y = (rng.random(200) < 1 / (1 + np.exp(-1.5 * X[:, 0]))).astype(np.float64)
    for method in ("line-search", "trust-region"):
        res = fc.newton_cg(fc.GLM(X, y, l2=1e-2), method=method)
        assert res.success and res.x.shape == (2,)
        assert_close(res.x, oracle("logistic", X, y, 1e-2), RTOL, method)


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
@pytest.mark.parametrize("family", ["logistic", "multinomial"])
def test_separable_without_penalty_stops_and_says_so(family, method):
    rng = np.random.default_rng(13)
    X = rng.standard_normal((200, 3))
    if family == "logistic":
        y = (X[:, 0] > 0).astype(np.float64)
    else:
        y = np.digitize(X[:, 0], [-0.5, 0.5])  # classes ordered along x0: separable
    p = fc.GLM(X, y, family=family, l2=0.0)
    res = fc.newton_cg(p, method=method, max_iter=100)
    assert res.success is False
    assert "separable" in res.message and "l2" in res.message
    assert res.n_iter < 100  # detected, not run to max_iter


def _runaway_cases():
    """(name, problem builder, intercept column index, direction +1/-1 it runs to)."""
    rng = np.random.default_rng(31)
    X = rng.standard_normal((120, 3))
    y3 = rng.integers(0, 3, 120)
    y3[y3 == 1] = 2  # class 1 absent: K = 3 inferred from the labels
    w = np.ones(120)
    ylog = (X[:, 0] > 0).astype(np.float64)
    w0 = w.copy()
    w0[ylog == 0] = 0.0  # every row of weight > 0 has y = 1
    return [
        ("logistic all ones", lambda: fc.GLM(X, np.ones(120), l2=1e-3), 3, +1),
        ("logistic all zeros", lambda: fc.GLM(X, np.zeros(120), l2=1e-3), 3, -1),
        ("logistic, the zeros weighted 0", lambda: fc.GLM(X, ylog, l2=1e-3, sample_weight=w0),
         3, +1),
        ("poisson all zeros", lambda: fc.GLM(X, np.zeros(120), family="poisson", l2=1e-3), 3,
         -1),
        ("multinomial class 1 absent", lambda: fc.GLM(X, y3, family="multinomial", l2=1e-3),
         3 * 3 + 1, -1),
        ("two logistic outputs, the second all ones",
         lambda: fc.GLM(X, np.column_stack([ylog, np.ones(120)]), l2=1e-3), 3 * 2 + 1, +1),
    ]


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
@pytest.mark.parametrize("case", range(6))
def test_runaway_intercept_stops_and_says_so(case, method):
    """With an intercept (never penalized), targets on one side of their range only leave the
    loss without a finite minimizer whatever l2: a fit stops before its first step, with
    success False and a message naming the cause (it ran to gtol and said "Converged", with
    the intercept wherever gtol stopped it). Independent check that the message is right: the
    loss keeps decreasing as that intercept moves on, by amounts that shrink but stay > 0."""
    name, build, j, sign = _runaway_cases()[case]
    p = build()
    res = fc.newton_cg(p, method=method)
    assert res.success is False and res.n_iter == 0, (name, res.message)
    assert "no finite minimizer" in res.message and "fit_intercept=False" in res.message
    theta = np.zeros(p.n_params)
    f = [p.value(theta + sign * t * np.eye(p.n_params)[j]) for t in (0, 4, 8, 12, 16)]
    assert np.all(np.diff(f) < 0), (name, f)


def test_runaway_intercept_message_names_the_cause():
    cases = {name: build() for name, build, _, _ in _runaway_cases()}
    assert "class 1 (of K = 3 classes)" in cases["multinomial class 1 absent"]._diverging_message(
        None)
    assert "y = 1" in cases["logistic all ones"]._diverging_message(None)
    assert "y = 0" in cases["logistic all zeros"]._diverging_message(None)
    assert "(output 1)" in cases["two logistic outputs, the second all ones"]._diverging_message(
        None)


def test_runaway_intercept_not_flagged_without_intercept_or_with_both_sides():
    """fit_intercept=False (l2 > 0: strongly convex) and data holding both sides (a single
    row of the other label, fractional logistic targets, a poisson count) fit as before."""
    rng = np.random.default_rng(32)
    X = rng.standard_normal((120, 3))
    ones = np.ones(120)
    one_zero = ones.copy()
    one_zero[5] = 0.0
    frac = np.full(120, 0.999)
    counts = np.zeros(120)
    counts[7] = 1.0
    for p in (fc.GLM(X, ones, l2=1e-3, fit_intercept=False),
              fc.GLM(X, one_zero, l2=1e-3), fc.GLM(X, frac, l2=1e-3),
              fc.GLM(X, counts, family="poisson", l2=1e-3),
              fc.GLM(X, np.array([0, 2] * 60), family="multinomial", l2=1e-3,
                     fit_intercept=False)):
        res = fc.newton_cg(p)
        assert res.success, res.message


def test_runaway_bias_of_an_mlp_stops_and_says_so():
    """An MLP's output biases are not penalized either: a softmax class without samples."""
    rng = np.random.default_rng(33)
    X = rng.standard_normal((60, 3))
    y = rng.integers(0, 2, 60) * 2  # labels 0 and 2 of 3 classes
    p = fc.MLP(X, y, sizes=(3, 4, 3), activation="tanh", loss="softmax_cross_entropy", l2=1e-2)
    res = fc.newton_cg(p, theta0=p.init(seed=0), method="trust-region")
    assert res.success is False and res.n_iter == 0
    assert "class 1" in res.message and "no finite minimizer" in res.message
    assert "output bias" in res.message and "fit_intercept" not in res.message


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_line_search_stops_when_rounding_hides_every_decrease(dtype):
    """gtol below what the dtype can resolve: the line search cycled through four iterates at
    max|grad| ~1e-9 for all max_iter iterations (float32, gtol = 1e-12) and then advised
    raising max_iter. It now stops after NOISE_STEPS accepted steps that change the loss by
    less than its rounding without lowering max|grad|, and says so."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = (X[:, 0] > 0).astype(np.float64)
    p = fc.GLM(X.astype(dtype), y, l2=1e-3)
    res = fc.newton_cg(p, gtol=1e-12 if dtype == np.float32 else 0.0, max_iter=100)
    assert res.success is False and res.n_iter < 30, res.message
    assert "measurable" in res.message or "no longer changes" in res.message
    assert "max_iter" not in res.message
    # the point reached is the optimum to the dtype's precision (float64 reference gradient)
    ref = fc.GLM(X, y, l2=1e-3)
    assert np.max(np.abs(ref.grad(res.x.astype(np.float64)))) <= (
        1e-5 if dtype == np.float32 else 1e-14)


def test_constant_columns():
    """A column of ones next to the intercept (identified only through l2 > 0) and an
    all-zero column (its coefficient's optimum is exactly 0 with l2 > 0)."""
    X0, y = synthetic("logistic", n=300, d=3, seed=14)
    X = np.column_stack([X0, np.ones(300), np.zeros(300)])
    l2 = 0.1
    expected = oracle("logistic", X, y, l2)
    for method, precond in (("line-search", "diag"), ("trust-region", None),
                            ("line-search", None), ("trust-region", "diag")):
        res = fc.newton_cg(fc.GLM(X, y, l2=l2), method=method, preconditioner=precond)
        assert res.success, (method, precond, res.message)
        assert_close(res.x, expected, RTOL, f"{method}/{precond}")
        assert abs(res.x[4]) <= 1e-12


def test_zero_column_without_penalty():
    """l2 = 0 and an all-zero column: the Hessian is singular along that coefficient (which
    does not change F); the other coefficients are statsmodels' fit without the column."""
    X0, y = synthetic("poisson", n=300, d=3, seed=15)
    X = np.column_stack([X0[:, :2], np.zeros(300), X0[:, 2:]])
    expected = oracle("poisson", X0, y, 0.0)
    for method, precond in (("line-search", "diag"), ("trust-region", None)):
        res = fc.newton_cg(fc.GLM(X, y, family="poisson"), method=method,
                           preconditioner=precond)
        assert res.success, (method, res.message)
        assert np.all(np.isfinite(res.x))
        assert_close(np.delete(res.x, 2), expected, RTOL, method)


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
def test_warm_start_at_optimum(method):
    X, y = synthetic("multinomial", n=200, seed=16)
    p = fc.GLM(X, y, family="multinomial", l2=1e-2)
    first = fc.newton_cg(p, method=method)
    assert first.success
    theta0 = first.x.copy()
    again = fc.newton_cg(p, theta0, method=method)
    assert again.success and again.n_iter == 0 and again.n_cg == 0
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(theta0, first.x)  # the start is not modified
    assert len(again.history) == 1


def test_warm_start_elsewhere_converges_to_same_point():
    X, y = synthetic("gaussian", seed=17)
    p = fc.GLM(X, y, family="gaussian", l2=1e-2)
    start = np.full(p.n_params, 3.0)
    res = fc.newton_cg(p, start, method="trust-region")
    assert res.success
    assert_close(res.x, oracle("gaussian", X, y, 1e-2), RTOL, "from a far start")
    assert np.all(start == 3.0)


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
def test_max_iter_one(method):
    X, y = synthetic("logistic", seed=18)
    res = fc.newton_cg(fc.GLM(X, y, l2=1e-2), max_iter=1, method=method)
    assert res.success is False
    assert "max_iter" in res.message
    assert res.n_iter == 1 and len(res.history) == 2


@pytest.mark.parametrize("kwargs", [
    dict(method="bfgs"), dict(curvature="fisher"), dict(preconditioner="jacobi"),
    dict(gtol=-1.0), dict(gtol=float("nan")), dict(max_iter=-1), dict(damping=-0.1),
    dict(cg_max_iter=0), dict(preconditioner="jacobi", max_iter=0),
    dict(preconditioner="cholesky", method="trust-region", max_iter=0),
    dict(theta0=np.ones(2)),
], ids=["method", "curvature", "preconditioner", "gtol-neg", "gtol-nan", "max_iter", "damping",
        "cg_max_iter-0", "preconditioner-no-iterations",
        "cholesky-trust-region-no-iterations", "theta0-short"])
def test_invalid_arguments(kwargs):
    """Refused up front, even when no Newton step would run (cg_max_iter=0 once turned the
    solver silently into gradient descent)."""
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name if name != "max_iter" else "max_iter"):
        fc.newton_cg(fc.GLM(X, y, l2=1e-2), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(cg_max_iter=2.7), dict(max_iter=3.0),
                                    dict(max_iter=True)], ids=["cg-float", "float", "bool"])
def test_non_integer_counts(kwargs):
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        fc.newton_cg(fc.GLM(X, y, l2=1e-2), **kwargs)


def test_invalid_problem_and_preconditioner_types():
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    p = fc.GLM(X, y, l2=1e-2)
    with pytest.raises(TypeError, match="preconditioner.*ndarray"):
        fc.newton_cg(p, preconditioner=np.ones(p.n_params))
    with pytest.raises(TypeError, match="problem"):
        fc.newton_cg(None)
    with pytest.raises(TypeError, match="callback must be callable"):  # not after a step
        fc.newton_cg(p, callback=3)
    with pytest.raises(TypeError, match="problem"):
        fc.HessianOperator(None, np.zeros(3))
    # a preconditioner operator of the wrong shape or a complex one is refused before any
    # pass over the data (scipy said "matrix and preconditioner have different shapes", or
    # raised a UFuncTypeError, after the first gradient)
    from scipy.sparse.linalg import aslinearoperator

    calls = []
    p.value_and_grad = lambda th, f=p.value_and_grad: calls.append(1) or f(th)
    with pytest.raises(ValueError, match=r"must be \(3, 3\).*got shape \(2, 2\)"):
        fc.newton_cg(p, preconditioner=aslinearoperator(np.eye(2)))
    with pytest.raises(TypeError, match="must be real"):
        fc.newton_cg(p, preconditioner=aslinearoperator(np.eye(3, dtype=complex)))
    assert not calls
    res = fc.newton_cg(p, preconditioner=aslinearoperator(np.eye(3)))
    assert res.success


def test_callback_gets_a_copy_of_the_iterate():
    """A callback that writes into its θ does not change the fit (it once received the live
    iterate, and the result's x no longer matched its fun)."""
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    p = fc.GLM(X, y, l2=1e-2)
    ref = fc.newton_cg(p, gtol=1e-10)
    res = fc.newton_cg(p, gtol=1e-10, callback=lambda t, row: t.__setitem__(slice(None), 100.0))
    assert res.success and np.array_equal(res.x, ref.x) and res.fun == p.value(res.x)


def test_kfac_preconditioner_reaches_the_same_optimum():
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    a = fc.newton_cg(fc.GLM(X, y, l2=1e-2), gtol=1e-10)
    b = fc.newton_cg(fc.GLM(X, y, l2=1e-2), gtol=1e-10, preconditioner="kfac")
    assert a.success and b.success
    np.testing.assert_allclose(b.x, a.x, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------- known bug
@pytest.mark.parametrize("method", ["line-search", "trust-region"])
def test_reaches_tight_gtol_on_a_quadratic(method):
    failures = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n, d = 200, 5
        X = 0.5 * rng.standard_normal((n, d))
        y = 0.5 * X @ rng.standard_normal(d) + rng.standard_normal(n)
        p = fc.GLM(X, y, family="gaussian", l2=1e-2)
        ref = _ref("gaussian", X, y, 1e-2)
        # the exact minimizer (one linear solve) has max|grad| ~ 1e-16: 1e-11 is attainable
        x_star = np.linalg.solve(ref.hessian(np.zeros(6)), -ref.grad(np.zeros(6)))
        assert np.max(np.abs(ref.grad(x_star))) < 1e-14
        res = fc.newton_cg(p, gtol=1e-11, method=method)
        if not res.success:
            failures.append((seed, res.grad_norm, res.n_iter, res.message))
    assert not failures, failures


def test_cholesky_preconditioner_same_optimum_fewer_cg():
    """preconditioner='cholesky' (dense curvature factor kept across steps) reaches the same
    optimum as plain CG, with fewer CG iterations on correlated features."""
    rng = np.random.default_rng(7)
    n, d = 2000, 12
    Z = rng.standard_normal((n, 3))
    X = Z @ rng.standard_normal((3, d)) + 0.05 * rng.standard_normal((n, d))  # correlated
    y = (X[:, 0] - X[:, 1] + rng.standard_normal(n) > 0).astype(float)
    p = fc.GLM(X, y, family="logistic", l2=1e-4)
    plain = fc.newton_cg(p, gtol=1e-10)
    chol = fc.newton_cg(p, gtol=1e-10, preconditioner="cholesky")
    assert plain.success and chol.success
    _assert_same_optimum(_ref("logistic", X, y, 1e-4), chol.x, plain.x)
    assert chol.n_cg < plain.n_cg
    # the multinomial null direction (common intercept shift) must not break the factor; the
    # optimum is unique only up to that shift, so intercepts are compared centered
    pm = fc.GLM(X, rng.integers(0, 3, n), family="multinomial", l2=1e-3)
    res = fc.newton_cg(pm, gtol=1e-9, preconditioner="cholesky")
    ref = fc.newton_cg(pm, gtol=1e-9)
    assert res.success

    def centered(x):
        x = x.copy()
        x[-3:] -= x[-3:].mean()
        return x

    np.testing.assert_allclose(centered(res.x), centered(ref.x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pm.value(res.x), pm.value(ref.x), rtol=1e-14)


def test_cholesky_preconditioner_errors(monkeypatch):
    X, y = synthetic("logistic", n=50, d=2, seed=19)
    p = fc.GLM(X, y, l2=1e-2)
    with pytest.raises(ValueError, match="line-search"):
        fc.newton_cg(p, method="trust-region", preconditioner="cholesky")
    import fastcurv.newton as nw
    monkeypatch.setattr(nw, "MAX_CHOLESKY_PARAMS", 2)
    with pytest.raises(ValueError, match="diag"):
        fc.newton_cg(p, preconditioner="cholesky")


def _illconditioned_logistic(n=2000, d=20, seed=7):
    """Mixed feature scales (1e-3 to 10) and correlations: plain CG needs ~20 iterations per
    late Newton step, so the Cholesky preconditioner has something to save."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.logspace(-3, 1, d)
    X = X @ (np.eye(d) + 0.3 * rng.standard_normal((d, d)))
    y = (X @ rng.standard_normal(d) * 0.3 + rng.standard_normal(n) > 0).astype(float)
    return X, y


def test_auto_preconditioner_never_estimates_on_easy_problems(monkeypatch):
    """preconditioner='auto' on a well-conditioned problem (no Newton step needs more than
    CHOLESKY_REFRESH_CG iterations) is plain CG: same iterates, no dense curvature built."""
    import fastcurv.newton as nw

    def boom(*a, **k):
        raise AssertionError("auto estimated or built a dense factor on an easy problem")

    monkeypatch.setattr(nw._Auto, "_estimate", boom)
    monkeypatch.setattr(nw, "_cholesky_preconditioner", boom)
    X, y = synthetic("logistic", n=400, d=5, seed=3)
    p = fc.GLM(X, y, l2=1e-2)
    plain = fc.newton_cg(p, gtol=1e-10)
    auto = fc.newton_cg(p, gtol=1e-10, preconditioner="auto")
    assert max(h["n_cg"] for h in plain.history) <= nw.CHOLESKY_REFRESH_CG
    assert auto.success and auto.n_cg == plain.n_cg
    np.testing.assert_array_equal(auto.x, plain.x)


@pytest.mark.parametrize("storage", ["dense", "csr"])
def test_auto_preconditioner_switches_to_cholesky(monkeypatch, storage):
    """Once a step needs many CG iterations and the CG time reaches the build estimate (forced
    to 0 here, so the switch is not timing-dependent), auto builds the Cholesky factor: the
    same optimum as plain CG (checked against the dense Newton system) with fewer CG steps."""
    import scipy.sparse as sp

    import fastcurv.newton as nw

    def instant(self):
        self.t_build = 0.0

    monkeypatch.setattr(nw._Auto, "_estimate", instant)
    X, y = _illconditioned_logistic()
    p = fc.GLM(sp.csr_matrix(X) if storage == "csr" else X, y, family="logistic", l2=1e-4)
    plain = fc.newton_cg(p, gtol=1e-10)
    auto = fc.newton_cg(p, gtol=1e-10, preconditioner="auto")
    assert plain.success and auto.success
    assert max(h["n_cg"] for h in plain.history) > nw.CHOLESKY_REFRESH_CG
    assert auto.n_cg < plain.n_cg
    ref = _ref("logistic", X, y, 1e-4)
    _check_gradient(ref, auto.x, 1e-10)
    _assert_same_optimum(ref, auto.x, plain.x)


def test_auto_preconditioner_estimate_and_fallbacks(monkeypatch):
    """The estimate is the multiply-adds of the dense Hessian and its factorization at the
    syrk rate, times the overhead factor (the rate, measured here, is positive and finite); a
    factor that fails (indefinite curvature) leaves auto on plain CG; with too many
    parameters, without a multiply-add count (an MLP), or with the trust-region method, auto
    is plain CG."""
    import fastcurv.newton as nw

    X, y = _illconditioned_logistic(n=20000, d=12)
    p = fc.GLM(X, y, family="logistic", l2=1e-4)
    rate = nw._syrk_rate()
    assert 0.0 < rate < np.inf
    monkeypatch.setattr(nw, "_syrk_rate", lambda: 1e9)
    a = nw._Auto(p, "hessian", nw._BlasThreads())
    assert a.eligible
    a._estimate()
    assert p._dense_curvature_macs() == 20000 * 13 * 14 / 2
    np.testing.assert_allclose(a.t_build, nw.AUTO_BUILD_OVERHEAD
                               * (20000 * 13 * 14 / 2 + 13**3 / 6) / 1e9, rtol=1e-14)
    pm = fc.GLM(X, np.arange(20000) % 3, family="multinomial", l2=1e-4)
    assert pm._dense_curvature_macs() == 20000 * (13 * 14 / 2 * 3 + 39 * 40 / 2)
    mlp = fc.MLP(X[:50], y[:50], sizes=(12, 3, 1), loss="sigmoid_cross_entropy")
    assert not nw._Auto(mlp, "ggn", nw._BlasThreads()).eligible

    monkeypatch.setattr(nw._Auto, "_estimate",
                        lambda self: setattr(self, "t_build", 0.0))

    def indefinite(*a, **k):
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(nw, "_cholesky_preconditioner", indefinite)
    plain = fc.newton_cg(p, gtol=1e-9)
    auto = fc.newton_cg(p, gtol=1e-9, preconditioner="auto")
    assert auto.success and auto.n_cg == plain.n_cg
    np.testing.assert_array_equal(auto.x, plain.x)
    tr = fc.newton_cg(p, gtol=1e-9, method="trust-region", preconditioner="auto")
    tr_plain = fc.newton_cg(p, gtol=1e-9, method="trust-region")
    assert tr.success and tr.n_cg == tr_plain.n_cg
    monkeypatch.setattr(nw, "AUTO_MAX_PARAMS", 5)
    assert nw._Auto(p, "hessian", nw._BlasThreads()).ladder == ["kfac"]
    monkeypatch.setattr(nw, "AUTO_MAX_KFAC_INPUTS", 12)
    assert not nw._Auto(p, "hessian", nw._BlasThreads()).eligible


def _illconditioned_multinomial(n=3000, d=20, K=4, seed=11):
    """Correlated features of mixed scales and K classes: plain CG needs many iterations per
    Newton step, and K-FAC's input factor (the feature Gram matrix) captures what makes it
    hard."""
    X, _ = _illconditioned_logistic(n=n, d=d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    eta = X @ rng.normal(0.0, 0.3, (d, K))
    y = np.argmax(eta + rng.gumbel(size=(n, K)), axis=1).astype(np.int64)
    return X, y


def test_auto_ladder_by_problem(monkeypatch):
    """Which preconditioners "auto" may buy, in order: the Cholesky factor alone for one
    output (K-FAC costs the same Gram pass there); K-FAC first for the multinomial (about K²
    times cheaper), then the Cholesky factor while that is offered (P <= AUTO_MAX_PARAMS);
    nothing for an MLP (no multiply-add counts) or a first-layer input beyond
    AUTO_MAX_KFAC_INPUTS."""
    import fastcurv.newton as nw

    def ladder(p):
        return nw._Auto(p, "hessian", nw._BlasThreads()).ladder

    X, y = _illconditioned_logistic(n=500, d=12)
    assert ladder(fc.GLM(X, y, l2=1e-3)) == ["cholesky"]
    assert ladder(fc.GLM(X, np.arange(500) % 5, family="multinomial", l2=1e-3)) == [
        "kfac", "cholesky"]
    Xw = np.random.default_rng(0).standard_normal((300, 120))
    pw = fc.GLM(Xw, np.arange(300) % 10, family="multinomial", l2=1e-3)  # P = 1,210
    assert ladder(pw) == ["kfac"]
    Xb = np.random.default_rng(1).standard_normal((300, 1100))
    assert ladder(fc.GLM(Xb, np.arange(300) % 2, l2=1e-3)) == ["kfac"]  # P = 1,101
    monkeypatch.setattr(nw, "AUTO_MAX_KFAC_INPUTS", 120)
    assert ladder(pw) == []
    mlp = fc.MLP(X[:50], y[:50], sizes=(12, 3, 1), loss="sigmoid_cross_entropy")
    assert ladder(mlp) == []


@pytest.mark.parametrize("storage", ["dense", "csr"])
def test_kfac_build_macs(storage):
    """K-FAC's build count: the input Gram matrix (dense n (d+1)(d+2)/2; CSR Σ nnz_i²/2 plus
    the dense (d+1)² result) and its eigendecomposition (10 (d+1)³), both cached on the
    problem once built, plus the output factor n K² at every iterate; None above the limit."""
    import scipy.sparse as sp

    X, y = synthetic("multinomial", n=200, d=6, K=3, seed=2, density=0.5)
    X = X if storage == "csr" else X.toarray()
    p = fc.GLM(X, y, family="multinomial", l2=1e-2)
    gram = (float(np.sum(np.diff(sp.csr_matrix(X).indptr) ** 2.0)) / 2 + 49
            if storage == "csr" else 200 * 7 * 8 / 2)
    assert p._kfac_build_macs(4096) == 200 * 9 + gram + 10 * 7**3
    assert p._kfac_build_macs(6) is None
    fc.newton_cg(p, gtol=1e-6, preconditioner="kfac")  # builds and caches A and its eigh
    assert p._kfac_build_macs(4096) == 200 * 9


def test_auto_buys_the_ladder_in_turn(monkeypatch):
    """The ski-rental rule on given step times: nothing while steps converge within
    CHOLESKY_REFRESH_CG iterations; after a harder step, the next rung once the CG time since
    the last purchase reaches AUTO_BUY_FRACTION of its estimated build time; a failed build
    falls back to the rung before and ends the purchases."""
    import fastcurv.newton as nw

    monkeypatch.setattr(nw, "_syrk_rate", lambda: 1e9)
    X, _ = _illconditioned_logistic(n=500, d=12)
    p = fc.GLM(X, np.arange(500) % 5, family="multinomial", l2=1e-3)
    a = nw._Auto(p, "hessian", nw._BlasThreads())
    price = nw.AUTO_BUILD_OVERHEAD * p._kfac_build_macs(nw.AUTO_MAX_KFAC_INPUTS) / 1e9
    assert nw.AUTO_BUY_FRACTION == 0.5
    a.after_step(0.2 * price, nw.CHOLESKY_REFRESH_CG)  # easy: no estimate
    assert a.current is None and a.t_build is None
    a.after_step(0.2 * price, nw.CHOLESKY_REFRESH_CG + 1)  # hard: estimated, 0.4 paid
    assert a.current is None
    np.testing.assert_allclose(a.t_build, price, rtol=1e-14)
    a.after_step(0.1 * price, 1)  # the rent paid reaches half the price
    assert a.current == "kfac" and a.ladder == ["cholesky"] and a.t_cg == 0.0
    a.after_step(1e6, 2)  # easy under K-FAC: keep it
    assert a.current == "kfac" and a.t_build is None
    a.after_step(0.0, 30)
    assert a.current == "cholesky" and not a.eligible
    a.give_up()
    assert a.current == "kfac" and not a.eligible


def test_auto_switches_to_kfac_on_a_multinomial(monkeypatch):
    """On a multinomial with correlated features (the build estimate forced to 0, so the
    switch is not timing-dependent; the Cholesky rung removed) auto preconditions with K-FAC
    after the first hard step: far fewer CG iterations than plain CG, the same optimum
    (checked against the dense Newton system and scikit-learn's fit)."""
    import fastcurv.newton as nw

    monkeypatch.setattr(nw._Auto, "_estimate", lambda self: setattr(self, "t_build", 0.0))
    monkeypatch.setattr(nw, "AUTO_MAX_PARAMS", 0)
    X, y = _illconditioned_multinomial()
    K, d, l2 = 4, X.shape[1], 1e-4
    p = fc.GLM(X, y, family="multinomial", l2=l2)
    plain = fc.newton_cg(p, gtol=1e-9)
    built = []
    real = nw._kfac_preconditioner
    monkeypatch.setattr(nw, "_kfac_preconditioner",
                        lambda *a: built.append(1) or real(*a))
    auto = fc.newton_cg(fc.GLM(X, y, family="multinomial", l2=l2), gtol=1e-9,
                        preconditioner="auto")
    assert plain.success and auto.success
    # plain CG up to the first step that needs more than CHOLESKY_REFRESH_CG iterations
    hard = next(i for i, h in enumerate(plain.history) if h["n_cg"] > nw.CHOLESKY_REFRESH_CG)
    assert [h["n_cg"] for h in auto.history[:hard + 1]] == [
        h["n_cg"] for h in plain.history[:hard + 1]]
    assert len(built) == auto.n_iter - hard  # K-FAC from the next step on
    assert auto.n_cg < 0.5 * plain.n_cg  # measured: 444 plain, 42 with K-FAC throughout
    ref = _ref("multinomial", X, y, l2, K=K)
    _check_gradient(ref, auto.x, 1e-9)
    # strong convexity off the one null direction (a common shift of the K intercepts)
    mu = np.linalg.eigvalsh(ref.hessian(auto.x))[1]
    gap = 2 * (np.linalg.norm(ref.grad(auto.x)) + np.linalg.norm(ref.grad(plain.x))) / mu
    for other in (plain.x, oracle("multinomial", X, y, l2)):
        assert np.linalg.norm(_center(auto.x, d, K) - _center(other, d, K)) <= gap + 1e-9
        np.testing.assert_allclose(ref.value(auto.x), ref.value(other), rtol=1e-13)


def test_auto_kfac_that_fails_falls_back_to_plain_cg(monkeypatch):
    """A K-FAC build that raises under "auto" (an overflowing factor, say) leaves the fit on
    plain CG: the same iterates as preconditioner=None."""
    import fastcurv.newton as nw

    monkeypatch.setattr(nw._Auto, "_estimate", lambda self: setattr(self, "t_build", 0.0))
    monkeypatch.setattr(nw, "AUTO_MAX_PARAMS", 0)

    def fails(*a):
        raise FloatingPointError("the K-FAC input factor A overflows")

    monkeypatch.setattr(nw, "_kfac_preconditioner", fails)
    X, y = _illconditioned_multinomial(n=1000)
    plain = fc.newton_cg(fc.GLM(X, y, family="multinomial", l2=1e-4), gtol=1e-9)
    auto = fc.newton_cg(fc.GLM(X, y, family="multinomial", l2=1e-4), gtol=1e-9,
                        preconditioner="auto")
    assert auto.success and auto.n_cg == plain.n_cg
    np.testing.assert_array_equal(auto.x, plain.x)
    with pytest.raises(FloatingPointError, match="overflows"):
        fc.newton_cg(fc.GLM(X, y, family="multinomial", l2=1e-4), preconditioner="kfac")


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
def test_a_full_step_that_overflows_is_backtracked(method):
    """From a start where the Poisson mean is ~e^-30 the first Newton step is ~1e13 long and
    exp(η) overflows there: the trial's gradient raises, the line search backtracks (the trust
    region shrinks) and the fit reaches the optimum found from zero."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = rng.poisson(2.0, 200).astype(float)
    p = fc.GLM(X, y, family="poisson")
    ref = fc.newton_cg(fc.GLM(X, y, family="poisson"))
    raised = []
    vg = p.value_and_grad

    def counting(theta):
        try:
            return vg(theta)
        except FloatingPointError:
            raised.append(1)
            raise

    p.value_and_grad = counting
    r = fc.newton_cg(p, theta0=np.array([0.0, 0.0, 0.0, -30.0]), method=method, max_iter=200)
    if method == "line-search":  # (the trust region's first radius is |g|: no overflow)
        assert raised, "no trial overflowed: the test does not test the path"
    assert r.success, r.message
    np.testing.assert_allclose(r.x, ref.x, rtol=1e-7, atol=1e-9)


def test_a_starting_point_that_overflows_is_a_failed_result():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 2))
    p = fc.GLM(X, rng.poisson(1.0, 50).astype(float), family="poisson")
    r = fc.newton_cg(p, theta0=np.array([0.0, 0.0, 800.0]))
    assert not r.success and r.n_iter == 0 and r.fun == np.inf
    assert r.message.startswith("The starting point is unusable") and "exp(eta)" in r.message


def test_cg_breakdown_from_a_huge_start_is_a_failed_result():
    """Logistic with l2 = 0 at |θ| = 1e200: the loss and gradient are finite but the Hessian
    underflows to exactly 0, so CG divides by zero; newton_cg says so instead of raising."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = (rng.random(40) < 0.5).astype(float)
    p = fc.GLM(X, y)
    th = np.array([1e200, -1e200, 1e200, -1e200])
    for pre in (None, "diag", "auto"):
        r = fc.newton_cg(p, th, preconditioner=pre)
        assert not r.success and r.message.startswith("CG broke down"), r.message
        np.testing.assert_array_equal(r.x, th)
        # the solve stops in the product that meets zero curvature: counted, with the CG
        # iterations before it
        assert r.n_hvp >= 1 and r.n_cg == r.n_hvp - 1
        assert "trust-region" in r.message and "add an L2 penalty" in r.message


def test_cg_breakdown_with_a_penalty_points_to_the_trust_region():
    """A saturated start with l2 > 0: the unpenalized intercept has exactly zero curvature,
    the line search's CG breaks down, and the message no longer asks for the L2 penalty that
    is already set; the trust-region method it points to converges from the same start."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 5))
    y = (X[:, 0] + 0.5 * rng.standard_normal(200) > 0).astype(float)
    p = fc.GLM(X, y, l2=1e-2)
    r = fc.newton_cg(p, theta0=np.full(6, 1e3))
    assert not r.success and r.message.startswith("CG broke down"), r.message
    assert "L2 penalty)" in r.message and "add an L2 penalty" not in r.message
    assert "method='trust-region'" in r.message
    t = fc.newton_cg(p, theta0=np.full(6, 1e3), method="trust-region")
    assert t.success
    assert_close(t.x, oracle("logistic", X, y, 1e-2), RTOL, "trust region")


def test_trust_region_refuses_preconditioners_it_cannot_apply():
    """Steihaug-Toint CG measures its region in a diagonal norm: K-FAC and a LinearOperator
    were accepted and silently ignored (K-FAC even built at every iterate)."""
    from scipy.sparse.linalg import aslinearoperator

    X, y = synthetic("logistic", n=60, d=3, seed=1)
    p = fc.GLM(X, y, l2=1e-2)
    for pre in ("kfac", "cholesky", aslinearoperator(np.eye(p.n_params))):
        with pytest.raises(ValueError, match="line-search"):
            fc.newton_cg(p, method="trust-region", preconditioner=pre)


@pytest.mark.parametrize("method", ["line-search", "trust-region"])
def test_a_step_that_no_longer_moves_theta_ends_the_fit(method):
    """float32 to a gtol below its rounding: once the accepted step rounds to no change of θ,
    every later step would too (a fit once spun to max_iter, paying a CG solve each time, and
    then advised raising max_iter)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 20)).astype(np.float32)
    y = (X @ rng.standard_normal(20) + rng.standard_normal(20000) > 0).astype(float)
    r = fc.newton_cg(fc.GLM(X, y, l2=1e-4), gtol=1e-12, max_iter=200, method=method)
    # (the trust region may first shrink below what float32 can measure: its own message)
    assert not r.success and ("rounding" in r.message or "measurable" in r.message), r.message
    assert "float32" in r.message and r.n_iter < 200


def test_cholesky_of_a_float32_singular_curvature_and_an_indefinite_one():
    """Collinear float32 columns with l2 = 0: the dense Hessian comes rounded to float32, so
    the Cholesky shift is relative to float32's eps (it was 1e-10 and the factorization
    failed with a bare "5-th leading minor is not positive definite"). An MLP's indefinite
    Hessian raises a LinAlgError that says what to do."""
    rng = np.random.default_rng(3)
    B = rng.standard_normal((2000, 4))
    X = (B @ rng.standard_normal((4, 34))).astype(np.float32)
    y = (B[:, 0] + rng.standard_normal(2000) > 0).astype(float)
    r = fc.newton_cg(fc.GLM(X, y, l2=0.0), gtol=1e-4, preconditioner="cholesky")
    assert r.success, r.message
    from mlp_reference import make_data, random_theta

    Xm, ym, _ = make_data("mse", 1, 30, 3, seed=4, weighted=False)
    m = fc.MLP(Xm, ym, sizes=(3, 6, 1), loss="mse")
    tm = random_theta((3, 6, 1), seed=3, scale=2.0)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite.*curvature='ggn'"):
        fc.newton_cg(m, tm, preconditioner="cholesky")


class _Quadratic:
    """A problem with only the public problem API: F(θ) = ½ θᵀAθ − bᵀθ."""

    def __init__(self, P=6, seed=0):
        rng = np.random.default_rng(seed)
        B = rng.standard_normal((P, P))
        self.A = B @ B.T + P * np.eye(P)
        self.b = rng.standard_normal(P)
        self.n_params, self.dtype = P, np.float64

    def init(self, seed=None):
        return np.zeros(self.n_params)

    def value(self, theta):
        return 0.5 * theta @ self.A @ theta - self.b @ theta

    def value_and_grad(self, theta):
        return self.value(theta), self.A @ theta - self.b

    def hvp(self, theta, v):
        return self.A @ v


def test_any_object_with_the_problem_api():
    """newton_cg and the operators take any object with the documented problem API (they
    used to need fastcurv's private _check_theta); what a chosen option needs beyond it
    (hessian_diag for "diag", K-FAC's layout) is refused up front by name."""
    q = _Quadratic()
    x = np.linalg.solve(q.A, q.b)
    for method in ("line-search", "trust-region"):
        r = fc.newton_cg(q, gtol=1e-12, method=method)
        assert r.success, r.message
        np.testing.assert_allclose(r.x, x, rtol=1e-10)
    r = fc.newton_cg(q, np.full(q.n_params, 0.5), gtol=1e-12)  # a warm start
    assert r.success
    np.testing.assert_allclose(fc.HessianOperator(q, x, damping=0.5) @ np.ones(6),
                               (q.A + 0.5 * np.eye(6)) @ np.ones(6), rtol=1e-14)
    with pytest.raises(ValueError, match="theta0"):
        fc.newton_cg(q, np.zeros(3))
    with pytest.raises(TypeError, match="hessian_diag"):
        fc.newton_cg(q, preconditioner="diag")
    with pytest.raises(TypeError, match="fastcurv.GLM or fastcurv.MLP"):
        fc.newton_cg(q, preconditioner="kfac")
    del_value = type("NoValue", (), {k: getattr(_Quadratic, k) for k in
                                     ("__init__", "init", "value_and_grad", "hvp")})
    with pytest.raises(TypeError, match="has no value"):
        fc.newton_cg(del_value())


def test_backtracking_compares_trials_with_the_same_sum(monkeypatch):
    """The backtracking trials phi(α) = F(θ + αd) (value_along) sum the losses in another
    order than value_and_grad, so they are compared with phi(0), not with F(θ): ulps must not
    decide the Armijo test. Shown with phi shifted by a constant (1e3 here, a few ulps in
    practice): the fit backtracks from a far start and reaches the same optimum, where
    comparing with F(θ) made every trial fail."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = rng.poisson(2.0, 200).astype(float)
    ref = fc.newton_cg(fc.GLM(X, y, family="poisson"), gtol=1e-10)
    real = fc.GLM.value_along
    calls = []

    def shifted(self, theta, d):
        calls.append(1)
        phi = real(self, theta, d)
        return lambda a: phi(a) + 1e3

    monkeypatch.setattr(fc.GLM, "value_along", shifted)
    r = fc.newton_cg(fc.GLM(X, y, family="poisson"), np.array([0.0, 0.0, 0.0, -30.0]),
                     gtol=1e-10, max_iter=200)
    assert calls, "no step backtracked: the test does not test the path"
    assert r.success, r.message
    np.testing.assert_allclose(r.x, ref.x, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- BLAS threads
def _blas_counts():
    """{"scipy": n, "numpy": n}: the thread counts of the OpenBLAS copies fastcurv switches."""
    from fastcurv import _blas

    return {name: get() for name, (_, get, _) in _blas._find().items()}


@pytest.fixture
def two_blas_threads():
    tpc = pytest.importorskip("threadpoolctl")
    from fastcurv import _blas

    if _blas._DISABLED or set(_blas._find()) != {"scipy", "numpy"}:
        pytest.skip("needs the OpenBLAS copies of the NumPy and SciPy wheels")
    with tpc.threadpool_limits(limits=2, user_api="blas"):
        assert _blas_counts() == {"scipy": 2, "numpy": 2}
        yield
    assert not any(_blas._USERS.values())


@pytest.mark.parametrize("order", ["call-inside-solve", "solve-inside-call"])
def test_a_solve_and_an_overlapping_call_leave_blas_as_they_found_it(two_blas_threads, order):
    """A solve and a call that needs one BLAS thread (an MLP product in another Python
    thread), overlapping either way: during both BLAS has one thread, and afterwards it has
    its two back. With the solver's own threadpoolctl limits, the call ending inside the
    solve gave SciPy's BLAS two threads under the solve, and the solve then restored the one
    thread it had found, for good."""
    from fastcurv import _blas

    X, y = synthetic("logistic", n=300, d=4, seed=2)
    seen, held = [], []

    def callback(theta, info):
        seen.append(_blas_counts())
        if order == "call-inside-solve" and info["iter"] == 1:
            held.append(_blas.one_thread())  # the call starts inside the solve ...
        if order == "solve-inside-call" and info["iter"] == 1:
            _blas.restore(held.pop())  # ... or ends inside it

    if order == "solve-inside-call":
        held.append(_blas.one_thread())
    r = fc.newton_cg(fc.GLM(X, y, l2=1e-2), callback=callback)
    assert r.success and len(seen) >= 3
    assert all(c == {"scipy": 1, "numpy": 1} for c in seen), seen
    if order == "call-inside-solve":
        assert _blas_counts()["scipy"] == 1  # the call still runs
        _blas.restore(held.pop())
    assert _blas_counts() == {"scipy": 2, "numpy": 2}


def test_the_solver_lifts_blas_for_its_factor_only_when_alone(two_blas_threads):
    """``preconditioner="cholesky"`` factors with the threads found on entry, unless another
    call holds BLAS on one thread (whose bits would change)."""
    from fastcurv import _blas

    X, y = synthetic("logistic", n=300, d=4, seed=3)
    p = fc.GLM(X, y, l2=1e-2)
    counts = []
    hessian = p.hessian

    def recording(theta):
        counts.append(_blas_counts()["scipy"])
        return hessian(theta)

    p.hessian = recording
    assert fc.newton_cg(p, preconditioner="cholesky").success
    alone, counts[:] = list(counts), []
    token = _blas.one_thread()
    try:
        assert fc.newton_cg(p, preconditioner="cholesky").success
    finally:
        _blas.restore(token)
    assert alone and set(alone) == {2} and counts and set(counts) == {1}, (alone, counts)
    assert _blas_counts() == {"scipy": 2, "numpy": 2}


def test_trust_region_warm_start_in_float32_is_not_stopped_by_a_small_first_radius():
    """The trust region's "shrank below rounding" stop was tested on every iteration and on
    the radius (in the preconditioner's norm) against ‖θ‖: a float32 ridge fit warm-started
    1e-3 from a solution of norm ~120 starts with radius ‖g‖ ~ 1e-3 and stopped after one
    accepted step with max|grad| 100 times gtol (a review's finding). It now stops only on a
    rejected step shorter than θ's rounding. Checked: max|∇F| from the float64 reference."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((2000, 20)).astype(np.float32)
    y = X @ (40.0 * rng.standard_normal(20)) + rng.standard_normal(2000)
    p = fc.GLM(X, y, family="gaussian", l2=1e-4)
    sol = fc.newton_cg(p, gtol=1e-5)
    assert sol.success and np.linalg.norm(sol.x) > 100
    for pc in (None, "diag"):
        r = fc.newton_cg(p, sol.x + np.float32(1e-3), gtol=1e-5, method="trust-region",
                         preconditioner=pc)
        ref = RefGLM(X.astype(np.float64), y, "gaussian", 1, l2=1e-4)
        assert r.success, (pc, r.message)
        assert np.max(np.abs(ref.grad(r.x.astype(np.float64)))) <= 1e-5 + 1e-5, pc


def test_diag_preconditioner_of_an_indefinite_hessian_bounds_every_coordinate():
    """An MLP's Hessian away from a minimum has negative diagonal entries; the Jacobi
    preconditioner clamped them to 1e-12 mean|D|, so the trust region's M-norm hardly bounded
    those coordinates: Steihaug's steps reached 1e6-1e7 and a dozen in a row were rejected
    (max|grad| 0.41 after 60 iterations, against 7e-3 without a preconditioner). It now uses
    |D| (the same for a semidefinite curvature): the diagonal is checked against |D| from
    ``hessian_diag``, and the fit must do at least as well as the unpreconditioned one."""
    from fastcurv.newton import _diag_preconditioner

    rng = np.random.default_rng(4)
    X = rng.standard_normal((600, 8))
    Y = np.column_stack([np.sin(X[:, 0]), X[:, 1] ** 2])
    p = fc.MLP(X, Y, sizes=(8, 10, 2), activation="gelu", loss="mse", l2=1e-3)
    th0 = p.init(seed=0)
    D = p.hessian_diag(th0)
    assert (D < 0).sum() >= 5
    for mix in (1.0, 0.5):
        Dm = _diag_preconditioner(p, th0, "hessian", 0.0, mix)
        np.testing.assert_allclose(Dm, (1 - mix) * np.mean(np.abs(D)) + mix * np.abs(D),
                                   rtol=1e-12)
    runs = {pc: fc.newton_cg(p, th0, gtol=1e-7, method="trust-region", preconditioner=pc,
                             max_iter=60) for pc in (None, "diag")}
    assert runs["diag"].grad_norm <= runs[None].grad_norm, {k: r.grad_norm
                                                            for k, r in runs.items()}


def test_cholesky_preconditioner_of_a_float32_ggn_survives_its_rounding(monkeypatch):
    """The GGN is positive semidefinite by construction, but a float32 MLP's dense GGN had an
    eigenvalue of -8.9e-8 along the softmax's null direction against the factor's shift of
    6.8e-8 (16 eps32 mean|diag|): ``newton_cg(..., curvature="ggn",
    preconditioner="cholesky")`` raised LinAlgError telling the user to do what the call
    did. The shift now grows tenfold (up to 1000x) for a semidefinite curvature; an
    indefinite Hessian still raises. The fit must run through every rebuild and decrease F."""
    import fastcurv.newton as newton_module
    from fastcurv.newton import _cholesky_preconditioner

    rng = np.random.default_rng(4)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    y = rng.integers(0, 3, 600).astype(float)
    p = fc.MLP(X, y, sizes=(8, 10, 3), activation="sigmoid", loss="softmax_cross_entropy",
               l2=1e-3)
    th0 = p.init(seed=0)
    built = []

    def build(*args):
        built.append(_cholesky_preconditioner(*args))
        return built[-1]

    monkeypatch.setattr(newton_module, "_cholesky_preconditioner", build)
    # the factor is rebuilt as CG slows down; the sixth build (at ‖θ‖ ~ 30) raised
    r = fc.newton_cg(p, th0, gtol=1e-4, curvature="ggn", preconditioner="cholesky")
    assert len(built) >= 6
    assert np.isfinite(r.fun) and r.fun < p.value(th0)
    g = p.grad(r.x)
    s = built[-1].matvec(g)
    assert np.all(np.isfinite(s)) and float(s @ g) > 0  # positive definite: a descent sign


def _softmax_mlp_pair(seed=1, n=300, d=6, K=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, K, n).astype(float)
    kw = dict(sizes=(d, 10, K), l2=1e-2, loss="softmax_cross_entropy")
    return fc.MLP(X, y, **kw), fc.MLP(X.astype(np.float64), y, **kw)


def test_float32_gauss_newton_fits_reach_the_float64_optimum():
    """Two float32 Gauss-Newton fits of a softmax MLP stopped far from the optimum saying no
    decrease was measurable in float32 (a review's finding):

    * line search with the Cholesky preconditioner crawled at step sizes ~1e-4 and stopped at
      max|grad| 7.1e-4: the εI-shifted factor is 1/ε times larger along the softmax's null
      direction, and steps far along it round every float32 logit. The preconditioner now
      projects that direction out (:func:`fastcurv.newton._cholesky_preconditioner`), which
      is checked directly here;
    * the trust region with the diagonal preconditioner stopped at max|grad| 3.0e-4 on a
      rejected step of 1e3 eps32 ‖θ‖ = 1e-2, far above θ's rounding; the bound is now 10
      eps ‖θ‖, and the line search's noise stop waits 20 steps instead of 5.

    The trust-region fit ends within float32's reach of the float64 fit (same start, same
    method). The line-search fit's end is not asserted: on these random labels, unpenalized
    first-layer biases drive some tanh units to saturation (|z| up to 12 for every row), and
    where the float32 fit then stops depends on details as small as the factor's shift:
    16 eps gave max|grad| 2.8e-6, 64 eps 1.1e-3, 256 eps 7.5e-4 (measured with the tanh
    derivative of before and after its exact complement alike; the float64 fit itself needs
    197 iterations)."""
    p32, p64 = _softmax_mlp_pair()
    kw = dict(method="trust-region", preconditioner="diag")
    want = fc.newton_cg(p64, gtol=1e-7, max_iter=3000, curvature="ggn", **kw)
    assert want.success
    got = fc.newton_cg(p32, gtol=1e-7, max_iter=3000, curvature="ggn", **kw)
    assert got.grad_norm < 5e-5, (kw, got.grad_norm, got.message)
    # the float64 objective at the float32 answer, within a few float32 roundings of F
    f64 = p64.value(got.x.astype(np.float64))
    assert abs(f64 - want.fun) <= 20 * np.finfo(np.float32).eps * want.fun, (f64, want.fun)
    # the Cholesky preconditioner leaves the softmax's null direction (the common shift of
    # the output biases) out of every vector it returns
    from fastcurv._nullspace import null_rows, project_out
    from fastcurv.newton import _cholesky_preconditioner

    M = _cholesky_preconditioner(p32, got.x, "ggn", 0.0)
    R = np.random.default_rng(0).standard_normal((p32.n_params, 4)).astype(np.float32)
    Z = np.asarray(M.matmat(R), dtype=np.float64)
    along = Z - project_out(null_rows(p32), Z.copy())
    assert np.abs(along).max() <= 1e-6 * np.abs(Z).max()


@pytest.mark.parametrize("loss,K", [("softmax_cross_entropy", 2), ("sigmoid_cross_entropy", 1)])
def test_mlp_on_separable_data_without_penalty_stops_as_separable(loss, K):
    """An MLP with l2 = 0 that classifies every sample correctly has no finite minimizer
    (scaling its last layer lowers every loss). newton_cg reported success=True there (F ~1e-9,
    ‖θ‖ growing), though its Notes promise the separable stop the GLMs have (a review's
    finding). The network outputs come from numpy here, to check the stop's claim."""
    rng = np.random.default_rng(0)
    n, d = 60, 2
    X = rng.standard_normal((n, d))
    y = (X[:, 0] > 0).astype(float)
    p = fc.MLP(X, y, sizes=(d, 4, K), activation="tanh", loss=loss, l2=0.0)
    res = fc.newton_cg(p, p.init(0), gtol=1e-8, max_iter=200, method="trust-region")
    assert not res.success and "separable" in res.message
    (W1, b1), (W2, b2) = [(A[:-1], A[-1]) for A in p.unflatten(res.x)]
    eta = np.tanh(X @ W1 + b1) @ W2 + b2
    pred = eta.argmax(axis=1) if K == 2 else (eta[:, 0] > 0)
    assert np.array_equal(pred, y.astype(bool) if K == 1 else y)
    t = res.x.copy()
    t[W1.size + b1.size:] *= 2.0  # the last layer doubled: a lower loss
    assert p.value(t) < res.fun
    # with a penalty there is a minimizer: no separable stop
    assert fc.newton_cg(fc.MLP(X, y, sizes=(d, 4, K), activation="tanh", loss=loss,
                               l2=1e-3), p.init(0), gtol=1e-7, max_iter=300,
                        method="trust-region").success


def _ref_optimum(X, y, family, l2):
    """The minimizer by scipy's trust-exact on tests/reference.py's dense objective."""
    from scipy.optimize import minimize

    ref = RefGLM(X, y, family, 1, l2)
    res = minimize(ref.value, np.zeros(X.shape[1] + 1), jac=ref.grad, hess=ref.hessian,
                   method="trust-exact", options={"gtol": 1e-12})
    return ref, res


def test_float32_kfac_preconditioner_keeps_every_direction():
    """The K-FAC preconditioner's damping floor (1e-8 of the top eigenvalue) lay below the
    level at which a float32 inverse drops directions as rounding (151 x float32 eps): on
    correlated features 145 of 151 directions were dropped, M⁻¹ was singular, and the fit
    stopped 1.8e-2 above the optimum after 1,513 CG iterations, saying the remaining
    decrease was below float32 rounding (a review; ``auto`` took K-FAC the same way)."""
    rng = np.random.default_rng(4)
    n, d = 4000, 150
    Z = rng.standard_normal((n, 5))
    X = (Z @ rng.standard_normal((5, d)) + 0.01 * rng.standard_normal((n, d))).astype(
        np.float32)
    eta = (X @ rng.standard_normal(d).astype(np.float32)) * 0.05
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    ref, opt = _ref_optimum(X.astype(np.float64), y, "logistic", 1e-6)
    p = fc.GLM(X, y, family="logistic", l2=1e-6)
    res = fc.newton_cg(p, gtol=1e-5, preconditioner="kfac")
    assert res.success, res.message
    assert res.n_cg < 200
    assert ref.value(res.x.astype(np.float64)) - opt.fun < 1e-6


def test_float32_auto_preconditioner_on_a_large_multinomial_converges():
    """``preconditioner="auto"`` (the command line's default) takes K-FAC for a multinomial
    problem above 1,024 parameters: in float32 it ran 6,018 CG iterations (4.8 s) and
    stopped 1.7e-2 above the optimum (without a preconditioner: 0.2 s). The gradient at
    the result by the dense reference (the objective is convex)."""
    rng = np.random.default_rng(5)
    n, d = 3000, 400
    Z = rng.standard_normal((n, 8))
    X = (Z @ rng.standard_normal((8, d)) + 0.01 * rng.standard_normal((n, d))).astype(
        np.float32)
    y = rng.integers(0, 3, n).astype(float)
    p = fc.GLM(X, y, family="multinomial", l2=1e-6)
    assert p.n_params > 1024
    res = fc.newton_cg(p, gtol=1e-5, preconditioner="auto")
    assert res.success, res.message
    assert res.n_cg < 300
    ref = RefGLM(X.astype(np.float64), y, "multinomial", 3, 1e-6)
    assert np.abs(ref.grad(res.x.astype(np.float64))).max() < 2e-5


def test_ill_conditioned_breakdown_names_the_scaling_and_its_fixes():
    """One feature scaled by 1e8 (l2 = 0): the line search's CG meets a curvature 1e-16 of
    the largest, and the message blamed parameters "as large as max|theta| = 0.855" and a
    missing penalty (a review). It now names the ill-conditioning and the fixes, which
    reach the optimum of the unscaled problem."""
    rng = np.random.default_rng(1)
    n, d = 2000, 5
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ rng.standard_normal(d))))).astype(float)
    _, opt = _ref_optimum(X, y, "logistic", 0.0)
    Xs = X.copy()
    Xs[:, 0] *= 1e8
    p = fc.GLM(Xs, y, family="logistic")
    r = fc.newton_cg(p)
    if not r.success:  # where this machine's rounding lets CG through, nothing to check
        assert r.message.startswith("CG broke down"), r.message
        assert "ill-conditioned" in r.message and "preconditioner='diag'" in r.message
        assert "standardize the features" in r.message
    want = opt.x.copy()
    want[0] /= 1e8
    for kw in (dict(method="trust-region"), dict(preconditioner="diag")):
        t = fc.newton_cg(p, **kw)
        assert t.success, (kw, t.message)
        np.testing.assert_allclose(t.x[1:], want[1:], rtol=0, atol=1e-6)
        np.testing.assert_allclose(t.x[0] * 1e8, opt.x[0], rtol=0, atol=1e-6)


def test_trust_region_is_invariant_to_the_scale_of_the_gradient():
    """Ridge regression with its targets multiplied by 1e8 ... 1e80: the minimizer scales
    exactly. Steihaug's negative-curvature test compared dᵀAd with |g|²: from targets of 1e20
    every CG solve of this positive definite problem ended as "negative curvature" (27
    iterations for 7), and from 1e77 the boundary step overflowed and newton_cg raised (a
    review). Against numpy.linalg.solve."""
    rng = np.random.default_rng(9)
    n, d = 800, 5
    X = rng.standard_normal((n, d))
    z = rng.standard_normal(n)
    l2 = 1e-3
    Xa = np.c_[X, np.ones(n)]
    A = Xa.T @ Xa / n + l2 * np.diag(np.r_[np.ones(d), 0.0])
    iters = []
    for s in (1e8, 1e20, 1e80):
        want = np.linalg.solve(A, Xa.T @ (s * z) / n)
        r = fc.newton_cg(fc.GLM(X, s * z, family="gaussian", l2=l2), method="trust-region",
                         gtol=1e-8 * s)
        assert r.success, (s, r.message)
        np.testing.assert_allclose(r.x, want, rtol=0, atol=1e-6 * np.abs(want).max())
        iters.append(r.n_iter)
    assert len(set(iters)) == 1, iters


def test_steihaug_takes_newton_steps_at_any_curvature_scale():
    """Steihaug's curvature test compared dᵀAd with 1e-14 ‖d‖² without a preconditioner: on
    A = c I with c <= 5e-15 it reported negative curvature and stepped to the boundary, 10
    times the Newton step (a review). Against the closed form −g / c."""
    from scipy.sparse.linalg import aslinearoperator

    from fastcurv.newton import _steihaug

    g = np.array([1.0, -2.0, 0.5])
    for c in (1e-2, 1e-14, 5e-15, 1e-20, 1e-30):
        newton = -g / c
        radius = 10 * np.linalg.norm(newton)
        s, As, _, how = _steihaug(aslinearoperator(c * np.eye(3)), g, radius, 1e-10, 50, None)
        assert how == "converged", (c, how)
        np.testing.assert_allclose(s, newton, rtol=1e-12)
    # negative and zero curvature are still caught
    for c in (-1e-20, 0.0, -1.0):
        _, _, _, how = _steihaug(aslinearoperator(c * np.eye(3)), g, 1.0, 1e-10, 50, None)
        assert how == "negative curvature", (c, how)
    # a subnormal positive curvature along d with a zero entry: ‖Ad‖² underflowed, the
    # relative bound was 0, and ry / dᵀAd = inf gave inf · 0 = NaN (a second review; a
    # logistic fit with an all-zero column from a start 720 margins off then broke down)
    for lam in (1e-200, 1e-310, 4e-322):
        A = aslinearoperator(np.diag([lam, lam, 1.0]))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # as newton_cg
            s, As, _, _ = _steihaug(A, np.array([1.0, 1.0, 0.0]), 10.0, 0.1, 10, None)
        np.testing.assert_allclose(s, [-np.sqrt(50.0), -np.sqrt(50.0), 0.0], rtol=1e-14)
        assert np.all(np.isfinite(As))


def test_line_search_jacobi_keeps_saturated_biases_in_place():
    """Jacobi's diagonal is floored at 1e-12 of its mean. Without the floor (tried this
    session, to undo column scales spread beyond 1e6) a saturated tanh unit's unpenalized
    bias, with a Gauss-Newton curvature 2e-26 of the mean and a gradient of 7e-16, took a
    step of 3.6e11: eight of 16 biases ended near 1e31 (their units dead) and the fit
    stopped 1.6% above the optimum (a review). Against L-BFGS on the dense reference from
    the same saturated start."""
    from mlp_reference import RefMLP
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 10))
    y = np.tanh(X[:, 0]) + 0.1 * rng.standard_normal(500)
    sizes = (10, 16, 1)
    p = fc.MLP(X, y, sizes=sizes, activation="tanh", loss="mse", l2=1e-3)
    parts = p.unflatten(p.init(seed=0))
    parts[0][:] *= 20.0  # saturated units
    th0 = p.flatten(parts)
    r = fc.newton_cg(p, th0, gtol=1e-6, max_iter=200, preconditioner="diag",
                     curvature="ggn")
    assert r.success, r.message
    assert np.abs(r.x).max() < 1e3
    ref = RefMLP(X, y, sizes, "tanh", "mse", 1e-3)
    opt = minimize(ref.value, th0, jac=ref.grad_bp, method="L-BFGS-B",
                   options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
    # stopped at gtol = 1e-6: within 1e-5 of the optimum's value (the runaway: 1.6e-2)
    assert ref.value(r.x) - opt.fun < 1e-5 * opt.fun


def test_no_decrease_message_suggests_only_what_the_fit_lacks():
    """The line search's "no decrease" message suggested an L2 penalty to a fit that had one
    (a review); it names only the fixes the fit does not already use."""
    from fastcurv.newton import _no_decrease_message

    X = np.ones((4, 1))
    y = np.array([0.0, 1.0, 0.0, 1.0])
    with_l2 = fc.GLM(X, y, l2=1e-3)
    without = fc.GLM(X, y)
    m = _no_decrease_message(3, 1e-2, -1.0, 1.0, with_l2, 0.0)
    assert m.endswith("Try method='trust-region' or damping > 0."), m
    m = _no_decrease_message(3, 1e-2, -1.0, 1.0, without, 0.0)
    assert m.endswith("Try method='trust-region', damping > 0 or an L2 penalty."), m
    m = _no_decrease_message(3, 1e-2, -1.0, 1.0, with_l2, 1e-4)
    assert m.endswith("Try method='trust-region'."), m
    # a slope at rounding level: the rounding advice
    assert "below float64 rounding" in _no_decrease_message(3, 1e-9, -1e-20, 1.0, without, 0.0)
