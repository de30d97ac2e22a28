"""Inputs: every accepted kind of X (and y, weights) gives the same numbers; every bad input
is refused with a ValueError/TypeError naming the argument, before any compute kernel runs.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from cases import assert_close
from fastcurv.kernels import glm_csr, glm_dense
from reference import RefGLM

import fastcurv as fc

SAME_RTOL = 1e-12  # same problem, possibly another summation order
REF_RTOL = 1e-11


@pytest.fixture
def no_kernels(monkeypatch):
    """Replace every compiled GLM kernel by a tripwire: a test using this fixture proves that
    the error is raised by validation, before any kernel touches the data."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a GLM kernel ran on invalid input")

    for mod in (glm_dense, glm_csr):
        for name in dir(mod):
            if hasattr(getattr(mod, name), "py_func"):  # a Numba dispatcher
                monkeypatch.setattr(mod, name, tripwire)


# ====================================================================== accepted input kinds
def _base(n=60, d=5):
    rng = np.random.default_rng(123)
    X = rng.normal(0.0, 0.6, (n, d))
    X[rng.random((n, d)) < 0.4] = 0.0
    y_log = (rng.random(n) < 0.5).astype(np.float64)
    y_mult = rng.integers(0, 3, n)
    w = rng.uniform(0.5, 1.5, n)
    return X, y_log, y_mult, w


FAMILIES = {"logistic": 1, "multinomial": 3}


def _results(p, seed=0):
    rng = np.random.default_rng(seed)
    P = p.n_params
    theta = rng.normal(0, 0.4, P)
    v = rng.standard_normal(P)
    V = rng.standard_normal((P, 2))
    u = rng.standard_normal((p.n_samples, p.n_outputs))
    return {
        "value": np.array([p.value(theta)]),
        "grad": p.grad(theta),
        "hvp": p.hvp(theta, v),
        "block_hvp": p.hvp(theta, V),
        "fisher_vp": p.fisher_vp(theta, v),
        "hessian_diag": p.hessian_diag(theta),
        "ggn_diag_mc": p.ggn_diag(theta, mc_samples=2, seed=1),
        "hessian": p.hessian(theta),
        "per_sample_grads": p.per_sample_grads(theta, [0, 7, 3]),
        "jvp": p.jvp(theta, v),
        "vjp": p.vjp(theta, u),
    }, theta, v


def _check_kind(X_kind, X_plain, family):
    _, y_log, y_mult, w = _base()
    y = y_log if family == "logistic" else y_mult
    p = fc.GLM(X_kind, y, family=family, l2=0.2, sample_weight=w)
    q = fc.GLM(X_plain, y, family=family, l2=0.2, sample_weight=w)
    assert p.dtype == np.float64 and p.n_params == q.n_params
    got, theta, v = _results(p)
    want, _, _ = _results(q)
    for key in got:
        assert_close(got[key], want[key], SAME_RTOL, f"{family}: {key} vs plain C-order")
    ref = RefGLM(np.asarray(X_plain), y, family, FAMILIES[family], 0.2, True, w)
    np.testing.assert_allclose(got["value"][0], ref.value(theta), rtol=1e-12)
    assert_close(got["grad"], ref.grad(theta), REF_RTOL, f"{family}: grad vs reference")
    assert_close(got["hvp"], ref.hessian(theta) @ v, REF_RTOL, f"{family}: hvp vs reference")
    return p


