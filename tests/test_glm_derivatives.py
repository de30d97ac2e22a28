"""Objective, gradient and exact curvature of fastcurv.GLM against independent references.

Routes used:
* the objective and its gradient written from the maths (tests/reference.py),
* central finite differences (4th order, h = 1e-3) of the library's own value and gradient,
* a dense Hessian assembled as Σ w_i kron(x̃ x̃ᵀ, ℓ''_i), and a Gauss-Newton matrix built
  from explicit per-sample Jacobians (a second, different route).

Tolerances (float64, normwise relative, see cases.assert_close):
* library vs closed-form reference: 1e-11 (sums of 41 O(1) terms; observed errors ~1e-15);
* library vs 4th-order finite differences: 1e-8 (truncation ~h⁴ f⁽⁵⁾/30 ≈ 1e-13 here plus
  rounding ~eps·|F|/h ≈ 1e-13; 1e-8 leaves room for Poisson's larger high derivatives while
  still catching any wrong term, which gives errors of order 1e-2..1).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from cases import assert_close
from reference import RefGLM, fd_directional, fd_gradient, fd_hessian

import fastcurv as fc

REF_RTOL = 1e-11
FD_RTOL = 1e-8


def test_attributes_and_init(case):
    p = case.glm()
    assert p.n_params == case.P
    assert p.n_samples == case.n
    assert p.n_outputs == case.K
    assert p.dtype == np.dtype(np.float64)
    theta0 = p.init()
    assert theta0.shape == (case.P,) and theta0.dtype == np.float64
    assert not np.any(theta0)


def test_parameter_layout(case):
    """unflatten gives W̃ = [W; b] (C order) and the model output is x̃_i W̃."""
    p, ref = case.glm(), case.ref()
    theta = case.theta()
    (Wt,) = p.unflatten(theta)
    np.testing.assert_array_equal(Wt, ref.Wtilde(theta))
    np.testing.assert_array_equal(p.flatten(p.unflatten(theta)), theta)
    np.testing.assert_array_equal(p.flatten([ref.Wtilde(theta)]), theta)
    # a GLM is linear in θ: J θ = η
    assert_close(p.jvp(theta, theta), ref.eta(theta), REF_RTOL, "jvp(θ, θ) vs η")


def test_value_matches_reference(case):
    p, ref = case.glm(), case.ref()
    theta = case.theta()
    v = p.value(theta)
    assert isinstance(v, float)
    np.testing.assert_allclose(v, ref.value(theta), rtol=1e-12)


def test_grad_matches_reference(case):
    p, ref = case.glm(), case.ref()
    theta = case.theta()
    g = p.grad(theta)
    assert g.shape == (case.P,) and g.dtype == np.float64
    assert_close(g, ref.grad(theta), REF_RTOL, "grad vs reference")
    val, g2 = p.value_and_grad(theta)
    np.testing.assert_allclose(val, ref.value(theta), rtol=1e-12)
    assert_close(g2, ref.grad(theta), REF_RTOL, "value_and_grad vs reference")


def test_grad_matches_finite_differences(case):
    p = case.glm()
    theta = case.theta()
    assert_close(p.grad(theta), fd_gradient(p.value, theta), FD_RTOL, "grad vs FD of value")


def test_hvp_matches_finite_differences(case):
    p = case.glm()
    theta, v = case.theta(), case.vectors()
    assert_close(p.hvp(theta, v), fd_directional(p.grad, theta, v), FD_RTOL, "hvp vs FD")


def test_hvp_matches_dense_reference(case):
    p, ref = case.glm(), case.ref()
    theta, v = case.theta(), case.vectors()
    Hv = p.hvp(theta, v)
    assert Hv.shape == (case.P,) and Hv.dtype == np.float64
    assert_close(Hv, ref.hessian(theta) @ v, REF_RTOL, "hvp vs dense Hessian")


def test_ggn_vp_matches_jacobian_route(case):
    """ggn_vp = (1/W) Σ w_i J_iᵀ ℓ''_i J_i v + λ v_W, with J_i built entry by entry."""
    p, ref = case.glm(), case.ref()
    theta, v = case.theta(), case.vectors()
    G = ref.ggn(theta)
    assert_close(p.ggn_vp(theta, v), G @ v, REF_RTOL, "ggn_vp vs explicit J^T H J")
    # canonical links: the GGN is the Hessian (checked between the two reference routes)
    assert_close(G, ref.hessian(theta), 1e-13, "reference GGN vs reference Hessian")


def test_dense_hessian(case):
    p, ref = case.glm(), case.ref()
    theta = case.theta()
    H = p.hessian(theta)
    assert H.shape == (case.P, case.P) and H.dtype == np.float64
    assert_close(H, ref.hessian(theta), REF_RTOL, "hessian vs reference")


def test_dense_hessian_matches_finite_differences(small_case):
    p = small_case.glm()
    theta = small_case.theta()
    assert_close(p.hessian(theta), fd_hessian(p.grad, theta), FD_RTOL, "hessian vs FD")


def test_hessian_symmetric_and_psd(case):
    p = case.glm()
    theta = case.theta()
    H = p.hessian(theta)
    assert_close(H, H.T, 1e-14, "H vs H^T")
    eig = np.linalg.eigvalsh(0.5 * (H + H.T))
    assert eig.min() >= -1e-12 * max(eig.max(), 1.0), f"negative eigenvalue {eig.min()}"
    # symmetry of the operator itself: <u, H v> = <H u, v>
    u, v = case.vectors(seed=3), case.vectors(seed=4)
    lhs, rhs = u @ p.hvp(theta, v), p.hvp(theta, u) @ v
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-13 * np.abs(H).max())
    # and positive semidefinite as an operator
    assert v @ p.hvp(theta, v) >= -1e-12 * np.abs(H).max() * (v @ v)


def test_hessian_diag(case):
    p, ref = case.glm(), case.ref()
    theta = case.theta()
    expected = np.diag(ref.hessian(theta))
    d = p.hessian_diag(theta)
    assert d.shape == (case.P,) and d.dtype == np.float64
    assert_close(d, expected, REF_RTOL, "hessian_diag vs diag of dense reference")
    assert_close(p.ggn_diag(theta), expected, REF_RTOL, "ggn_diag (exact) vs reference")


def test_gradient_at_zero_and_init(case):
    """At θ = 0 every η is 0, so ℓ' has a closed form; check grad(init()) against it."""
    p, ref = case.glm(), case.ref()
    theta0 = p.init()
    assert_close(p.grad(theta0), ref.grad(np.zeros(case.P)), REF_RTOL, "grad at init")


