"""fc.Influence and fc.loo_refit against dense references built independently.

References: per-sample gradients and Hessians of the GLM reference (tests/reference.py) and
the complex-step MLP reference (tests/mlp_reference.py); (H + δI)⁻¹ by numpy's dense solve
or pseudo-inverse; leave-one-out by actual refits.
"""

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from mlp_reference import RefMLP, make_data, random_theta
from reference import RefGLM

import fastcurv as fc
from fastcurv.influence import influence as influence_mod

METHODS = [("direct", {}), ("cg", {}), ("cg", {"preconditioner": "diag"}),
           ("cg", {"preconditioner": "kfac"}), ("cg", {"preconditioner": "nystrom", "rank": 3}),
           ("lissa", {}), ("arnoldi", {"rank": 10**6}), ("nystrom", {"rank": 10**6})]
#: relative max-norm error allowed against the dense solve; LiSSA stops on a relative step of
#: 1e-10, which leaves ~1e-9 of the geometric tail at these condition numbers
TOL = {"direct": 1e-9, "cg": 1e-7, "lissa": 1e-6, "arnoldi": 1e-9, "nystrom": 1e-7}


def _logistic(n=120, d=4, seed=0, l2=1e-2, sparse=False, weighted=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + 15, d))
    y = (X @ rng.standard_normal(d) + rng.standard_normal(n + 15) > 0).astype(float)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    Xtr = sp.csr_matrix(np.where(np.abs(X) < 0.3, 0.0, X)[:n]) if sparse else X[:n]
    p = fc.GLM(Xtr, y[:n], family="logistic", l2=l2, sample_weight=w)
    theta = fc.newton_cg(p, gtol=1e-12).x
    tp = p.with_data(X[n:], y[n:])
    return p, tp, theta


def _ref_scores(p, tp, theta, damping):
    """Dense g_tᵀ (H + δI)⁻¹ g_i from the GLM reference."""
    rp = RefGLM(p.X, p.y, p.family, p.n_outputs, p.l2, p.fit_intercept, p.sample_weight)
    rt = RefGLM(tp.X, tp.y, tp.family, tp.n_outputs, tp.l2, tp.fit_intercept)
    H = rp.hessian(theta) + damping * np.eye(p.n_params)
    Gi, Gt = rp.per_sample_grads(theta), rt.per_sample_grads(theta)
    return Gt @ np.linalg.solve(H, Gi.T), H, Gi


@pytest.mark.parametrize("damping", [1e-8, 0.1])
@pytest.mark.parametrize("method,opts", METHODS,
                         ids=[m + "-" + "-".join(map(str, o.values())) for m, o in METHODS])
def test_every_method_agrees_with_the_dense_solve(method, opts, damping):
    p, tp, theta = _logistic()
    want, _, _ = _ref_scores(p, tp, theta, damping)
    inf = fc.Influence(p, theta, method=method, damping=damping, **opts)
    got = inf.scores(tp)
    assert got.shape == (tp.n_samples, p.n_samples)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < TOL[method], err


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kfac_methods_are_approximations_that_correlate(method):
    p, tp, theta = _logistic(n=300, d=5)
    want, _, _ = _ref_scores(p, tp, theta, 1e-3)
    got = fc.Influence(p, theta, method=method, damping=1e-3).scores(tp)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_kfac_methods_approximate_the_ggn_and_take_mc_samples():
    """K-FAC approximates the Gauss-Newton matrix: its curvature is "ggn" and asking it for
    the Hessian is an error (the option was silently ignored). ``mc_samples`` reaches the
    sampled Fisher (an unknown option before): with many labels per row its scores approach
    the type-2 (expected) factors' scores, with one they are further off."""
    p, tp, theta = _logistic(n=300, d=5)
    for method in ("kfac", "ekfac"):
        assert fc.Influence(p, theta, method=method).curvature == "ggn"
        assert "curvature='ggn'" in repr(fc.Influence(p, theta, method=method, curvature="ggn"))
        with pytest.raises(ValueError, match="approximates the Gauss-Newton matrix"):
            fc.Influence(p, theta, method=method, curvature="hessian")
    assert fc.Influence(p, theta, method="cg").curvature == "hessian"
    exp = fc.Influence(p, theta, method="kfac", damping=1e-3).scores(tp)

    def mc_error(m):
        got = fc.Influence(p, theta, method="kfac", damping=1e-3, fisher="mc", seed=3,
                           mc_samples=m).scores(tp)
        again = fc.Influence(p, theta, method="kfac", damping=1e-3, fisher="mc", seed=3,
                             mc_samples=m).scores(tp)
        assert np.array_equal(got, again)  # seeded
        return np.abs(got - exp).max() / np.abs(exp).max()

    e1, e400 = mc_error(1), mc_error(400)
    assert e400 < 0.05 and e400 < e1 / 5, (e1, e400)


