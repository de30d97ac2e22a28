"""fc.MLP inputs: every accepted kind of X (dense layouts, CSR and other sparse formats,
integers) gives the numbers of the plain C-ordered float array, and of the independent
reference (tests/mlp_reference.py); every bad input is refused with a ValueError/TypeError
whose message names the argument.

Tolerances: 1e-12 normwise between two forms of one problem (CSR vs dense: only the summation
order of the first layer differs); 1e-10 against the reference (see test_mlp_products.py).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from cases import assert_close
from mlp_reference import RefMLP, make_data, random_theta, random_vectors

import fastcurv as fc

SAME_RTOL = 1e-12
REF_RTOL = 1e-10
F32_RTOL = 100 * float(np.finfo(np.float32).eps)
SIZES = (5, 4, 3, 3)
N = 40


def _base(loss="softmax_cross_entropy", K=3, sparse_density=None):
    X, y, w = make_data(loss, K, N, SIZES[0], seed=5)
    if sparse_density is not None:
        X[np.random.default_rng(6).random(X.shape) >= sparse_density] = 0.0
        X[2] = 0.0  # an empty row
        X[:, 4] = 0.0  # an empty column
    return X, y, w


def _results(p):
    P = p.n_params
    theta = random_theta(p.sizes, 3).astype(p.dtype)
    v = random_vectors(P, None, 4).astype(p.dtype)
    V = random_vectors(P, 2, 5).astype(p.dtype)
    u = np.random.default_rng(6).standard_normal((p.n_samples, p.n_outputs)).astype(p.dtype)
    return {
        "value": np.array([p.value(theta)]),
        "grad": p.grad(theta),
        "hvp": p.hvp(theta, v),
        "block_hvp": p.hvp(theta, V),
        "ggn_vp": p.ggn_vp(theta, V),
        "fisher_vp": p.fisher_vp(theta, v),
        "jvp": p.jvp(theta, v),
        "vjp": p.vjp(theta, u),
        "per_sample_grads": p.per_sample_grads(theta, [0, 2, 7, 3]),
        "hessian": p.hessian(theta),
        "hessian_diag": p.hessian_diag(theta),
        "ggn_diag": p.ggn_diag(theta),
        "ggn_diag_mc": p.ggn_diag(theta, mc_samples=2, seed=1),
    }, theta, v


def _check_against_plain(X_kind, X_plain, activation="gelu", sparse_density=None, dtype=None):
    _, y, w = _base(sparse_density=sparse_density)
    kw = dict(sizes=SIZES, activation=activation, loss="softmax_cross_entropy", l2=0.2,
              sample_weight=w)
    p, q = fc.MLP(X_kind, y, **kw), fc.MLP(X_plain, y, **kw)
    want_dtype = np.dtype(np.float64 if dtype is None else dtype)
    assert p.dtype == want_dtype and q.dtype == want_dtype
    got, theta, v = _results(p)
    want, _, _ = _results(q)
    tol = SAME_RTOL if want_dtype == np.float64 else F32_RTOL
    for key in got:
        if key != "value":  # value() is a Python float
            assert got[key].dtype == want_dtype, f"{key}: dtype {got[key].dtype}"
        assert_close(got[key], want[key], tol, f"{key} vs plain C-ordered dense X")
    ref = RefMLP(np.asarray(X_plain, dtype=np.float64), y, SIZES, activation,
                 "softmax_cross_entropy", 0.2, w)
    tol = REF_RTOL if want_dtype == np.float64 else F32_RTOL
    np.testing.assert_allclose(got["value"][0], ref.value(theta.astype(np.float64)), rtol=tol)
    t64 = theta.astype(np.float64)
    assert_close(got["grad"], ref.grad_cs(t64), tol, "grad vs reference")
    assert_close(got["hvp"], ref.hessian(t64) @ v.astype(np.float64), tol, "hvp vs reference")
    return p


# ====================================================================== dense kinds
def _dense_kinds(tmp_path, X):
    ro = X.copy()
    ro.setflags(write=False)
    mm = np.memmap(tmp_path / "X.dat", dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    mm = np.memmap(tmp_path / "X.dat", dtype=X.dtype, mode="r", shape=X.shape)
    big = np.full((2 * X.shape[0], 3 * X.shape[1]), np.nan, dtype=X.dtype)
    big[::2, 1::3] = X
    return {
        "F-order": np.asfortranarray(X),
        "read-only": ro,
        "memmap": mm,
        "non-contiguous": big[::2, 1::3],
        "list": X.tolist(),
    }


@pytest.mark.parametrize("kind", ["F-order", "read-only", "memmap", "non-contiguous", "list"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_dense_input_kinds(tmp_path, kind, dtype):
    X, _, _ = _base()
    X = X.astype(dtype)
    Xk = _dense_kinds(tmp_path, X)[kind]
    if kind == "F-order":
        assert Xk.flags.f_contiguous and not Xk.flags.c_contiguous
    if kind == "non-contiguous":
        assert not Xk.flags.c_contiguous and not Xk.flags.f_contiguous
    if kind == "list":
        dtype = np.float64  # a list of Python floats is float64 data
        X = X.astype(np.float64)
    _check_against_plain(Xk, X, dtype=dtype)
    if kind in ("read-only", "memmap"):
        assert not np.asarray(Xk).flags.writeable  # the caller's array is untouched


def test_integer_X_gives_float64():
    X, _, _ = _base()
    Xi = np.round(4 * X).astype(np.int32)
    p = _check_against_plain(Xi, Xi.astype(np.float64))
    assert p.dtype == np.float64


def test_input_not_modified():
    X, y, w = _base()
    X0, y0, w0 = X.copy(), y.copy(), w.copy()
    p = fc.MLP(X, y, SIZES, "tanh", "softmax_cross_entropy", 0.1, w)
    _results(p)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(w, w0)


# ====================================================================== sparse
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "csr_array", "csr-int64-indices"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", ("softplus", "identity")],
                         ids=str)
def test_sparse_X_equals_dense(fmt, activation):
    """The first layer reads CSR: the numbers are those of the dense X (to rounding)."""
    X, _, _ = _base(sparse_density=0.4)
    if fmt == "csr":
        Xs = sp.csr_matrix(X)
    elif fmt == "csc":
        Xs = sp.csc_matrix(X)
    elif fmt == "coo":
        Xs = sp.coo_matrix(X)
    elif fmt == "csr_array":
        Xs = sp.csr_array(X)
    else:
        Xs = sp.csr_matrix(X)
        Xs.indices = Xs.indices.astype(np.int64)
        Xs.indptr = Xs.indptr.astype(np.int64)
    _check_against_plain(Xs, X, activation=activation, sparse_density=0.4)


def test_sparse_float32_equals_dense_float32():
    X, _, _ = _base(sparse_density=0.4)
    X = X.astype(np.float32)
    _check_against_plain(sp.csr_matrix(X), X, activation="sigmoid", sparse_density=0.4,
                         dtype=np.float32)


@pytest.mark.parametrize("loss,K", [("mse", 2), ("sigmoid_cross_entropy", 1), ("poisson", 2)])
def test_sparse_other_losses_and_batches(loss, K):
    """CSR with several row blocks (batch_size 6) == dense with one block, for the other
    losses, and both match the reference."""
    X, y, w = make_data(loss, K, N, 5, seed=9)
    X[np.random.default_rng(1).random(X.shape) >= 0.3] = 0.0
    sizes = (5, 4, K)
    p = fc.MLP(sp.csr_matrix(X), y, sizes, "tanh", loss, 0.1, w, batch_size=6)
    q = fc.MLP(X, y, sizes, "tanh", loss, 0.1, w)
    got, theta, v = _results(p)
    want, _, _ = _results(q)
    for key in got:
        if key == "ggn_diag_mc":
            continue  # the Monte Carlo draws may follow the row blocks
        assert_close(got[key], want[key], SAME_RTOL, f"{loss}: CSR blocks vs dense: {key}")
    ref = RefMLP(X, y, sizes, "tanh", loss, 0.1, w)
    assert_close(got["hessian"], ref.hessian(theta), REF_RTOL, "CSR hessian vs reference")
    assert_close(got["ggn_vp"], ref.ggn(theta) @ random_vectors(p.n_params, 2, 5), REF_RTOL,
                 "CSR ggn_vp vs reference")


@pytest.mark.parametrize("sizes", [(5, 2), (5, 3, 2), (5, 6, 2), (5, 4, 3, 2), (5, 2, 6, 2)],
                         ids=str)
def test_sparse_ggn_diag_any_widths(sizes):
    """Exact and Monte Carlo GGN diagonals with CSR X, for first hidden widths below, equal
    to and above d = 5 (and no hidden layer), against the reference."""
    X, y, w = make_data("mse", 2, N, 5, seed=9)
    X[np.random.default_rng(1).random(X.shape) >= 0.3] = 0.0
    p = fc.MLP(sp.csr_matrix(X), y, sizes, "tanh", "mse", 0.1, w)
    ref = RefMLP(X, y, sizes, "tanh", "mse", 0.1, w)
    theta = random_theta(sizes, 2)
    assert_close(p.ggn_diag(theta), np.diag(ref.ggn(theta)), REF_RTOL, "CSR exact ggn_diag")
    mc = p.ggn_diag(theta, mc_samples=3, seed=0)
    assert mc.shape == (p.n_params,) and np.all(np.isfinite(mc))
    dense = fc.MLP(X, y, sizes, "tanh", "mse", 0.1, w)
    assert_close(mc, dense.ggn_diag(theta, mc_samples=3, seed=0), SAME_RTOL,
                 "CSR vs dense MC ggn_diag, same seed")


# ====================================================================== targets and weights
def test_target_and_weight_kinds():
    X, y, w = _base()
    ref = RefMLP(X, y, SIZES, "tanh", "softmax_cross_entropy", 0.0, w)
    theta = random_theta(SIZES, 3)
    for yk in (y, y.astype(np.int32), y.tolist(), y.astype(np.uint8)):
        for wk in (w, w.tolist(), w.astype(np.float32)):
            p = fc.MLP(X, yk, SIZES, "tanh", "softmax_cross_entropy", sample_weight=wk)
            assert_close(p.grad(theta), ref.grad_cs(theta), REF_RTOL, "label/weight kinds")
    # a single-output target as (n,) or (n, 1)
    X, y1, _ = make_data("mse", 1, N, 5, seed=2)
    ref = RefMLP(X, y1, (5, 3, 1), "tanh", "mse")
    t = random_theta((5, 3, 1))
    for yk in (y1, y1[:, None], y1.tolist()):
        p = fc.MLP(X, yk, (5, 3, 1), "tanh", "mse")
        assert p.n_outputs == 1
        assert_close(p.grad(t), ref.grad_cs(t), REF_RTOL, "single-output y kinds")


def test_theta_and_vector_kinds():
    """θ and v as lists, float32 into a float64 problem, non-contiguous views."""
    X, y, w = _base()
    p = fc.MLP(X, y, SIZES, "relu", "softmax_cross_entropy", 0.1, w)
    ref = RefMLP(X, y, SIZES, "relu", "softmax_cross_entropy", 0.1, w)
    theta = random_theta(SIZES, 3)
    v = random_vectors(p.n_params, None, 4)
    H = ref.hessian(theta)
    big = np.zeros((p.n_params, 3))
    big[:, 1] = theta
    for t in (theta.tolist(), theta.astype(np.float32), big[:, 1]):
        assert_close(p.grad(t), ref.grad_cs(theta), REF_RTOL, "θ kinds")
    V = np.asfortranarray(np.stack([v, 2 * v], 1))
    assert_close(p.hvp(theta, V), H @ V, REF_RTOL, "F-ordered block")
    assert_close(p.hvp(theta, v.tolist()), H @ v, REF_RTOL, "v as a list")


# ====================================================================== bad input
def _with(a, index, value):
    a = np.array(a, dtype=np.float64, copy=True)
    a[index] = value
    return a


X0, YL, W0 = _base()  # softmax labels, K = 3
_, YM, _ = make_data("mse", 2, N, 5, seed=5)  # (n, 2) real targets
K3 = dict(sizes=SIZES, loss="softmax_cross_entropy")
M2 = dict(sizes=(5, 4, 2), loss="mse")

BAD_CONSTRUCTION = {
    # id: (X, y, kwargs, exception, regex)
    "sizes0-not-d": (X0, YL, dict(K3, sizes=(4, 4, 3)), ValueError, r"sizes"),
    "sizes0-not-d-csr": (sp.csr_matrix(X0), YL, dict(K3, sizes=(6, 4, 3)), ValueError,
                         r"sizes"),
    "sizes-one": (X0, YL, dict(K3, sizes=(5,)), ValueError, r"sizes"),
    "sizes-empty": (X0, YL, dict(K3, sizes=()), ValueError, r"sizes"),
    "sizes-zero-width": (X0, YL, dict(K3, sizes=(5, 0, 3)), ValueError, r"width|sizes"),
    "sizes-negative": (X0, YL, dict(K3, sizes=(5, -4, 3)), ValueError, r"width|sizes"),
    "sizes-float": (X0, YL, dict(K3, sizes=(5, 4.5, 3)), (TypeError, ValueError), r"sizes"),
    "sizes-string": (X0, YL, dict(K3, sizes="543"), TypeError, r"sizes"),
    "sizes-int": (X0, YL, dict(K3, sizes=5), TypeError, r"sizes"),
    "K-not-y-columns": (X0, YM, dict(M2, sizes=(5, 4, 3)), ValueError, r"\by\b|sizes|output"),
    "K1-y-two-columns": (X0, YM, dict(M2, sizes=(5, 4, 1)), ValueError, r"\by\b|sizes|output"),
    "K2-y-one-column": (X0, YM[:, 0], M2, ValueError, r"\by\b|sizes|output"),
    "y-short": (X0, YM[:-1], M2, ValueError, r"\by\b"),
    "y-3d": (X0, YM[:, :, None], M2, ValueError, r"\by\b"),
    "y-nan": (X0, _with(YM, (3, 1), np.nan), M2, ValueError, r"\by\b"),
    "y-inf": (X0, _with(YM, (0, 0), np.inf), M2, ValueError, r"\by\b"),
    "label-eq-K": (X0, _with(YL, 4, 3), K3, ValueError, r"label|class|\by\b"),
    "label-gt-K": (X0, _with(YL, 4, 7), K3, ValueError, r"label|class|\by\b"),
    "label-negative": (X0, _with(YL, 0, -1), K3, ValueError, r"label|class|\by\b"),
    "label-fraction": (X0, _with(YL, 0, 0.5), K3, ValueError, r"label|class|\by\b"),
    "label-nan": (X0, _with(YL, 0, np.nan), K3, ValueError, r"label|class|\by\b"),
    "labels-2d": (X0, np.eye(3)[YL], K3, ValueError, r"\by\b|label"),
    "softmax-K1": (X0, 0 * YL, dict(K3, sizes=(5, 4, 1)), ValueError,
                   r"softmax|K|output|sizes"),
    "unknown-activation": (X0, YL, dict(K3, activation="swish"), ValueError, r"activation"),
    "activation-case": (X0, YL, dict(K3, activation="ReLU"), ValueError, r"activation"),
    "activation-none": (X0, YL, dict(K3, activation=None), (TypeError, ValueError),
                        r"activation"),
    "activation-unknown-in-list": (X0, YL, dict(K3, activation=("tanh", "elu")), ValueError,
                                   r"activation"),
    "activation-too-few": (X0, YL, dict(K3, activation=("tanh",)), ValueError, r"activation"),
    "activation-too-many": (X0, YL, dict(K3, activation=("tanh", "relu", "gelu")), ValueError,
                            r"activation"),
    "activation-list-for-glm": (X0, YL, dict(K3, sizes=(5, 3), activation=("tanh",)),
                                ValueError, r"activation"),
    "unknown-loss": (X0, YL, dict(K3, loss="cross_entropy"), ValueError, r"loss"),
    "loss-none": (X0, YL, dict(K3, loss=None), (TypeError, ValueError), r"loss"),
    "X-nan": (_with(X0, (4, 1), np.nan), YL, K3, ValueError, r"\bX\b"),
    "X-inf": (_with(X0, (39, 4), -np.inf), YL, K3, ValueError, r"\bX\b"),
    "X-nan-float32": (_with(X0, (7, 0), np.nan).astype(np.float32), YL, K3, ValueError,
                      r"\bX\b"),
    "X-nan-F-order": (np.asfortranarray(_with(X0, (0, 0), np.nan)), YL, K3, ValueError,
                      r"\bX\b"),
    "X-nan-csr": (sp.csr_matrix(_with(X0, (2, 2), np.nan)), YL, K3, ValueError, r"\bX\b"),
    "X-1d": (X0[:, 0], YL, dict(K3, sizes=(1, 4, 3)), ValueError, r"\bX\b"),
    "X-strings": (X0.astype(str), YL, K3, TypeError, r"\bX\b"),
    "X-complex": (X0 + 1j, YL, K3, TypeError, r"\bX\b"),
    "weights-short": (X0, YL, dict(K3, sample_weight=np.ones(N - 1)), ValueError,
                      "sample_weight"),
    "weights-negative": (X0, YL, dict(K3, sample_weight=_with(np.ones(N), 3, -1.0)),
                         ValueError, "sample_weight"),
    "weights-nan": (X0, YL, dict(K3, sample_weight=_with(np.ones(N), 3, np.nan)), ValueError,
                    "sample_weight"),
    "weights-all-zero": (X0, YL, dict(K3, sample_weight=np.zeros(N)), ValueError,
                         "sample_weight"),
    "l2-negative": (X0, YL, dict(K3, l2=-0.1), ValueError, r"\bl2\b"),
    "l2-nan": (X0, YL, dict(K3, l2=np.nan), ValueError, r"\bl2\b"),
    "batch_size-zero": (X0, YL, dict(K3, batch_size=0), ValueError, "batch_size"),
    "batch_size-float": (X0, YL, dict(K3, batch_size=2.5), (TypeError, ValueError),
                         "batch_size"),
    "unknown-activation-no-hidden": (X0, YL, dict(K3, sizes=(5, 3), activation="swish"),
                                     ValueError, r"activation"),
    "sizes-too-many-params": (X0, YL, dict(K3, sizes=(5, 2**21, 2**21, 3)), ValueError,
                              r"sizes.*parameters"),
    "label-beyond-outputs": (X0, _with(YL, 4, 3), K3, ValueError, r"sizes\[-1\]=3"),
}


@pytest.mark.parametrize("key", list(BAD_CONSTRUCTION))
def test_bad_construction_is_refused(key):
    X, y, kwargs, exc, pattern = BAD_CONSTRUCTION[key]
    with pytest.raises(exc, match=pattern):
        fc.MLP(X, y, **kwargs)


def _problems():
    return {
        "softmax": fc.MLP(X0, YL, SIZES, "tanh", "softmax_cross_entropy", 0.1, W0),
        "mse-csr": fc.MLP(sp.csr_matrix(X0), YM, (5, 4, 2), "relu", "mse", 0.1),
        "poisson-K1": fc.MLP(X0, np.abs(np.round(YM[:, 0])), (5, 2, 1), "gelu", "poisson"),
    }


BAD_CALLS = {
    # id: (function of (p, θ, P, n, K), exception, regex)
    "theta-short": (lambda p, t, P, n, K: p.grad(t[:-1]), ValueError, "theta"),
    "theta-long": (lambda p, t, P, n, K: p.value(np.zeros(P + 1)), ValueError, "theta"),
    "theta-2d": (lambda p, t, P, n, K: p.grad(t[:, None]), ValueError, "theta"),
    "theta-empty": (lambda p, t, P, n, K: p.value(np.zeros(0)), ValueError, "theta"),
    "theta-nan": (lambda p, t, P, n, K: p.value_and_grad(_with(t, 0, np.nan)), ValueError,
                  "theta"),
    "theta-inf": (lambda p, t, P, n, K: p.hvp(_with(t, -1, np.inf), t), ValueError, "theta"),
    "theta-strings": (lambda p, t, P, n, K: p.grad(t.astype(str)), TypeError, "theta"),
    "ggn-theta-nan": (lambda p, t, P, n, K: p.ggn_vp(_with(t, 2, np.nan), t), ValueError,
                      "theta"),
    "fisher-theta-short": (lambda p, t, P, n, K: p.fisher_vp(t[1:], t), ValueError, "theta"),
    "jvp-theta-short": (lambda p, t, P, n, K: p.jvp(t[1:], t), ValueError, "theta"),
    "vjp-theta-nan": (lambda p, t, P, n, K: p.vjp(_with(t, 1, np.nan), np.zeros((n, K))),
                      ValueError, "theta"),
    "hessian-theta-nan": (lambda p, t, P, n, K: p.hessian(_with(t, 1, np.nan)), ValueError,
                          "theta"),
    "diag-theta-short": (lambda p, t, P, n, K: p.hessian_diag(t[1:]), ValueError, "theta"),
    "ggn-diag-theta-nan": (lambda p, t, P, n, K: p.ggn_diag(_with(t, 0, np.nan)), ValueError,
                           "theta"),
    "mc-diag-theta-short": (lambda p, t, P, n, K: p.ggn_diag(t[1:], mc_samples=2),
                            ValueError, "theta"),
    "psg-theta-nan": (lambda p, t, P, n, K: p.per_sample_grads(_with(t, 1, np.nan)),
                      ValueError, "theta"),
    "v-short": (lambda p, t, P, n, K: p.hvp(t, t[:-1]), ValueError, r"\bv\b"),
    "v-long": (lambda p, t, P, n, K: p.ggn_vp(t, np.zeros(P + 1)), ValueError, r"\bv\b"),
    "v-3d": (lambda p, t, P, n, K: p.hvp(t, np.zeros((P, 2, 1))), ValueError, r"\bv\b"),
    "v-block-rows": (lambda p, t, P, n, K: p.hvp(t, np.zeros((P - 1, 2))), ValueError,
                     r"\bv\b"),
    "v-transposed-block": (lambda p, t, P, n, K: p.ggn_vp(t, np.zeros((2, P))), ValueError,
                           r"\bv\b"),
    "v-nan": (lambda p, t, P, n, K: p.hvp(t, _with(t, 0, np.nan)), ValueError, r"\bv\b"),
    "v-block-inf": (lambda p, t, P, n, K: p.hvp(t, _with(np.ones((P, 3)), (1, 2), np.inf)),
                    ValueError, r"\bv\b"),
    "ggn-v-nan": (lambda p, t, P, n, K: p.ggn_vp(t, _with(t, 0, np.nan)), ValueError,
                  r"\bv\b"),
    "fisher-v-short": (lambda p, t, P, n, K: p.fisher_vp(t, t[:-1]), ValueError, r"\bv\b"),
    "fisher-v-nan": (lambda p, t, P, n, K: p.fisher_vp(t, _with(t, 0, np.nan)), ValueError,
                     r"\bv\b"),
    "jvp-v-short": (lambda p, t, P, n, K: p.jvp(t, t[:-1]), ValueError, r"\bv\b"),
    "jvp-v-nan": (lambda p, t, P, n, K: p.jvp(t, _with(t, 0, np.nan)), ValueError, r"\bv\b"),
    "v-strings": (lambda p, t, P, n, K: p.hvp(t, t.astype(str)), TypeError, r"\bv\b"),
    "u-rows": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n - 1, K))), ValueError, r"\bu\b"),
    "u-cols": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n, K + 1))), ValueError, r"\bu\b"),
    "u-transposed": (lambda p, t, P, n, K: p.vjp(t, np.zeros((K + 1, n))), ValueError,
                     r"\bu\b"),
    "u-flat": (lambda p, t, P, n, K: p.vjp(t, np.zeros(n * K + 1)), ValueError, r"\bu\b"),
    "u-nan": (lambda p, t, P, n, K: p.vjp(t, _with(np.zeros((n, K)), (3, 0), np.nan)),
              ValueError, r"\bu\b"),
    "u-inf": (lambda p, t, P, n, K: p.vjp(t, _with(np.zeros((n, K)), (0, K - 1), np.inf)),
              ValueError, r"\bu\b"),
    "u-strings": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n, K)).astype(str)), TypeError,
                  r"\bu\b"),
    "rows-out-of-range": (lambda p, t, P, n, K: p.per_sample_grads(t, [0, n]), ValueError,
                          "rows"),
    "rows-float": (lambda p, t, P, n, K: p.per_sample_grads(t, [0.5]), ValueError, "rows"),
    "mc-zero": (lambda p, t, P, n, K: p.ggn_diag(t, mc_samples=0), ValueError, "mc_samples"),
    "mc-negative": (lambda p, t, P, n, K: p.ggn_diag(t, mc_samples=-2), ValueError,
                    "mc_samples"),
    "mc-float": (lambda p, t, P, n, K: p.ggn_diag(t, mc_samples=2.5), TypeError,
                 "mc_samples"),
    "mc-bool": (lambda p, t, P, n, K: p.ggn_diag(t, mc_samples=True), TypeError,
                "mc_samples"),
    "unflatten-short": (lambda p, t, P, n, K: p.unflatten(t[:-1]), ValueError, "theta"),
    "flatten-too-few-layers": (lambda p, t, P, n, K: p.flatten(p.unflatten(t)[:-1]),
                               ValueError, r"layer"),
    "flatten-wrong-shape": (lambda p, t, P, n, K: p.flatten(
        [a.T for a in p.unflatten(t)]), ValueError, r"shape|layer"),
    "subset-out-of-range": (lambda p, t, P, n, K: p.subset([0, n + 3]), ValueError,
                            r"rows|index|range"),
    "subset-empty": (lambda p, t, P, n, K: p.subset([]), ValueError, r"row"),
    "with_data-X-columns": (lambda p, t, P, n, K: p.with_data(X0[:, :4], YL if K == 3 else
                                                              YM[:, :K]), ValueError,
                            r"sizes|\bX\b|features"),
    "with_data-y-short": (lambda p, t, P, n, K: p.with_data(X0, (YL if K == 3 else
                                                                 YM[:, :K])[:-1]),
                          ValueError, r"\by\b"),
    "with_data-X-columns-names-width": (lambda p, t, P, n, K: p.with_data(
        X0[:, :4], YL if K == 3 else YM[:, :K]), ValueError, r"4 features.*built for 5"),
    "flatten-none": (lambda p, t, P, n, K: p.flatten(None), ValueError, r"layers"),
    "flatten-complex": (lambda p, t, P, n, K: p.flatten(
        [a + 1j for a in p.unflatten(t)]), TypeError, r"layer 0.*real"),
    "seed-negative": (lambda p, t, P, n, K: p.ggn_diag(t, mc_samples=2, seed=-1), ValueError,
                      r"\bseed\b"),
    "seed-string": (lambda p, t, P, n, K: p.init(seed="a"), TypeError, r"\bseed\b"),
    "seed-float": (lambda p, t, P, n, K: p.init(seed=1.5), TypeError, r"\bseed\b"),
}


@pytest.mark.parametrize("problem", ["softmax", "mse-csr", "poisson-K1"])
@pytest.mark.parametrize("key", list(BAD_CALLS))
def test_bad_call_is_refused(key, problem):
    fn, exc, pattern = BAD_CALLS[key]
    p = _problems()[problem]
    t = np.full(p.n_params, 0.1)
    with pytest.raises(exc, match=pattern):
        fn(p, t, p.n_params, p.n_samples, p.n_outputs)


def test_problem_still_works_after_refused_calls():
    p = _problems()["softmax"]
    ref = RefMLP(X0, YL, SIZES, "tanh", "softmax_cross_entropy", 0.1, W0)
    t = random_theta(SIZES, 3)
    for fn, _, _ in BAD_CALLS.values():
        try:
            fn(p, np.full(p.n_params, 0.1), p.n_params, p.n_samples, p.n_outputs)
        except (ValueError, TypeError):
            pass
    assert_close(p.grad(t), ref.grad_cs(t), REF_RTOL, "grad after refused calls")
    v = random_vectors(p.n_params)
    assert_close(p.hvp(t, v), ref.hessian(t) @ v, REF_RTOL, "hvp after refused calls")


def test_hessian_diag_refused_above_a_size_limit():
    """The exact Hessian diagonal of an MLP costs one product per parameter: a model with
    ~2.3 million parameters is refused with a ValueError (before any product runs)."""
    X, y, _ = make_data("mse", 2, 4, 5, seed=1)
    sizes = (5, 1500, 1500, 2)
    p = fc.MLP(X, y, sizes, "tanh", "mse")
    assert p.n_params > 2_000_000
    with pytest.raises(ValueError, match=r"diag|param|large|limit"):
        p.hessian_diag(np.zeros(p.n_params))


def test_float32_overflow_is_named_as_such():
    """A finite value beyond float32's range is not reported as NaN/inf but as an overflow of
    the problem's dtype, with the value and its index."""
    p = fc.MLP(X0.astype(np.float32), YL, SIZES, loss="softmax_cross_entropy")
    t = np.full(p.n_params, 0.1)
    big = _with(t, 3, 1e39)
    for call, name in ((lambda: p.hvp(t, big), "v"), (lambda: p.grad(big), "theta"),
                       (lambda: p.vjp(t, _with(np.zeros((N, 3)), (2, 1), -1e40)), "u")):
        with pytest.raises(ValueError, match=rf"^{name} holds .*e\+(39|40).*float32"):
            call()


