"""The curvature operators as scipy LinearOperators: dtype, shape, products, adjoints,
damping, and their use by unmodified SciPy solvers and optimizers.

Every product is checked against the dense float64 matrices of reference.RefGLM (explicit sums
over samples, written from the maths), never against another fastcurv route.

Tolerances (normwise relative via cases.assert_close, float64):
* 1e-11 against the dense references (the same budget as test_glm_products.py);
* 1e-12 between two forms of one product (block vs column by column), which differ only in
  summation order;
* float32 operators: 1e-5 against the float64 reference on the same float32-representable
  numbers (~170 float32 eps; test_glm_numerics.py bounds the underlying products at 50 eps).
* SciPy solvers: the solver's own rtol (stated at each call) mapped to a bound on the error.
"""

import dataclasses
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from cases import SMALL_SET, assert_close, by_name
from reference import RefGLM
from scipy.optimize import minimize
from scipy.sparse.linalg import LinearOperator, cg, eigsh, lsmr, minres

import fastcurv as fc

REF_RTOL = 1e-11
SAME_RTOL = 1e-12
F32_RTOL = 1e-5

CURVATURE = {
    "hessian": (fc.HessianOperator, "hessian"),
    "ggn": (fc.GGNOperator, "ggn"),
    "fisher": (fc.FisherOperator, "fisher"),
}


def _ids(c):
    return c.name


def _dense_ref(case, which, theta):
    return getattr(case.ref(), CURVATURE[which][1])(theta)


# ---------------------------------------------------------------------- dtype and shape
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("which", list(CURVATURE))
def test_curvature_operator_dtype_and_shape(which, dtype):
    case = by_name("multinomial-dense-weighted").twin(dtype)
    p = case.glm()
    op = CURVATURE[which][0](p, case.theta())
    assert isinstance(op, LinearOperator)
    assert op.shape == (case.P, case.P)
    assert op.dtype == np.dtype(dtype)
    out = op.matvec(case.vectors())
    assert out.shape == (case.P,) and out.dtype == np.dtype(dtype)
    out = op.matmat(case.vectors(m=2))
    assert out.shape == (case.P, 2) and out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_jacobian_operator_dtype_and_shape(dtype):
    case = by_name("multinomial-dense-weighted").twin(dtype)
    op = fc.JacobianOperator(case.glm(), case.theta())
    assert isinstance(op, LinearOperator)
    assert op.shape == (case.n * case.K, case.P)
    assert op.dtype == np.dtype(dtype)
    assert op.matvec(case.vectors()).shape == (case.n * case.K,)
    assert op.matvec(case.vectors()).dtype == np.dtype(dtype)
    u = np.ones(case.n * case.K, dtype=dtype)
    assert op.rmatvec(u).shape == (case.P,) and op.rmatvec(u).dtype == np.dtype(dtype)


# ---------------------------------------------------------------------- dense equivalence
@pytest.mark.parametrize("which", list(CURVATURE))
@pytest.mark.parametrize("case", SMALL_SET, ids=_ids)
def test_matmat_identity_is_dense_reference_plus_damping(case, which):
    """matmat(I) = C(θ) + δI, C the explicit sum over samples of reference.RefGLM."""
    delta = 0.7
    theta = case.theta()
    op = CURVATURE[which][0](case.glm(), theta, damping=delta)
    dense = op.matmat(np.eye(case.P))
    assert_close(dense, _dense_ref(case, which, theta) + delta * np.eye(case.P), REF_RTOL,
                 f"{which} matmat(I)")
    # undamped operator: no δ on the diagonal
    op0 = CURVATURE[which][0](case.glm(), theta)
    assert_close(op0 @ np.eye(case.P), _dense_ref(case, which, theta), REF_RTOL,
                 f"{which} @ I, no damping")