def test_scores_are_symmetric_in_the_two_sets_and_csr_equals_dense():
    p, tp, theta = _logistic()
    inf = fc.Influence(p, theta, method="direct", damping=1e-6)
    a = inf.scores(tp)
    b = inf.scores(p, against=tp)
    np.testing.assert_allclose(a, b.T, rtol=1e-10, atol=1e-14)
    ps, tps, ts = _logistic(sparse=True)
    pd_ = fc.GLM(ps.X.toarray(), ps.y, family="logistic", l2=ps.l2, sample_weight=ps._w)
    np.testing.assert_allclose(fc.Influence(ps, ts, "direct").scores(tps),
                               fc.Influence(pd_, ts, "direct").scores(tps), rtol=1e-10,
                               atol=1e-13)


def test_self_influence_and_params_change():
    p, _, theta = _logistic()
    inf = fc.Influence(p, theta, method="cg", damping=1e-4)
    _, H, Gi = _ref_scores(p, p, theta, 1e-4)
    want = np.einsum("ip,pi->i", Gi, np.linalg.solve(H, Gi.T))
    np.testing.assert_allclose(inf.self_influence(), want, rtol=1e-7)
    np.testing.assert_allclose(inf.self_influence(rows=[5, 2]), want[[5, 2]], rtol=1e-7)
    c = p._w / p._w.sum()
    dp = inf.params_change([3, 7])
    np.testing.assert_allclose(dp, c[[3, 7], None] * np.linalg.solve(H, Gi[[3, 7]].T).T,
                               rtol=1e-7, atol=1e-12)


def test_top_k_streams_to_the_same_answer(monkeypatch):
    p, tp, theta = _logistic(n=200)
    inf = fc.Influence(p, theta, method="direct", damping=1e-6)
    S = inf.scores(tp)
    monkeypatch.setattr(influence_mod, "_SCORE_BLOCK_ELEMENTS", 15 * 7)  # blocks of 7 rows
    for helpful, sign in ((True, 1), (False, -1)):
        idx, vals = inf.top_k(tp, k=6, helpful=helpful)
        order = np.argsort(-sign * S, axis=1, kind="stable")[:, :6]
        np.testing.assert_array_equal(idx, order)
        np.testing.assert_allclose(vals, np.take_along_axis(S, order, axis=1), rtol=1e-12)
    idx, _ = inf.top_k(tp, k=10**6, rows=[4, 9, 1])
    assert idx.shape == (tp.n_samples, 3) and set(idx[0]) == {1, 4, 9}
    with pytest.raises(ValueError, match="k must be"):
        inf.top_k(tp, k=0)


