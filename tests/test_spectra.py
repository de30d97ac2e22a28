"""Trace, extreme eigenvalues and spectral density against dense eigendecompositions.

Each estimator is checked against ``numpy.linalg.eigh`` / ``eigvalsh`` of the same small
matrix or against closed forms: the variance of Hutchinson's estimator, exactness of Hutch++
and XTrace on low-rank matrices, and exactness of Lanczos quadrature for polynomials of degree
``< 2 n_steps``.
"""

import warnings

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, aslinearoperator

import fastcurv as fc
from fastcurv.estimators import (
    SpectralDensity,
    TraceEstimate,
    spectral_density,
    top_eigenvalues,
    trace,
)

METHODS = ("hutchinson", "hutch++", "xtrace")


def _with_spectrum(lam, seed):
    """Dense symmetric ``U diag(lam) Uᵀ`` with a random orthogonal ``U``."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    return (U * lam) @ U.T


def _indefinite(P, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((P, P))
    return (B + B.T) / np.sqrt(2 * P)


class Recording(LinearOperator):
    """A dense symmetric matrix that records the dtype and the columns of every product."""

    def __init__(self, M):
        self.M = M
        self.blocks = []
        super().__init__(dtype=M.dtype, shape=M.shape)

    def _matmat(self, V):
        self.blocks.append(np.array(V, copy=True))
        return self.M @ V

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self


def _mlp(dtype=np.float64):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4)).astype(dtype)
    return fc.MLP(X, rng.standard_normal(60).astype(dtype), sizes=(4, 6, 1), loss="mse")


@pytest.fixture(scope="module")
def mlp():
    p = _mlp()
    theta = p.init(0)
    return p, theta, p.hessian(theta)


# --------------------------------------------------------------------------------------------
# trace


def test_hutchinson_error_matches_its_variance_and_shrinks_like_one_over_sqrt_n():
    M = _with_spectrum(1.0 / np.arange(1, 101) ** 2, 0)
    A = aslinearoperator(M)
    # Var[zᵀAz] for Rademacher z: 2 (‖A‖_F² − Σ A_jj²)
    sd1 = np.sqrt(2 * ((M * M).sum() - (np.diag(M) ** 2).sum()))
    rmse = {}
    for n in (10, 160):
        est = np.array([trace(A, n, method="hutchinson", seed=s).trace for s in range(60)])
        rmse[n] = np.sqrt(np.mean((est - np.trace(M)) ** 2))
        assert 0.7 < rmse[n] / (sd1 / np.sqrt(n)) < 1.3
    assert 2.8 < rmse[10] / rmse[160] < 5.5  # sqrt(16) = 4


def test_hutchpp_and_xtrace_beat_one_over_sqrt_n_on_a_decaying_spectrum():
    M = _with_spectrum(1.0 / np.arange(1, 201) ** 2, 1)
    A = aslinearoperator(M)
    rmse = {}
    for method in METHODS:
        for n in (30, 120):
            est = np.array([trace(A, n, method=method, seed=s).trace for s in range(30)])
            rmse[method, n] = np.sqrt(np.mean((est - np.trace(M)) ** 2))
    assert rmse["hutchinson", 30] / rmse["hutchinson", 120] < 3.0  # ~ sqrt(4) = 2
    for method in ("hutch++", "xtrace"):
        assert rmse[method, 30] / rmse[method, 120] > 6.0  # at least 1/n on this spectrum
        assert rmse[method, 120] < rmse["hutchinson", 120] / 20


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
@pytest.mark.parametrize("signs", ["psd", "indefinite"])
def test_exact_for_rank_below_a_third_of_the_budget(method, signs):
    lam = np.zeros(60)
    lam[:5] = [9.0, 4.0, 2.5, 1.0, 0.5] if signs == "psd" else [9.0, -4.0, 2.5, -1.0, 0.5]
    M = _with_spectrum(lam, 2)
    est = trace(aslinearoperator(M), 24, method=method, seed=3)
    assert est.n_matvecs == 24 and est.method == method
    np.testing.assert_allclose(est.trace, lam.sum(), rtol=1e-11, atol=1e-11)
    assert est.std_error < 1e-10


def test_zero_matrix():
    for method in METHODS:
        est = trace(np.zeros((30, 30)), 12, method=method, seed=0)
        assert est.trace == 0.0 and est.std_error == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_std_error_is_calibrated_over_seeds(method):
    M = _indefinite(100, 4)
    A = aslinearoperator(M)
    runs = [trace(A, 30, method=method, seed=s) for s in range(150)]
    err = np.array([r.trace for r in runs]) - np.trace(M)
    se = np.array([r.std_error for r in runs])
    ratio = np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(se ** 2))
    # Hutchinson and the Hutchinson part of Hutch++ are calibrated; XTrace's leave-one-out
    # estimates are dependent, and its error estimate is a heuristic (slightly optimistic)
    low, high = (0.8, 1.25) if method != "xtrace" else (0.7, 1.6)
    assert low < ratio < high
    # |error| < 2 se: 0.95 for normal z-scores, ~0.92 for t with 9 dof (Hutch++'s 10 probes)
    cover = {"hutchinson": 0.88, "hutch++": 0.82, "xtrace": 0.75}[method]
    assert np.mean(np.abs(err) < 2 * se) > cover


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result(method):
    A = aslinearoperator(_indefinite(40, 5))
    a = trace(A, 12, method=method, seed=7)
    b = trace(A, 12, method=method, seed=np.random.default_rng(7))
    c = trace(A, 12, method=method, seed=8)
    assert isinstance(a, TraceEstimate)
    assert a == b
    assert a.trace != c.trace


def test_hutchinson_block_size_only_groups_the_products():
    op = Recording(_indefinite(20, 6))
    est = trace(op, 10, method="hutchinson", seed=0, block=4)
    assert [b.shape[1] for b in op.blocks] == [4, 4, 2] and est.n_matvecs == 10
    # the same probes whatever the block (they were drawn as (P, block) matrices: 958.5
    # against 1050.7 for one seed on a review's example); equal up to rounding, as BLAS may
    # round a matrix-vector product differently from a matrix-matrix one
    for block in (1, 3, 10, 32):
        got = trace(op, 10, method="hutchinson", seed=0, block=block).trace
        assert abs(got - est.trace) <= 1e-13 * abs(est.trace)


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_budget_covering_the_space_gives_the_exact_trace(method):
    M = _indefinite(15, 7)
    est = trace(aslinearoperator(M), 15, method=method, seed=0)
    assert est.n_matvecs == 15 and est.std_error == 0.0
    np.testing.assert_allclose(est.trace, np.trace(M), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_float32_operator_gets_float32_probes(method):
    lam = np.zeros(50)
    lam[:4] = [3.0, 2.0, -1.0, 0.5]
    M = _with_spectrum(lam, 8)
    op = Recording(M.astype(np.float32))
    est = trace(op, 15, method=method, seed=0)
    assert {b.dtype for b in op.blocks} == {np.dtype(np.float32)}
    if method != "hutchinson":
        np.testing.assert_allclose(est.trace, lam.sum(), atol=1e-5)


def test_on_a_fastcurv_hessian(mlp):
    p, theta, H = mlp
    op = fc.HessianOperator(p, theta)
    for method in METHODS:
        est = trace(op, 30, method=method, seed=0)
        assert abs(est.trace - np.trace(H)) < 5 * est.std_error + 1e-8
    exact = trace(op, p.n_params, method="hutch++")
    np.testing.assert_allclose(exact.trace, np.trace(H), rtol=1e-10)


def test_accepts_objects_with_matmat_only():
    M = _indefinite(12, 9)

    class MatmatOnly:
        shape = M.shape
        dtype = M.dtype

        def matmat(self, V):
            return M @ V

    est = trace(MatmatOnly(), 12, method="xtrace")
    np.testing.assert_allclose(est.trace, np.trace(M), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_trace_bad_n_probes(bad, err):
    with pytest.raises(err, match="n_probes"):
        trace(aslinearoperator(np.eye(3)), bad, method="hutchinson")


def test_trace_bad_inputs():
    A = aslinearoperator(np.eye(10))
    with pytest.raises(ValueError, match=">= 3"):
        trace(A, 2, method="hutch++")
    with pytest.raises(ValueError, match=">= 2"):
        trace(A, 1, method="xtrace")
    with pytest.raises(ValueError, match="method"):
        trace(A, 6, method="hutch")
    with pytest.raises(ValueError, match="block"):
        trace(A, 6, block=0)
    with pytest.raises(ValueError, match="square"):
        trace(aslinearoperator(np.ones((3, 4))), 6)
    with pytest.raises(TypeError, match="complex"):
        trace(np.eye(3, dtype=complex), 6)


# --------------------------------------------------------------------------------------------
# top_eigenvalues


def _expected(w, k, which):
    """The k eigenvalues ``which`` selects from ascending ``w``, descending."""
    if which == "LA":
        sel = w[-k:]
    elif which == "SA":
        sel = w[:k]
    elif which == "LM":
        sel = w[np.argsort(np.abs(w))[-k:]]
    else:
        sel = np.concatenate([w[: k // 2], w[w.size - (k - k // 2):]])
    return np.sort(sel)[::-1]


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("k", [1, 5])
def test_eigenvalues_match_eigvalsh(which, k):
    M = _indefinite(80, 10)
    w = np.linalg.eigvalsh(M)
    got = top_eigenvalues(aslinearoperator(M), k, which=which, seed=0)
    assert got.shape == (k,) and got.dtype == np.float64
    np.testing.assert_allclose(got, _expected(w, k, which), rtol=0, atol=1e-10)


def test_eigenvectors_are_orthonormal_eigenpairs():
    M = _indefinite(60, 11)
    vals, vecs = top_eigenvalues(M, 4, which="BE", return_eigenvectors=True, seed=0)
    assert vecs.shape == (60, 4)
    np.testing.assert_allclose(M @ vecs, vecs * vals, atol=1e-10)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(4), atol=1e-10)


@pytest.mark.parametrize("which", ["LA", "SA", "BE"])
def test_eigenvalues_of_a_fastcurv_hessian(mlp, which):
    p, theta, H = mlp
    w = np.linalg.eigvalsh(H)
    assert w[0] < 0 < w[-1]  # indefinite at the random initialization
    got = top_eigenvalues(fc.HessianOperator(p, theta), 4, which=which, seed=0)
    np.testing.assert_allclose(got, _expected(w, 4, which), rtol=0, atol=1e-9 * abs(w).max())


def test_float32_operator_stays_float32(mlp):
    M = _indefinite(70, 12)
    op = Recording(M.astype(np.float32))
    vals, vecs = top_eigenvalues(op, 3, which="BE", return_eigenvectors=True, seed=0)
    assert {b.dtype for b in op.blocks} == {np.dtype(np.float32)}
    assert vals.dtype == np.float32 and vecs.dtype == np.float32
    w = np.linalg.eigvalsh(M)
    scale = np.abs(w).max()
    np.testing.assert_allclose(vals, _expected(w, 3, "BE"), rtol=0, atol=2e-6 * scale)
    # and on a float32 fastcurv problem, against the float64 Hessian of the same data
    _, theta, H = mlp
    q = _mlp(np.float32)
    assert np.dtype(q.dtype) == np.float32
    got = top_eigenvalues(fc.HessianOperator(q, theta.astype(np.float32)), 2, seed=0)
    assert got.dtype == np.float32
    wh = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(got, wh[::-1][:2], rtol=0, atol=1e-5 * np.abs(wh).max())


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("k", [4, 5])
def test_tiny_operator_falls_back_to_a_dense_decomposition(which, k):
    M = _indefinite(5, 13)
    vals, vecs = top_eigenvalues(aslinearoperator(M), k, which=which,
                                 return_eigenvectors=True)
    np.testing.assert_allclose(vals, _expected(np.linalg.eigvalsh(M), k, which), atol=1e-12)
    np.testing.assert_allclose(M @ vecs, vecs * vals, atol=1e-12)


def test_eigenvalues_same_seed_same_result():
    A = aslinearoperator(_indefinite(50, 14))
    a = top_eigenvalues(A, 3, which="SA", seed=5)
    b = top_eigenvalues(A, 3, which="SA", seed=5)
    np.testing.assert_array_equal(a, b)


def test_eigenvalues_bad_inputs():
    A = aslinearoperator(np.eye(6))
    for k, err in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="k must be"):
            top_eigenvalues(A, k)
    with pytest.raises(ValueError, match="k must be <= P = 6"):
        top_eigenvalues(A, 7)
    with pytest.raises(ValueError, match="which"):
        top_eigenvalues(A, 2, which="LR")
    with pytest.raises(ValueError, match="tol"):
        top_eigenvalues(A, 2, tol=-1.0)
    # a Python int beyond float64 (an OverflowError or a numpy TypeError about isfinite
    # before), strings and flags that are not True/False (a TypeError from inside ARPACK)
    with pytest.raises(ValueError, match="tol must be finite"):
        top_eigenvalues(A, 2, tol=10**400)
    with pytest.raises(TypeError, match="tol must be a real number"):
        top_eigenvalues(A, 2, tol="1e-3")
    for flag in ("yes", None, 1):
        with pytest.raises(TypeError, match="return_eigenvectors must be True or False"):
            top_eigenvalues(A, 2, return_eigenvectors=flag)
    np.testing.assert_allclose(top_eigenvalues(A, 2, tol=2**70), [1.0, 1.0])
    with pytest.raises(ValueError, match="square"):
        top_eigenvalues(aslinearoperator(np.ones((3, 4))), 1)


# --------------------------------------------------------------------------------------------
# spectral_density


def test_quadrature_reproduces_each_probes_moments():
    M = _indefinite(60, 15)
    M /= np.abs(np.linalg.eigvalsh(M)).max()  # spectrum in [-1, 1]: powers stay O(1)
    op = Recording(M)
    n_steps = 6
    sd = spectral_density(op, 4, n_steps, seed=0)
    V = op.blocks[0]  # the first product is applied to the normalized probes
    assert V.shape == (60, 4)
    np.testing.assert_allclose((V * V).sum(axis=0), 1.0, rtol=1e-14)
    Am = np.eye(60)
    for m in range(2 * n_steps):
        exact = np.einsum("ps,pq,qs->s", V, Am, V)
        quad = (sd.weights * sd.nodes ** m).sum(axis=1)
        np.testing.assert_allclose(quad, exact, rtol=0, atol=1e-10)
        Am = Am @ M
    # degree 2 n_steps is beyond Gauss quadrature: generically not exact
    exact = np.einsum("ps,pq,qs->s", V, Am, V)
    assert np.abs((sd.weights * sd.nodes ** (2 * n_steps)).sum(axis=1) - exact).max() > 1e-8


def test_moments_are_unbiased_estimates_of_normalized_traces():
    lam = np.linspace(-2.0, 3.0, 40)
    M = _with_spectrum(lam, 16)
    sd = spectral_density(aslinearoperator(M), 400, 4, seed=1)
    for m in (1, 2, 3):
        per_probe = (sd.weights * sd.nodes ** m).sum(axis=1)
        se = per_probe.std(ddof=1) / np.sqrt(per_probe.size)
        assert abs(per_probe.mean() - np.mean(lam ** m)) < 4 * se


def test_breakdown_gives_exact_eigenvalues_and_zero_padded_weights():
    d = np.repeat([-1.0, 2.0, 5.0], [5, 10, 15])
    M = _with_spectrum(d, 17)
    op = Recording(M)
    # M's three eigenvalues are exact only up to the rounding of building it (~1e-15), so a
    # probe's residual after three steps lies near the breakdown threshold 4 sqrt(P) eps ‖A‖
    # = 2.4e-14: seed 0 gives residuals of 0 for all three probes (seed 2, since the probes
    # are drawn probe by probe, gives one of 2.8e-14, which runs on harmlessly to 8 steps)
    sd = spectral_density(op, 3, 8, seed=0)
    assert sd.nodes.shape == sd.weights.shape == (3, 8)
    assert len(op.blocks) == 3  # Lanczos stopped after the third product
    for s in range(3):
        live = sd.weights[s] > 0
        assert live.sum() == 3
        np.testing.assert_allclose(np.sort(sd.nodes[s, live]), [-1.0, 2.0, 5.0], atol=1e-12)
        np.testing.assert_array_equal(sd.weights[s, 3:], 0.0)
        assert np.all(np.isfinite(sd.nodes[s]))
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-14)
    # on an invariant Krylov space the quadrature is exact for every degree
    V = op.blocks[0]
    for m in (7, 16, 25):
        exact = np.einsum("ps,ps->s", V, np.linalg.matrix_power(M, m) @ V)
        np.testing.assert_allclose((sd.weights * sd.nodes ** m).sum(axis=1), exact, rtol=1e-9)


def test_more_steps_than_dimensions_recovers_the_spectrum():
    lam = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])
    sd = spectral_density(_with_spectrum(lam, 18), 2, 10, seed=0)
    for s in range(2):
        live = sd.weights[s] > 0
        assert live.sum() <= 5
        assert np.all(np.min(np.abs(sd.nodes[s, live][:, None] - lam), axis=1) < 1e-10)


def test_density_integrates_to_one_and_peaks_at_the_clusters():
    rng = np.random.default_rng(19)
    centers, sizes = np.array([-3.0, 1.0, 6.0]), np.array([20, 40, 20])
    lam = np.repeat(centers, sizes) + 0.05 * rng.standard_normal(sizes.sum())
    sd = spectral_density(aslinearoperator(_with_spectrum(lam, 19)), 10, 20, seed=0)
    assert isinstance(sd, SpectralDensity)
    assert sd.grid.shape == sd.density.shape == (512,)
    assert np.all(sd.density >= 0)
    np.testing.assert_allclose(np.trapezoid(sd.density, sd.grid), 1.0, atol=2e-3)
    assert sd.grid[0] < lam.min() and sd.grid[-1] > lam.max()
    # local maxima that matter sit on the clusters, with the clusters' masses
    f = sd.density
    peaks = sd.grid[1:-1][(f[1:-1] > f[:-2]) & (f[1:-1] >= f[2:]) & (f[1:-1] > 0.05 * f.max())]
    assert np.all(np.min(np.abs(peaks[:, None] - centers), axis=1) < 0.3)
    for c, size in zip(centers, sizes, strict=True):
        near = np.abs(sd.grid - c) < 1.0
        assert np.any(np.abs(peaks - c) < 0.3)
        np.testing.assert_allclose(np.trapezoid(f[near], sd.grid[near]), size / lam.size,
                                   atol=0.08)


def test_given_grid_and_sigma_follow_the_formula():
    M = _indefinite(30, 20)
    grid = np.linspace(-3, 3, 7)
    sd = spectral_density(M, 3, 5, seed=0, grid=grid, sigma=0.5)
    np.testing.assert_array_equal(sd.grid, grid)
    g = np.exp(-0.5 * ((grid[:, None, None] - sd.nodes) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(sd.density, (g * sd.weights).sum(axis=(1, 2)) / 3, rtol=1e-12)


def test_density_same_seed_same_result():
    A = aslinearoperator(_indefinite(30, 21))
    a = spectral_density(A, 3, 6, seed=4)
    b = spectral_density(A, 3, 6, seed=np.random.default_rng(4))
    c = spectral_density(A, 3, 6, seed=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.nodes, c.nodes)


def test_density_float32_and_fastcurv_operators(mlp):
    M = _indefinite(40, 22)
    op = Recording(M.astype(np.float32))
    sd = spectral_density(op, 2, 5, seed=0)
    assert {b.dtype for b in op.blocks} == {np.dtype(np.float32)}
    V = op.blocks[0].astype(np.float64)
    np.testing.assert_allclose((sd.weights * sd.nodes ** 2).sum(axis=1),
                               np.einsum("ps,ps->s", M @ V, M @ V), rtol=1e-5)
    p, theta, H = mlp
    w = np.linalg.eigvalsh(H)
    sd = spectral_density(fc.HessianOperator(p, theta), 4, 10, seed=0)
    # Ritz values lie inside the spectrum, and the extreme ones converge first
    assert np.all((sd.nodes >= w[0] - 1e-10) & (sd.nodes <= w[-1] + 1e-10))
    np.testing.assert_allclose(sd.nodes.max(axis=1), w[-1], rtol=1e-3)


def test_density_bad_inputs():
    A = aslinearoperator(np.eye(5))
    with pytest.raises(ValueError, match="n_probes"):
        spectral_density(A, 0, 3)
    with pytest.raises(ValueError, match="n_steps"):
        spectral_density(A, 2, 0)
    with pytest.raises(TypeError, match="n_steps"):
        spectral_density(A, 2, 2.0)
    for sigma in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="sigma"):
            spectral_density(A, 2, 3, sigma=sigma)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(A, 2, 3, grid=np.zeros((2, 2)))
    # numpy's errors before (isfinite of a huge int, "could not convert string to float")
    with pytest.raises(ValueError, match="sigma must be finite"):
        spectral_density(A, 2, 3, sigma=10**400)
    with pytest.raises(TypeError, match="sigma must be a real number"):
        spectral_density(A, 2, 3, sigma="1")
    for grid in (["a", "b"], "abc", [True, False], [1, 10**400]):
        with pytest.raises(TypeError, match="grid must be a 1-D array of real numbers"):
            spectral_density(A, 2, 3, grid=grid)
    with pytest.raises(ValueError, match="n_grid"):
        spectral_density(A, 2, 3, n_grid=1)
    with pytest.raises(ValueError, match="square"):
        spectral_density(aslinearoperator(np.ones((3, 4))), 2, 3)


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e-12), (np.float64, 1e-30),
                                          (np.float64, 1e30)])
def test_eigenvalues_of_operators_far_from_unit_scale(dtype, scale):
    """ARPACK's convergence test has an absolute floor (eps^(2/3)): an operator of norm 1e-12
    in float32 (1e-30 in float64) was "converged" after one sweep, 1e-3 to 3e-2 off relative
    to its norm. It now runs on an exactly rescaled operator."""
    A = _indefinite(300, 5)
    w = np.linalg.eigvalsh(A)
    got = top_eigenvalues(aslinearoperator((scale * A).astype(dtype)), 3, seed=0)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got / scale, w[::-1][:3], rtol=0, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
def test_eigenvalues_of_the_zero_operator(which):
    """A zero operator (an empirical Fisher at a perfect fit, say) has only the eigenvalue 0;
    ARPACK used to stop with "starting vector is zero"."""
    w, V = top_eigenvalues(aslinearoperator(np.zeros((20, 20))), 3, which=which,
                           return_eigenvectors=True, seed=0)
    np.testing.assert_array_equal(w, np.zeros(3))
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-15)


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
@pytest.mark.parametrize("storage", ["dense", "csr", "longdouble"])
def test_eigenvalues_of_an_integer_matrix(which, storage):
    """Integer matrices are accepted as operators (float64 probes). The ARPACK scaling
    s = 2^round(log2 ‖A v0‖/‖v0‖) was cast to the matrix's int dtype: diag(1, 2, 0, ..., 0)
    has ‖A v0‖/‖v0‖ near 1/3, s = 1/4 became 0, and ARPACK stopped on inf and NaN. A
    longdouble operator (float64 probes too) reached ARPACK in longdouble, which it refuses."""
    import scipy.sparse as sp

    A = np.diag(np.r_[1, 2, np.zeros(48, dtype=np.int64)]).astype(np.int64)
    op = {"dense": A, "csr": sp.csr_matrix(A), "longdouble": A.astype(np.longdouble)}[storage]
    got = top_eigenvalues(op, 3, which=which, seed=0)
    w = np.linalg.eigvalsh(A.astype(np.float64))  # ascending: 0, ..., 0, 1, 2
    want = {"LA": w[::-1][:3], "SA": w[:3][::-1], "LM": w[::-1][:3],
            "BE": np.r_[w[-2:][::-1], w[0]]}[which]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_density_resolves_eigenvalues_far_below_the_norm():
    """97 eigenvalues in [1e-12, 1e-9] below 3 near 1: each probe keeps all its n_steps nodes
    (the breakdown test once fired at 1.5e-8 ‖A‖, collapsing the cluster onto one or two
    nodes and putting tr(log A)/P at -22.6), and the estimate of tr(log A)/P is as close to
    the exact value as plain Lanczos quadrature on those probes allows."""
    lam = np.concatenate([np.linspace(0.9, 1.0, 3), np.geomspace(1e-12, 1e-9, 97)])
    A = _with_spectrum(lam, 8)
    sd = spectral_density(aslinearoperator(A), n_probes=100, n_steps=30, seed=0)
    assert np.all((sd.weights > 0).sum(axis=1) == 30)
    est = float((sd.weights * np.log(sd.nodes)).sum(axis=1).mean())
    exact = float(np.mean(np.log(lam)))
    assert abs(est - exact) < 0.1  # measured -23.410 against -23.453; it was -22.59


@pytest.mark.parametrize("scale", [1e-170, 1e-160, 1e160, 1e170])
@pytest.mark.parametrize("method", METHODS)
def test_trace_estimates_are_scale_invariant(method, scale):
    """The same probes on A and on scale·A give scale times the estimate and its standard
    error (XTrace's leave-one-out directions were normalised through norms that overflowed
    or underflowed beyond 1e±154, and the standard errors underflowed to 0)."""
    A = _with_spectrum(np.linspace(0.5, 3.0, 60), 9)
    ref = trace(aslinearoperator(A), 12, method=method, seed=2)
    got = trace(aslinearoperator(scale * A), 12, method=method, seed=2)
    np.testing.assert_allclose(got.trace / scale, ref.trace, rtol=1e-12)
    np.testing.assert_allclose(got.std_error / scale, ref.std_error, rtol=1e-10)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_every_estimator_refuses_a_non_finite_operator(bad):
    """An operator whose products hold inf or NaN gave NaN estimates (the exact trace path:
    NaN with a standard error of 0, "computed exactly"), or failed inside ARPACK (Fortran
    messages on stderr) or LAPACK (a review's finding): now one FloatingPointError."""
    A = np.eye(8)
    A[2, 1] = A[1, 2] = bad
    calls = [lambda: fc.hutchinson_diag(A, 8, seed=0),
             lambda: trace(A, 4, method="hutchinson", seed=0),
             lambda: trace(A, 8, method="hutchinson", seed=0),  # n_probes >= P: exact path
             lambda: trace(A, 4, method="xtrace", seed=0),
             lambda: top_eigenvalues(A, 2, seed=0),
             lambda: top_eigenvalues(A, 8, seed=0),
             lambda: fc.spectral_density(A, 2, 4, seed=0)]
    for call in calls:
        with pytest.raises(FloatingPointError, match="non-finite"):
            call()


def test_duck_typed_operator_without_dtype_gets_float64():
    """``None in (float32, float64)`` is True in numpy (None compares equal to float64's
    dtype), so an operator without ``dtype`` kept None and ``spectral_density`` called
    ``np.finfo(None)`` (deprecated; an error under -W error)."""
    from fastcurv.estimators.trace_estimators import _as_operator

    class Op:
        shape = (4, 4)

        def matmat(self, V):
            return np.diag([1.0, 2.0, 3.0, 4.0]) @ V

    assert _as_operator(Op())[2] == np.dtype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = fc.spectral_density(Op(), 2, 4, seed=0)
    np.testing.assert_allclose(np.sort(d.nodes[0]), [1.0, 2.0, 3.0, 4.0], rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_eigenvalue_tools_refuse_an_explicit_non_symmetric_matrix(sparse):
    """A non-symmetric matrix gave silent garbage: eigenvalues of an upper triangle of ones
    (all 1) came out as [2.62, 2.40] from ARPACK and as those of (A + Aᵀ)/2 from the dense
    path. Symmetric to rounding is accepted; the trace and diagonal estimators (unbiased for
    any A) keep accepting it."""
    import scipy.sparse as sps

    N = np.triu(np.ones((6, 6)))
    A = sps.csr_matrix(N) if sparse else N
    for call in (lambda: top_eigenvalues(A, 2, seed=0), lambda: top_eigenvalues(A, 5, seed=0),
                 lambda: fc.spectral_density(A, 2, 4, seed=0)):
        with pytest.raises(ValueError, match="symmetric"):
            call()
    S = N + N.T
    S[0, 1] *= 1 + 1e-15  # rounding-level asymmetry
    S = sps.csr_matrix(S) if sparse else S
    np.testing.assert_allclose(top_eigenvalues(S, 1, seed=0), np.linalg.eigvalsh(N + N.T)[-1:],
                               rtol=1e-10)
    assert np.isfinite(trace(A, 4, seed=0).trace)


@pytest.mark.parametrize("scale", [1e-170, 1e160])
def test_spectral_density_at_extreme_scales_keeps_every_node(scale):
    """The Lanczos norms were sums of squares: at ‖A‖ ~ 1e160 they overflowed and at 1e-170
    underflowed to 0, and every probe stopped after one step (one node at the mean, 5.5)."""
    A = np.diag(np.arange(1.0, 11.0))
    d = fc.spectral_density(A * scale, 2, 10, seed=0)
    for s in range(2):
        np.testing.assert_allclose(np.sort(d.nodes[s]) / scale, np.arange(1.0, 11.0),
                                   rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_eigenvalues_near_the_top_of_the_dtype_range(dtype):
    """The ARPACK start vector had entries up to ~3.5, so ``A v0`` overflowed operators of
    norm near the dtype's largest number (float32 3e38, float64 1.7e308): ArpackError. A
    unit start vector keeps ``A v0`` within the operator's norm."""
    top = 0.95 * float(np.finfo(dtype).max)
    w = np.linspace(top / 30, top, 10)
    A = np.diag(w).astype(dtype)
    got = top_eigenvalues(A, 2, seed=0)
    np.testing.assert_allclose(got, w[::-1][:2], rtol=1e-5 if dtype == np.float32 else 1e-10)


def test_spectral_density_refuses_a_sigma_beyond_float64():
    """``sigma=1e-320`` gave a density of inf and NaN (its peaks 1/(σ√2π) overflow, times
    exp(−∞) = 0), ``sigma=1e308`` an all-NaN grid (the range widened by 3σ overflows); only
    RuntimeWarnings said so (a fuzzing review). A sigma that fits still works."""
    A = np.diag(np.arange(1.0, 6.0))
    for sigma, match in ((1e-320, "too small"), (1e308, "too large")):
        with pytest.raises(ValueError, match=match):
            fc.spectral_density(A, 2, 5, seed=0, sigma=sigma)
    out = fc.spectral_density(A, 2, 5, seed=0, sigma=1e308, grid=np.linspace(0.0, 6.0, 7))
    assert np.all(np.isfinite(out.density))
    out = fc.spectral_density(A, 2, 5, seed=0, sigma=1e-300)
    assert np.all(np.isfinite(out.density)) and np.all(np.isfinite(out.grid))


def test_estimators_refuse_an_operator_with_complex_products():
    """A user operator of dtype float whose products are complex: the imaginary parts were
    dropped with only a ComplexWarning (``trace`` of ``(1+1j) I`` was 0.0; a fuzzing
    review). Complex products with zero imaginary parts are their real parts."""

    def op(c):
        return LinearOperator((9, 9), matvec=lambda v: v * c, matmat=lambda V: V * c,
                              dtype=float)

    for f in (lambda A: fc.trace(A, 9, seed=0), lambda A: fc.hutchinson_diag(A, 4, seed=0),
              lambda A: fc.top_eigenvalues(A, 2),
              lambda A: fc.spectral_density(A, 2, 3, seed=0)):
        with pytest.raises(TypeError, match="complex values"):
            f(op(1 + 1j))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fc.trace(op(2 + 0j), 9, seed=0).trace == pytest.approx(18.0)