def test_legacy_random_state_seeds_mc_diagonal():
    """A legacy RandomState seeds the Monte Carlo GGN diagonal (it once failed inside numpy's
    ``spawn``), reproducibly."""
    p = _problems()["softmax"]
    t = np.full(p.n_params, 0.1)
    a = p.ggn_diag(t, mc_samples=3, seed=np.random.RandomState(4))
    b = p.ggn_diag(t, mc_samples=3, seed=np.random.RandomState(4))
    assert np.array_equal(a, b) and np.all(np.isfinite(a))


def test_reassigned_l2_is_used_by_every_product():
    """``p.l2 = λ`` after calls at the old λ: every method then equals a fresh problem built
    with λ (the kernels' packed arguments once kept the old value)."""
    p = fc.MLP(X0, YL, SIZES, loss="softmax_cross_entropy", l2=0.1, sample_weight=W0)
    t = random_theta(SIZES, 3)
    v = random_vectors(p.n_params)
    p.value_and_grad(t)
    p.hvp(t, v)
    p.l2 = 2.5
    q = fc.MLP(X0, YL, SIZES, loss="softmax_cross_entropy", l2=2.5, sample_weight=W0)
    assert p.value(t) == q.value(t)
    for name in ("grad", "hessian_diag"):
        assert np.array_equal(getattr(p, name)(t), getattr(q, name)(t)), name
    for name in ("hvp", "ggn_vp"):
        assert np.array_equal(getattr(p, name)(t, v), getattr(q, name)(t, v)), name
    with pytest.raises(ValueError, match=r"\bl2\b"):
        p.l2 = -1.0


