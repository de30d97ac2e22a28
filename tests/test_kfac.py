"""K-FAC and EK-FAC against the exact curvature of the reference network (tests/mlp_reference.py,
complex-step Jacobians) and against closed forms.

Independent routes: ``A`` from the reference forward pass; the type-2 ``G`` of a layer is the
exact GGN's block on that layer's bias (``∂z/∂b = I``), the empirical ``G`` the empirical
Fisher's bias block; EK-FAC's scalings are the diagonal of the exact layer block in the
Kronecker eigenbasis. Where theory says K-FAC is exact (one linear layer with mse, a single
data point, identical rows) the whole operator is compared with the exact matrix.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from mlp_reference import RefMLP, make_data, random_theta
from scipy.sparse.linalg import LinearOperator, cg

import fastcurv as fc
from fastcurv.operators import _kfac_factors

KINDS = ("type2", "mc", "empirical")


def _dense(op):
    P = op.shape[0]
    return np.asarray(op @ np.eye(P, dtype=op.dtype), dtype=np.float64)


def _problem(loss="softmax_cross_entropy", sizes=(4, 5, 3), n=30, seed=0, act="tanh",
             weighted=True, dtype=np.float64, l2=0.0, **kw):
    X, y, w = make_data(loss, sizes[-1], n, sizes[0], seed=seed, weighted=weighted)
    p = fc.MLP(X.astype(dtype), y, sizes=sizes, activation=act, loss=loss, l2=l2,
               sample_weight=w, **kw)
    ref = RefMLP(X, y, sizes, activation=act, loss=loss, l2=l2, sample_weight=w)
    return p, ref, random_theta(sizes, seed=seed, scale=0.6).astype(dtype)


def _blocks(p):
    layers, offsets = p._kfac_layout()
    return [(offsets[l], n_in + int(b), w) for l, (n_in, w, b) in enumerate(layers)]


def _ref_factors(ref, theta, which):
    """Per layer (A, G) from the reference: A from its forward pass, G from the bias block of
    the exact GGN ("type2") or empirical Fisher ("empirical")."""
    _, hs = ref.forward_all(theta)
    c = ref.w / ref.W
    C = ref.ggn(theta) - ref.l2 * np.diag(ref.mask) if which == "type2" else ref.fisher(theta)
    out, o = [], 0
    for l, (r, w) in enumerate(ref.shapes):
        At = np.hstack([hs[l], np.ones((ref.n, 1))])
        A = (At * c[:, None]).T @ At
        b = o + (r - 1) * w  # the bias row of the block
        out.append((A, C[b:b + w, b:b + w]))
        o += r * w
    return out


def _exact_blocks(C, blocks):
    return [C[o:o + na * w, o:o + na * w] for o, na, w in blocks]


# ----------------------------------------------------------------------------- factors
@pytest.mark.parametrize("loss,sizes", [
    ("softmax_cross_entropy", (4, 5, 3)),
    ("mse", (3, 4, 4, 2)),
    ("sigmoid_cross_entropy", (3, 6, 2)),
    ("poisson", (4, 3, 1)),
])
@pytest.mark.parametrize("which", ["type2", "empirical"])
def test_factors_match_the_reference(loss, sizes, which):
    p, ref, theta = _problem(loss, sizes, act="tanh" if len(sizes) == 3 else "softplus")
    op = fc.KFACOperator(p, theta, fisher=which)
    want = _ref_factors(ref, theta, which)
    assert len(op.factors) == len(want)
    for (A, G), (Ar, Gr) in zip(op.factors, want, strict=True):
        assert A.dtype == np.float64 and G.dtype == np.float64
        np.testing.assert_allclose(A, Ar, rtol=1e-12, atol=1e-14 * np.abs(Ar).max())
        np.testing.assert_allclose(G, Gr, rtol=1e-9, atol=1e-11 * np.abs(Gr).max())
        np.testing.assert_array_equal(A, A.T)
        np.testing.assert_array_equal(G, G.T)


def test_operator_is_the_kronecker_product_of_its_factors():
    p, _, theta = _problem(sizes=(3, 4, 3), n=20)
    op = fc.KFACOperator(p, theta, fisher="type2", damping=0.25)
    M = _dense(op)
    blocks = _blocks(p)
    want = np.zeros_like(M)
    for (o, na, w), (A, G) in zip(blocks, op.factors, strict=True):
        want[o:o + na * w, o:o + na * w] = np.kron(A, G)
    want += 0.25 * np.eye(p.n_params)
    np.testing.assert_allclose(M, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(M, M.T, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- exact cases
def test_one_linear_layer_with_mse_is_the_exact_ggn():
    X, y, w = make_data("mse", 3, 40, 5, seed=3)
    for p in (fc.MLP(X, y, sizes=(5, 3), loss="mse", l2=0.7, sample_weight=w),
              fc.GLM(X, y, family="gaussian", l2=0.7, sample_weight=w)):
        theta = np.linspace(-1, 1, p.n_params)
        op = fc.KFACOperator(p, theta, fisher="type2", damping=0.7)
        # K-FAC excludes the penalty; passing it as damping also damps the bias row
        H = p.ggn(theta) if hasattr(p, "ggn") else p.hessian(theta)
        mask = np.ones(p.n_params)
        mask[-3:] = 0.0
        np.testing.assert_allclose(_dense(op), H + 0.7 * np.diag(1 - mask), rtol=1e-12,
                                   atol=1e-14)
        G = op.factors[0][1]
        np.testing.assert_allclose(G, np.eye(3), rtol=1e-14)


def test_glm_without_intercept_drops_the_bias_row():
    X, y, w = make_data("mse", 1, 50, 4, seed=4)
    p = fc.GLM(X, y, family="gaussian", fit_intercept=False, sample_weight=w)
    op = fc.KFACOperator(p, np.zeros(4), fisher="type2")
    (A, G), = op.factors
    assert A.shape == (4, 4) and G.shape == (1, 1)
    c = w / w.sum()
    np.testing.assert_allclose(A, (X * c[:, None]).T @ X, rtol=1e-13)
    np.testing.assert_allclose(_dense(op), p.hessian(np.zeros(4)), rtol=1e-12)


@pytest.mark.parametrize("loss,sizes", [("softmax_cross_entropy", (3, 4, 3)),
                                        ("mse", (2, 3, 3, 2)),
                                        ("sigmoid_cross_entropy", (3, 2, 2))])
def test_a_single_data_point_is_exact(loss, sizes):
    X, y, _ = make_data(loss, sizes[-1], 6, sizes[0], seed=5, weighted=False)
    X, y = X[:1], y[:1]
    p = fc.MLP(X, y, sizes=sizes, loss=loss, activation="tanh")
    ref = RefMLP(X, y, sizes, loss=loss)
    theta = random_theta(sizes, seed=2)
    blocks = _blocks(p)
    for which, exact in (("type2", ref.ggn(theta)), ("empirical", ref.fisher(theta))):
        M = _dense(fc.KFACOperator(p, theta, fisher=which))
        for got, want in zip(_exact_blocks(M, blocks), _exact_blocks(exact, blocks),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
        # and nothing between layers
        o1 = blocks[1][0]
        assert not M[:o1, o1:].any()


def test_identical_rows_make_every_layer_see_one_input_and_kfac_exact():
    """Every sample has the same input, hence the same ã at every layer: the blocks are
    (ã ãᵀ) ⊗ Σ_i c_i g_i g_iᵀ exactly, whatever the labels and weights."""
    rng = np.random.default_rng(6)
    n, sizes = 25, (3, 4, 4, 3)
    X = np.repeat(rng.standard_normal((1, 3)), n, axis=0)
    y = rng.integers(0, 3, n)
    w = rng.uniform(0.2, 2.0, n)
    p = fc.MLP(X, y, sizes=sizes, loss="softmax_cross_entropy", sample_weight=w)
    ref = RefMLP(X, y, sizes, loss="softmax_cross_entropy", sample_weight=w)
    theta = random_theta(sizes, seed=3)
    blocks = _blocks(p)
    for which, exact in (("type2", ref.ggn(theta)), ("empirical", ref.fisher(theta))):
        M = _dense(fc.KFACOperator(p, theta, fisher=which))
        for got, want in zip(_exact_blocks(M, blocks), _exact_blocks(exact, blocks),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_not_exact_in_general():
    """(Guards the exactness tests: on generic data the blocks differ.)"""
    p, ref, theta = _problem(sizes=(3, 4, 3), n=30)
    M = _dense(fc.KFACOperator(p, theta, fisher="type2"))
    C = ref.ggn(theta)
    b = _blocks(p)[0]
    assert np.abs(_exact_blocks(M, [b])[0] - _exact_blocks(C, [b])[0]).max() > 1e-4


# ----------------------------------------------------------------------------- EK-FAC
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_ekfac_scalings_are_the_exact_diagonal_in_the_kronecker_basis(seed, act):
    p, ref, theta = _problem(sizes=(3, 5, 4, 3), n=40, seed=seed, act=act)
    ek = fc.EKFACOperator(p, theta, fisher="type2")
    kf = fc.KFACOperator(p, theta, fisher="type2")
    C = ref.ggn(theta) - ref.l2 * np.diag(ref.mask)
    Me, Mk = _dense(ek), _dense(kf)
    blocks = _blocks(p)
    for l, (Cl, El, Kl) in enumerate(zip(_exact_blocks(C, blocks), _exact_blocks(Me, blocks),
                                         _exact_blocks(Mk, blocks), strict=True)):
        A, G = kf.factors[l]
        Q = np.kron(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1])
        np.testing.assert_allclose(ek.scalings[l].ravel(), np.diag(Q.T @ Cl @ Q),
                                   rtol=1e-8, atol=1e-12 * np.abs(Cl).max())
        # the Frobenius-optimal diagonal in that basis: at least as close as K-FAC
        assert np.linalg.norm(El - Cl) <= np.linalg.norm(Kl - Cl) * (1 + 1e-12)
    assert np.linalg.norm(Me - C) <= np.linalg.norm(Mk - C) * (1 + 1e-12)


def test_ekfac_empirical_matches_the_empirical_fisher_diagonal_in_its_basis():
    p, ref, theta = _problem(loss="mse", sizes=(3, 4, 2), n=30, seed=2)
    ek = fc.EKFACOperator(p, theta, fisher="empirical")
    C = ref.fisher(theta)
    for l, Cl in enumerate(_exact_blocks(C, _blocks(p))):
        A, G = ek.factors[l]
        Q = np.kron(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1])
        np.testing.assert_allclose(ek.scalings[l].ravel(), np.diag(Q.T @ Cl @ Q), rtol=1e-8,
                                   atol=1e-13)


# ----------------------------------------------------------------------------- inverses
@pytest.mark.parametrize("cls", [fc.KFACOperator, fc.EKFACOperator])
@pytest.mark.parametrize("which", KINDS)
def test_inverse_times_operator_is_the_identity(cls, which):
    p, _, theta = _problem(sizes=(4, 6, 5, 3), n=50)
    op = cls(p, theta, fisher=which, damping=1e-3, seed=1)
    V = np.random.default_rng(0).standard_normal((p.n_params, 4))
    inv = op.inverse()
    np.testing.assert_allclose(inv @ (op @ V), V, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(op @ (inv @ V), V, rtol=1e-8, atol=1e-8)
    # both classes take kind="exact" (code may switch between them)
    np.testing.assert_array_equal(op.inverse(kind="exact") @ V, inv @ V)


def test_ekfac_inverse_refuses_the_factored_kind():
    p, _, theta = _problem(sizes=(4, 6, 3), n=20)
    with pytest.raises(ValueError, match="'exact' for EK-FAC"):
        fc.EKFACOperator(p, theta, fisher="type2", damping=1e-3).inverse(kind="factored")


def test_factored_inverse_is_the_inverse_of_the_factored_damping():
    p, _, theta = _problem(sizes=(3, 4, 3), n=30)
    delta = 0.05
    op = fc.KFACOperator(p, theta, fisher="type2", damping=delta)
    Minv = _dense(op.inverse(kind="factored"))
    want = np.zeros_like(Minv)
    for (o, na, w), (A, G) in zip(_blocks(p), op.factors, strict=True):
        pi = np.sqrt((np.trace(A) / na) / (np.trace(G) / w))
        D = np.kron(A + pi * np.sqrt(delta) * np.eye(na), G + np.sqrt(delta) / pi * np.eye(w))
        want[o:o + na * w, o:o + na * w] = np.linalg.inv(D)
    np.testing.assert_allclose(Minv, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_tiny_and_zero_damping_with_singular_factors():
    """3 rows and 6 inputs: A (7x7) has rank <= 3, and the softmax G has the null vector 1."""
    X, y, _ = make_data("softmax_cross_entropy", 3, 3, 6, seed=7, weighted=False)
    p = fc.MLP(X, y, sizes=(6, 4, 3), loss="softmax_cross_entropy")
    theta = random_theta((6, 4, 3), seed=4)
    V = np.random.default_rng(1).standard_normal((p.n_params, 3))
    for cls in (fc.KFACOperator, fc.EKFACOperator):
        tiny = cls(p, theta, fisher="type2", damping=1e-10)
        out = tiny.inverse() @ V
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(tiny @ out, V, rtol=1e-6, atol=1e-6 * np.abs(V).max())
        # δ = 0: the Moore-Penrose pseudo-inverse (dropped null directions), never inf/NaN
        zero = cls(p, theta, fisher="type2", damping=0.0)
        M, Mi = _dense(zero), _dense(zero.inverse())
        assert np.all(np.isfinite(Mi))
        np.testing.assert_allclose(M @ Mi @ M, M, atol=1e-9 * np.abs(M).max())
        np.testing.assert_allclose(Mi @ M @ Mi, Mi, atol=1e-9 * np.abs(Mi).max())
        np.testing.assert_allclose(Mi, np.linalg.pinv(M, rcond=1e-10, hermitian=True),
                                   rtol=1e-6, atol=1e-6 * np.abs(Mi).max())
    f = _dense(fc.KFACOperator(p, theta, fisher="type2").inverse(kind="factored"))
    assert np.all(np.isfinite(f))


# ----------------------------------------------------------------------------- Monte Carlo
def test_mc_factor_converges_to_type2_like_one_over_sqrt_samples():
    p, _, theta = _problem(sizes=(3, 4, 3), n=40, seed=1)
    G2 = [g for _, g in fc.KFACOperator(p, theta, fisher="type2").factors]
    errs = {}
    for S in (4, 256):
        e = []
        for seed in range(12):
            op = fc.KFACOperator(p, theta, fisher="mc", mc_samples=S, seed=seed)
            e.append(sum(np.sum((g - g2) ** 2) for (_, g), g2 in zip(op.factors, G2,
                                                                        strict=True)))
        errs[S] = np.sqrt(np.mean(e))
    assert 5.0 < errs[4] / errs[256] < 12.0  # sqrt(64) = 8
    # the A factors do not depend on labels
    op = fc.KFACOperator(p, theta, fisher="mc", seed=0)
    for (a, _), (a2, _) in zip(op.factors, fc.KFACOperator(p, theta, fisher="type2").factors,
                               strict=True):
        np.testing.assert_array_equal(a, a2)


def test_mc_mean_is_unbiased():
    X, y, w = make_data("sigmoid_cross_entropy", 1, 30, 3, seed=8)
    p = fc.GLM(X, y, family="logistic", sample_weight=w)
    theta = np.array([0.3, -0.5, 0.8, 0.1])
    G2 = fc.KFACOperator(p, theta, fisher="type2").factors[0][1]
    rng = np.random.default_rng(0)
    draws = [fc.KFACOperator(p, theta, fisher="mc", seed=rng).factors[0][1]
             for _ in range(400)]
    mean, sd = np.mean(draws, axis=0), np.std(draws, axis=0) / np.sqrt(400)
    assert abs(mean[0, 0] - G2[0, 0]) < 4 * sd[0, 0]


def test_mc_is_seeded_and_independent_of_batch_size():
    p, _, theta = _problem(sizes=(3, 4, 3), n=50)
    q, _, _ = _problem(sizes=(3, 4, 3), n=50, batch_size=7)
    a = fc.KFACOperator(p, theta, fisher="mc", mc_samples=3, seed=5)
    b = fc.KFACOperator(p, theta, fisher="mc", mc_samples=3, seed=5)
    c = fc.KFACOperator(q, theta, fisher="mc", mc_samples=3, seed=5)
    d = fc.KFACOperator(p, theta, fisher="mc", mc_samples=3, seed=6)
    for (A1, G1), (_A2, G2), (A3, G3), (_, G4) in zip(a.factors, b.factors, c.factors,
                                                     d.factors, strict=True):
        np.testing.assert_array_equal(G1, G2)
        np.testing.assert_allclose(G1, G3, rtol=1e-12)
        np.testing.assert_allclose(A1, A3, rtol=1e-12)
        assert not np.allclose(G1, G4)
    e1 = fc.EKFACOperator(p, theta, fisher="mc", seed=np.random.default_rng(3))
    e2 = fc.EKFACOperator(p, theta, fisher="mc", seed=np.random.default_rng(3))
    for s1, s2 in zip(e1.scalings, e2.scalings, strict=True):
        np.testing.assert_array_equal(s1, s2)


def test_ekfac_mc_uses_the_same_draws_in_both_passes():
    """When every row has the same input, a layer's block is exactly ``ããᵀ ⊗ G``, so EK-FAC
    equals K-FAC, but only if its second pass sees the labels its factors were built from."""
    rng = np.random.default_rng(9)
    n = 30
    X = np.repeat(rng.standard_normal((1, 3)), n, axis=0)
    y = rng.integers(0, 3, n)
    p = fc.MLP(X, y, sizes=(3, 3), loss="softmax_cross_entropy")
    theta = rng.standard_normal(p.n_params)
    ek = fc.EKFACOperator(p, theta, fisher="mc", mc_samples=2, seed=4)
    kf = fc.KFACOperator(p, theta, fisher="mc", mc_samples=2, seed=4)
    np.testing.assert_allclose(_dense(ek), _dense(kf), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- data forms
def test_csr_dense_float32_and_batch_size_agree():
    p, _, theta = _problem(sizes=(6, 5, 3), n=60)
    X = p.X.copy()
    X[np.abs(X) < 0.6] = 0.0
    y = np.asarray(p._y2[:, 0], dtype=np.int64)
    w = p._w
    kw = dict(sizes=(6, 5, 3), loss="softmax_cross_entropy", sample_weight=w)
    dense = fc.MLP(X, y, **kw)
    variants = [fc.MLP(sp.csr_matrix(X), y, **kw), fc.MLP(X, y, batch_size=11, **kw),
                fc.MLP(np.asfortranarray(X), y, **kw)]
    for which in KINDS:
        base = fc.EKFACOperator(dense, theta, fisher=which, seed=0)
        for q in variants:
            other = fc.EKFACOperator(q, theta, fisher=which, seed=0)
            for (A, G), (A2, G2) in zip(base.factors, other.factors, strict=True):
                np.testing.assert_allclose(A2, A, rtol=1e-12, atol=1e-15)
                np.testing.assert_allclose(G2, G, rtol=1e-11, atol=1e-15)
            for s, s2 in zip(base.scalings, other.scalings, strict=True):
                np.testing.assert_allclose(s2, s, rtol=1e-9, atol=1e-13 * np.abs(s).max())
    p32 = fc.MLP(X.astype(np.float32), y, **kw)
    op32 = fc.KFACOperator(p32, theta.astype(np.float32), fisher="type2", damping=1e-2)
    op64 = fc.KFACOperator(dense, theta, fisher="type2", damping=1e-2)
    assert op32.dtype == np.float32
    for (A, G), (A2, G2) in zip(op32.factors, op64.factors, strict=True):
        assert A.dtype == np.float64  # factors and eigendecompositions in float64
        np.testing.assert_allclose(A, A2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(G, G2, rtol=1e-4, atol=1e-6)
    v = np.random.default_rng(0).standard_normal(p.n_params)
    for a, b in ((op32, op64), (op32.inverse(), op64.inverse())):
        out = a @ v.astype(np.float32)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, b @ v, rtol=1e-3, atol=1e-4 * np.abs(b @ v).max())


def test_glm_csr_multinomial_matches_dense():
    X, y, w = make_data("softmax_cross_entropy", 4, 80, 7, seed=10)
    X[np.abs(X) < 0.5] = 0.0
    theta = np.random.default_rng(1).standard_normal(8 * 4) * 0.3
    for fi in (True, False):
        t = theta if fi else theta[:28]
        a = fc.GLM(X, y, family="multinomial", sample_weight=w, fit_intercept=fi)
        b = fc.GLM(sp.csr_matrix(X), y, family="multinomial", sample_weight=w,
                   fit_intercept=fi)
        ea, eb = (fc.EKFACOperator(q, t, fisher="type2") for q in (a, b))
        np.testing.assert_allclose(eb.factors[0][0], ea.factors[0][0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(eb.factors[0][1], ea.factors[0][1], rtol=1e-12)
        np.testing.assert_allclose(eb.scalings[0], ea.scalings[0], rtol=1e-9, atol=1e-15)
        # G is the weighted mean of the per-sample softmax Hessians
        c = w / w.sum()
        P = np.exp(X @ t[:28].reshape(7, 4) + (t[28:] if fi else 0.0))
        P /= P.sum(axis=1, keepdims=True)
        G = np.einsum("i,ik,kl->kl", c, P, np.eye(4)) - np.einsum("i,ik,il->kl", c, P, P)
        np.testing.assert_allclose(ea.factors[0][1], G, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- operator use
def test_is_a_symmetric_scipy_operator_and_preconditions_cg():
    p, _, theta = _problem(sizes=(5, 8, 3), n=80, l2=1e-2)
    op = fc.KFACOperator(p, theta, fisher="type2", damping=1e-2)
    assert isinstance(op, LinearOperator) and op.dtype == np.float64
    assert op.shape == (p.n_params, p.n_params)
    V = np.random.default_rng(0).standard_normal((p.n_params, 3))
    cols = np.column_stack([op @ V[:, j] for j in range(3)])
    np.testing.assert_allclose(op @ V, cols, rtol=1e-13)
    np.testing.assert_allclose(op.T @ V, op @ V)
    np.testing.assert_allclose(op.rmatvec(V[:, 0]), op @ V[:, 0])
    # read-only and non-contiguous inputs
    Vr = np.asfortranarray(V)
    Vr.setflags(write=False)
    np.testing.assert_allclose(op @ Vr, op @ V)
    np.testing.assert_allclose(op @ V[::1, 1], op @ V[:, 1].copy())
    A = fc.GGNOperator(p, theta, damping=1e-4)
    g = p.grad(theta)
    counts = {}
    for name, M in (("none", None), ("kfac", fc.KFACOperator(p, theta, fisher="type2",
                                                            damping=p.l2 + 1e-4).inverse())):
        n = [0]
        x, info = cg(A, g, rtol=1e-10, maxiter=2000, M=M,
                     callback=lambda _x, n=n: n.__setitem__(0, n[0] + 1))
        assert info == 0
        np.testing.assert_allclose(A @ x, g, rtol=1e-7, atol=1e-9 * np.abs(g).max())
        counts[name] = n[0]
    assert counts["kfac"] < counts["none"]


def test_bad_arguments_are_refused():
    p, _, theta = _problem(sizes=(3, 4, 3), n=10)
    with pytest.raises(ValueError, match="fisher must be one of"):
        fc.KFACOperator(p, theta, fisher="exact")
    with pytest.raises(ValueError, match="mc_samples"):
        fc.KFACOperator(p, theta, fisher="mc", mc_samples=0)
    with pytest.raises(ValueError, match="damping"):
        fc.EKFACOperator(p, theta, damping=-1.0)
    with pytest.raises(TypeError, match="seed"):
        fc.KFACOperator(p, theta, fisher="mc", seed="zero")
    with pytest.raises(ValueError, match="theta"):
        fc.KFACOperator(p, theta[1:])
    bad = theta.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="theta"):
        fc.KFACOperator(p, bad)
    with pytest.raises(ValueError, match="kind"):
        fc.KFACOperator(p, theta).inverse(kind="pi")
    for op in (fc.KFACOperator(p, theta), fc.EKFACOperator(p, theta),
               fc.KFACOperator(p, theta).inverse()):
        with pytest.raises(ValueError, match="non-finite"):
            op.matvec(np.full(p.n_params, np.nan))
        with pytest.raises(ValueError, match="non-finite"):
            op.matmat(bad[:, None])
        with pytest.raises(TypeError, match="real"):
            op.matvec(theta.astype(str))


def test_too_large_factors_are_refused(monkeypatch):
    p, _, theta = _problem(sizes=(4, 6, 3), n=10)
    monkeypatch.setattr(_kfac_factors, "MAX_FACTOR_ENTRIES", 30)
    with pytest.raises(ValueError, match="layer 0's K-FAC factor G would be a dense 6x6"):
        fc.KFACOperator(p, theta)


# ----------------------------------------------------------------------------- diagonals
@pytest.mark.parametrize("loss,sizes", [("softmax_cross_entropy", (4, 5, 3)),
                                        ("poisson", (3, 4, 4, 2))])
def test_mlp_fisher_diag_is_the_diagonal_of_the_empirical_fisher(loss, sizes):
    p, ref, theta = _problem(loss, sizes)
    np.testing.assert_allclose(p.fisher_diag(theta), np.diag(ref.fisher(theta)), rtol=1e-9,
                               atol=1e-14)
    Xs = sp.csr_matrix(np.where(np.abs(p.X) < 0.5, 0.0, p.X))
    q = fc.MLP(Xs, p._y2[:, 0] if p.n_outputs == 3 else p._y2, sizes=sizes, loss=loss,
               sample_weight=p._w, batch_size=7)
    G = q.per_sample_grads(theta)
    np.testing.assert_allclose(q.fisher_diag(theta), (q._cw[:, None] * G * G).sum(axis=0),
                               rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("family,K", [("logistic", 1), ("multinomial", 3), ("poisson", 1)])
@pytest.mark.parametrize("sparse", [False, True])
def test_glm_fisher_diag_is_the_diagonal_of_the_empirical_fisher(family, K, sparse):
    loss = {"logistic": "sigmoid_cross_entropy", "multinomial": "softmax_cross_entropy",
            "poisson": "poisson"}[family]
    X, y, w = make_data(loss, K, 40, 5, seed=11)
    X[np.abs(X) < 0.4] = 0.0
    p = fc.GLM(sp.csr_matrix(X) if sparse else X, y, family=family, sample_weight=w, l2=0.3)
    theta = np.random.default_rng(0).standard_normal(p.n_params) * 0.3
    G = p.per_sample_grads(theta)
    G = G.toarray() if sp.issparse(G) else G
    c = w / w.sum()
    np.testing.assert_allclose(p.fisher_diag(theta), (c[:, None] * G * G).sum(axis=0),
                               rtol=1e-12, atol=1e-16)


# ----------------------------------------------------------------------------- Newton-CG
def test_newton_cg_with_the_kfac_preconditioner():
    rng = np.random.default_rng(0)
    n, d, K = 400, 6, 4
    X = rng.standard_normal((n, d)) * np.array([1, 10, 0.1, 3, 1, 30])
    y = rng.integers(0, K, n)
    p = fc.GLM(X, y, family="multinomial", l2=1e-3)
    plain = fc.newton_cg(p, gtol=1e-9)
    kfac = fc.newton_cg(p, gtol=1e-9, preconditioner="kfac")
    assert plain.success and kfac.success
    np.testing.assert_allclose(kfac.fun, plain.fun, rtol=1e-12)
    assert kfac.n_cg < plain.n_cg
    q = fc.MLP(X[:, :3], y, sizes=(3, 5, K), loss="softmax_cross_entropy", l2=1e-2)
    res = fc.newton_cg(q, q.init(0), gtol=1e-7, curvature="ggn", preconditioner="kfac",
                       max_iter=300)
    assert res.success, res.message


# ----------------------------------------------------------------------------- MC Fisher
def test_mc_fisher_operator_is_fixed_and_consistent_with_kfac_mc():
    """The MC Fisher's bias block of a layer is K-FAC's MC ``G`` with the same draws (two
    code paths: Fisher products vs factor accumulation); one-layer MLP = GLM draw for draw."""
    p, _, theta = _problem(sizes=(3, 4, 3), n=40, seed=2)
    F = fc.FisherOperator(p, theta, kind="mc", mc_samples=3, seed=8)
    M = _dense(F)
    np.testing.assert_array_equal(M, _dense(F))  # the same draws at every product
    np.testing.assert_allclose(M, M.T, rtol=1e-12, atol=1e-15)
    kf = fc.KFACOperator(p, theta, fisher="mc", mc_samples=3, seed=8)
    for (o, na, w), (_, G) in zip(_blocks(p), kf.factors, strict=True):
        b = o + (na - 1) * w
        np.testing.assert_allclose(M[b:b + w, b:b + w], G, rtol=1e-10, atol=1e-15)
    X, y, wts = make_data("softmax_cross_entropy", 3, 50, 4, seed=3)
    glm = fc.GLM(X, y, family="multinomial", sample_weight=wts)
    one = fc.MLP(X, y, sizes=(4, 3), loss="softmax_cross_entropy", sample_weight=wts,
                 batch_size=9)
    t = np.random.default_rng(0).standard_normal(15) * 0.5
    np.testing.assert_allclose(_dense(fc.FisherOperator(one, t, kind="mc", mc_samples=2,
                                                        seed=1)),
                               _dense(fc.FisherOperator(glm, t, kind="mc", mc_samples=2,
                                                        seed=1)), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("make", ["mlp", "glm"])
def test_mc_fisher_converges_to_the_ggn(make):
    if make == "mlp":
        p, ref, theta = _problem(loss="sigmoid_cross_entropy", sizes=(3, 4, 2), n=30, seed=4)
        C = ref.ggn(theta)
    else:
        X, y, w = make_data("poisson", 1, 30, 3, seed=4)
        p = fc.GLM(X, y, family="poisson", sample_weight=w)
        theta = np.array([0.2, -0.3, 0.1, 0.4])
        C = p.hessian(theta)
    errs = {}
    for S in (2, 128):
        e = [np.sum((_dense(fc.FisherOperator(p, theta, kind="mc", mc_samples=S, seed=k))
                     - C) ** 2) for k in range(10)]
        errs[S] = np.sqrt(np.mean(e))
    assert 5.0 < errs[2] / errs[128] < 12.0  # sqrt(64) = 8


@pytest.mark.parametrize("family,K", [("logistic", 1), ("poisson", 1), ("gaussian", 1),
                                      ("multinomial", 4)])
def test_glm_type2_closed_form_output_factor(monkeypatch, family, K):
    """A GLM's type-2 ``G`` comes in closed form (``diag(Σ c p) - Σ c p pᵀ`` for the softmax,
    ``Σ c ℓ''`` otherwise); it equals the generic route that sums the K square-root columns
    over row blocks, and a dense ``Σ_i c_i H_i`` built from the per-row Hessians; the first
    layer's eigendecomposition is cached on the problem and equals numpy's."""
    rng = np.random.default_rng(11)
    n, d = 300, 5
    X = rng.standard_normal((n, d))
    w = rng.uniform(0.1, 3.0, n)
    if family == "multinomial":
        y = rng.integers(0, K, n)
    elif family == "logistic":
        y = (rng.random(n) < 0.4).astype(float)
    elif family == "poisson":
        y = rng.poisson(1.5, n).astype(float)
    else:
        y = rng.standard_normal(n)
    p = fc.GLM(X, y, family=family, l2=1e-3, sample_weight=w)
    theta = 0.3 * rng.standard_normal(p.n_params)
    (A, G), = _kfac_factors.factors(p, theta, "type2")
    # independent: per-row loss Hessians at eta = X W + b
    eta = np.column_stack([X, np.ones(n)]) @ theta.reshape(d + 1, K)
    c = w / w.sum()
    if family == "multinomial":
        e = np.exp(eta - eta.max(axis=1, keepdims=True))
        pr = e / e.sum(axis=1, keepdims=True)
        Gref = sum(c[i] * (np.diag(pr[i]) - np.outer(pr[i], pr[i])) for i in range(n))
    else:
        h = {"logistic": lambda z: np.exp(-np.logaddexp(0, -z) - np.logaddexp(0, z)),
             "poisson": np.exp, "gaussian": np.ones_like}[family](eta[:, 0])
        Gref = np.array([[c @ h]])
    np.testing.assert_allclose(G, Gref, rtol=1e-12, atol=1e-15)
    monkeypatch.delattr(type(p), "_kfac_type2_output_gram")
    (A2, G2), = _kfac_factors.factors(p, theta, "type2")
    np.testing.assert_allclose(G, G2, rtol=1e-12, atol=1e-15)
    assert A2 is A
    monkeypatch.undo()
    op = fc.KFACOperator(p, theta, fisher="type2")
    lamA, QA, _, _ = op.eigen()[0]
    assert p._kfac_A0_eig[0] is lamA
    np.testing.assert_allclose(lamA, np.linalg.eigvalsh(A), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose((QA * lamA) @ QA.T, A, atol=1e-12 * np.abs(A).max())


@pytest.mark.parametrize("cls", [fc.KFACOperator, fc.EKFACOperator])
@pytest.mark.parametrize("which", ["type2", "empirical"])
def test_float32_pseudo_inverse_drops_rounding_level_null_directions(cls, which):
    """δ = 0 on a softmax output: G is singular along 1, but float32 factors put that
    eigenvalue at rounding level (~ε_32² max), not 0. The float32 pseudo-inverse must match
    the float64 twin's (numpy's pinv) instead of inverting the rounding (entries ~1e8-1e14)."""
    p32, _, theta = _problem(sizes=(5, 6, 4), n=50, seed=4, dtype=np.float32)
    p64, _, _ = _problem(sizes=(5, 6, 4), n=50, seed=4)
    M64 = _dense(cls(p64, theta.astype(np.float64), fisher=which))
    want = np.linalg.pinv(M64, rcond=1e-5, hermitian=True)
    got = _dense(cls(p32, theta, fisher=which).inverse())
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())



def test_a_product_beyond_float32_is_refused():
    """K-FAC and EK-FAC products (and their inverses) on a float32 v whose exact product
    exceeds float32 returned inf/NaN with only numpy's warnings (the Hessian operator already
    raised); now FloatingPointError says to scale v."""
    X, y, _ = make_data("mse", 3, 40, 3, seed=0, weighted=False)
    X = 10.0 * X  # a first-layer A of ~100: the top eigenvalue is ~150
    kw = dict(sizes=(3, 4, 3), loss="mse", activation="identity")
    p32 = fc.MLP(X.astype(np.float32), y, **kw)
    p64 = fc.MLP(X, y, **kw)
    theta = random_theta((3, 4, 3), seed=0).astype(np.float32)
    for cls in (fc.KFACOperator, fc.EKFACOperator):
        M = _dense(cls(p64, theta.astype(np.float64), fisher="type2"))
        u = np.linalg.eigh(M)[1][:, -1]  # the top eigenvector: ‖M v‖ = λ_max ‖v‖
        v = (3e38 / np.abs(u).max() * u).astype(np.float32)
        exact = M @ v.astype(np.float64)
        assert np.abs(exact).max() > np.finfo(np.float32).max  # no float32 answer exists
        op = cls(p32, theta, fisher="type2")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning on the way to the error
            with pytest.raises(FloatingPointError, match="the product overflows float32"):
                op @ v
        np.testing.assert_allclose(op @ (v / 1e30), exact / 1e30, rtol=0,
                                   atol=1e-4 * np.abs(exact / 1e30).max())
    inv = fc.KFACOperator(p32, theta, fisher="type2", damping=1e-6).inverse()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match="the product overflows float32"):
            inv @ v


def test_float32_csr_input_factor_sums_its_rows_in_float64():
    """The first layer's input factor ``A = Σ_i c_i x̃_i x̃_iᵀ`` on float32 CSR data: the
    sparse products ``Mᵀ M`` over a block of rows (here all 200,000) were taken in float32,
    2.9e-5 to 5.9e-5 relative off the float64 twin (a review's finding; dense data 5.5e-7).
    The reference is the float64 factor of the same float32-exact numbers."""
    rng = np.random.default_rng(0)
    n, d = 200_000, 4
    X = (rng.random((n, d)) * (rng.random((n, d)) < 0.6)).astype(np.float32)  # positive mean
    y = rng.integers(0, 3, n)
    w = rng.random(n).astype(np.float32) + 0.5
    A = {}
    for dt in (np.float32, np.float64):
        p = fc.GLM(sp.csr_matrix(X.astype(dt)), y, family="multinomial",
                   sample_weight=w.astype(dt))
        A[dt] = _kfac_factors.input_gram(p)
    scale = np.abs(A[np.float64]).max()
    assert np.abs(A[np.float32] - A[np.float64]).max() <= 4 * np.finfo(np.float32).eps * scale


def test_float32_factors_sum_their_rows_in_float64():
    """The first layer's input factor of dense float32 data was a float32 ``syrk`` over
    blocks of up to 2^22/(d + 1) rows: 1.4e-5 relative off on 400,000 rows (CSR data were
    already converted), and EK-FAC's second moments 4.5e-6 (a review). Both now multiply in
    float64, where each product of two float32 numbers is exact."""
    rng = np.random.default_rng(0)
    n, d = 400_000, 3
    X = (1.0 + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float64)
    Xt = np.hstack([X.astype(np.float64), np.ones((n, 1))])
    want = Xt.T @ Xt / n
    p32 = fc.GLM(X, y, family="logistic")
    theta = np.zeros(p32.n_params, dtype=np.float32)
    A = fc.KFACOperator(p32, theta, fisher="type2").factors[0][0]
    assert np.abs(A - want).max() < 1e-12 * np.abs(want).max()
    p64 = fc.GLM(X.astype(np.float64), y, family="logistic")
    eye = np.eye(p32.n_params)
    E32 = fc.EKFACOperator(p32, theta, fisher="type2", damping=0.0) @ eye
    E64 = fc.EKFACOperator(p64, theta.astype(np.float64), fisher="type2", damping=0.0) @ eye
    # what remains is the eigenbases rounded to float32 (2.4e-7)
    assert np.abs(E32 - E64).max() < 1e-6 * np.abs(E64).max()


def test_ekfac_mc_ignores_a_weight_zero_row_whose_mean_overflows():
    """A Poisson row of sample weight 0 with η = 1000: its sampled residual was inf, and
    EK-FAC's second moments (which scale the rows by √c_i = 0 only after squaring them) raised
    "the EK-FAC second moments overflows float64" (a review). The row adds nothing, as
    deleting it does (K-FAC and the other Fisher kinds already agreed)."""
    rng = np.random.default_rng(0)
    n, d = 20, 3
    X = rng.standard_normal((n, d))
    X[0] = [1e4, 0.0, 0.0]
    y = rng.poisson(1.0, n).astype(float)
    w = np.ones(n)
    w[0] = 0.0
    p = fc.GLM(X, y, family="poisson", sample_weight=w)
    q = fc.GLM(X[1:], y[1:], family="poisson")
    theta = np.full(p.n_params, 0.1)
    eye = np.eye(p.n_params)
    got = fc.EKFACOperator(p, theta, fisher="mc", seed=0) @ eye
    want = fc.EKFACOperator(q, theta, fisher="mc", seed=0) @ eye
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())

