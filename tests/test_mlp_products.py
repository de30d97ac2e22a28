"""fc.MLP against the independent reference tests/mlp_reference.py (complex-step Jacobians and
Hessians, hand-written backprop): value, gradient, every curvature and Jacobian product,
per-sample gradients, dense Hessian and diagonals, Monte Carlo GGN diagonal, weights, the
penalty, row blocks, threads, the one-layer MLP as a GLM, operators and solvers.

Every expected number comes from the reference or a closed form, never from fastcurv.

Tolerances (normwise relative via cases.assert_close: max error <= rtol * max |expected|):
* float64 vs reference: 1e-10. The reference is exact to rounding (complex step has no
  cancellation); the observed error of both routes is ~1e-15, so 1e-10 only leaves room for
  the condition of the products, not for any wrong term (a wrong term is O(1)).
* float64, two forms of one problem (CSR vs dense, weights vs repeated rows, row blocks, MLP
  vs GLM): 1e-12 (only the summation order differs).
* float32 vs float64 reference on the same float32-representable numbers: 100 float32 eps
  (1.2e-5). Budget: three layers of float32 dot products of length <= 5 (<= 5 eps each),
  activation and loss evaluations (a few eps each), float32 partial sums over <= 30 rows
  (<= 30 eps worst case, ~sqrt(30) typical), through O(1)-conditioned layers (weights ~0.5,
  activation slopes <= 1): a few tens of eps in the worst case.
"""

import dataclasses
import functools

import numpy as np
import pytest
from cases import assert_close
from mlp_reference import (
    ACTIVATIONS,
    DEFAULT_K,
    GLM_FAMILY,
    H_CS,
    LOSSES,
    RefMLP,
    act,
    act_d1,
    d2loss_eta,
    dloss_eta,
    fd_gradient,
    fd_jacobian,
    loss_eta,
    make_data,
    mc_ggn_diag_std,
    random_theta,
    random_vectors,
)
from reference import RefGLM

import fastcurv as fc

REF_RTOL = 1e-10
SAME_RTOL = 1e-12
EPS32 = float(np.finfo(np.float32).eps)
F32_RTOL = 100 * EPS32


# ====================================================================== the catalogue
@dataclasses.dataclass(frozen=True)
class MLPCase:
    """One MLP problem: sizes (d, *hidden, K), weighted rows (three zero weights), l2 > 0."""

    activation: object  # a name or a tuple of names
    loss: str
    dtype: type = np.float64
    K: int = None  # default DEFAULT_K[loss]
    hidden: tuple = (4, 3)
    n: int = 30
    d: int = 3
    weighted: bool = True
    l2: float = 0.125
    seed: int = 0

    @property
    def name(self):
        a = self.activation if isinstance(self.activation, str) else "+".join(self.activation)
        dt = "f64" if self.dtype == np.float64 else "f32"
        return f"{a}-{self.loss}-K{self.n_out}-{dt}"

    @property
    def n_out(self):
        return DEFAULT_K[self.loss] if self.K is None else self.K

    @property
    def sizes(self):
        return (self.d, *self.hidden, self.n_out)

    @property
    def P(self):
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def rtol(self):
        return REF_RTOL if self.dtype == np.float64 else F32_RTOL

    def data(self):
        X, y, w = make_data(self.loss, self.n_out, self.n, self.d, self.seed, self.weighted)
        return X.astype(self.dtype), y, w

    def mlp(self, **overrides):
        X, y, w = self.data()
        kw = dict(sizes=self.sizes, activation=self.activation, loss=self.loss, l2=self.l2,
                  sample_weight=w)
        kw.update(overrides)
        return fc.MLP(X, y, **kw)

    def ref(self):
        return _ref(dataclasses.replace(self, dtype=np.float64))

    def theta(self, seed=1):
        return random_theta(self.sizes, seed).astype(self.dtype)

    def vectors(self, m=None, seed=2):
        return random_vectors(self.P, m, seed).astype(self.dtype)

    def expected(self, seed=1):
        """Reference matrices at theta(seed) (float64; shared by the float32 twin)."""
        return _expected(dataclasses.replace(self, dtype=np.float64), seed)


@functools.lru_cache(maxsize=None)
def _ref(case):
    X, y, w = case.data()
    return RefMLP(X, y, case.sizes, case.activation, case.loss, case.l2, w)


@functools.lru_cache(maxsize=None)
def _expected(case, seed):
    ref = case.ref()
    theta = random_theta(case.sizes, seed)
    return {
        "value": ref.value(theta),
        "grad": ref.grad_cs(theta),
        "H": ref.hessian(theta),
        "G": ref.ggn(theta),
        "F": ref.fisher(theta),
        "J": ref.jacobians(theta),
        "psg": ref.per_sample_grads(theta),
    }


def _ids(c):
    return c.name


ALL = [MLPCase(a, l, dt) for dt in (np.float64, np.float32) for l in LOSSES for a in ACTIVATIONS]
F64 = [c for c in ALL if c.dtype == np.float64]
#: one activation per loss (each activation appears), for the more expensive checks
SMALL = [MLPCase(a, l) for a, l in zip(("tanh", "gelu", "softplus", "relu"), LOSSES, strict=True)]
#: single-output problems (y of shape (n,)), and a per-layer activation list
EXTRA = [
    MLPCase("sigmoid", "mse", K=1),
    MLPCase("tanh", "sigmoid_cross_entropy", K=1),
    MLPCase("gelu", "poisson", K=1),
    MLPCase(("gelu", "relu", "softplus"), "softmax_cross_entropy", hidden=(4, 3, 3)),
    MLPCase(("identity", "sigmoid"), "mse", K=3),
    MLPCase("tanh", "softmax_cross_entropy", K=2, hidden=(5,)),
    MLPCase("relu", "poisson", K=1, hidden=(6,), weighted=False, l2=0.0),
    MLPCase(("sigmoid", "tanh"), "sigmoid_cross_entropy", np.float32),
]


# ====================================================================== the reference itself
def _fd_step(ref, theta):
    """Central-difference step: 1e-3, or for relu networks small enough that no step of 2h
    moves a hidden pre-activation across the kink at 0 (|Δz| <= 2h (max|h_in| + 1))."""
    if "relu" not in ref.acts:
        return 1e-3
    zs, hs = ref.forward_all(theta)
    zmin = min(np.min(np.abs(z)) for z in zs[:-1])
    reach = 2.0 * (max(np.max(np.abs(h)) for h in hs) + 1.0)
    h = min(1e-5, 0.1 * zmin / reach)
    assert h > 1e-8, "a pre-activation is too close to the relu kink for differences"
    return h


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_gradient_three_ways(activation, loss):
    """Complex step of F == hand-written backprop (to rounding) == 4th-order central
    differences of the real F (truncation O(h⁴) ~ 1e-12 at h = 1e-3, rounding ~1e-13)."""
    case = MLPCase(activation, loss)
    ref = case.ref()
    theta = case.theta()
    g_cs, g_bp = ref.grad_cs(theta), ref.grad_bp(theta)
    assert g_bp.dtype == np.float64
    assert_close(g_bp, g_cs, 1e-13, "backprop vs complex step")
    h = _fd_step(ref, theta)
    assert_close(fd_gradient(ref.value, theta, h), g_cs, 1e-8,
                 "central differences vs complex step")
    # the per-sample gradients J_iᵀ ℓ'_i average (with weights, plus penalty) to the gradient
    G = ref.per_sample_grads(theta)
    assert_close(ref.w @ G / ref.W + case.l2 * ref.mask * theta, g_cs, 1e-13, "mean of g_i")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_hessian_and_jacobian(activation, loss):
    """The complex-step Hessian is symmetric before symmetrization and matches central
    differences of the backprop gradient; the complex-step Jacobians match central
    differences of the outputs."""
    case = MLPCase(activation, loss)
    ref = case.ref()
    theta = case.theta()
    H = ref.hessian_raw(theta)
    assert_close(H, H.T, 1e-13, "complex-step Hessian symmetry")
    h = _fd_step(ref, theta)
    Hfd = fd_jacobian(lambda t: ref.grad_bp(t), theta, h)
    assert_close(H, Hfd, 1e-7, "complex-step Hessian vs central differences")
    J = ref.jacobians(theta)
    Jfd = fd_jacobian(lambda t: ref.eta(t), theta, h)
    assert_close(J, Jfd, 1e-8, "complex-step Jacobians vs central differences")