@pytest.mark.parametrize("kind", ["mlp", "glm"])
def test_rows_of_weight_zero(kind):
    """Per-sample gradients and influence scores of rows whose sample weight is 0 are those of
    the rows in the full computation (they do not depend on the weights); a subset of such
    rows alone has no objective and is refused, saying why."""
    w = W0.copy()
    w[[2, 5]] = 0.0
    if kind == "mlp":
        p = fc.MLP(X0, YL, SIZES, loss="softmax_cross_entropy", l2=0.1, sample_weight=w)
        t = random_theta(SIZES, 3)
    else:
        p = fc.GLM(X0, YL, family="multinomial", l2=0.1, sample_weight=w)
        t = np.random.default_rng(3).standard_normal(p.n_params) * 0.3
    G = p.per_sample_grads(t)
    assert np.array_equal(p.per_sample_grads(t, [2, 5]), G[[2, 5]])
    infl = fc.Influence(p, t, damping=1e-2, curvature="ggn")
    assert_close(infl.self_influence([2, 5, 7]), infl.self_influence()[[2, 5, 7]], 1e-10,
                 "self-influence")
    assert np.all(infl.params_change([2, 5]) == 0.0)  # w_i / W = 0
    test_p = p.with_data(X0[:3], YL[:3])
    S = infl.scores(test_p)
    assert_close(infl.scores(test_p, rows=[2, 5, 9]), S[:, [2, 5, 9]], 1e-10, "scores")
    with pytest.raises(ValueError, match=r"sample_weight 0"):
        p.subset([2, 5])
    with pytest.raises(ValueError, match=r"^test_rows must be indices"):
        infl.scores(test_p, test_rows=[3])


