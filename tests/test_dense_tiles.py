"""The explicit-vector helpers (kernels/simd.py) and the blocked K-output dense pass built on
them (kernels/glm_dense.py: 2 x 5 / 2 x 4 forward tiles, 5 / 4 x 2W backward tiles and, with
32 vector registers, 4 x 5 / 4 x 4 forward tiles and backward tiles of two column tiles at
once (8, 9 or 10 columns); blocks of BLOCK rows, prefetching), on every ragged edge: feature
counts around the vector width and the two-vector step, row counts around the block, the row
quad and the row pair, both tile widths and their mixes, float32 and float64, C, Fortran and
non-contiguous layouts (the vectors then go lane by lane); and the softmax Hessian's K − 1
class shortcut (fastcurv/problems/_design.py), taken only where it keeps every class block to
its own digits, and the cases where a careless shortcut lost them.

The references are numpy products in float64 (``X @ V``, ``X.T @ T``) and the dense Hessian of
tests/reference.py, summed over samples one by one.
"""

import numpy as np
import pytest
from fastcurv.kernels import glm_dense
from fastcurv.kernels.simd import (
    WIDE_BYTES,
    vbcast,
    vfma,
    vload,
    vstore,
    vsum,
    vwidth,
    vzero,
    wbcast,
    wload,
    wstore,
    wwidth,
    wzero,
)
from numba import njit
from reference import RefGLM

import fastcurv as fc


@njit
def _roundtrip(A, B, i, j):
    """B[i, j : j + W] = A[i, j : j + W] * A[i, 0] + A[i, j : j + W]; return (W, sum of lanes)."""
    v = vload(A, i, j)
    w = vfma(v, vbcast(A, i, 0), v)
    vstore(B, i, j, w)
    return vwidth(A), vsum(w) + vsum(vzero(A))


def _layouts(A):
    """The same values as C-, F-ordered and non-contiguous (every other column) arrays."""
    wide = np.zeros((A.shape[0], 2 * A.shape[1]), dtype=A.dtype)
    wide[:, ::2] = A
    return {"C": np.ascontiguousarray(A), "F": np.asfortranarray(A), "strided": wide[:, ::2]}


@njit
def _wide_roundtrip(A, B, i, j):
    """The same as :func:`_roundtrip` with the wide vectors."""
    v = wload(A, i, j)
    w = vfma(v, wbcast(A, i, 0), v)
    wstore(B, i, j, w)
    return wwidth(A), vsum(w) + vsum(wzero(A))


#: (roundtrip, bytes per vector) of the 256-bit and the wide family
_FAMILIES = {"v": (_roundtrip, 32), "w": (_wide_roundtrip, WIDE_BYTES)}