def test_reference_one_layer_is_the_glm_reference():
    """sizes (d, K): the reference MLP equals tests/reference.py's RefGLM (an independent
    formula, x̃ ⊗ ℓ'), and its GGN equals its Hessian (canonical links)."""
    for loss in LOSSES:
        K = DEFAULT_K[loss]
        X, y, w = make_data(loss, K, 25, 3, seed=4)
        ref = RefMLP(X, y, (3, K), "tanh", loss, 0.3, w)
        glm = RefGLM(X, y, GLM_FAMILY[loss], K, 0.3, True, w)
        theta = random_theta((3, K))
        np.testing.assert_allclose(ref.value(theta), glm.value(theta), rtol=1e-14)
        assert_close(ref.grad_cs(theta), glm.grad(theta), 1e-13, f"{loss} grad")
        assert_close(ref.hessian(theta), glm.hessian(theta), 1e-13, f"{loss} hessian")
        assert_close(ref.ggn(theta), glm.hessian(theta), 1e-13, f"{loss} ggn")
        assert_close(ref.fisher(theta), glm.fisher(theta), 1e-13, f"{loss} fisher")
        assert_close(ref.jacobians(theta), glm.jacobian_rows(), 1e-14, f"{loss} J")


@pytest.mark.parametrize("loss", LOSSES)
def test_reference_loss_derivatives(loss):
    """ℓ' and ℓ'' written out == complex steps of ℓ and ℓ'."""
    K = 3
    rng = np.random.default_rng(7)
    eta = rng.normal(0.0, 1.5, (6, K))
    _, y, _ = make_data(loss, K, 6, 2, weighted=False)
    d1 = dloss_eta(loss, eta, y)
    d2 = d2loss_eta(loss, eta, y)
    for k in range(K):
        e = np.zeros(K, complex)
        e[k] = 1j * H_CS
        assert_close(d1[:, k], loss_eta(loss, eta + e, y).imag / H_CS, 1e-14, f"ℓ' col {k}")
        assert_close(d2[:, :, k], dloss_eta(loss, eta + e, y).imag / H_CS, 1e-14,
                     f"ℓ'' col {k}")