@pytest.mark.parametrize("loss", ["poisson", "mse"])
def test_overflowing_objective_is_inf_and_its_derivatives_raise(loss):
    """relu layers with huge weights: value() is +inf (never NaN), the gradient and products
    raise FloatingPointError; at ordinary parameters a huge v is what overflows."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3))
    Y = rng.poisson(1.0, (20, 1)).astype(float)
    p = fc.MLP(X, Y, sizes=(3, 4, 1), activation="relu", loss=loss)
    big = p.init() * 1e120
    assert p.value(big) == np.inf
    v = np.ones(p.n_params)
    for call in (lambda: p.grad(big), lambda: p.hvp(big, v), lambda: p.ggn_vp(big, v)):
        with pytest.raises(FloatingPointError, match="overflows"):
            call()
    theta = p.init()
    assert np.isfinite(p.hvp(theta, v)).all()
    with pytest.raises(FloatingPointError, match="this product overflows"):
        p.ggn_vp(theta * 1e3, np.full(p.n_params, 1.5e308))
    assert np.isfinite(p.grad(theta)).all()  # the buffers are usable again


def test_mlp_diagonals_and_per_sample_grads_that_overflow_raise():
    """The MLP's own passes over row blocks (Fisher and Monte Carlo diagonals, per-sample
    gradients, the Monte Carlo Fisher) raise FloatingPointError where they overflow."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 3))
    Y = rng.poisson(1.0, (20, 1)).astype(float)
    p = fc.MLP(X, Y, sizes=(3, 4, 1), activation="relu", loss="poisson")
    big = p.init() * 1e3
    for call in (lambda: p.fisher_diag(big), lambda: p.ggn_diag(big, mc_samples=2, seed=0),
                 lambda: p.per_sample_grads(big),
                 lambda: fc.FisherOperator(p, big, kind="mc", seed=0).matvec(np.ones(p.n_params))):
        with pytest.raises(FloatingPointError, match="overflows"):
            call()