@pytest.mark.parametrize("family", ["v", "w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_simd_primitives_against_numpy(family, dtype, layout):
    roundtrip, nbytes = _FAMILIES[family]
    assert WIDE_BYTES in (32, 64)
    rng = np.random.default_rng(0)
    A = _layouts(rng.standard_normal((3, 37)).astype(dtype))[layout]
    W = nbytes // A.itemsize
    for i, j in [(0, 0), (1, 3), (2, 37 - W)]:
        B = _layouts(np.zeros((3, 37), dtype=dtype))[layout]
        w, s = roundtrip(A, B, i, j)
        x = A[i, j:j + W].astype(np.float64)
        want = x * float(A[i, 0]) + x
        assert w == W
        np.testing.assert_allclose(B[i, j:j + W], want, rtol=4 * np.finfo(dtype).eps)
        # only the W lanes were written
        assert np.count_nonzero(B) == np.count_nonzero(want)
        assert abs(s - want.sum()) <= 8 * max(1, W // 8) * float(np.finfo(dtype).eps) * np.abs(
            want).sum()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_single_output_pass_on_every_vector_remainder(dtype, layout):
    """The four-row wide-vector products (``glm_dense._dot4`` / ``_axpy4``) with d below,
    at and around multiples of the vector width, and a row count that leaves 1-3 rows to the
    scalar tail: gradient and HVP against numpy in float64."""
    rng = np.random.default_rng(2)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    for d in (1, 3, 7, 8, 9, 15, 16, 17, 33):
        n = 1027
        X = _layouts(rng.standard_normal((n, d)).astype(dtype))[layout]
        y = (rng.random(n) < 0.5).astype(float)
        p = fc.GLM(X, y, family="logistic", l2=0.1)
        theta = (0.3 * rng.standard_normal(d + 1)).astype(dtype)
        v = rng.standard_normal(d + 1).astype(dtype)
        Xt = np.hstack([np.asarray(X, np.float64), np.ones((n, 1))])
        th64, v64 = theta.astype(np.float64), v.astype(np.float64)
        mu = 1.0 / (1.0 + np.exp(-(Xt @ th64)))
        reg = np.r_[np.ones(d), 0.0] * 0.1
        g = Xt.T @ (mu - y) / n + reg * th64
        h = Xt.T @ (mu * (1 - mu) * (Xt @ v64)) / n + reg * v64
        np.testing.assert_allclose(p.grad(theta), g, rtol=tol, atol=tol * np.abs(g).max(),
                                   err_msg=f"d={d}")
        np.testing.assert_allclose(p.hvp(theta, v), h, rtol=tol, atol=tol * np.abs(h).max(),
                                   err_msg=f"d={d}")


def _multinomial_hvp_numpy(X, y, K, theta, v, l2):
    """(1/n) Σ_i x̃_i ⊗ (diag(p_i) − p_i p_iᵀ)(V̆ᵀ x̃_i) + λ v (weights only), in float64."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    Th = np.asarray(theta, np.float64).reshape(d + 1, K)
    Vm = np.asarray(v, np.float64).reshape(d + 1, K)
    eta = Xt @ Th
    p = np.exp(eta - eta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    U = Xt @ Vm
    T = p * (U - np.sum(p * U, axis=1, keepdims=True))
    out = Xt.T @ T / n
    out[:d] += l2 * Vm[:d]
    return out.ravel()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_blocked_multinomial_hvp_on_ragged_shapes(dtype, layout):
    rng = np.random.default_rng(1)
    B = glm_dense.BLOCK
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for n in (1, 2, 3, 4, 5, 6, B - 1, B + 1, 2 * B + 3):
        for d in (1, 3, 4, 7, 8, 9, 17, 33):
            # K columns: 3 (padded to one 4-wide tile), 4, 5, 6 (4 + 4, padded), 9 (5 + 4),
            # 10 (5 + 5), 11 (4 + 4 + 4, padded), 12 (4 + 4 + 4); the forward has one column
            # less (the softmax shortcut); mixed widths in the zero-class test below
            for K in (3, 4, 5, 6, 9, 10, 11, 12):
                X0 = rng.standard_normal((n, d)).astype(dtype)
                X = _layouts(X0)[layout]
                y = np.arange(n) % K
                p = fc.GLM(X, y, family="multinomial", n_classes=K, l2=0.1)
                theta = (0.3 * rng.standard_normal(p.n_params)).astype(dtype)
                v = rng.standard_normal(p.n_params).astype(dtype)
                got = p.hvp(theta, v)
                want = _multinomial_hvp_numpy(X0, y, K, theta, v, 0.1)
                err = np.abs(got - want).max() / np.abs(want).max()
                assert err < tol, (n, d, K, err)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_pass_block_products_and_jvp(dtype):
    """m vectors at once (L = K m columns: 2 x 3 = 6 pads to 8 = 4 + 4, 3 x 3 = 9 = 5 + 4,
    4 x 3 = 12 = 4 + 4 + 4), the forward-only pass (jvp) and the value+grad pass, against the
    dense reference."""
    rng = np.random.default_rng(2)
    tol = 1e-11 if dtype == np.float64 else 3e-5
    for n, d, K in [(45, 11, 2), (70, 13, 3), (33, 9, 4)]:
        X = rng.standard_normal((n, d)).astype(dtype)
        y = np.arange(n) % K
        p = fc.GLM(X, y, family="multinomial", n_classes=K)
        ref = RefGLM(X.astype(np.float64), y, "multinomial", K)
        theta = (0.3 * rng.standard_normal(p.n_params)).astype(dtype)
        H = ref.hessian(theta)
        Vs = rng.standard_normal((p.n_params, 3)).astype(dtype)
        got = p.hvp(theta, Vs)
        want = H @ Vs.astype(np.float64)
        assert np.abs(got - want).max() / np.abs(want).max() < tol
        J = p.jvp(theta, Vs[:, 0])
        Jref = ref.eta(Vs[:, 0]) - ref.eta(np.zeros(p.n_params))
        assert np.abs(J - Jref).max() / np.abs(Jref).max() < tol
        f, g = p.value_and_grad(theta)
        assert abs(f - ref.value(theta)) / abs(ref.value(theta)) < tol
        gref = ref.grad(theta)
        assert np.abs(g - gref).max() / np.abs(gref).max() < tol


def test_tile_split_covers_every_column_count_with_least_padding():
    for L in range(1, 60):
        n5, Lp = (int(t) for t in glm_dense.tile_split(L))
        nt = n5 + (Lp - 5 * n5) // 4
        assert 5 * n5 + 4 * (nt - n5) == Lp >= L and 0 <= n5 <= nt
        best = min(5 * a + 4 * b for a in range(13) for b in range(16) if 5 * a + 4 * b >= L)
        assert Lp == best, (L, Lp, best)


def _block_rel_err(got, want, d, K):
    """Per class block (the d + 1 entries of one class): max error over the block's size."""
    g = got.reshape(d + 1, K)
    w = want.reshape(d + 1, K)
    return np.abs(g - w).max(axis=0) / np.abs(w).max(axis=0)


@pytest.mark.parametrize("m", [1, 3])
def test_softmax_shortcut_keeps_every_class_block_to_its_own_digits(m):
    """A class of probability ~1e-13 whose direction is 1e6 times larger than the others:
    shifting V by it would put an error of eps 1e6 into every u_k − u_r (9e-11 of a block);
    restoring its block as minus the sum of the others would give it (~1e-13 of theirs) an
    error of eps relative to theirs (9e-9). Each class block must keep its own relative
    accuracy."""
    rng = np.random.default_rng(5)
    n, d, K = 400, 13, 5
    X = rng.standard_normal((n, d))
    y = np.arange(n) % (K - 1)
    p = fc.GLM(X, y, family="multinomial", n_classes=K, l2=0.0)
    Th = 0.3 * rng.standard_normal((d + 1, K))
    Th[:, K - 1] = 0.0
    Th[d, K - 1] = -30.0  # the rare class
    theta = Th.ravel()
    Vs = rng.standard_normal((p.n_params, m))
    Vs.reshape(d + 1, K, m)[:, K - 1, :] *= 1e6
    got = p.hvp(theta, Vs).reshape(p.n_params, m)
    for j in range(m):
        want = _multinomial_hvp_numpy(X, y, K, theta, Vs[:, j], 0.0)
        err = _block_rel_err(got[:, j], want, d, K)
        assert err.max() < 1e-12, err


def _multinomial_hvp_rel(X, K, theta, v, w=None):
    """The multinomial HVP (no penalty) in float64 with each row's ``t`` taken relative to its
    most probable class r, ``p_k ((u_k − u_r) − Σ_j p_j (u_j − u_r))``: accurate for a class
    at p ~ 1 (where ``p (u − Σ p u)`` loses its digits); every class, each ``u_k`` its own
    product ``x̃ · V_k``."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    eta = Xt @ np.asarray(theta, np.float64).reshape(d + 1, K)
    p = np.exp(eta - eta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    U = Xt @ np.asarray(v, np.float64).reshape(d + 1, K)
    Ur = U - U[np.arange(n), np.argmax(p, axis=1)][:, None]
    T = p * (Ur - np.sum(p * Ur, axis=1, keepdims=True))
    a = np.full(n, 1.0 / n) if w is None else w / w.sum()
    return (Xt.T @ (a[:, None] * T)).ravel()


def _assert_each_block_accurate(p, X, K, theta, V, tol):
    """``p.hvp(theta, V)`` for the directions V (P, m): each class block of each direction
    within ``tol`` of its own size against :func:`_multinomial_hvp_rel`."""
    d = X.shape[1]
    got = p.hvp(theta, V).reshape(p.n_params, V.shape[1])
    for j in range(V.shape[1]):
        want = _multinomial_hvp_rel(X, K, theta, V[:, j])
        err = _block_rel_err(got[:, j], want, d, K)
        assert err.max() < tol, err


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [1, 3])
def test_softmax_shift_not_by_a_class_small_in_v_but_large_in_u(dtype, m):
    """A rare class (p ~ 4e-18) whose direction is the smallest in max |V_f| (1e-3) but sits
    on a feature of scale 1e9, so that ``u_f ~ 1e6`` while the other classes' ``u`` are O(1)
    and the true product does not see ``u_f``. Shifting V by that class put an error of
    eps 1e6 into every ``u_k − u_r`` (float64: 7e-11 of each block; float32: ~0.1); each class
    block must keep its own relative accuracy."""
    rng = np.random.default_rng(11)
    n, d, K = 400, 6, 4
    X = rng.standard_normal((n, d))
    X[:, 0] *= 1e9
    X = X.astype(dtype)
    y = np.arange(n) % (K - 1)
    p = fc.GLM(X, y, family="multinomial", n_classes=K, l2=0.0)
    Th = 0.3 * rng.standard_normal((d + 1, K))
    Th[0, :] = 0.0
    Th[:, K - 1] = 0.0
    Th[d, K - 1] = -40.0  # the rare class
    V = rng.standard_normal((d + 1, K, m))
    V[0, : K - 1] = 0.0
    V[:, K - 1] = 0.0
    V[0, K - 1] = 1e-3  # smallest max |V_k|, largest |V_k . x|
    V = V.reshape(-1, m)
    _assert_each_block_accurate(p, X, K, Th.ravel(), V, 1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_restore_not_of_a_class_near_p_1(dtype):
    """Class 0 holds the most probability mass, but at p ~ 1 − 1e-12 on its rows (almost no
    curvature there) and p ~ 1e-13 on the others, where classes 1 and 2 split 50/50: its block
    is ~1e-12 of theirs. Restoring it as minus their sum (a shortcut the dense pass no longer
    takes) gave it their rounding (float64: 2e-4 of the block; float32: 0.15)."""
    rng = np.random.default_rng(12)
    nA, nB, K = 300, 200, 3
    X = np.zeros((nA + nB, 7))
    X[:, :5] = rng.standard_normal((nA + nB, 5))
    X[:nA, 5] = 1.0  # group A
    X[nA:, 6] = 1.0  # group B
    X = X.astype(dtype)
    d = X.shape[1]
    y = np.arange(nA + nB) % K
    p = fc.GLM(X, y, family="multinomial", n_classes=K, l2=0.0)
    Th = np.zeros((d + 1, K))
    Th[:5] = 0.1 * rng.standard_normal((5, K))
    Th[5, 0] = 28.0
    Th[6, 0] = -30.0
    for m in (1, 4):
        V = rng.standard_normal((p.n_params, m))
        _assert_each_block_accurate(p, X, K, Th.ravel(), V,
                                    1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("K, m", [(2, 3), (3, 5), (10, 7), (13, 4)])
def test_softmax_shift_by_a_zero_class_per_direction(K, m):
    """Directions with a class that is 0 (a different one per direction), so the dense pass
    reads K − 1 shifted classes, and one block where a direction has none (the plain pass):
    against the float64 reference and the dense Hessian, with weights (some 0)."""
    from fastcurv.problems import _design

    rng = np.random.default_rng(13)
    n, d = 75, 9
    X = rng.standard_normal((n, d))
    y = rng.integers(0, K, n)
    w = rng.random(n)
    w[::4] = 0.0
    p = fc.GLM(X, y, family="multinomial", n_classes=K, l2=0.0, sample_weight=w)
    theta = 0.5 * rng.standard_normal(p.n_params)
    V = rng.standard_normal((d + 1, K, m))
    for j in range(m):
        V[:, (3 * j) % K, j] = 0.0
    Vw = np.ascontiguousarray(V[:d].reshape(d, K * m))
    assert _design._softmax_shift(Vw, V[d].reshape(K * m), K, m) is not None
    H = p.hessian(theta)
    extra = rng.standard_normal((p.n_params, 1))  # no class of it is entrywise smallest
    for Vb in (V.reshape(-1, m), np.hstack([V.reshape(-1, m), extra])):
        got = p.hvp(theta, Vb)
        for j in range(Vb.shape[1]):
            want = _multinomial_hvp_rel(X, K, theta, Vb[:, j], w)
            assert np.abs(got[:, j] - want).max() <= 1e-13 * np.abs(want).max()
        assert np.abs(got - H @ Vb).max() <= 1e-12 * np.abs(H @ Vb).max()


@njit
def _load_sum(A, i, j):
    return vsum(vload(A, i, j))


@njit
def _store_zero(A):
    vstore(A, 0, 0, vzero(A))


def test_simd_refuses_what_it_cannot_index():
    """Not 2-D, not float32/float64, non-integer indices and stores into read-only arrays are
    typing errors (a review found a 1-D array read with j ignored, a 0-D one read past its end,
    and a store into a read-only memmap that crashed the process)."""
    from numba.core.errors import TypingError

    for bad in (np.arange(32.0), np.zeros((2, 2, 8)), np.array(1.0), np.zeros((2, 8), np.int64),
                np.zeros((2, 8), np.float16)):
        with pytest.raises((TypingError, TypeError), match="simd: a 2-D float32 or float64 array"):
            _load_sum(bad, 0, 0)
    with pytest.raises((TypingError, TypeError), match="simd: indices must be integers"):
        _load_sum(np.zeros((2, 8)), 1.5, 0)
    ro = np.zeros((2, 8))
    ro.flags.writeable = False
    with pytest.raises((TypingError, TypeError), match="simd: cannot store into a read-only array"):
        _store_zero(ro)
    w = np.ones((2, 8))
    _store_zero(w)
    assert np.all(w[0, :32 // w.itemsize] == 0) and np.all(w[1] == 1)