def test_reference_activations():
    z = np.array([-2.5, -0.7, -1e-3, 1e-3, 0.4, 1.0, 3.0])
    for name in ACTIVATIONS:
        cs = act(name, z + 1j * H_CS).imag / H_CS
        assert_close(act_d1(name, z).real, cs, 1e-14, f"{name}' vs complex step")
        assert np.all(np.isreal(act(name, z)))
    # closed forms
    np.testing.assert_allclose(act("gelu", np.array([1.0])), 0.8413447460685429, rtol=1e-15)
    np.testing.assert_allclose(act("gelu", np.array([-1.0])), -0.15865525393145707,
                               rtol=1e-14)
    np.testing.assert_allclose(act("softplus", np.array([0.0])), np.log(2.0), rtol=1e-15)
    np.testing.assert_allclose(act("sigmoid", np.array([0.0])), 0.5, rtol=1e-15)
    np.testing.assert_array_equal(act("relu", np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(act_d1("relu", np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("loss", LOSSES)
def test_reference_mc_variance_formula(loss):
    """mc_ggn_diag_std against a plain NumPy simulation of the estimator (S = 1, 4000
    replicates): the empirical standard deviation agrees within 10% (sampling error of a
    standard deviation from 4000 replicates is ~1.1% times the kurtosis factor)."""
    case = MLPCase("tanh", loss, n=8)
    ref = case.ref()
    theta = case.theta()
    J = ref.jacobians(theta)
    eta = ref.eta(theta)
    a = ref.w / ref.W
    rng = np.random.default_rng(0)
    R = 4000
    est = np.zeros((R, ref.P))
    for i in range(ref.n):
        if loss == "mse":
            y = eta[i] + rng.standard_normal((R, ref.K))
        elif loss == "sigmoid_cross_entropy":
            y = (rng.random((R, ref.K)) < 1 / (1 + np.exp(-eta[i]))).astype(float)
        elif loss == "poisson":
            y = rng.poisson(np.exp(eta[i]), (R, ref.K)).astype(float)
        else:
            p = np.exp(eta[i] - eta[i].max())
            y = rng.choice(ref.K, size=R, p=p / p.sum())
        r = dloss_eta(loss, np.repeat(eta[i][None], R, axis=0), y)
        est += a[i] * (r @ J[i]) ** 2
    exact = np.diag(ref.ggn(theta)) - case.l2 * ref.mask
    std = mc_ggn_diag_std(ref, theta, 1)
    assert_close(est.mean(axis=0), exact, 0.1, "simulated mean")
    live = std > 1e-3 * std.max()
    np.testing.assert_allclose(est.std(axis=0)[live], std[live], rtol=0.1)


# ====================================================================== fc.MLP vs reference
@pytest.fixture(params=ALL, ids=_ids)
def case(request):
    """Every activation x loss x dtype (sizes (3, 4, 3, K), n = 30, weights, l2 = 0.125)."""
    return request.param


@pytest.fixture(params=EXTRA, ids=_ids)
def extra_case(request):
    """Single-output, per-layer-activation, one-hidden-layer, unweighted (l2 = 0) and a
    float32 per-layer problem."""
    return request.param


@pytest.fixture(params=F64 + EXTRA, ids=_ids)
def case64(request):
    """Float64 activation x loss, plus the extra problems."""
    return request.param


def _check_dtype(out, case, what):
    assert out.dtype == np.dtype(case.dtype), f"{what}: dtype {out.dtype} != {case.dtype}"


def test_attributes(case):
    p = case.mlp()
    assert p.n_params == case.P and p.n_samples == case.n and p.n_outputs == case.n_out
    assert p.dtype == np.dtype(case.dtype)
    assert tuple(p.sizes) == case.sizes
    assert p.activations == (case.activation,) * 2
    assert p.loss == case.loss and p.l2 == case.l2


@pytest.mark.parametrize("c", EXTRA, ids=_ids)
def test_attributes_extra(c):
    p = c.mlp()
    n_hidden = len(c.hidden)
    acts = (c.activation,) * n_hidden if isinstance(c.activation, str) else c.activation
    assert p.activations == tuple(acts)
    assert p.n_params == c.P and p.n_outputs == c.n_out and tuple(p.sizes) == c.sizes


def _value_grad(c):
    p, e = c.mlp(), c.expected()
    theta = c.theta()
    v = p.value(theta)
    assert isinstance(v, float)
    np.testing.assert_allclose(v, e["value"], rtol=c.rtol)
    g = p.grad(theta)
    assert g.shape == (c.P,)
    _check_dtype(g, c, "grad")
    assert_close(g, e["grad"], c.rtol, "grad")
    v2, g2 = p.value_and_grad(theta)
    np.testing.assert_allclose(v2, e["value"], rtol=c.rtol)
    assert_close(g2, e["grad"], c.rtol, "value_and_grad grad")
    _check_dtype(g2, c, "value_and_grad")


def test_value_and_grad(case):
    _value_grad(case)


def test_value_and_grad_extra(extra_case):
    _value_grad(extra_case)


def _curvature_products(c):
    p, e = c.mlp(), c.expected()
    theta, v, V = c.theta(), c.vectors(), c.vectors(m=3)
    for method, M in (("hvp", e["H"]), ("ggn_vp", e["G"]), ("fisher_vp", e["F"])):
        f = getattr(p, method)
        out = f(theta, v)
        assert out.shape == (c.P,), f"{method} shape {out.shape}"
        _check_dtype(out, c, method)
        assert_close(out, M @ v.astype(np.float64), c.rtol, method)
        out = f(theta, V)
        assert out.shape == (c.P, 3), f"block {method} shape {out.shape}"
        _check_dtype(out, c, f"block {method}")
        assert_close(out, M @ V.astype(np.float64), c.rtol, f"block {method}")


def test_curvature_products(case):
    """hvp (exact Hessian, penalty included), ggn_vp ((1/W) Σ w J'HJ + λ on weights) and
    fisher_vp ((1/W) Σ w g gᵀ, no penalty), for a vector and a (P, 3) block."""
    _curvature_products(case)


def test_curvature_products_extra(extra_case):
    _curvature_products(extra_case)


def _jacobian_products(c):
    p, e = c.mlp(), c.expected()
    theta, v = c.theta(), c.vectors()
    J = e["J"]  # (n, K, P)
    out = p.jvp(theta, v)
    assert out.shape == (c.n, c.n_out), f"jvp shape {out.shape}"
    _check_dtype(out, c, "jvp")
    assert_close(out, J @ v.astype(np.float64), c.rtol, "jvp vs J v")
    u = np.random.default_rng(5).standard_normal((c.n, c.n_out)).astype(c.dtype)
    out = p.vjp(theta, u)
    assert out.shape == (c.P,), f"vjp shape {out.shape}"
    _check_dtype(out, c, "vjp")
    assert_close(out, np.einsum("ikp,ik->p", J, u.astype(np.float64)), c.rtol, "vjp vs Jᵀu")


def test_jacobian_products(case):
    _jacobian_products(case)


def test_jacobian_products_extra(extra_case):
    _jacobian_products(extra_case)


def test_jacobian_adjoint_identity(case64):
    """<u, J v> == <Jᵀ u, v> (a property; no reference involved)."""
    c = case64
    p = c.mlp()
    theta = c.theta()
    rng = np.random.default_rng(9)
    for _ in range(3):
        v = rng.standard_normal(c.P)
        u = rng.standard_normal((c.n, c.n_out))
        Jv, Jtu = p.jvp(theta, v), p.vjp(theta, u)
        lhs, rhs = np.sum(u * Jv), Jtu @ v
        scale = np.sum(np.abs(u) * np.abs(Jv)) + np.abs(Jtu) @ np.abs(v)
        tol = 1e-13 if c.dtype == np.float64 else F32_RTOL
        assert abs(lhs - rhs) <= tol * scale, (lhs, rhs)


def _per_sample_grads(c):
    p, e = c.mlp(), c.expected()
    theta = c.theta()
    G = p.per_sample_grads(theta)
    assert isinstance(G, np.ndarray) and G.shape == (c.n, c.P)
    _check_dtype(G, c, "per_sample_grads")
    assert_close(G, e["psg"], c.rtol, "per_sample_grads vs J_iᵀ ℓ'_i")
    for rows in ([3, 0, 7, 7, c.n - 1], np.array([12]), np.arange(c.n)[::-4]):
        G = p.per_sample_grads(theta, rows)
        idx = np.asarray(rows)
        assert G.shape == (len(idx), c.P)
        assert_close(G, e["psg"][idx], c.rtol, f"per_sample_grads(rows={rows})")


def test_per_sample_grads(case):
    _per_sample_grads(case)


def test_per_sample_grads_extra(extra_case):
    _per_sample_grads(extra_case)


def _dense_and_diagonals(c):
    p, e = c.mlp(), c.expected()
    theta = c.theta()
    H = p.hessian(theta)
    assert H.shape == (c.P, c.P)
    _check_dtype(H, c, "hessian")
    assert_close(H, e["H"], c.rtol, "dense hessian")
    np.testing.assert_array_equal(H, H.T, err_msg="hessian() is documented as symmetrized")
    d = p.hessian_diag(theta)
    assert d.shape == (c.P,)
    _check_dtype(d, c, "hessian_diag")
    assert_close(d, np.diag(e["H"]), c.rtol, "hessian_diag")
    d = p.ggn_diag(theta)
    assert d.shape == (c.P,)
    _check_dtype(d, c, "ggn_diag")
    assert_close(d, np.diag(e["G"]), c.rtol, "exact ggn_diag")


def test_dense_hessian_and_diagonals(case):
    _dense_and_diagonals(case)


def test_dense_hessian_and_diagonals_extra(extra_case):
    _dense_and_diagonals(extra_case)


def test_hessian_symmetric_and_ggn_psd(case64):
    """The Hessian built column by column from hvp is symmetric to rounding; the GGN built by
    GGNOperator.matmat(I) is symmetric and positive semidefinite (eigenvalues >= -1e-12 of
    the largest; float32: 100 eps); G - l2 diag(mask), the data part, is PSD as well."""
    c = case64
    p, ref = c.mlp(), c.ref()
    theta = c.theta()
    tol = 1e-12 if c.dtype == np.float64 else F32_RTOL
    I = np.eye(c.P, dtype=c.dtype)
    H = p.hvp(theta, I)
    assert_close(H, H.T, tol, "hvp(I) symmetry")
    G = fc.GGNOperator(p, theta).matmat(I).astype(np.float64)
    assert_close(G, G.T, tol, "ggn_vp(I) symmetry")
    G = 0.5 * (G + G.T)
    ev = np.linalg.eigvalsh(G)
    assert ev.min() >= -tol * ev.max(), ev.min()
    ev0 = np.linalg.eigvalsh(G - c.l2 * np.diag(ref.mask))
    assert ev0.min() >= -tol * ev.max(), ev0.min()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_large_parameters(activation, loss):
    """θ ~ N(0, 3²): hidden pre-activations up to ~±20 (saturated tanh/sigmoid, softplus and
    gelu in their asymptotic regimes) and outputs |η| up to ~300; float64 results stay within
    1e-10 of the reference (which is exact there: no overflow below e^709)."""
    c = MLPCase(activation, loss)
    p, ref = c.mlp(), c.ref()
    theta = random_theta(c.sizes, 1, scale=3.0)
    v = c.vectors()
    val, g = p.value_and_grad(theta)
    assert np.isfinite(val) and np.all(np.isfinite(g))
    np.testing.assert_allclose(val, ref.value(theta), rtol=REF_RTOL)
    assert_close(g, ref.grad_cs(theta), REF_RTOL, "grad at large θ")
    assert_close(p.hvp(theta, v), ref.hessian(theta) @ v, REF_RTOL, "hvp at large θ")
    assert_close(p.ggn_vp(theta, v), ref.ggn(theta) @ v, REF_RTOL, "ggn_vp at large θ")


# ====================================================================== Monte Carlo GGN diagonal
@pytest.mark.parametrize("c", SMALL + [MLPCase("sigmoid", "softmax_cross_entropy", np.float32)],
                         ids=_ids)
def test_ggn_diag_mc_seeding(c):
    p = c.mlp()
    theta = c.theta()
    a = p.ggn_diag(theta, mc_samples=3, seed=11)
    b = c.mlp().ggn_diag(theta, mc_samples=3, seed=11)
    assert a.shape == (c.P,)
    _check_dtype(a, c, "MC ggn_diag")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p.ggn_diag(theta, mc_samples=3, seed=11), a)
    e = p.ggn_diag(theta, mc_samples=3, seed=12)
    assert not np.array_equal(a, e)
    assert np.all(a >= 0)
    # the penalty (λ on weights, 0 on biases) is included as in the exact diagonal:
    # every estimate is >= λ on the weight coordinates
    assert np.all(a[c.ref().mask == 1] >= c.l2 * (1 - 1e-6))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ggn_diag_mc_within_exact_standard_deviations(activation, loss):
    """The estimate with S label draws per row lies within 6 exact standard deviations
    (mlp_reference.mc_ggn_diag_std) of the exact diagonal on every coordinate, for S = 64 and
    S = 1024 (so the error shrinks like 1/sqrt(S)); the estimate sums n S = 1920+ independent
    terms, so the normal approximation holds and a 6-sigma miss has probability ~1e-9 per
    coordinate (and the seeds are fixed: the test cannot flake)."""
    c = MLPCase(activation, loss)
    p, ref, e = c.mlp(), c.ref(), c.expected()
    theta = c.theta()
    exact = np.diag(e["G"])
    for S in (64, 1024):
        est = p.ggn_diag(theta, mc_samples=S, seed=S)
        std = mc_ggn_diag_std(ref, theta, S)
        err = np.abs(est - exact)
        dead = std <= 1e-14 * exact.max()  # e.g. relu units off on every row
        assert np.all(err[dead] <= 1e-12 * exact.max()), f"S={S}: nonzero where variance is 0"
        z = err[~dead] / std[~dead]
        assert z.max() < 6.0, f"S={S}: max error {z.max():.1f} standard deviations"


def test_ggn_diag_mc_converges():
    """Relative error (normwise) falls as S grows: S = 4 vs S = 4096 (expected ratio 32)."""
    c = MLPCase("tanh", "softmax_cross_entropy")
    p, e = c.mlp(), c.expected()
    theta = c.theta()
    exact = np.diag(e["G"])

    def err(S):
        return np.max(np.abs(p.ggn_diag(theta, mc_samples=S, seed=3) - exact)) / exact.max()

    small, large = err(4), err(4096)
    assert large < 0.02, large
    assert large < small / 8, (small, large)


# ====================================================================== weights and penalty
@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_integer_weights_equal_repeated_rows(c):
    X, y, _ = c.data()
    w = np.random.default_rng(3).integers(0, 4, c.n)
    w[:2] = [0, 3]
    rep = np.repeat(np.arange(c.n), w)
    p = c.mlp(sample_weight=w)
    q = fc.MLP(X[rep], np.asarray(y)[rep], c.sizes, c.activation, c.loss, c.l2)
    theta, v, V = c.theta(), c.vectors(), c.vectors(m=2)
    np.testing.assert_allclose(p.value(theta), q.value(theta), rtol=SAME_RTOL)
    for method in ("hvp", "ggn_vp", "fisher_vp"):
        for vec in (v, V):
            assert_close(getattr(p, method)(theta, vec), getattr(q, method)(theta, vec),
                         SAME_RTOL, f"weights vs repeated rows: {method}")
    assert_close(p.grad(theta), q.grad(theta), SAME_RTOL, "weights vs repeated rows: grad")
    assert_close(p.hessian_diag(theta), q.hessian_diag(theta), SAME_RTOL, "hessian_diag")
    assert_close(p.ggn_diag(theta), q.ggn_diag(theta), SAME_RTOL, "ggn_diag")
    # and against the reference with the integer weights
    ref = RefMLP(X, y, c.sizes, c.activation, c.loss, c.l2, w)
    assert_close(p.hvp(theta, v), ref.hessian(theta) @ v, REF_RTOL, "int weights hvp vs ref")


@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_weights_are_normalized_and_zero_rows_do_not_matter(c):
    X, y, w = c.data()
    p, q = c.mlp(), c.mlp(sample_weight=7.0 * w)
    keep = w > 0
    r = fc.MLP(X[keep], np.asarray(y)[keep], c.sizes, c.activation, c.loss, c.l2,
               sample_weight=w[keep])
    theta, v = c.theta(), c.vectors()
    for other in (q, r):
        np.testing.assert_allclose(other.value(theta), p.value(theta), rtol=SAME_RTOL)
        assert_close(other.grad(theta), p.grad(theta), SAME_RTOL, "grad")
        assert_close(other.hvp(theta, v), p.hvp(theta, v), SAME_RTOL, "hvp")
        assert_close(other.ggn_vp(theta, v), p.ggn_vp(theta, v), SAME_RTOL, "ggn_vp")
    # default weights are ones
    a, b = c.mlp(sample_weight=None), c.mlp(sample_weight=np.ones(c.n))
    np.testing.assert_array_equal(a.grad(theta), b.grad(theta))
    np.testing.assert_array_equal(a.hvp(theta, v), b.hvp(theta, v))


@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_l2_penalizes_weights_not_biases(c):
    """F_λ − F_0 = (λ/2) Σ_l ‖W_l‖² with W_l the first n_in rows of each (n_in + 1, n_out)
    block (closed form from the layout); its gradient λ·mask·θ, its Hessian and GGN λ·mask,
    and the empirical Fisher carries no penalty."""
    lam = 0.75
    p, q = c.mlp(l2=lam), c.mlp(l2=0.0)
    theta, v = c.theta(), c.vectors()
    # mask from the layout, independently of the reference: bias = last row of each block
    mask, start, pen = np.zeros(c.P), 0, 0.0
    for a, b in zip(c.sizes[:-1], c.sizes[1:], strict=True):
        mask[start:start + a * b] = 1.0
        pen += 0.5 * lam * np.sum(theta[start:start + (a + 1) * b].reshape(a + 1, b)[:-1] ** 2)
        start += (a + 1) * b
    np.testing.assert_allclose(pen, 0.5 * lam * np.sum(mask * theta ** 2), rtol=1e-15)
    np.testing.assert_allclose(p.value(theta) - q.value(theta), pen, rtol=1e-10)
    assert_close(p.grad(theta) - q.grad(theta), lam * mask * theta, 1e-12, "penalty grad")
    assert_close(p.hvp(theta, v) - q.hvp(theta, v), lam * mask * v, 1e-12, "penalty hvp")
    assert_close(p.ggn_vp(theta, v) - q.ggn_vp(theta, v), lam * mask * v, 1e-12, "penalty ggn")
    np.testing.assert_array_equal(p.fisher_vp(theta, v), q.fisher_vp(theta, v))
    assert_close(p.hessian_diag(theta) - q.hessian_diag(theta), lam * mask, 1e-12, "diag")
    assert_close(p.ggn_diag(theta) - q.ggn_diag(theta), lam * mask, 1e-12, "ggn diag")
    # moving only the biases leaves the penalty unchanged
    t2 = theta + 3.0 * (1 - mask)
    np.testing.assert_allclose(p.value(t2) - q.value(t2), pen, rtol=1e-10)


# ====================================================================== row blocks and threads
@pytest.mark.parametrize("c", SMALL + [MLPCase("gelu", "softmax_cross_entropy", np.float32)],
                         ids=_ids)
def test_batch_size_blocks_equal_one_block(c):
    """batch_size = 7 with n = 50 (8 blocks, the last one short) == batch_size = n."""
    c = dataclasses.replace(c, n=50)
    p, q = c.mlp(batch_size=7), c.mlp(batch_size=50)
    assert p.batch_size == 7
    a, b = _outputs(p, c, mc=False), _outputs(q, c, mc=False)
    tol = SAME_RTOL if c.dtype == np.float64 else F32_RTOL
    for key in a:
        assert_close(a[key], b[key], tol, f"batch_size 7 vs 50: {key}")
    e = c.expected()
    assert_close(a["hvp"], e["H"] @ c.vectors().astype(np.float64), c.rtol, "blocked hvp vs ref")


@pytest.mark.parametrize("c", [MLPCase("tanh", "softmax_cross_entropy"),
                               MLPCase("sigmoid", "mse", np.float32),
                               MLPCase("relu", "poisson", K=2)], ids=_ids)
@pytest.mark.parametrize("batch_size", [None, 16])
def test_row_chunks_equal_one_chunk(c, batch_size, monkeypatch):
    """n = 203 rows run as 3 parallel row chunks (67, 68 and 68 rows; with batch_size 16, in
    blocks of 6 rows) give what one chunk gives (to rounding: only the grouping of the row sums
    changes), and the Hessian product matches the independent reference."""
    c = dataclasses.replace(c, n=203)
    q = c.mlp(batch_size=batch_size)
    assert len(q._starts) - 1 == 1  # a small problem: one chunk, no parallel region
    _force_chunks(monkeypatch)
    p = c.mlp(batch_size=batch_size)
    assert len(p._starts) - 1 == 3
    a, b = _outputs(p, c), _outputs(q, c)
    tol = SAME_RTOL if c.dtype == np.float64 else F32_RTOL
    for key in a:
        assert_close(a[key], b[key], tol, f"3 chunks vs 1: {key}")
    e = c.expected()
    assert_close(a["hvp"], e["H"] @ c.vectors().astype(np.float64), c.rtol, "chunked hvp vs ref")
    assert_close(a["grad"], e["grad"], c.rtol, "chunked grad vs ref")


@pytest.mark.parametrize("batch_size", [None, 16])
def test_block_products_in_direction_groups(batch_size, monkeypatch):
    """With row chunks, a block product whose chunk outputs would exceed OUT_ELEMENTS runs its
    directions in groups: the same bits as all directions at once."""
    from fastcurv.problems import mlp as mlp_module

    c = MLPCase("tanh", "softmax_cross_entropy", n=203)
    _force_chunks(monkeypatch)
    theta, V = c.theta(), c.vectors(m=5)
    U = np.random.default_rng(4).standard_normal((203, c.n_out, 5)).astype(c.dtype)
    p = c.mlp(batch_size=batch_size)
    whole = [p.hvp(theta, V), p.ggn_vp(theta, V), p.fisher_vp(theta, V), p.vjp(theta, U)]
    monkeypatch.setattr(mlp_module, "OUT_ELEMENTS", 2 * 3 * c.P)  # groups of 2 directions
    q = c.mlp(batch_size=batch_size)
    grouped = [q.hvp(theta, V), q.ggn_vp(theta, V), q.fisher_vp(theta, V), q.vjp(theta, U)]
    for name, a, b in zip(("hvp", "ggn_vp", "fisher_vp", "vjp"), whole, grouped, strict=True):
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_ggn_diag_mc_does_not_depend_on_batch_size(c):
    """batch_size is a memory knob: with the same seed the Monte Carlo estimate should be the
    same (to rounding) whatever the row-block size, as every other result is."""
    c = dataclasses.replace(c, n=50)
    theta = c.theta()
    a = c.mlp(batch_size=7).ggn_diag(theta, mc_samples=4, seed=21)
    b = c.mlp(batch_size=50).ggn_diag(theta, mc_samples=4, seed=21)
    assert_close(a, b, SAME_RTOL, "MC ggn_diag, batch_size 7 vs 50, same seed")


def _outputs(p, c, seed=1, mc=True):
    theta, v, V = c.theta(seed), c.vectors(), c.vectors(m=3)
    u = np.random.default_rng(4).standard_normal((p.n_samples, p.n_outputs)).astype(c.dtype)
    val, g = p.value_and_grad(theta)
    return {
        "value": np.array([p.value(theta)]),
        "value_and_grad": np.concatenate([[val], g]),
        "grad": p.grad(theta),
        "hvp": p.hvp(theta, v),
        "block_hvp": p.hvp(theta, V),
        "ggn_vp": p.ggn_vp(theta, V),
        "fisher_vp": p.fisher_vp(theta, V),
        "jvp": p.jvp(theta, v),
        "vjp": p.vjp(theta, u),
        "per_sample_grads": p.per_sample_grads(theta, [4, 1, 9]),
        "hessian": p.hessian(theta),
        "hessian_diag": p.hessian_diag(theta),
        "ggn_diag": p.ggn_diag(theta),
    } | ({"ggn_diag_mc": p.ggn_diag(theta, mc_samples=2, seed=5)} if mc else {})


def _force_chunks(monkeypatch):
    """Row chunks of 64 rows even for tiny problems (normally one chunk below 2²⁴ multiply-adds
    per pass)."""
    from fastcurv.problems import mlp as mlp_module

    monkeypatch.setattr(mlp_module, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(mlp_module, "MIN_CHUNK_ROWS", 64)


@pytest.fixture
def restore_threads():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with fewer than 2 threads")
    old = numba.get_num_threads()
    yield numba
    numba.set_num_threads(old)


@pytest.mark.parametrize("c", [
    MLPCase("tanh", "softmax_cross_entropy", n=203),
    MLPCase("relu", "poisson", n=203, hidden=(6, 5)),
    MLPCase("gelu", "mse", np.float32, n=203),
], ids=_ids)
@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("chunks", [False, True], ids=["one-chunk", "chunks"])
def test_bitwise_identical_across_thread_counts(c, batch_size, chunks, restore_threads,
                                                monkeypatch):
    """Numba threads 1 vs 2 and BLAS threads (threadpoolctl) 1 vs 2: identical bits, on fresh
    problems (no cached state) and on repeated calls; with one row chunk and with 3 chunks run
    in parallel."""
    numba = restore_threads
    if chunks:
        _force_chunks(monkeypatch)
        assert len(c.mlp()._starts) - 1 == 3
    tpc = pytest.importorskip("threadpoolctl")
    results = []
    for nb, blas in ((1, 1), (2, 2), (1, 2), (2, 1)):
        numba.set_num_threads(nb)
        with tpc.threadpool_limits(limits=blas):
            results.append(_outputs(c.mlp(batch_size=batch_size), c))
    numba.set_num_threads(2)
    p = c.mlp(batch_size=batch_size)
    results.append(_outputs(p, c))
    results.append(_outputs(p, c))
    for key in results[0]:
        for k, r in enumerate(results[1:]):
            assert np.array_equal(results[0][key], r[key]), f"{key} differs (run {k + 1})"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sampled_and_fisher_diagonals_do_not_depend_on_blas_threads(dtype):
    """The Monte Carlo GGN diagonal, the empirical Fisher diagonal and the Monte Carlo Fisher
    product run their row blocks through BLAS outside the chunked driver: on 20,000 rows
    OpenBLAS with 2 threads summed them in another order than with 1 (last bits; a review's
    finding). They now run BLAS on one thread, as the driver does."""
    tpc = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 30)).astype(dtype)
    y = rng.integers(0, 4, 20_000)
    p = fc.MLP(X, y, sizes=(30, 32, 4), activation="gelu", loss="softmax_cross_entropy",
               l2=0.01)
    theta = p.init(seed=0)
    v = rng.standard_normal(p.n_params).astype(dtype)
    results = []
    for blas in (1, 2):
        with tpc.threadpool_limits(limits=blas):
            results.append((p.ggn_diag(theta, mc_samples=2, seed=1), p.fisher_diag(theta),
                            p._mc_fisher_vp(theta, v, 2, 3)))
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_row_blocks_add_their_sums_in_float64(loss):
    """float32 data in many row blocks (batch_size=4: 8 blocks of the 30 rows) go through the
    kernels' float64 accumulation of block sums: every product, the exact GGN diagonal (whose
    output is zeroed per block) and the penalty stay within the float32 budget of the float64
    reference."""
    c = MLPCase("tanh", loss, np.float32)
    p, e = c.mlp(batch_size=4), c.expected()
    assert p._acc64 and not p._one_block
    theta, v, V = c.theta(), c.vectors(), c.vectors(m=3)
    u = np.random.default_rng(5).standard_normal((c.n, c.n_out)).astype(np.float32)
    v64, V64 = v.astype(np.float64), V.astype(np.float64)
    np.testing.assert_allclose(p.value(theta), e["value"], rtol=c.rtol)
    out = {
        "grad": (p.grad(theta), e["grad"]),
        "hvp": (p.hvp(theta, v), e["H"] @ v64),
        "block hvp": (p.hvp(theta, V), e["H"] @ V64),
        "block ggn_vp": (p.ggn_vp(theta, V), e["G"] @ V64),
        "fisher_vp": (p.fisher_vp(theta, v), e["F"] @ v64),
        "jvp": (p.jvp(theta, v), e["J"] @ v64),
        "vjp": (p.vjp(theta, u), np.einsum("ikp,ik->p", e["J"], u.astype(np.float64))),
        "ggn_diag": (p.ggn_diag(theta), np.diag(e["G"])),
    }
    for key, (got, want) in out.items():
        _check_dtype(got, c, key)
        assert_close(got, want, c.rtol, f"{key} (float32, 8 row blocks)")


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_float32_passes_over_more_rows_than_one_block(loss):
    """float32 with more rows than one block (1,300 > 512): the passes that run over row
    blocks themselves (the Monte Carlo and Fisher diagonals, per-sample gradients, K-FAC
    factors, the Monte Carlo Fisher) agree with the float64 problem on the same numbers.
    They block by batch_size, which the float32 block cap must bound (they failed with
    "total size of new array must be unchanged" when only the chunk blocks were capped)."""
    from fastcurv.problems.mlp import F32_BLOCK_ROWS

    rng = np.random.default_rng(3)
    n, K = 1300, 3 if loss == "softmax_cross_entropy" else 2
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, K, n) if loss == "softmax_cross_entropy" else rng.standard_normal((n, K))
    kw = dict(sizes=(5, 6, K), activation="tanh", loss=loss, l2=0.01)
    p32, p64 = fc.MLP(X, y, **kw), fc.MLP(X.astype(np.float64), y, **kw)
    assert p32.batch_size <= F32_BLOCK_ROWS < n and p32._acc64
    th = p32.init(2)
    th64 = th.astype(np.float64)
    v = rng.standard_normal(p32.n_params)
    tol = 50 * EPS32
    pairs = {
        "fisher_diag": (p32.fisher_diag(th), p64.fisher_diag(th64)),
        "ggn_diag": (p32.ggn_diag(th), p64.ggn_diag(th64)),
        "per_sample_grads": (p32.per_sample_grads(th), p64.per_sample_grads(th64)),
        "kfac": (fc.KFACOperator(p32, th, fisher="type2", damping=0.1).matvec(v),
                 fc.KFACOperator(p64, th64, fisher="type2", damping=0.1).matvec(v)),
    }
    if loss == "mse":  # the Monte Carlo targets are normal draws: the same in both dtypes
        pairs["ggn_diag_mc"] = (p32.ggn_diag(th, mc_samples=2, seed=0),
                                p64.ggn_diag(th64, mc_samples=2, seed=0))
        pairs["fisher_mc"] = (fc.FisherOperator(p32, th, kind="mc", seed=1).matvec(v),
                              fc.FisherOperator(p64, th64, kind="mc", seed=1).matvec(v))
    for key, (got, want) in pairs.items():
        assert_close(np.asarray(got, dtype=np.float64), want, tol, f"float32 {key}")


def test_float32_sum_over_many_rows_does_not_grow():
    """A 4-8-1 network on 100,000 float32 rows: the gradient is within 4 float32 eps of its
    scale (Σ_i |g_i| / n, per component) of the float64 gradient on the same numbers. One
    float32 BLAS sum over all rows (before blocks of at most F32_BLOCK_ROWS summed in float64)
    was 17 eps off, and the error grew with n."""
    from fastcurv.problems.mlp import F32_BLOCK_ROWS

    rng = np.random.default_rng(0)
    n = 100_000
    X = (rng.standard_normal((n, 4)) + 1.0).astype(np.float32)
    y = rng.standard_normal(n) + 3.0
    kw = dict(sizes=(4, 8, 1), activation="tanh", loss="mse")
    p32 = fc.MLP(X, y, **kw)
    p64 = fc.MLP(X.astype(np.float64), y, **kw)
    assert p32._chunk_block <= F32_BLOCK_ROWS
    theta = p32.init(0)
    g32 = p32.grad(theta).astype(np.float64)
    g64 = p64.grad(theta.astype(np.float64))
    scale = np.abs(p64.per_sample_grads(theta.astype(np.float64))).mean(axis=0)
    err = np.abs(g32 - g64) / (EPS32 * scale)
    assert err.max() <= 4.0, f"float32 gradient {err.max():.1f} eps of its scale off"


# ====================================================================== one layer = GLM
@pytest.mark.parametrize("loss,K", [("mse", 1), ("mse", 2), ("sigmoid_cross_entropy", 1),
                                    ("poisson", 1), ("poisson", 2),
                                    ("softmax_cross_entropy", 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_one_layer_mlp_is_the_glm(loss, K, dtype):
    """sizes = (d, K) is a GLM with the matching family: the same θ layout [W; b] (C order)
    and the same numbers (float64: to rounding; float32: within the float32 budget)."""
    X, y, w = make_data(loss, K, 37, 4, seed=8)
    if loss == "sigmoid_cross_entropy":
        y = np.round(y)  # the GLM's logistic family takes 0/1 labels for a single output
    X = X.astype(dtype)
    p = fc.MLP(X, y, (4, K), loss=loss, l2=0.25, sample_weight=w)
    kw = dict(n_classes=K) if loss == "softmax_cross_entropy" else {}
    g = fc.GLM(X, y, family=GLM_FAMILY[loss], l2=0.25, sample_weight=w, **kw)
    assert p.n_params == g.n_params == 5 * K and p.activations == ()
    theta = random_theta((4, K)).astype(dtype)
    v = random_vectors(5 * K).astype(dtype)
    V = random_vectors(5 * K, 2).astype(dtype)
    tol = SAME_RTOL if dtype == np.float64 else F32_RTOL
    np.testing.assert_allclose(p.value(theta), g.value(theta), rtol=tol)
    assert_close(p.grad(theta), g.grad(theta), tol, "grad")
    assert_close(p.hvp(theta, v), g.hvp(theta, v), tol, "hvp")
    assert_close(p.hvp(theta, V), g.hvp(theta, V), tol, "block hvp")
    assert_close(p.ggn_vp(theta, V), g.hvp(theta, V), tol, "ggn_vp (GGN = Hessian)")
    assert_close(p.fisher_vp(theta, v), g.fisher_vp(theta, v), tol, "fisher_vp")
    assert_close(p.jvp(theta, v), g.jvp(theta, v).reshape(37, K), tol, "jvp")
    assert_close(p.per_sample_grads(theta), g.per_sample_grads(theta), tol, "per_sample_grads")
    assert_close(p.hessian_diag(theta), g.hessian_diag(theta), tol, "hessian_diag")


# ====================================================================== operators and solvers
@pytest.mark.parametrize("c", SMALL + [MLPCase("softplus", "mse", np.float32)], ids=_ids)
def test_operators_accept_an_mlp(c):
    from scipy.sparse.linalg import LinearOperator

    p, e = c.mlp(), c.expected()
    theta = c.theta()
    I = np.eye(c.P, dtype=c.dtype)
    delta = 0.5
    for cls, M, kw in ((fc.HessianOperator, e["H"], {}), (fc.GGNOperator, e["G"], {}),
                       (fc.FisherOperator, e["F"], dict(kind="empirical"))):
        op = cls(p, theta, damping=delta, **kw)
        assert isinstance(op, LinearOperator) and op.shape == (c.P, c.P)
        assert op.dtype == np.dtype(c.dtype)
        assert_close(op.matmat(I), M + delta * np.eye(c.P), c.rtol, f"{cls.__name__} matmat")
        v = c.vectors()
        out = op.matvec(v)
        assert out.dtype == np.dtype(c.dtype)
        assert_close(out, (M + delta * np.eye(c.P)) @ v.astype(np.float64), c.rtol,
                     f"{cls.__name__} matvec")
    op = fc.JacobianOperator(p, theta)
    nK = c.n * c.n_out
    assert op.shape == (nK, c.P) and op.dtype == np.dtype(c.dtype)
    J = e["J"].reshape(nK, c.P)  # sample-major rows i K + k
    v = c.vectors()
    assert_close(op.matvec(v), J @ v.astype(np.float64), c.rtol, "J matvec")
    u = np.random.default_rng(3).standard_normal(nK).astype(c.dtype)
    assert_close(op.rmatvec(u), J.T @ u.astype(np.float64), c.rtol, "J rmatvec")
    assert_close(op.matmat(I), J, c.rtol, "J matmat(I)")
    assert_close(op.rmatmat(np.eye(nK, dtype=c.dtype)), J.T, c.rtol, "J rmatmat(I)")


@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_cg_on_damped_ggn_operator(c):
    """scipy cg on (G + δI) x = b converges and matches numpy.linalg.solve on the dense
    reference GGN; with residual rtol 1e-10 the error is <= cond * 1e-10 (times 10)."""
    from scipy.sparse.linalg import cg

    p, e = c.mlp(), c.expected()
    theta = c.theta()
    delta = 1e-2
    A = e["G"] + delta * np.eye(c.P)
    b = np.random.default_rng(2).standard_normal(c.P)
    x, info = cg(fc.GGNOperator(p, theta, damping=delta), b, rtol=1e-10, maxiter=50 * c.P)
    assert info == 0
    x_ref = np.linalg.solve(A, b)
    cond = np.linalg.cond(A)
    assert_close(x, x_ref, 10 * cond * 1e-10, f"cg solution (cond {cond:.1e})")


@pytest.mark.parametrize("c,damping", [
    (MLPCase("tanh", "softmax_cross_entropy", l2=0.0, n=60), 1e-3),
    (MLPCase("gelu", "mse", n=60), 0.0),
    (MLPCase("softplus", "poisson", n=60, l2=0.01), 0.0),
], ids=lambda x: x.name if isinstance(x, MLPCase) else f"damping={x}")
def test_newton_cg_with_ggn_reduces_the_loss(c, damping):
    p, ref = c.mlp(), c.ref()
    theta0 = p.init(seed=0)
    res = fc.newton_cg(p, theta0, curvature="ggn", damping=damping, max_iter=15)
    assert res.x.shape == (c.P,)
    f0, f1 = ref.value(theta0), ref.value(res.x)
    np.testing.assert_allclose(res.fun, f1, rtol=1e-10)
    assert f1 < f0 - 0.05 * abs(f0), (f0, f1)
    # the reported gradient norm is the one at the returned point (at convergence it is
    # rounding noise of order 1e-16, so compare with an absolute floor too)
    np.testing.assert_allclose(res.grad_norm, np.max(np.abs(ref.grad_bp(res.x))), rtol=1e-9,
                               atol=1e-13)
    assert res.n_iter >= 1 and res.n_hvp >= 1


# ====================================================================== parameters
@pytest.mark.parametrize("activation,rule", [("tanh", "glorot"), ("sigmoid", "glorot"),
                                             ("softplus", "glorot"), ("identity", "glorot"),
                                             ("relu", "he"), ("gelu", "he")])
def test_init(activation, rule):
    """Reproducible for a seed; biases zero; first-layer weight variance 2/(fan_in + fan_out)
    (Glorot, uniform or normal) or 2/fan_in (He): with 200 x 300 = 60000 draws the sample
    variance is within ~0.6% (1 sigma, normal draws), so a 5% window is > 8 sigma and
    separates the rules (0.004 vs 0.01)."""
    X = np.random.default_rng(0).standard_normal((5, 200))
    p = fc.MLP(X, np.zeros((5, 2)), (200, 300, 2), activation, "mse")
    t0 = p.init(seed=0)
    assert t0.shape == (p.n_params,) and t0.dtype == np.float64
    np.testing.assert_array_equal(t0, p.init(seed=0))
    assert not np.array_equal(t0, p.init(seed=1))
    np.testing.assert_array_equal(p.init(), t0)  # the default seed is 0
    W1 = t0[: 201 * 300].reshape(201, 300)
    np.testing.assert_array_equal(W1[-1], 0.0)  # biases
    np.testing.assert_array_equal(t0[201 * 300:].reshape(301, 2)[-1], 0.0)
    expected = 2.0 / 500.0 if rule == "glorot" else 2.0 / 200.0
    np.testing.assert_allclose(np.var(W1[:-1]), expected, rtol=0.05)
    assert abs(np.mean(W1[:-1])) < 5 * np.sqrt(expected / 60000)
    q = fc.MLP(X.astype(np.float32), np.zeros((5, 2)), (200, 300, 2), activation, "mse")
    assert q.init(3).dtype == np.float32


@pytest.mark.parametrize("c", SMALL + EXTRA[3:4], ids=_ids)
def test_flatten_unflatten(c):
    p = c.mlp()
    theta = c.theta()
    parts = p.unflatten(theta)
    assert len(parts) == len(c.sizes) - 1
    start = 0
    for A, a, b in zip(parts, c.sizes[:-1], c.sizes[1:], strict=True):
        assert A.shape == (a + 1, b)
        np.testing.assert_array_equal(A, theta[start:start + (a + 1) * b].reshape(a + 1, b))
        start += (a + 1) * b
    back = p.flatten(parts)
    assert back.shape == theta.shape
    np.testing.assert_array_equal(back, theta)
    t0 = p.init(seed=4)
    np.testing.assert_array_equal(p.flatten(p.unflatten(t0)), t0)
    # the layout is the one of the objective: the bias row of the first layer shifts z_1
    ref = c.ref()
    Wl, bl = ref.layers(theta)[0]
    np.testing.assert_array_equal(parts[0][:-1], Wl)
    np.testing.assert_array_equal(parts[0][-1], bl)


# ====================================================================== subset / with_data / cache
@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_subset_and_with_data(c):
    p = c.mlp()
    X, y, w = c.data()
    rows = np.array([0, 2, 3, 5, 8, 13, 21, 22, 29])
    q = p.subset(rows)
    assert q.n_samples == len(rows) and q.n_params == c.P and q.l2 == c.l2
    ref = RefMLP(X[rows], np.asarray(y)[rows], c.sizes, c.activation, c.loss, c.l2, w[rows])
    theta, v = c.theta(), c.vectors()
    np.testing.assert_allclose(q.value(theta), ref.value(theta), rtol=REF_RTOL)
    assert_close(q.grad(theta), ref.grad_cs(theta), REF_RTOL, "subset grad")
    assert_close(q.hvp(theta, v), ref.hessian(theta) @ v, REF_RTOL, "subset hvp")
    assert_close(q.ggn_vp(theta, v), ref.ggn(theta) @ v, REF_RTOL, "subset ggn_vp")
    # with_data: same model, other data (unweighted)
    X2, y2, _ = make_data(c.loss, c.n_out, 17, c.d, seed=99, weighted=False)
    r = p.with_data(X2, y2)
    assert r.n_samples == 17 and r.n_params == c.P and r.l2 == c.l2
    assert r.activations == p.activations and r.loss == c.loss
    ref2 = RefMLP(X2, y2, c.sizes, c.activation, c.loss, c.l2)
    np.testing.assert_allclose(r.value(theta), ref2.value(theta), rtol=REF_RTOL)
    assert_close(r.grad(theta), ref2.grad_cs(theta), REF_RTOL, "with_data grad")
    assert_close(r.hvp(theta, v), ref2.hessian(theta) @ v, REF_RTOL, "with_data hvp")
    w2 = np.linspace(0.5, 1.5, 17)
    r = p.with_data(X2, y2, sample_weight=w2)
    ref2 = RefMLP(X2, y2, c.sizes, c.activation, c.loss, c.l2, w2)
    assert_close(r.grad(theta), ref2.grad_cs(theta), REF_RTOL, "with_data weighted grad")


@pytest.mark.parametrize("c", SMALL, ids=_ids)
def test_repeated_calls_and_in_place_theta(c):
    """Results at θ1 are bitwise stable across calls at other points; a θ mutated in place is
    a new point."""
    p = c.mlp()
    t1, t2, t3 = c.theta(1), c.theta(2), c.theta(3)
    v = c.vectors()

    def outs(t):
        return (p.value(t), p.grad(t), p.hvp(t, v), p.ggn_vp(t, v), p.fisher_vp(t, v),
                p.jvp(t, v), p.per_sample_grads(t, [1, 2]))

    first = outs(t1)
    p.grad(t2)
    p.hvp(t3, v)
    for a, b in zip(first, outs(t1), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = c.ref()
    t = t1.copy()
    p.grad(t)
    p.hvp(t, v)
    t[:] = t2
    assert_close(p.grad(t), ref.grad_cs(t2), REF_RTOL, "grad after in-place change of θ")
    assert_close(p.hvp(t, v), ref.hessian(t2) @ v, REF_RTOL, "hvp after in-place change")
    t[:] = t3
    assert_close(p.ggn_vp(t, v), ref.ggn(t3) @ v, REF_RTOL, "ggn_vp after in-place change")
    assert_close(p.jvp(t, v), ref.jacobians(t3) @ v, REF_RTOL, "jvp after in-place change")


def test_single_chunk_large_network_does_not_depend_on_blas_threads():
    """One row chunk of a network above the former small-model size (n · P ≥ 2²²): BLAS ran
    there with its own threads, which split the row sums hᵀδ differently with 1 and
    2 threads (last bits of the gradient and of every product; a review's finding). BLAS now
    runs on one thread in every call."""
    tpc = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(3)
    n, sizes = 400, (100, 128, 128, 10)
    X = rng.standard_normal((n, sizes[0]))
    y = rng.integers(0, 10, n)
    res = []
    for blas in (1, 2):
        with tpc.threadpool_limits(limits=blas):
            p = fc.MLP(X, y, sizes=sizes, loss="softmax_cross_entropy", l2=1e-4)
            assert len(p._starts) == 2 and 400 * p.n_params >= 2**22
            th = p.init(seed=0)
            v = np.random.default_rng(1).standard_normal(p.n_params)
            res.append((p.grad(th), p.hvp(th, v), p.ggn_vp(th, v)))
    for a, b in zip(*res, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hvp_where_the_stacked_weight_product_runs_as_two(dtype):
    """The 20-64-64-1 network on one 128-row block: the hidden layer's Hessian weight term
    ``[h̃; R h̃]ᵀ [Rδ; δ]`` (65 x 256 x 64) runs as its two halves (kernels/mlp.py,
    ``_split_stacked``; the smaller test networks never take that path). Against the complex
    step of the reference's backpropagated gradient along ``v``; float32 against the float64
    reference at float32's precision."""
    from fastcurv.kernels import mlp as mlp_kernels

    sizes = (20, 64, 64, 1)
    assert mlp_kernels._split_stacked(128, 65, 64)
    assert not mlp_kernels._split_stacked(128, 21, 64)  # the first layer: one product
    X, y, w = make_data("mse", 1, 128, 20, seed=3)
    ref = RefMLP(X, y, sizes, "tanh", "mse", 0.1, w)
    theta = random_theta(sizes, seed=3)
    v = random_vectors(ref.P, seed=4)
    want = ref.grad_bp(theta + 1j * H_CS * v).imag / H_CS
    p = fc.MLP(X.astype(dtype), y, sizes=sizes, activation="tanh", loss="mse", l2=0.1,
               sample_weight=w)
    got = p.hvp(theta.astype(dtype), v.astype(dtype))
    assert_close(got, want, 1e-12 if dtype == np.float64 else 2e-5, "HVP")
    # at the same θ again (the forward and backward passes reused): the same numbers
    np.testing.assert_array_equal(p.hvp(theta.astype(dtype), v.astype(dtype)), got)