def test_mlp_zero_weight_row_whose_loss_overflows_adds_nothing():
    rng = np.random.default_rng(0)
    n = 50
    x = rng.uniform(0.0, 1.0, n)
    y = rng.poisson(np.exp(x)).astype(float)
    kw = dict(sizes=(1, 1), loss="poisson")
    p = fc.MLP(np.r_[x, 1000.0][:, None], np.r_[y, 0.0], sample_weight=np.r_[np.ones(n), 0.0],
               **kw)
    q = fc.MLP(x[:, None], y, **kw)
    th, v = np.array([1.0, 0.0]), np.array([0.3, -1.0])
    np.testing.assert_allclose(p.value(th), q.value(th), rtol=1e-13)
    np.testing.assert_allclose(p.grad(th), q.grad(th), rtol=1e-13)
    for name in ("hvp", "ggn_vp"):
        np.testing.assert_allclose(getattr(p, name)(th, v), getattr(q, name)(th, v),
                                   rtol=1e-13, err_msg=name)
    np.testing.assert_allclose(p.ggn_diag(th), q.ggn_diag(th), rtol=1e-13)
    np.testing.assert_allclose(p.fisher_diag(th), q.fisher_diag(th), rtol=1e-13)
    np.testing.assert_allclose(p.fisher_vp(th, v), q.fisher_vp(th, v), rtol=1e-13)
    np.testing.assert_allclose(fc.KFACOperator(p, th, fisher="empirical").matvec(v),
                               fc.KFACOperator(q, th, fisher="empirical").matvec(v), rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_zero_weight_row_whose_squares_overflow_adds_nothing_to_the_diagonals(sparse,
                                                                                  dtype):
    """The diagonals square the layer inputs in the data dtype: a weight-0 row with x = 1e20
    (float32) or 1e160 (float64) used to put 0 · inf = NaN into the GGN and Fisher diagonals
    (refused as an overflow); it now adds nothing, as the row left out."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 4)).astype(dtype)
    y = rng.standard_normal(30).astype(dtype)
    X[3, 1] = 1e20 if dtype == np.float32 else 1e160
    w = np.ones(30)
    w[3] = 0.0
    keep = np.arange(30) != 3
    as_x = sp.csr_matrix if sparse else np.asarray
    kw = dict(sizes=(4, 5, 3, 1), activation="relu", loss="mse")
    p = fc.MLP(as_x(X), y, sample_weight=w, **kw)
    q = fc.MLP(as_x(X[keep]), y[keep], **kw)
    th = p.init(seed=0)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    for name in ("ggn_diag", "fisher_diag"):
        a, b = getattr(p, name)(th), getattr(q, name)(th)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=name)
    mc = p.ggn_diag(th, mc_samples=2, seed=0)
    assert np.isfinite(mc).all()


def test_mlp_penalty_overflows_only_beyond_float64():
    """(λ/2)‖W‖² is scaled by max|W| (compiled without reassociation, which would form
    max|W|² first): at W = 1e155 and λ = 1e-3 it is 5e306, not inf."""
    X = np.array([[1.0], [-1.0]])
    y = np.array([1.0, 0.0])
    p = fc.MLP(X, y, sizes=(1, 1), loss="sigmoid_cross_entropy", l2=1e-3)
    want = (0.5e-3 * 1e155) * 1e155 + np.log1p(np.exp(-1e155))  # both rows' losses are 0
    np.testing.assert_allclose(p.value(np.array([1e155, 0.0])), want, rtol=1e-14)


@pytest.mark.parametrize("w", [1e-160, -3e-170])
def test_mlp_penalty_keeps_weights_whose_squares_underflow(w):
    """‖W‖² is one vectorized sum, and summed again scaled by max|W| where it may have lost
    squares to underflow: with W = 1e-160, W² is subnormal (three digits), yet with λ = 1e20
    the penalty (λ/2) W² = 5e-301 is a normal float64, exact to the last digits."""
    X = np.array([[1.0], [-1.0]])
    y = np.zeros(2)
    p = fc.MLP(X, y, sizes=(1, 1), loss="mse", l2=1e20)
    want = (0.5e20 * abs(w)) * abs(w)  # the data loss, ~W², is 1e-20 of it
    np.testing.assert_allclose(p.value(np.array([w, 0.0])), want, rtol=1e-14)
    np.testing.assert_allclose(p.grad(np.array([w, 0.0]))[0], 1e20 * w, rtol=1e-14)


def test_mlp_l2_that_overflows_is_named_as_the_cause():
    """λ = 1e300: the gradient's penalty and the products' λ v overflow while the network's
    own terms are finite. The error names l2 (a review's finding: it advised to add an L2
    penalty); the biases, which are not penalized, do not count."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    y = (rng.random(30) < 0.5).astype(float)
    p = fc.MLP(X, y, sizes=(3, 4, 1), loss="sigmoid_cross_entropy", l2=1e300)
    theta = p.init(seed=0) * 1e10
    with pytest.raises(FloatingPointError, match=r"penalty alone overflows.*use a smaller l2"):
        p.grad(theta)
    v = np.full(p.n_params, 1e10)
    for name in ("hvp", "ggn_vp"):
        with pytest.raises(FloatingPointError, match=r"l2 \* v alone overflows.*smaller l2"):
            getattr(p, name)(p.init(seed=0), v)
    q = fc.MLP(X, y, sizes=(3, 4, 1), loss="sigmoid_cross_entropy", l2=1e-3)
    with pytest.raises(FloatingPointError, match="Start from smaller parameters") as e:
        q.grad(p.init(seed=0) * 1e307)
    assert "use a smaller l2" not in str(e.value) and "add an L2" not in str(e.value)