def _dense_kinds(tmp_path):
    X, *_ = _base()
    ro = X.copy()
    ro.setflags(write=False)
    mm = np.memmap(tmp_path / "X.dat", dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    mm = np.memmap(tmp_path / "X.dat", dtype=np.float64, mode="r", shape=X.shape)
    big = np.full((2 * X.shape[0], 2 * X.shape[1]), np.nan)
    big[::2, 1::2] = X
    return {
        "F-order": np.asfortranarray(X),
        "read-only": ro,
        "memmap": mm,
        "non-contiguous": big[::2, 1::2],
        "list": X.tolist(),
    }


@pytest.mark.parametrize("kind", ["F-order", "read-only", "memmap", "non-contiguous", "list"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_dense_input_kinds(tmp_path, kind, family):
    X, *_ = _base()
    Xk = _dense_kinds(tmp_path)[kind]
    if kind == "F-order":
        assert Xk.flags.f_contiguous and not Xk.flags.c_contiguous
    if kind == "non-contiguous":
        assert not Xk.flags.c_contiguous and not Xk.flags.f_contiguous
    _check_kind(Xk, X, family)
    if kind in ("read-only", "memmap"):
        assert not np.asarray(Xk).flags.writeable  # nothing was copied into a writable array


def test_integer_X_is_converted_to_float64():
    X, y, _, w = _base()
    Xi = np.round(4 * X).astype(np.int32)
    p = _check_kind(Xi, Xi.astype(np.float64), "logistic")
    assert p.dtype == np.float64


def _csr_array64(csr64):
    A = sp.csr_array(csr64)
    A.indices = csr64.indices
    A.indptr = csr64.indptr
    assert A.indices.dtype == np.int64
    return A


def _sparse_kinds():
    X, *_ = _base()
    csr = sp.csr_matrix(X)
    csr64 = csr.copy()  # scipy downcasts index arrays on construction; set them afterwards
    csr64.indices = csr.indices.astype(np.int64)
    csr64.indptr = csr.indptr.astype(np.int64)
    assert csr64.indices.dtype == np.int64 and csr64.indptr.dtype == np.int64
    coo = sp.coo_matrix(X)
    perm = np.random.default_rng(0).permutation(coo.nnz)  # unsorted COO triplets
    coo = sp.coo_matrix((coo.data[perm], (coo.row[perm], coo.col[perm])), shape=X.shape)
    return {
        "csr": csr,
        "csc": sp.csc_matrix(X),
        "coo-unsorted": coo,
        "csr_array": sp.csr_array(X),
        "csr-int64-indices": csr64,
        "csr_array-int64-indices": _csr_array64(csr64),
        "lil": sp.lil_matrix(X),
    }


@pytest.mark.parametrize("kind", ["csr", "csc", "coo-unsorted", "csr_array",
                                  "csr-int64-indices", "csr_array-int64-indices", "lil"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sparse_input_kinds(kind, family):
    X, *_ = _base()
    p = _check_kind(_sparse_kinds()[kind], X, family)
    assert p.is_sparse
    assert sp.issparse(p.per_sample_grads(np.zeros(p.n_params), [0, 1]))


def test_coo_duplicates_are_summed():
    """COO semantics: duplicated triplets add up (the conversion to CSR must merge them)."""
    X, y, _, _ = _base()
    coo = sp.coo_matrix(X)
    half = 0.5 * coo.data
    dup = sp.coo_matrix((np.concatenate([half, half]),
                         (np.concatenate([coo.row, coo.row]), np.concatenate([coo.col, coo.col]))),
                        shape=X.shape)
    p, q = fc.GLM(dup, y), fc.GLM(X, y)
    theta = np.linspace(-1, 1, p.n_params)
    assert_close(p.grad(theta), q.grad(theta), SAME_RTOL, "COO with duplicates")


def test_integer_sparse_data_is_converted():
    X, y, _, _ = _base()
    Xi = np.round(4 * X)
    p = fc.GLM(sp.csr_matrix(Xi.astype(np.int64)), y)
    assert p.dtype == np.float64
    ref = RefGLM(Xi, y, "logistic", 1)
    theta = np.linspace(-0.3, 0.3, p.n_params)
    assert_close(p.grad(theta), ref.grad(theta), REF_RTOL, "int CSR grad")


@pytest.mark.parametrize("kind", ["bool", "int", "list", "column"])
def test_target_and_weight_kinds(kind):
    X, y, _, w = _base()
    ys = {"bool": y.astype(bool), "int": y.astype(np.int32), "list": y.tolist(),
          "column": y[:, None]}[kind]
    p = fc.GLM(X, ys, sample_weight=w.tolist())
    ref = RefGLM(X, y, "logistic", 1, 0.0, True, w)
    theta = np.linspace(-0.5, 0.5, p.n_params)
    assert p.n_outputs == 1
    assert_close(p.grad(theta), ref.grad(theta), REF_RTOL, f"y as {kind}")


def test_multinomial_label_kinds():
    X, _, y, _ = _base()
    ref = RefGLM(X, y, "multinomial", 3)
    theta = np.linspace(-0.5, 0.5, 18)
    for ys in (y.astype(np.int32), y.astype(np.float64), y.astype(np.uint8), y.tolist()):
        p = fc.GLM(X, ys, family="multinomial")
        assert p.n_outputs == 3
        assert_close(p.grad(theta), ref.grad(theta), REF_RTOL, f"labels {type(ys)}")


def test_theta_and_vector_kinds():
    """θ and v as lists, int arrays or non-contiguous views give the same numbers."""
    X, y, _, _ = _base()
    p = fc.GLM(X, y)
    ref = RefGLM(X, y, "logistic", 1)
    theta = np.array([1, -1, 0, 2, 1, 0], dtype=np.int64)
    v = np.arange(12.0)[::2]
    H = ref.hessian(theta)
    assert_close(p.hvp(theta.tolist(), v), H @ v, REF_RTOL, "θ as list")
    assert_close(p.hvp(theta, v.tolist()), H @ v, REF_RTOL, "v as list")
    V = np.asfortranarray(np.stack([v, 2 * v], axis=1))
    assert_close(p.hvp(theta, V), H @ V, REF_RTOL, "F-order block")


# ====================================================================== bad input
def _Xy(n=20, d=3):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 0.5).astype(np.float64)
    return X, y


def _with(a, idx, value):
    a = np.array(a, dtype=np.float64)
    a[idx] = value
    return a


def _broken_csr(how):
    """A CSR matrix whose structure was mutated after construction (scipy would refuse it at
    construction time with check_format, but nothing stops in-place edits)."""
    X, _ = _Xy()
    X[::4, 1] = 0.0  # every row keeps at least two stored entries
    A = sp.csr_matrix(X)
    assert A.has_sorted_indices and np.all(np.diff(A.indptr) >= 2)
    if how == "index-too-large":
        A.indices[3] = X.shape[1] + 2
    elif how == "index-negative":
        A.indices[3] = -1
    elif how == "unsorted":
        A.indices[[0, 1]] = A.indices[[1, 0]]
    elif how == "duplicated":
        A.indices[1] = A.indices[0]
    elif how == "indptr-decreasing":
        A.indptr[5] = A.indptr[6] + 1
    elif how == "indptr-decreasing-unsigned":
        # np.diff of an unsigned indptr wraps around: a decrease looked like a large step
        A.indptr = A.indptr.astype(np.uint64)
        A.indptr[5] = A.indptr[6] + 1
    elif how == "indptr-short":
        A.indptr = A.indptr[:-1].copy()
    elif how == "indptr-overrun":
        A.indptr[-1] += 5
    elif how == "indptr-start":
        A.indptr[0] = 1
    elif how == "nan-data":
        A.data[4] = np.nan
    elif how == "inf-data":
        A.data[-1] = -np.inf
    return A


BROKEN_CSR = ["index-too-large", "index-negative", "unsorted", "duplicated",
              "indptr-decreasing", "indptr-decreasing-unsigned", "indptr-short",
              "indptr-overrun", "indptr-start",
              "nan-data", "inf-data"]


@pytest.mark.parametrize("how", BROKEN_CSR)
def test_broken_csr_is_refused(how, no_kernels):
    _, y = _Xy()
    with pytest.raises(ValueError, match=r"\bX\b"):
        fc.GLM(_broken_csr(how), y)


def _broken_other(how):
    """CSC/COO matrices with indices outside the shape: scipy's own conversion to CSR trusts
    them (it crashed the interpreter), so they must be refused before it runs."""
    X, _ = _Xy()
    if how.startswith("csc"):
        A = sp.csc_matrix(X)
        if how == "csc-index":
            A.indices[5] = 10**8
        else:
            A.indptr[-1] += 50
        return A
    A = sp.coo_matrix(X)
    if how == "coo-row":
        A.row[5] = X.shape[0] + 1000
    else:
        A.col[2] = -7
    return A


X0, Y0 = _Xy()
YM = np.arange(20) % 3
BAD_CONSTRUCTION = {
    # id: (kwargs for GLM, exception, regex the message must match)
    "y-short": (dict(X=X0, y=Y0[:-1]), ValueError, r"\by\b"),
    "y-3d": (dict(X=X0, y=Y0.reshape(20, 1, 1)), ValueError, r"\by\b"),
    "y-strings": (dict(X=X0, y=Y0.astype(str)), TypeError, r"\by\b"),
    "X-1d": (dict(X=X0[:, 0], y=Y0), ValueError, r"\bX\b"),
    "X-empty": (dict(X=X0[:0], y=Y0[:0]), ValueError, r"\bX\b"),
    "X-no-columns": (dict(X=X0[:, :0], y=Y0), ValueError, r"\bX\b"),
    "X-strings": (dict(X=X0.astype(str), y=Y0), TypeError, r"\bX\b"),
    "X-complex": (dict(X=X0 + 1j, y=Y0), TypeError, r"\bX\b"),
    "X-nan": (dict(X=_with(X0, (4, 1), np.nan), y=Y0), ValueError, r"\bX\b"),
    "X-inf": (dict(X=_with(X0, (19, 2), np.inf), y=Y0), ValueError, r"\bX\b"),
    "X-nan-F-order": (dict(X=np.asfortranarray(_with(X0, (0, 0), np.nan)), y=Y0), ValueError,
                      r"\bX\b"),
    "X-nan-float32": (dict(X=_with(X0, (7, 0), np.nan).astype(np.float32), y=Y0), ValueError,
                      r"\bX\b"),
    "X-inf-non-contiguous": (dict(X=np.repeat(_with(X0, (11, 1), -np.inf), 2, axis=1)[:, ::2],
                                  y=Y0), ValueError, r"\bX\b"),
    "csr-float32-nan": (dict(X=sp.csr_matrix(_with(X0, (2, 2), np.nan).astype(np.float32)),
                             y=Y0), ValueError, r"\bX\b"),
    "y-nan": (dict(X=X0, y=_with(Y0, 3, np.nan)), ValueError, r"\by\b"),
    "y-inf": (dict(X=X0, y=_with(Y0, 3, np.inf), family="gaussian"), ValueError, r"\by\b"),
    "weights-short": (dict(X=X0, y=Y0, sample_weight=np.ones(19)), ValueError,
                      "sample_weight"),
    "weights-2d": (dict(X=X0, y=Y0, sample_weight=np.ones((20, 1))), ValueError,
                   "sample_weight"),
    "weights-nan": (dict(X=X0, y=Y0, sample_weight=_with(np.ones(20), 2, np.nan)), ValueError,
                    "sample_weight"),
    "weights-inf": (dict(X=X0, y=Y0, sample_weight=_with(np.ones(20), 2, np.inf)), ValueError,
                    "sample_weight"),
    "weights-negative": (dict(X=X0, y=Y0, sample_weight=_with(np.ones(20), 5, -0.1)),
                         ValueError, "sample_weight"),
    "weights-all-zero": (dict(X=X0, y=Y0, sample_weight=np.zeros(20)), ValueError,
                         "sample_weight"),
    "weights-strings": (dict(X=X0, y=Y0, sample_weight=np.ones(20).astype(str)), TypeError,
                        "sample_weight"),
    "logistic-label-2": (dict(X=X0, y=_with(Y0, 0, 2.0)), ValueError, r"logistic|\by\b"),
    "logistic-label-neg": (dict(X=X0, y=_with(Y0, 0, -0.5)), ValueError, r"logistic|\by\b"),
    "logistic-2out-1.5": (dict(X=X0, y=np.stack([Y0, _with(Y0, 7, 1.5)], 1)), ValueError,
                          r"logistic|\by\b"),
    "multinomial-label-ge-K": (dict(X=X0, y=_with(YM, 0, 3), family="multinomial",
                                    n_classes=3), ValueError, r"n_classes|label"),
    "multinomial-label-neg": (dict(X=X0, y=_with(YM, 0, -1), family="multinomial"),
                              ValueError, r"label"),
    "multinomial-label-neg-K": (dict(X=X0, y=_with(YM, 0, -1), family="multinomial",
                                     n_classes=3), ValueError, r"label"),
    "multinomial-label-frac": (dict(X=X0, y=_with(YM, 0, 1.5), family="multinomial"),
                               ValueError, r"label"),
    "multinomial-2d-y": (dict(X=X0, y=np.eye(3)[YM], family="multinomial"), ValueError,
                         r"\by\b"),
    "multinomial-K-1": (dict(X=X0, y=0 * YM, family="multinomial", n_classes=1), ValueError,
                        "n_classes"),
    "multinomial-K-str": (dict(X=X0, y=YM, family="multinomial", n_classes="3"), TypeError,
                          "n_classes"),
    "n_classes-not-multinomial": (dict(X=X0, y=Y0, n_classes=2), ValueError, "n_classes"),
    "poisson-negative": (dict(X=X0, y=_with(np.ones(20), 9, -1.0), family="poisson"),
                         ValueError, r"poisson|\by\b"),
    "poisson-2out-negative": (dict(X=X0, y=_with(np.ones((20, 2)), (9, 1), -1.0),
                                   family="poisson"), ValueError, r"poisson|\by\b"),
    "unknown-family": (dict(X=X0, y=Y0, family="binomial"), ValueError, "family"),
    "family-none": (dict(X=X0, y=Y0, family=None), ValueError, "family"),
    "l2-negative": (dict(X=X0, y=Y0, l2=-1e-3), ValueError, r"\bl2\b"),
    "l2-nan": (dict(X=X0, y=Y0, l2=np.nan), ValueError, r"\bl2\b"),
    "l2-string": (dict(X=X0, y=Y0, l2="0.1"), TypeError, r"\bl2\b"),
    "l2-array": (dict(X=X0, y=Y0, l2=np.ones(2)), TypeError, r"\bl2\b"),
    "fit_intercept-string": (dict(X=X0, y=Y0, fit_intercept="yes"), TypeError,
                             "fit_intercept"),
    "csr-y-short": (dict(X=sp.csr_matrix(X0), y=Y0[:-2]), ValueError, r"\by\b"),
    "multinomial-id-labels": (dict(X=X0, y=_with(YM, 0, 1e9), family="multinomial"),
                              ValueError, r"only 4 distinct.*np.unique"),
    "multinomial-label-beyond-2^31": (dict(X=X0, y=_with(YM, 0, 1e20), family="multinomial",
                                           n_classes=3), ValueError, r"too large.*np.unique"),
    "csc-index-out-of-range": (dict(X=_broken_other("csc-index"), y=Y0), ValueError,
                               r"broken CSC"),
    "csc-indptr-overrun": (dict(X=_broken_other("csc-indptr"), y=Y0), ValueError,
                           r"broken CSC"),
    "coo-row-out-of-range": (dict(X=_broken_other("coo-row"), y=Y0), ValueError,
                             r"broken COO"),
    "coo-col-negative": (dict(X=_broken_other("coo-col"), y=Y0), ValueError, r"broken COO"),
    # np.asarray would drop the mask, or make a 0-d object array of a sparse matrix
    "X-masked": (dict(X=np.ma.masked_array(X0, mask=X0 > 1), y=Y0), TypeError,
                 r"X is a masked array.*filled"),
    "y-masked": (dict(X=X0, y=np.ma.masked_array(Y0, mask=Y0 > 0)), TypeError,
                 r"y is a masked array"),
    "y-sparse": (dict(X=X0, y=sp.csr_matrix(Y0[:, None])), TypeError,
                 r"y must be a dense.*toarray"),
    "weights-masked": (dict(X=X0, y=Y0, sample_weight=np.ma.masked_array(np.ones(20))),
                       TypeError, r"sample_weight is a masked array"),
    "weights-sparse": (dict(X=X0, y=Y0, sample_weight=sp.csr_matrix(np.ones((20, 1)))),
                       TypeError, r"sample_weight must be a dense"),
}


@pytest.mark.parametrize("key", list(BAD_CONSTRUCTION))
def test_bad_construction_is_refused(key, no_kernels):
    kwargs, exc, pattern = BAD_CONSTRUCTION[key]
    kwargs = dict(kwargs)
    X, y = kwargs.pop("X"), kwargs.pop("y")
    with pytest.raises(exc, match=pattern):
        fc.GLM(X, y, **kwargs)


def _problems():
    X, y = _Xy()
    return {
        "dense": fc.GLM(X, y, l2=0.1),
        "csr": fc.GLM(sp.csr_matrix(X), y, l2=0.1),
        "multinomial": fc.GLM(X, YM, family="multinomial"),
    }


BAD_CALLS = {
    # id: (function of (p, θ, P, n, K), exception, regex)
    "theta-short": (lambda p, t, P, n, K: p.grad(t[:-1]), ValueError, "theta"),
    "theta-long": (lambda p, t, P, n, K: p.value(np.zeros(P + 1)), ValueError, "theta"),
    "theta-2d": (lambda p, t, P, n, K: p.grad(t[:, None]), ValueError, "theta"),
    "theta-nan": (lambda p, t, P, n, K: p.value_and_grad(_with(t, 0, np.nan)), ValueError,
                  "theta"),
    "theta-inf": (lambda p, t, P, n, K: p.hvp(_with(t, -1, np.inf), t), ValueError, "theta"),
    "theta-strings": (lambda p, t, P, n, K: p.grad(t.astype(str)), TypeError, "theta"),
    "hessian-theta-nan": (lambda p, t, P, n, K: p.hessian(_with(t, 1, np.nan)), ValueError,
                          "theta"),
    "diag-theta-short": (lambda p, t, P, n, K: p.hessian_diag(t[1:]), ValueError, "theta"),
    "psg-theta-nan": (lambda p, t, P, n, K: p.per_sample_grads(_with(t, 1, np.nan)),
                      ValueError, "theta"),
    "jvp-theta-short": (lambda p, t, P, n, K: p.jvp(t[1:], t), ValueError, "theta"),
    "v-short": (lambda p, t, P, n, K: p.hvp(t, t[:-1]), ValueError, r"\bv\b"),
    "v-3d": (lambda p, t, P, n, K: p.hvp(t, np.zeros((P, 2, 1))), ValueError, r"\bv\b"),
    "v-block-rows": (lambda p, t, P, n, K: p.hvp(t, np.zeros((P - 1, 2))), ValueError,
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
    "u-rows": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n - 1, K))), ValueError, r"\bu\b"),
    "u-cols": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n, K + 1))), ValueError, r"\bu\b"),
    "u-nan": (lambda p, t, P, n, K: p.vjp(t, _with(np.zeros((n, K)), (3, 0), np.nan)),
              ValueError, r"\bu\b"),
    "u-strings": (lambda p, t, P, n, K: p.vjp(t, np.zeros((n, K)).astype(str)), TypeError,
                  r"\bu\b"),
    "rows-out-of-range": (lambda p, t, P, n, K: p.per_sample_grads(t, [0, n]), ValueError,
                          "rows"),
    # 2**64 - 1 would become -1 (the last row) in a cast to int64
    "rows-uint64-huge": (lambda p, t, P, n, K: p.per_sample_grads(
        t, np.array([0, 2**64 - 1], np.uint64)), ValueError, "rows"),
    "subset-uint64-huge": (lambda p, t, P, n, K: p.subset(np.array([2**64 - 1], np.uint64)),
                           ValueError, "rows"),
    "rows-2d": (lambda p, t, P, n, K: p.per_sample_grads(t, np.zeros((2, 2), int)),
                ValueError, "rows"),
    "rows-float": (lambda p, t, P, n, K: p.per_sample_grads(t, [0.5]), ValueError, "rows"),
    "mask-wrong-length": (lambda p, t, P, n, K: p.subset(np.ones(n - 1, bool)), ValueError,
                          "mask"),
    "subset-empty": (lambda p, t, P, n, K: p.subset([]), ValueError, "row"),
    "unflatten-short": (lambda p, t, P, n, K: p.unflatten(t[:-1]), ValueError, "theta"),
    "flatten-shape": (lambda p, t, P, n, K: p.flatten([np.zeros((P + 1, 1))]), ValueError,
                      "shape"),
    "with_data-y-short": (lambda p, t, P, n, K: p.with_data(X0, YM[:-1]), ValueError,
                          r"\by\b"),
    "theta-masked": (lambda p, t, P, n, K: p.grad(np.ma.masked_array(t, mask=t > 0)),
                     TypeError, "theta is a masked array"),
    "v-sparse": (lambda p, t, P, n, K: p.hvp(t, sp.csr_matrix(t[:, None])), TypeError,
                 r"v must be a dense.*toarray"),
    "v-masked": (lambda p, t, P, n, K: p.hvp(t, np.ma.masked_array(t)), TypeError,
                 "v is a masked array"),
}