@pytest.mark.parametrize("which", list(CURVATURE))
@pytest.mark.parametrize("name", ["logistic-csr-weighted", "gaussian2-dense-noint",
                                  "multinomial4-dense-plain"])
def test_matmat_block_equals_columns_and_symmetry(name, which):
    case = by_name(name)
    op = CURVATURE[which][0](case.glm(), case.theta(), damping=0.25)
    V = case.vectors(m=4)
    block = op.matmat(V)
    cols = np.stack([op.matvec(V[:, j]) for j in range(4)], axis=1)
    assert_close(block, cols, SAME_RTOL, "block vs columns")
    # (P, 1) column vectors go through matvec with the column shape kept
    assert op.matvec(V[:, :1]).shape == (case.P, 1)
    assert_close(op @ V[:, 0], cols[:, 0], SAME_RTOL, "op @ v")
    # symmetric: rmatvec, rmatmat, .H and .T act as the operator itself
    assert_close(op.rmatvec(V[:, 0]), cols[:, 0], SAME_RTOL, "rmatvec")
    assert_close(op.rmatmat(V), cols, SAME_RTOL, "rmatmat")
    assert_close(op.H.matmat(V), cols, SAME_RTOL, ".H")
    assert_close(op.T.matvec(V[:, 1]), cols[:, 1], SAME_RTOL, ".T")
    u, v = V[:, 2], V[:, 3]
    np.testing.assert_allclose(u @ op.matvec(v), op.matvec(u) @ v, rtol=1e-12)


@pytest.mark.parametrize("which", list(CURVATURE))
def test_float32_operator_matches_float64_reference(which):
    case = dataclasses.replace(by_name("logistic-dense-weighted"), n=301, dtype=np.float32)
    theta = case.theta()
    op = CURVATURE[which][0](case.glm(), theta, damping=0.5)
    out = op.matmat(np.eye(case.P, dtype=np.float32))
    assert out.dtype == np.float32
    ref = _dense_ref(case, which, theta.astype(np.float64)) + 0.5 * np.eye(case.P)
    assert_close(out, ref, F32_RTOL, f"float32 {which}")


def test_damping_adds_delta_v_exactly():
    """(C + δI) v - C v = δ v: damping touches every coordinate, intercepts included."""
    case = by_name("poisson-dense-weighted")
    p, theta, v = case.glm(), case.theta(), case.vectors()
    for cls in (fc.HessianOperator, fc.GGNOperator, fc.FisherOperator):
        diff = cls(p, theta, damping=3.0).matvec(v) - cls(p, theta).matvec(v)
        assert_close(diff, 3.0 * v, 1e-13, f"{cls.__name__} damping")