@pytest.mark.parametrize("name", ["multinomial-dense-weighted", "multinomial-csr-plain",
                                  "multinomial4-dense-weighted"])
def test_multinomial_intercept_null_direction(name):
    """DESIGN 'Null directions': a common shift of the K intercepts changes no probability,
    so it is in the Hessian's null space and orthogonal to the gradient."""
    from cases import by_name

    case = by_name(name)
    p = case.glm()
    theta = case.theta()
    s = np.zeros((case.d + 1, case.K))
    s[case.d] = 1.0
    s = s.reshape(-1)
    scale = np.abs(p.hessian(theta)).max()
    np.testing.assert_allclose(p.hvp(theta, s), 0.0, atol=1e-14 * scale * case.K)
    assert abs(p.grad(theta) @ s) <= 1e-14 * np.abs(p.grad(theta)).max() * case.K
    # a common shift of one feature's K weights is a null direction of the data term only
    t = np.zeros((case.d + 1, case.K))
    t[1] = 1.0
    t = t.reshape(-1)
    np.testing.assert_allclose(p.hvp(theta, t), case.l2 * t, atol=1e-14 * scale * case.K)


def test_value_along_matches_reference(case):
    """value_along(θ, d)(α) = F(θ + α d), also when θ + d was the last point evaluated."""
    p, ref = case.glm(), case.ref()
    theta, d = case.theta(), 0.5 * case.vectors()
    alphas = [0.0, 1.0, 0.5, -0.25, 2.0]
    phi = p.value_along(theta, d)
    for a in alphas:
        np.testing.assert_allclose(phi(a), ref.value(theta + a * d), rtol=1e-12)
    q = case.glm()
    q.value(theta)
    q.value(theta + d)  # a line search's first trial
    phi = q.value_along(theta, d)
    for a in alphas:
        np.testing.assert_allclose(phi(a), ref.value(theta + a * d), rtol=1e-12)


@pytest.mark.parametrize("storage", ["dense", "csr"])
@pytest.mark.parametrize("n,d", [(1, 1), (3, 2), (5, 7), (7, 3)])
@pytest.mark.parametrize("family,K", [("logistic", 1), ("gaussian", 3), ("multinomial", 2),
                                      ("multinomial", 5), ("poisson", 6)])
def test_edge_sizes(storage, n, d, family, K):
    """Sizes that do not fill the kernels' row blocks and register tiles (n < 4, n mod 4 != 0;
    L = K m from 1 to 30 outputs at once), against the dense reference."""
    rng = np.random.default_rng(n * 100 + d * 10 + K)
    X = rng.normal(0.0, 0.5, (n, d))
    if family == "multinomial":
        y = rng.integers(0, K, n)
        y[0] = K - 1
    elif family == "logistic":
        y = (rng.random(n) < 0.5).astype(float)
    elif family == "gaussian":
        y = rng.normal(size=(n, K))
    else:
        y = rng.poisson(1.0, (n, K)).astype(float)
    p = fc.GLM(sp.csr_matrix(X) if storage == "csr" else X, y, family, l2=0.1)
    ref = RefGLM(X, y, family, K, 0.1)
    theta = rng.normal(0.0, 0.5, p.n_params)
    H, F, J = ref.hessian(theta), ref.fisher(theta), ref.jacobian_rows()
    np.testing.assert_allclose(p.value(theta), ref.value(theta), rtol=1e-12)
    assert_close(p.grad(theta), ref.grad(theta), REF_RTOL, "grad")
    assert_close(p.hessian_diag(theta), np.diag(H), REF_RTOL, "hessian_diag")
    for m in (None, 2, 5):
        V = rng.standard_normal((p.n_params,) if m is None else (p.n_params, m))
        assert_close(p.hvp(theta, V), H @ V, REF_RTOL, f"hvp m={m}")
        assert_close(p.fisher_vp(theta, V), F @ V, REF_RTOL, f"fisher_vp m={m}")
        assert_close(p.jvp(theta, V), np.einsum("ikp,p...->ik...", J, V), REF_RTOL, f"jvp m={m}")