def test_scores_written_to_npy_resume_after_an_interruption(tmp_path, monkeypatch):
    p, tp, theta = _logistic(n=200)
    inf = fc.Influence(p, theta, method="direct")
    want = inf.scores(tp)
    monkeypatch.setattr(influence_mod, "_SCORE_BLOCK_ELEMENTS", 15 * 40)  # 5 blocks
    path = tmp_path / "scores.npy"
    real = fc.Influence._dots
    calls = []

    def failing(self, S, idx, a, b, target=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(a)
        return real(self, S, idx, a, b, target)

    monkeypatch.setattr(fc.Influence, "_dots", failing)
    with pytest.raises(KeyboardInterrupt):
        inf.scores(tp, out=path)
    assert json.loads((tmp_path / "scores.npy.progress.json").read_text())["done"] == [0, 1, 2]
    monkeypatch.setattr(fc.Influence, "_dots", real)
    seen = []
    monkeypatch.setattr(fc.Influence, "_dots",
                        lambda self, S, idx, a, b, target=None: seen.append(a)
                        or real(self, S, idx, a, b, target))
    got = inf.scores(tp, out=path)
    # the first block again (its scores fingerprint the call), then the two not written
    assert seen == [0, 120, 160]
    np.testing.assert_array_equal(np.load(path), want)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_multinomial_null_directions_give_the_pseudo_inverse_answer():
    X, y, w = make_data("softmax_cross_entropy", 3, 90, 3, seed=1)
    for l2 in (0.0, 1e-2):
        p = fc.GLM(X[:80], y[:80], family="multinomial", l2=l2, sample_weight=w[:80])
        theta = fc.newton_cg(p, gtol=1e-11).x
        tp = p.with_data(X[80:], y[80:])
        rp = RefGLM(p.X, p.y, "multinomial", 3, l2, True, p.sample_weight)
        rt = RefGLM(tp.X, tp.y, "multinomial", 3, l2, True)
        H = rp.hessian(theta)
        want = rt.per_sample_grads(theta) @ np.linalg.pinv(H, rcond=1e-10, hermitian=True) \
            @ rp.per_sample_grads(theta).T
        for method, opts in (("direct", {}), ("cg", {}), ("arnoldi", {"rank": 10**6})):
            got = fc.Influence(p, theta, method=method, **opts).scores(tp)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def test_mlp_scores_against_the_complex_step_reference():
    sizes = (3, 5, 3)
    X, y, w = make_data("softmax_cross_entropy", 3, 50, 3, seed=2)
    p = fc.MLP(X[:40], y[:40], sizes=sizes, loss="softmax_cross_entropy", l2=1e-2,
               sample_weight=w[:40], batch_size=9)
    tp = p.with_data(X[40:], y[40:])
    theta = random_theta(sizes, seed=5)
    rp = RefMLP(X[:40], y[:40], sizes, loss="softmax_cross_entropy", l2=1e-2,
                sample_weight=w[:40])
    rt = RefMLP(X[40:], y[40:], sizes, loss="softmax_cross_entropy")
    C = rp.ggn(theta) + 1e-3 * np.eye(p.n_params)
    want = rt.per_sample_grads(theta) @ np.linalg.solve(C, rp.per_sample_grads(theta).T)
    for method, opts in (("direct", {}), ("cg", {"rtol": 1e-12})):
        got = fc.Influence(p, theta, method=method, damping=1e-3, curvature="ggn",
                           **opts).scores(tp)
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
    got = fc.Influence(p, theta, method="direct", damping=1e-3,
                       curvature="ggn").scores(tp, rows=[7, 3, 30])
    np.testing.assert_allclose(got, want[:, [7, 3, 30]], rtol=1e-7,
                               atol=1e-9 * np.abs(want).max())


def test_loo_refit_agrees_with_the_prediction():
    """L2-regularized logistic regression: predicted and actual test-loss changes over the
    most influential training points correlate with r >= 0.99."""
    p, tp, theta = _logistic(n=150, d=4, l2=1e-2, weighted=False)
    inf = fc.Influence(p, theta, method="direct")
    idx, _ = inf.top_k(tp.subset([0]), k=8)
    res = fc.loo_refit(p, theta, idx[0], tp, influence=inf)
    assert res.actual.shape == (tp.n_samples, 8)
    assert res.pearson >= 0.99, res.pearson
    np.testing.assert_allclose(res.params_actual, inf.params_change(idx[0]), rtol=0.2,
                               atol=0.05 * np.abs(res.params_actual).max())


def test_refusals():
    p, tp, theta = _logistic()
    with pytest.raises(ValueError, match="method must be"):
        fc.Influence(p, theta, method="exact")
    with pytest.raises(TypeError, match="unknown option"):
        fc.Influence(p, theta, method="cg", depth=3)
    with pytest.raises(ValueError, match="damping"):
        fc.Influence(p, theta, damping=-1.0)
    q = fc.GLM(p.X[:, :3], p.y, family="logistic")
    with pytest.raises(TypeError, match="same model"):
        fc.Influence(p, theta, "direct").scores(q)
    # singular Hessian at damping 0: a duplicated column with no penalty
    X = np.hstack([p.X, p.X[:, :1]])
    s = fc.GLM(X, p.y, family="logistic")
    ts = np.zeros(s.n_params)
    with pytest.raises(ValueError, match="damping > 0"):
        fc.Influence(s, ts, method="direct")
    fc.Influence(s, ts, method="direct", damping=1e-6)  # fine with damping
    # an indefinite Hessian (an MLP away from a minimum): CG refuses, LiSSA with too small a
    # scale diverges with a message
    sizes = (3, 6, 1)
    Xm, ym, _ = make_data("mse", 1, 30, 3, seed=4, weighted=False)
    m = fc.MLP(Xm, ym, sizes=sizes, loss="mse")
    tm = random_theta(sizes, seed=3, scale=2.0)
    assert np.linalg.eigvalsh(m.hessian(tm))[0] < 0
    with pytest.raises(ValueError, match="not positive definite|negative curvature"):
        fc.Influence(m, tm, method="cg").solve(np.linalg.eigh(m.hessian(tm))[1][:, 0])
    with pytest.raises(RuntimeError, match="LiSSA diverged"):
        fc.Influence(p, theta, method="lissa", scale=1e-3).scores(tp)


def test_cg_rtol_zero_is_refused_and_rounding_is_not_called_indefinite():
    """rtol=0 can never be met: it was accepted, and CG ran until rounding gave dᵀAd <= 0,
    then blamed a positive definite Hessian (smallest eigenvalue ~0.08). It is refused; an
    rtol below what float64 resolves says so instead of calling the curvature indefinite."""
    p, tp, theta = _logistic()
    with pytest.raises(ValueError, match="rtol must be > 0"):
        fc.Influence(p, theta, method="cg", rtol=0.0)
    assert np.linalg.eigvalsh(p.hessian(theta))[0] > 0
    with pytest.raises(ValueError, match="lost its search direction to rounding") as e:
        fc.Influence(p, theta, method="cg", rtol=1e-300).scores(tp)
    assert "positive definite" not in str(e.value)


def test_seeds_are_checked_by_every_method():
    """LiSSA took any seed until scores() (numpy's message), Nyström gave numpy's message,
    K-FAC (type-2) and KFACOperator(fisher="type2") ignored a bad seed: all now refuse it at
    construction, naming the seed."""
    p, tp, theta = _logistic()
    for method, extra in (("lissa", {"batch_size": 10}), ("nystrom", {}), ("kfac", {})):
        with pytest.raises(TypeError, match="seed must be"):
            fc.Influence(p, theta, method=method, seed="x", **extra)
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            fc.Influence(p, theta, method=method, seed=-1, **extra)
    with pytest.raises(TypeError, match="seed must be"):
        fc.KFACOperator(p, theta, fisher="type2", seed="junk")
    with pytest.raises(ValueError, match="seed must be"):
        p.init(seed=-3)
    # also where the seed is not used (it was accepted silently there)
    with pytest.raises(TypeError, match="seed must be"):
        p.ggn_diag(theta, seed="junk")
    with pytest.raises(TypeError, match="seed must be"):
        fc.FisherOperator(p, theta, kind="empirical", seed="junk")


@pytest.mark.parametrize("method,opts", [("lissa", {}), ("lissa", {"batch_size": 40, "seed": 1}),
                                         ("arnoldi", {"rank": 3})])
def test_lanczos_based_methods_are_bitwise_reproducible(method, opts):
    """LiSSA's scale and Arnoldi's eigenpairs came from ARPACK with a start vector of its own
    (different in the last digits from one construction to the next, whatever the seed)."""
    p, tp, theta = _logistic(n=200, d=6)
    runs = []
    for k in range(3):
        np.random.seed(k)  # noqa: NPY002 (the global state must not matter either)
        inf = fc.Influence(p, theta, method=method, damping=1e-3, **opts)
        runs.append(inf.scores(tp))
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_float32_problems_and_progress_bar(capsys):
    p, tp, theta = _logistic()
    want = fc.Influence(p, theta, method="direct", damping=1e-4).scores(tp)
    p32 = fc.GLM(p.X.astype(np.float32), p.y, family="logistic", l2=p.l2, sample_weight=p._w)
    tp32 = p32.with_data(tp.X.astype(np.float32), tp.y)
    for method in ("direct", "cg", "kfac"):
        inf = fc.Influence(p32, theta.astype(np.float32), method=method, damping=1e-4,
                           progress=True)
        got = inf.scores(tp32)
        assert got.dtype == np.float64 and np.all(np.isfinite(got))
        if method != "kfac":
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    assert "scoring" in capsys.readouterr().err


def test_scores_file_of_another_call_is_not_taken_for_this_one(tmp_path, monkeypatch):
    """A finished ``out`` file is reused only by the same call: other rows or another
    ``against`` problem of the same shape are scored afresh (they used to come back as the
    first call's scores)."""
    p, tp, theta = _logistic(n=200)
    inf = fc.Influence(p, theta, method="direct")
    monkeypatch.setattr(influence_mod, "_SCORE_BLOCK_ELEMENTS", 15 * 40)
    path = tmp_path / "scores.npy"
    full = inf.scores(tp)
    np.testing.assert_array_equal(np.asarray(inf.scores(tp, rows=np.arange(100), out=path)),
                                  full[:, :100])
    np.testing.assert_array_equal(
        np.asarray(inf.scores(tp, rows=np.arange(100, 200), out=path)), full[:, 100:])
    other = p.with_data(p.X[::-1].copy(), p.y[::-1].copy())
    got = inf.scores(tp, rows=np.arange(100, 200), out=path, against=other)
    np.testing.assert_allclose(np.asarray(got),
                               inf.scores(tp, against=other)[:, 100:], rtol=1e-12)


def test_top_k_ties_go_to_the_smaller_row_index_whatever_the_blocks(monkeypatch):
    """Duplicated training rows score exactly alike: the docstring's "ties broken by the
    smaller row index" holds for any block size (argpartition alone kept an arbitrary member
    of a tie at the k-th place)."""
    p0, tp, theta = _logistic(n=40, weighted=False)
    X = np.vstack([p0.X] * 3)
    y = np.concatenate([p0.y] * 3)
    p = fc.GLM(X, y, family="logistic", l2=p0.l2)
    theta = fc.newton_cg(p, gtol=1e-12).x
    inf = fc.Influence(p, theta, method="direct")
    S = inf.scores(tp)
    for block in (15 * 3, 15 * 7, 15 * 1000):
        monkeypatch.setattr(influence_mod, "_SCORE_BLOCK_ELEMENTS", block)
        for helpful, sign in ((True, 1), (False, -1)):
            idx, _ = inf.top_k(tp, k=5, helpful=helpful)
            order = np.lexsort((np.broadcast_to(np.arange(120), S.shape), -sign * S),
                               axis=1)[:, :5]
            np.testing.assert_array_equal(idx, order)  # equal scores: first copy first


def test_lissa_that_reaches_its_depth_says_so():
    """The full-data LiSSA series that has not converged after ``depth`` steps warns (its
    result was returned silently, 38% off on an ill-conditioned problem) and records it."""
    p, tp, theta = _logistic()
    inf = fc.Influence(p, theta, method="lissa", depth=20)
    with pytest.warns(RuntimeWarning, match="depth = 20 steps without converging"):
        inf.scores(tp)
    assert inf.solver.info["converged"] is False
    done = fc.Influence(p, theta, method="lissa")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done.scores(tp)
    assert done.solver.info["converged"] is True


def test_lissa_batches_estimate_the_weighted_curvature_without_bias():
    """Row batches of the stochastic LiSSA on unequal sample weights. Rows were drawn
    uniformly and weighted within the batch (``Σ_S w_i H_i / Σ_S w_i``): with one row of
    weight 200 among 40 the mean batch Hessian was 91% off the weighted one, and a batch of
    weight-0 rows raised "the 2 rows selected all have sample_weight 0" (a review). Now rows
    are drawn in proportion to their weights: the mean over many batches approaches the
    dense weighted Hessian (tests/reference.py), and zero weights are never drawn."""
    rng = np.random.default_rng(0)
    n, d = 40, 3
    X = rng.standard_normal((n, d))
    y = (X[:, 0] + rng.standard_normal(n) > 0).astype(float)
    w = np.ones(n)
    w[0] = 200.0
    p = fc.GLM(X, y, family="logistic", l2=0.1, sample_weight=w)
    theta = 0.3 * rng.standard_normal(p.n_params)
    want = RefGLM(X, y, "logistic", 1, 0.1, True, w).hessian(theta)
    solver = fc.Influence(p, theta, method="lissa", batch_size=5, seed=0).solver
    draws = np.random.default_rng(1)
    eye = np.eye(p.n_params)
    mean = sum(solver._op(draws).matmat(eye) for _ in range(2000)) / 2000
    assert np.abs(mean - want).max() < 0.03 * np.abs(want).max()

    w0 = np.zeros(n)
    w0[:3] = 1.0
    p0 = fc.GLM(X, y, family="logistic", l2=0.1, sample_weight=w0)
    theta0 = fc.newton_cg(p0, gtol=1e-10).x
    got = fc.Influence(p0, theta0, method="lissa", batch_size=2, seed=0, repeats=4).factors(
        p0.subset([0]))
    ref = fc.Influence(p0, theta0, method="direct").factors(p0.subset([0]))
    assert np.all(np.isfinite(got)) and got.shape == ref.shape


def test_loo_refit_checks_its_inputs_and_warns_away_from_a_minimizer():
    p, tp, theta = _logistic(n=100, weighted=False)
    with pytest.raises(TypeError, match="same model"):
        fc.loo_refit(p, theta, [0], tp.X)
    with pytest.raises(TypeError, match="same model"):
        fc.loo_refit(p, theta, [0], fc.GLM(tp.X[:, :3], tp.y))
    q = fc.GLM(p.X, p.y, family="logistic", l2=1.0)
    with pytest.raises(ValueError, match="another problem or another theta"):
        fc.loo_refit(p, theta, [0], tp, influence=fc.Influence(q, theta, "direct"))
    with pytest.raises(ValueError, match="another problem or another theta"):
        fc.loo_refit(p, theta, [0], tp, influence=fc.Influence(p, theta + 0.1, "direct"))
    with pytest.raises(TypeError, match="fastcurv.Influence"):
        fc.loo_refit(p, theta, [0], tp, influence="direct")
    with pytest.warns(RuntimeWarning, match="not a minimizer"):
        fc.loo_refit(p, theta + 0.3, [0, 1], tp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.loo_refit(p, theta, [0, 1], tp)
    inf = fc.Influence(p, theta, "direct")
    with pytest.raises(ValueError, match="B must have shape"):
        inf.solve(1.0)
    P = p.n_params
    for rank in (2, P):  # eigsh's tol is an option of every rank
        fc.Influence(p, theta, "arnoldi", rank=rank, tol=1e-6)


@pytest.mark.parametrize("method,opts,tol", [
    ("arnoldi", {"rank": 10**6}, 1e-4), ("arnoldi", {"rank": 20}, 1e-4),
    ("nystrom", {"rank": 10**6, "seed": 0}, 1e-4),
    # the stabilizing shift of a float32 sketch (~1e-6 |C|) against λ_min ≈ 2e-3 |C|
    ("nystrom", {"rank": 20, "seed": 0}, 1e-2)])
def test_float32_singular_curvature_gives_the_pseudo_inverse_answer(method, opts, tol):
    """An MLP's Gauss-Newton matrix with more parameters (45) than outputs (8 x 3) has an
    unknown null space of dimension 33, at float32 rounding (±1e-8 |C|) for float32 data.
    Arnoldi and Nyström at damping 0 return ``C⁺ g`` as float64 does; they inverted those
    eigenvalues (Arnoldi: scores 1e6 to 1e10 times too large) or refused the PSD sketch
    as indefinite (Nyström), from thresholds at float64's epsilon. Reference: numpy's pinv
    of the complex-step GGN (the data and θ are float32-exact)."""
    sizes = (3, 6, 3)
    X, y, w = make_data("softmax_cross_entropy", 3, 14, 3, seed=0)
    theta = random_theta(sizes, seed=0)
    rp = RefMLP(X[:8], y[:8], sizes, loss="softmax_cross_entropy", sample_weight=w[:8])
    rt = RefMLP(X[8:], y[8:], sizes, loss="softmax_cross_entropy")
    Gi, Gt = rp.per_sample_grads(theta), rt.per_sample_grads(theta)
    Cp = np.linalg.pinv(rp.ggn(theta), rcond=1e-10, hermitian=True)
    assert np.linalg.matrix_rank(Cp) == 12
    want = Gt @ Cp @ Gi.T
    want_self = np.einsum("ip,pq,iq->i", Gi, Cp, Gi)
    want_change = (w[:8] / w[:8].sum())[:, None] * (Gi @ Cp)
    p = fc.MLP(X[:8].astype(np.float32), y[:8], sizes=sizes, loss="softmax_cross_entropy",
               sample_weight=w[:8])
    tp = p.with_data(X[8:].astype(np.float32), y[8:])
    inf = fc.Influence(p, theta.astype(np.float32), method=method, curvature="ggn", **opts)
    np.testing.assert_allclose(inf.scores(tp), want, rtol=0, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(inf.self_influence(), want_self, rtol=0,
                               atol=tol * np.abs(want_self).max())
    np.testing.assert_allclose(inf.params_change(np.arange(8)), want_change, rtol=0,
                               atol=tol * np.abs(want_change).max())


@pytest.mark.parametrize("l2", [0.0, 1e-2])
@pytest.mark.parametrize("sparse", [False, True])
def test_float32_softmax_cg_gives_the_pseudo_inverse_answer(l2, sparse):
    """A float32 multinomial model's gradients and Hessian products carry a component along
    the softmax null directions at float32 rounding (1e-7 of their size), which CG cannot
    reduce: it raised "CG met zero or negative curvature" (or, with the K-FAC preconditioner
    on CSR data, "v contains a non-finite value") on a positive semidefinite Hessian that
    float64 solves. CG now runs on the projected system. Reference: numpy's pinv of the
    float64 Hessian of the same (float32-exact) data."""
    X, y, w = make_data("softmax_cross_entropy", 3, 135, 4, seed=0)
    X = np.where(np.abs(X) < 0.3, 0.0, X) if sparse else X
    theta = fc.newton_cg(fc.GLM(X[:120], y[:120], family="multinomial", l2=l2,
                                sample_weight=w[:120]), gtol=1e-10).x
    theta = theta.astype(np.float32).astype(np.float64)
    rp = RefGLM(X[:120], y[:120], "multinomial", 3, l2, True, w[:120])
    rt = RefGLM(X[120:], y[120:], "multinomial", 3, l2, True)
    Gi, Gt = rp.per_sample_grads(theta), rt.per_sample_grads(theta)
    want = Gt @ np.linalg.pinv(rp.hessian(theta), rcond=1e-10, hermitian=True) @ Gi.T
    X32 = X.astype(np.float32)
    Xtr = sp.csr_matrix(X32[:120]) if sparse else X32[:120]
    p = fc.GLM(Xtr, y[:120], family="multinomial", l2=l2, sample_weight=w[:120])
    tp = p.with_data(X32[120:], y[120:])
    for pc in (None, "diag", "kfac"):
        got = fc.Influence(p, theta.astype(np.float32), method="cg",
                           preconditioner=pc).scores(tp)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_nystrom_preconditioner_of_rank_above_the_curvature_rank(l2):
    """At damping 0 a Nyström sketch of rank P of a singular curvature (the softmax null
    directions) has smallest eigenvalue 0, which scaled the preconditioner
    ``(λ̂_r + δ) U (Λ̂ + δ)⁻¹ Uᵀ + (I − UUᵀ)`` to ``I − UUᵀ``: zero on the whole range, and
    CG stopped at maxiter ("did not reach rtol"). The scale is now the smallest eigenvalue
    kept. Reference: numpy's pinv of the dense Hessian."""
    X, y, w = make_data("softmax_cross_entropy", 3, 135, 4, seed=0)
    p = fc.GLM(X[:120], y[:120], family="multinomial", l2=l2, sample_weight=w[:120])
    tp = p.with_data(X[120:], y[120:])
    theta = fc.newton_cg(p, gtol=1e-10).x
    rp = RefGLM(X[:120], y[:120], "multinomial", 3, l2, True, w[:120])
    rt = RefGLM(X[120:], y[120:], "multinomial", 3, l2, True)
    want = rt.per_sample_grads(theta) @ np.linalg.pinv(
        rp.hessian(theta), rcond=1e-10, hermitian=True) @ rp.per_sample_grads(theta).T
    got = fc.Influence(p, theta, "cg", preconditioner="nystrom", rank=p.n_params,
                       seed=0).scores(tp)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_never_copy_the_data(monkeypatch, dtype):
    """Scores ran over blocks of 2^22 / m_test training rows: for one test point that was all
    of X, and a block of float32 rows was converted to float64 (a float64 copy of X: 788 MB
    of memory for a 400 MB X), or gathered when ``rows`` is not one run. Blocks are now
    bounded by their data too. (The block size is made small here so that a copy of X
    shows against it.)"""
    import tracemalloc

    monkeypatch.setattr(influence_mod, "_SCORE_BLOCK_ELEMENTS", 2**16)
    rng = np.random.default_rng(0)
    n, d = 40_000, 50
    X = rng.standard_normal((n, d)).astype(dtype)
    p = fc.GLM(X, (X[:, 0] > 0) * 1.0, family="logistic", l2=1e-3)
    theta = (0.01 * rng.standard_normal(p.n_params)).astype(dtype)
    inf = fc.Influence(p, theta, "cg", damping=1e-3)
    test = p.subset([0])
    want = (inf.factors(test) @ p.per_sample_grads(theta).astype(np.float64).T)
    for rows in (None, np.arange(0, n, 2)):
        inf.scores(test, rows=rows)
        tracemalloc.start()
        got = inf.scores(test, rows=rows)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < X.nbytes / 4, (rows is None, peak, X.nbytes)
        np.testing.assert_allclose(got, want if rows is None else want[:, rows], rtol=1e-5,
                                   atol=1e-6 * np.abs(want).max())


def test_malformed_options_are_refused_by_name():
    """A fuzzing review's findings: ``rtol=True`` ran CG with rtol 1.0 (a meaningless
    solve), ``rtol="1e-3"`` was parsed; ``top_k(helpful=None)`` ranked the harmful rows and
    ``progress="no"`` turned the bar on; ``None`` as the problem raised an AttributeError;
    ``repeats=2**63`` looped for ever; a float32 ``against`` reached a compiled kernel
    (a Numba TypingError)."""
    p, tp, theta = _logistic()
    for kw in (dict(rtol=True), dict(rtol="1e-3"), dict(rtol=np.ones(2))):
        with pytest.raises(TypeError, match="rtol must be a real number"):
            fc.Influence(p, theta, "cg", **kw)
    inf = fc.Influence(p, theta, "direct", damping=1e-3)
    for bad in (None, "no", np.ones(3)):
        with pytest.raises(TypeError, match="helpful must be True or False"):
            inf.top_k(tp, 2, helpful=bad)
    with pytest.raises(TypeError, match="progress must be True or False"):
        fc.Influence(p, theta, "direct", progress="no")
    for bad in (None, "abc", np.eye(3), fc.GLM):
        with pytest.raises(TypeError, match="p must be a problem"):
            fc.Influence(bad, theta, "direct")
        with pytest.raises(TypeError, match="p must be a problem"):
            fc.loo_refit(bad, theta, [0], tp)
    with pytest.raises(ValueError, match="repeats must be at most"):
        fc.Influence(p, theta, "lissa", repeats=2**63)
    p32 = fc.GLM(p.X.astype(np.float32), p.y, family="logistic", l2=p.l2)
    with pytest.raises(TypeError, match="against holds float32 data"):
        inf.scores(tp, against=p32)


def test_loo_refit_with_a_gtol_that_no_refit_needs_says_so():
    """With ``gtol`` above every leave-one-out gradient at θ, no refit moved: ``actual`` was
    all zeros and the correlation NaN, silently (a fuzzing review). It now warns."""
    p, tp, theta = _logistic()
    with pytest.warns(RuntimeWarning, match="no refit moved"):
        res = fc.loo_refit(p, theta, [0, 1], tp, gtol=2.0)
    assert not np.any(res.actual) and not np.any(res.n_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.loo_refit(p, theta, [0, 1], tp)  # the default gtol refits


@pytest.mark.parametrize("method", ["direct", "cg", "lissa", "arnoldi", "kfac"])
def test_solve_of_a_huge_or_tiny_B_is_the_scaled_solve(method):
    """Every solver is linear in B. At B = 2^600 b the curvature products overflowed (CG: a
    NaN in "v", LiSSA: "diverged"); at 2^-1000 b, ``‖b‖²`` underflowed to 0 and CG returned
    zeros. With each column scaled by a power of two for the solver, the solution is the
    ordinary one times the same power of two, to the bit."""
    p, _, theta = _logistic()
    inf = fc.Influence(p, theta, method, damping=1e-3)
    B = np.random.default_rng(1).standard_normal((p.n_params, 3))
    B[:, 2] = 0.0
    base = inf.solve(B)
    for s in (2.0**600, 2.0**-1000):
        np.testing.assert_array_equal(inf.solve(B * s), base * s)
    # columns of different sizes are scaled separately
    mixed = B * np.array([2.0**600, 2.0**-1000, 1.0])
    np.testing.assert_array_equal(inf.solve(mixed), base * np.array([2.0**600, 2.0**-1000, 1]))
    # a B whose solution is beyond float64 (|x| more than twice |b| here, b up to 2^1023)
    b = np.ldexp(B[:, 0] / np.abs(B[:, 0]).max(), 1023)
    assert np.abs(base[:, 0]).max() > 2 * np.abs(B[:, 0]).max()
    with pytest.raises(FloatingPointError, match=r"\(H \+ damping I\)\^-1 B overflows"):
        inf.solve(b)


def test_preconditioner_faults_are_named():
    """A preconditioner returning NaN reached the curvature products as 'v contains a
    non-finite value'; a complex one was cast to real with a ComplexWarning and CG then
    reported 'negative curvature'."""
    from scipy.sparse.linalg import LinearOperator, aslinearoperator

    p, _, theta = _logistic()
    P = p.n_params
    nan = LinearOperator((P, P), matvec=lambda v: np.full_like(v, np.nan), dtype=float)
    with pytest.raises(FloatingPointError, match="preconditioner returned NaN or inf"):
        fc.Influence(p, theta, "cg", preconditioner=nan).solve(np.ones(P))
    with pytest.raises(TypeError, match="preconditioner must return real values"):
        fc.Influence(p, theta, "cg",
                     preconditioner=aslinearoperator(1j * np.eye(P))).solve(np.ones(P))


def test_lissa_on_float32_data_converges_without_warning():
    """The default tol was 1e-10 whatever the dtype: a float32 series never met it, ran all
    5,000 steps (39 in float64) and warned that its result may be far off (it was 1.4e-7
    from the direct solve). Float32 data now stop at ten float32 epsilons."""
    p64, tp64, theta = _logistic(n=200, d=5, l2=1e-2)
    p = fc.GLM(p64.X.astype(np.float32), p64._y2[:, 0], "logistic", l2=1e-2,
               sample_weight=p64._w)
    tp = p.with_data(tp64.X.astype(np.float32), tp64._y2[:, 0])
    th = fc.newton_cg(p, theta.astype(np.float32), gtol=1e-6).x
    want = fc.Influence(p, th, "direct").scores(tp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inf = fc.Influence(p, th, "lissa")
        got = inf.scores(tp)
    assert inf.solver.info["converged"] and inf.solver.info["steps"] < 200
    assert inf.solver.tol == pytest.approx(10 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6 * np.abs(want).max())
    assert fc.Influence(p64, theta, "lissa").solver.tol == 1e-10


def _indefinite_mlp():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((43, 2))
    y = rng.integers(0, 3, 43).astype(float)
    y[:3] = [0, 1, 2]
    p = fc.MLP(X[:40], y[:40], sizes=(2, 3, 3), activation="tanh",
               loss="softmax_cross_entropy", l2=1e-2)
    return p, p.with_data(X[40:], y[40:]), p.init(seed=0)


def test_indefinite_hessian_messages_and_the_arnoldi_warning():
    """At a random MLP initialization (the Hessian has negative eigenvalues) ``direct``
    refused with "pass damping > 0" even when damping was already 1e-3; ``arnoldi``
    returned scores inverting the negative eigenvalues without a word."""
    p, tp, th = _indefinite_mlp()
    low = np.linalg.eigvalsh(p.hessian(th))[0]
    assert low < -0.05
    with pytest.raises(ValueError, match="pass a damping above") as err:
        fc.Influence(p, th, "direct", damping=1e-3)
    assert f"its smallest eigenvalue is {low + 1e-3:.3g}" in str(err.value)
    with pytest.warns(RuntimeWarning, match="arnoldi: .* negative"):
        fc.Influence(p, th, "arnoldi")
    # above the most negative eigenvalue the damped Hessian is positive definite: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.Influence(p, th, "arnoldi", damping=-low + 0.1)


def test_loo_refit_of_an_mlp_uses_the_trust_region():
    """A leave-one-out MLP objective can be indefinite at the fitted θ: line-search Newton-CG
    took 1,323 iterations there (RuntimeError at max_iter=200), the trust region 22."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((43, 2))
    y = (rng.random((43, 2)) < 0.5).astype(float)
    p = fc.MLP(X[:40], y[:40], sizes=(2, 3, 2), activation="tanh",
               loss="sigmoid_cross_entropy", l2=1e-2)
    tp = p.with_data(X[40:], y[40:])
    from scipy.optimize import minimize

    th = minimize(p.value, p.init(seed=0), jac=p.grad, method="BFGS",
                  options=dict(gtol=1e-10)).x
    th = fc.newton_cg(p, th, gtol=1e-12, method="trust-region").x
    res = fc.loo_refit(p, th, [39], tp)
    assert res.n_iter[0] < 100
    with pytest.raises(RuntimeError, match="refit without row 39 did not converge"):
        fc.loo_refit(p, th, [39], tp, method="line-search")
    with pytest.raises(ValueError, match="method must be"):
        fc.loo_refit(p, th, [39], tp, method="direct")