def test_a_damping_beyond_float32_is_refused_by_float32_operators():
    """A float32 operator took damping=1e39 and returned inf with only numpy's warning."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    p = fc.GLM(X, (X[:, 0] > 0).astype(float), l2=1e-2)
    theta = np.zeros(p.n_params, dtype=np.float32)
    for make in (lambda d: fc.HessianOperator(p, theta, damping=d),
                 lambda d: fc.GGNOperator(p, theta, damping=d),
                 lambda d: fc.KFACOperator(p, theta, fisher="type2", damping=d),
                 lambda d: fc.EKFACOperator(p, theta, fisher="type2", damping=d)):
        with pytest.raises(ValueError, match="exceeds the largest float32"):
            make(1e39)
        assert np.all(np.isfinite(make(1e30) @ np.ones(p.n_params, dtype=np.float32)))
    p64 = fc.GLM(X.astype(np.float64), (X[:, 0] > 0).astype(float), l2=1e-2)
    fc.HessianOperator(p64, np.zeros(p64.n_params), damping=1e300)  # fine in float64


def test_a_damped_product_beyond_float32_is_refused():
    """δ v can overflow where v and δ fit: with δ = 100 and v = 1e37 e_0 the exact first entry
    of (C + δI) v is about 1e39 > 3.4e38 (C v is ~1e37 here). The operators returned inf with
    only numpy's RuntimeWarning; now FloatingPointError names the cause."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    p = fc.GLM(X, (X[:, 0] > 0).astype(float))
    theta = np.zeros(p.n_params, dtype=np.float32)
    v = np.zeros(p.n_params, dtype=np.float32)
    v[0] = 1e37
    H = RefGLM(X.astype(np.float64), (X[:, 0] > 0).astype(float), "logistic", 1).hessian(
        theta.astype(np.float64))
    exact = H @ v.astype(np.float64) + 100.0 * v.astype(np.float64)
    assert np.abs(exact).max() > np.finfo(np.float32).max
    for op in (fc.HessianOperator(p, theta, damping=100.0),
               fc.GGNOperator(p, theta, damping=100.0),
               fc.FisherOperator(p, theta, damping=100.0),
               fc.KFACOperator(p, theta, fisher="type2", damping=100.0),
               fc.EKFACOperator(p, theta, fisher="type2", damping=100.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning on the way to the error
            with pytest.raises(FloatingPointError, match="damping=100 times v"):
                op @ v
        assert np.all(np.isfinite(op @ (v / 1e30)))  # a representable product still works


def test_operator_keeps_a_copy_of_theta():
    case = by_name("logistic-dense-plain")
    p = case.glm()
    theta = case.theta()
    op = fc.HessianOperator(p, theta)
    expected = case.ref().hessian(theta.copy())
    theta[:] = 5.0  # the caller reuses its buffer
    assert_close(op @ np.eye(case.P), expected, REF_RTOL, "after mutating theta")


def test_operator_argument_errors():
    case = by_name("logistic-dense-plain")
    p, theta = case.glm(), case.theta()
    with pytest.raises(ValueError, match="mc_samples"):
        fc.FisherOperator(p, theta, kind="mc", mc_samples=0)
    with pytest.raises(TypeError, match="seed"):
        fc.FisherOperator(p, theta, kind="mc", seed=1.5)
    with pytest.raises(ValueError):
        fc.FisherOperator(p, theta, kind="observed")
    with pytest.raises(ValueError):
        fc.HessianOperator(p, theta, damping=-1.0)
    with pytest.raises(ValueError):
        fc.GGNOperator(p, theta[:-1])  # wrong length


# ---------------------------------------------------------------------- Jacobian
@pytest.mark.parametrize("case", SMALL_SET, ids=_ids)
def test_jacobian_operator_matches_explicit_jacobian(case):
    """J (n K, P) with sample-major rows i K + k, from ∂η_ik/∂W̃[j, k'] = x̃_ij δ_kk'."""
    theta = case.theta()
    op = fc.JacobianOperator(case.glm(), theta)
    J = case.ref().jacobian_rows().reshape(case.n * case.K, case.P)
    assert_close(op.matmat(np.eye(case.P)), J, REF_RTOL, "J I")
    assert_close(op.rmatmat(np.eye(case.n * case.K)), J.T, REF_RTOL, "J^T I")
    v = case.vectors()
    assert_close(op.matvec(v), J @ v, REF_RTOL, "J v")
    u = np.random.default_rng(3).standard_normal(case.n * case.K)
    assert_close(op.rmatvec(u), J.T @ u, REF_RTOL, "J^T u")
    assert_close(op.H.matvec(u), J.T @ u, REF_RTOL, "J.H u")
    # adjoint identity <u, J v> = <Jᵀ u, v>
    lhs, rhs = u @ op.matvec(v), op.rmatvec(u) @ v
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.abs(u).sum())


def test_jacobian_block_equals_columns():
    case = by_name("gaussian2-csr-noint")
    op = fc.JacobianOperator(case.glm(), case.theta())
    V = case.vectors(m=3)
    assert_close(op.matmat(V), np.stack([op.matvec(V[:, j]) for j in range(3)], 1),
                 SAME_RTOL, "J block")
    U = np.random.default_rng(4).standard_normal((case.n * case.K, 3))
    assert_close(op.rmatmat(U), np.stack([op.rmatvec(U[:, j]) for j in range(3)], 1),
                 SAME_RTOL, "J^T block")


# ---------------------------------------------------------------------- SciPy linear algebra
def _spd_case():
    return by_name("multinomial-dense-weighted")  # P = 15, l2 = 0.3


@pytest.mark.parametrize("which", ["hessian", "ggn", "fisher"])
def test_cg_and_minres_solve(which):
    """(C + δI) x = b by scipy cg and minres vs numpy.linalg.solve on the dense reference.

    With residual rtol 1e-12, the solution error is at most cond(A) * 1e-12 relative; cond is
    computed and the assertion uses it (times 10 for the solvers' own rounding)."""
    case = _spd_case()
    theta = case.theta()
    delta = 0.05
    A = _dense_ref(case, which, theta) + delta * np.eye(case.P)
    op = CURVATURE[which][0](case.glm(), theta, damping=delta)
    b = case.vectors()
    x_ref = np.linalg.solve(A, b)
    tol = 10 * np.linalg.cond(A) * 1e-12
    x, info = cg(op, b, rtol=1e-12, atol=0.0, maxiter=10 * case.P)
    assert info == 0
    assert_close(x, x_ref, tol, f"cg on {which}")
    x, info = minres(op, b, rtol=1e-12, maxiter=10 * case.P)
    assert info == 0
    assert_close(x, x_ref, tol, f"minres on {which}")


@pytest.mark.parametrize("which", ["hessian", "ggn", "fisher"])
@pytest.mark.parametrize("storage", ["dense", "csr"])
def test_eigsh_top_eigenvalues(which, storage):
    case = by_name(f"multinomial-{storage}-weighted")
    theta = case.theta()
    op = CURVATURE[which][0](case.glm(), theta, damping=0.1)
    ref = np.linalg.eigvalsh(_dense_ref(case, which, theta) + 0.1 * np.eye(case.P))
    vals = np.sort(eigsh(op, k=3, which="LA", tol=1e-12, return_eigenvectors=False))
    np.testing.assert_allclose(vals, ref[-3:], rtol=1e-9)


def test_eigsh_float32_operator():
    """ARPACK runs in single precision on a float32 operator (dtype is set, never probed)."""
    case = dataclasses.replace(by_name("logistic-dense-weighted"), n=301, dtype=np.float32)
    theta = case.theta()
    op = fc.HessianOperator(case.glm(), theta)
    ref = np.linalg.eigvalsh(case.ref().hessian(theta.astype(np.float64)))
    vals = np.sort(eigsh(op, k=2, which="LA", return_eigenvectors=False))
    np.testing.assert_allclose(vals, ref[-2:], rtol=1e-4)


@pytest.mark.parametrize("name", ["gaussian2-csr-noint", "multinomial-dense-weighted"])
def test_lsmr_least_squares_with_jacobian(name):
    """min ‖J x − b‖ by lsmr on the operator vs numpy.linalg.lstsq on the explicit J."""
    case = by_name(name)
    op = fc.JacobianOperator(case.glm(), case.theta())
    J = case.ref().jacobian_rows().reshape(case.n * case.K, case.P)
    b = np.random.default_rng(8).standard_normal(case.n * case.K)
    x_ref = np.linalg.lstsq(J, b, rcond=None)[0]
    x = lsmr(op, b, atol=1e-14, btol=1e-14, maxiter=20 * case.P)[0]
    # full column rank here (dense X, or K copies of a full-rank X̃): unique solution
    assert np.linalg.matrix_rank(J) == case.P
    assert_close(x, x_ref, 1e-9 * np.linalg.cond(J), "lsmr vs lstsq")


# ---------------------------------------------------------------------- scipy.optimize
def _opt_problem(kind):
    rng = np.random.default_rng(11)
    n, d = 400, 5
    X = rng.standard_normal((n, d))
    if kind == "logistic":
        eta = X @ rng.standard_normal(d) + 0.3
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
        return (fc.GLM(X, y, family="logistic", l2=1e-2),
                RefGLM(X, y, "logistic", 1, l2=1e-2))
    y = np.argmax(X[:, :3] + rng.gumbel(size=(n, 3)), axis=1)
    return (fc.GLM(X, y, family="multinomial", l2=1e-2, fit_intercept=False),
            RefGLM(X, y, "multinomial", 3, l2=1e-2, fit_intercept=False))


def _distance_bound(ref, x1, x2):
    """‖x1 − x2‖ ≤ (‖∇F(x1)‖ + ‖∇F(x2)‖) / μ for μ-strongly convex F near the optimum;
    gradients and Hessian from the dense reference; μ is the smallest eigenvalue of the
    Hessian at x2, halved as a safety margin for its variation over the segment."""
    mu = 0.5 * np.linalg.eigvalsh(ref.hessian(x2))[0]
    assert mu > 0
    return (np.linalg.norm(ref.grad(x1)) + np.linalg.norm(ref.grad(x2))) / mu


@pytest.mark.parametrize("method,kind", [
    ("Newton-CG", "logistic"),
    ("trust-ncg", "multinomial"),
    ("trust-krylov", "logistic"),
    ("trust-krylov", "multinomial"),  # no intercept: nonsingular Hessian (see module doc)
])
def test_scipy_minimize_with_hessp(method, kind):
    p, ref = _opt_problem(kind)
    res = fc.newton_cg(p, gtol=1e-8)
    assert res.success, res.message
    # trlib (trust-krylov) gives NaN steps at gtol 1e-10: a SciPy limitation, so 1e-8 there
    options = {"Newton-CG": dict(xtol=1e-12), "trust-ncg": dict(gtol=1e-10),
               "trust-krylov": dict(gtol=1e-8)}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = minimize(p.value, np.zeros(p.n_params), jac=p.grad, hessp=p.hvp, method=method,
                       options=options)
    assert np.max(np.abs(ref.grad(out.x))) < 1e-6, out.message
    assert np.linalg.norm(out.x - res.x) <= _distance_bound(ref, out.x, res.x)
    assert_close(out.x, res.x, 1e-6, f"{method} vs newton_cg")


def test_scipy_trust_constr_with_hessian_operator():
    """hess returns fc.HessianOperator(p, θ): trust-constr uses it as a LinearOperator."""
    p, ref = _opt_problem("logistic")
    res = fc.newton_cg(p, gtol=1e-8)
    calls = []

    def hess(theta):
        op = fc.HessianOperator(p, theta)
        calls.append(op)
        return op

    out = minimize(p.value, np.zeros(p.n_params), jac=p.grad, hess=hess, method="trust-constr",
                   options=dict(gtol=1e-10, xtol=1e-14, maxiter=500))
    assert calls, "the Hessian callback was never used"
    assert np.max(np.abs(ref.grad(out.x))) < 1e-6, out.message
    assert np.linalg.norm(out.x - res.x) <= _distance_bound(ref, out.x, res.x)
    assert_close(out.x, res.x, 1e-6, "trust-constr vs newton_cg")


def test_operators_on_sparse_array_input():
    """A scipy.sparse csr_array problem gives the same operator as the CSR matrix one."""
    case = by_name("poisson-csr-weighted")
    X, y, w = case.data()
    p = fc.GLM(sp.csr_array(X), y, family="poisson", l2=case.l2, sample_weight=w)
    theta = case.theta()
    assert_close(fc.GGNOperator(p, theta) @ np.eye(case.P), case.ref().ggn(theta), REF_RTOL,
                 "GGN on csr_array")


@pytest.mark.parametrize("which", ["hessian", "ggn", "fisher"])
def test_mlp_products_are_not_views_of_a_reused_buffer(which):
    """An MLP keeps its one-direction output in a workspace buffer: a (P, 1) block, and so
    every ``matvec`` of an operator with damping 0, used to come back as a view of it and
    change under the next product (``H @ v1 - H @ v2`` was exactly 0; SciPy's lgmres, which
    keeps earlier products, broke on it). The same for the Jacobian's ``rmatvec``."""
    from mlp_reference import make_data, random_theta

    sizes = (3, 5, 2)
    X, y, w = make_data("softmax_cross_entropy", 2, 40, 3, seed=2)
    p = fc.MLP(X, y, sizes=sizes, loss="softmax_cross_entropy", l2=1e-2, sample_weight=w)
    theta = random_theta(sizes, seed=1, scale=0.5)
    op = {"hessian": fc.HessianOperator, "ggn": fc.GGNOperator,
          "fisher": fc.FisherOperator}[which](p, theta)
    dense = op @ np.eye(p.n_params)
    rng = np.random.default_rng(0)
    v1, v2 = rng.standard_normal((2, p.n_params))
    a = op @ v1
    b = op.matvec(v2)
    c = op.matmat(v1[:, None])
    d = op.rmatvec(v2)
    for got, v in ((a, v1), (b, v2), (c[:, 0], v1), (d, v2)):
        np.testing.assert_allclose(got, dense @ v, rtol=1e-10, atol=1e-12)
    if which == "hessian":
        J = fc.JacobianOperator(p, theta)
        u1, u2 = rng.standard_normal((2, J.shape[0]))
        g1 = J.rmatvec(u1)
        g2 = J.rmatvec(u2)
        Jd = J @ np.eye(p.n_params)
        np.testing.assert_allclose(g1, Jd.T @ u1, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g2, Jd.T @ u2, rtol=1e-10, atol=1e-12)


def test_jacobian_operator_refuses_a_non_problem():
    with pytest.raises(TypeError, match="problem must be a problem .* with their jvp, vjp"):
        fc.JacobianOperator(np.eye(3), np.zeros(3))


def test_masked_vectors_and_non_problems_are_refused():
    """A fuzzing review's findings: the operators (and ``vjp``) read a masked array's data,
    masked entries included, where the problems refuse it; a problem argument of ``None`` or
    the class ``fc.MLP`` failed with an AttributeError or a missing argument."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    p = fc.GLM(X, (X[:, 0] > 0) * 1.0, family="logistic", l2=0.1)
    th = np.zeros(p.n_params)
    v = np.ma.array(np.ones(p.n_params), mask=[True] + [False] * (p.n_params - 1))
    u = np.ma.array(np.ones(40), mask=[True] + [False] * 39)
    for op in (fc.HessianOperator(p, th), fc.GGNOperator(p, th), fc.FisherOperator(p, th),
               fc.KFACOperator(p, th, fisher="type2"), fc.JacobianOperator(p, th)):
        with pytest.raises(TypeError, match="masked"):
            op.matvec(v)
    with pytest.raises(TypeError, match="masked"):
        fc.JacobianOperator(p, th).rmatvec(u)
    with pytest.raises(TypeError, match="masked"):
        p.vjp(th, u)
    for Op in (fc.HessianOperator, fc.GGNOperator, fc.FisherOperator, fc.JacobianOperator,
               fc.KFACOperator, fc.EKFACOperator):
        for bad in (None, fc.MLP, "abc"):
            with pytest.raises(TypeError, match="problem must be a"):
                Op(bad, th)
    with pytest.raises(ValueError, match="mc_samples must be at most"):
        fc.KFACOperator(p, th, mc_samples=2**63)
    with pytest.raises(ValueError, match="n_probes must be at most"):
        fc.hutchinson_diag(fc.HessianOperator(p, th), n_probes=2**64)