@pytest.mark.parametrize("problem", ["dense", "csr", "multinomial"])
@pytest.mark.parametrize("key", list(BAD_CALLS))
def test_bad_call_is_refused(key, problem, no_kernels):
    fn, exc, pattern = BAD_CALLS[key]
    p = _problems()[problem]
    t = np.full(p.n_params, 0.1)
    with pytest.raises(exc, match=pattern):
        fn(p, t, p.n_params, p.n_samples, p.n_outputs)


@pytest.mark.parametrize("mc, err", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                     (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_bad_mc_samples_is_refused(mc, err):
    """Not an integer: TypeError (2.0 too: a count is never truncated); below 1: ValueError.
    (mc_samples is validated after the data pass at θ, so no kernel tripwire here.)"""
    p = fc.GLM(X0, Y0)
    with pytest.raises(err, match="mc_samples"):
        p.ggn_diag(np.zeros(p.n_params), mc_samples=mc)


def test_with_data_multinomial_label_outside_kept_classes():
    p = fc.GLM(X0, YM, family="multinomial")  # K = 3
    with pytest.raises(ValueError, match=r"n_classes|label"):
        p.with_data(X0, _with(YM, 4, 3))


def test_problem_still_works_after_refused_calls():
    """Refused calls leave the problem (and the process) in a usable state."""
    p = fc.GLM(X0, Y0, l2=0.1)
    ref = RefGLM(X0, Y0, "logistic", 1, 0.1)
    t = np.full(p.n_params, 0.1)
    for fn, _, _ in BAD_CALLS.values():
        try:
            fn(p, t, p.n_params, p.n_samples, p.n_outputs)
        except (ValueError, TypeError):
            pass
    assert_close(p.grad(t), ref.grad(t), REF_RTOL, "grad after refused calls")


def test_caller_edits_of_y_and_weights_do_not_reach_the_model():
    """``y`` and the weights are copied: changing the caller's arrays afterwards changes
    nothing (labels edited to 1e6 once crashed the multinomial kernel), and the problem's own
    arrays are exposed read-only."""
    X, _ = _Xy()
    y = (np.arange(20) % 3).astype(np.float64)
    w = np.linspace(0.5, 1.5, 20)
    p = fc.GLM(X, y, family="multinomial", sample_weight=w)
    t = np.random.default_rng(0).standard_normal(p.n_params)
    before = p.value_and_grad(t)
    y[:] = 1e6
    w[:] = 0.0
    after = fc.GLM(X, np.arange(20) % 3, family="multinomial",
                   sample_weight=np.linspace(0.5, 1.5, 20)).value_and_grad(t)
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert p.value(t + 1e-3) == fc.GLM(X, np.arange(20) % 3, family="multinomial",
                                       sample_weight=np.linspace(0.5, 1.5, 20)).value(t + 1e-3)
    for a in (p.y, p.sample_weight):
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 5.0


def test_byte_swapped_float32_stays_float32():
    X, y = _Xy()
    p = fc.GLM(X.astype(">f4"), y)
    assert p.dtype == np.float32
    q = fc.GLM(X.astype(np.float32), y)
    t = np.full(p.n_params, 0.1, np.float32)
    assert np.array_equal(p.grad(t), q.grad(t))


def test_float32_operator_with_damping_keeps_its_dtype():
    X, y = _Xy()
    p = fc.GLM(X.astype(np.float32), y)
    H = fc.HessianOperator(p, np.zeros(p.n_params, np.float32), damping=0.1)
    assert H.matvec(np.ones(p.n_params)).dtype == np.float32
    assert H.matmat(np.ones((p.n_params, 2))).dtype == np.float32


@pytest.mark.parametrize("parts,exc,pattern", [
    (None, ValueError, "one layer"), (3.0, ValueError, "one layer"),
    ("complex", TypeError, "real"), ("nan", ValueError, "non-finite"),
])
def test_flatten_checks_its_input(parts, exc, pattern):
    X, y = _Xy()
    p = fc.GLM(X, y)
    if parts == "complex":
        parts = [np.ones(p.n_params) + 1j]
    elif parts == "nan":
        parts = [np.full(p.n_params, np.nan)]
    with pytest.raises(exc, match=pattern):
        p.flatten(parts)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_flatten_returns_a_copy(sparse):
    """``p.flatten(p.unflatten(theta))`` was a view of ``theta`` (writing into it changed
    ``theta``), while an MLP's ``flatten`` returns a new array."""
    import scipy.sparse as sps

    X, y = _Xy()
    p = fc.GLM(sps.csr_matrix(X) if sparse else X, y)
    theta = np.arange(p.n_params, dtype=np.float64)
    layer = p.unflatten(theta)[0]
    flat = p.flatten([layer])
    np.testing.assert_array_equal(flat, theta)
    flat[0] = -1.0
    assert theta[0] == 0.0 and layer.ravel()[0] == 0.0


def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path):
    """One column index of 2^31 in a 3-row CSR matrix (as one bad line of an svmlight file
    gives) asks for a 2-billion-parameter model: a MemoryError that names the sizes and the
    likely cause, raised before any buffer of that size exists (the kernel used to kill the
    process), in the library and in the command."""
    X = sp.csr_matrix((np.ones(3), np.array([0, 5, 2 ** 31]), np.arange(4)),
                      shape=(3, 2 ** 31 + 1))
    with pytest.raises(MemoryError, match=r"2,147,483,650 parameters.*3 stored values"):
        fc.GLM(X, np.array([0.0, 1.0, 0.0]))
    from fastcurv.cli import main
    path = tmp_path / "wide.svm"
    path.write_text("".join(f"{i % 2} 1:{i} 2:1\n" for i in range(40)) + "1 2147483648:1\n")
    assert main(["newton", "--data", str(path), "--quiet"]) == 2


class _FlippingL2GLM(fc.GLM):
    """A GLM whose ``l2`` changes at every read, as if another thread reassigned it between
    any two reads of one call."""

    values = (1e-3, 3e-2)

    @property
    def l2(self):
        self._reads = getattr(self, "_reads", -1) + 1
        return self.values[self._reads % 2]

    @l2.setter
    def l2(self, value):
        pass


@pytest.mark.parametrize("family", ["logistic", "multinomial"])
def test_a_call_reads_l2_once(family):
    """``value_and_grad`` read ``l2`` for the penalty and again for its gradient: a thread
    reassigning it meanwhile gave the value of one λ with the gradient of the other (579 of
    20,000 calls in a review's two-thread run). Every method now reads it once."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = (rng.random(120) < 0.5).astype(float) if family == "logistic" else \
        rng.integers(0, 3, 120).astype(float)
    p = _FlippingL2GLM(X, y, family=family)
    refs = [fc.GLM(X, y, family=family, l2=lam) for lam in _FlippingL2GLM.values]
    th = 0.3 * rng.standard_normal(p.n_params)
    v = rng.standard_normal(p.n_params)
    for name, args in (("value_and_grad", (th,)), ("hvp", (th, v)), ("ggn_vp", (th, v)),
                       ("hessian_diag", (th,)), ("hessian", (th,))):
        got = getattr(p, name)(*args)
        wants = [getattr(q, name)(*args) for q in refs]
        if name == "value_and_grad":
            ok = any(got[0] == w[0] and np.array_equal(got[1], w[1]) for w in wants)
        else:
            ok = any(np.array_equal(got, w) for w in wants)
        assert ok, name
