"""fc.MLP reuses its row-block buffers between calls at the same θ (one block of rows): any
sequence of calls must give bitwise the results of a fresh problem with no reusable state."""

import numpy as np
import pytest

import fastcurv as fc

CALLS = ("value", "grad", "hvp", "ggn_vp", "fisher_vp", "jvp", "vjp", "ggn_diag",
         "ggn_diag_mc", "per_sample_grads", "hvp_block")


def _call(p, name, theta, v, u):
    if name == "value":
        return np.array(p.value(theta))
    if name == "grad":
        return p.grad(theta)
    if name in ("hvp", "ggn_vp", "fisher_vp", "jvp"):
        return getattr(p, name)(theta, v)
    if name == "hvp_block":
        return p.hvp(theta, np.stack([v, 2 * v], axis=1))
    if name == "vjp":
        return p.vjp(theta, u)
    if name == "ggn_diag":
        return p.ggn_diag(theta)
    if name == "ggn_diag_mc":
        return p.ggn_diag(theta, mc_samples=2, seed=1)
    return p.per_sample_grads(theta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, K", [("softmax_cross_entropy", 3), ("mse", 2)])
def test_any_call_sequence_equals_fresh_problems(dtype, loss, K):
    rng = np.random.default_rng(0)
    n, d = 25, 4
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, K, n) if loss == "softmax_cross_entropy" else rng.standard_normal((n, K))
    make = lambda: fc.MLP(X, y, sizes=(d, 5, 4, K), activation="tanh", loss=loss, l2=0.1)  # noqa: E731
    p = make()
    assert p.batch_size >= n  # one block: the state is reusable
    thetas = [p.init(1), p.init(2)]
    theta_mut = p.init(3)
    v = rng.standard_normal(p.n_params).astype(dtype)
    u = rng.standard_normal((n, K)).astype(dtype)
    seq = rng.choice(len(CALLS), size=120)
    which = rng.integers(0, 3, size=120)
    for c, w in zip(seq, which, strict=True):
        name = CALLS[c]
        if w == 2:
            theta_mut[0] += 0.01  # the same array, changed in place
            theta = theta_mut
        else:
            theta = thetas[w]
        got = _call(p, name, theta, v, u)
        want = _call(make(), name, theta.copy(), v, u)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} at theta {w}")


def test_same_values_compares_every_element():
    """The state-reuse test (blocks of 1,024 without an early exit, so that it vectorizes)
    finds a difference anywhere, NaN included, and treats -0.0 as 0.0 (== semantics)."""
    from fastcurv.kernels.validate import same_values

    for dtype in (np.float64, np.float32):
        a = np.linspace(-1.0, 1.0, 2500).astype(dtype)
        assert same_values(a, a.copy())
        for i in (0, 1023, 1024, 2047, 2048, 2499):
            b = a.copy()
            b[i] = np.nextafter(b[i], dtype(2.0))
            assert not same_values(a, b), i
            b[i] = np.nan
            assert not same_values(a, b), i
        assert not same_values(a, a[:-1])
        z = np.zeros(3, dtype)
        assert same_values(z, -z)
        assert same_values(z[:0], z[:0])


def test_with_data_and_subset_keep_the_batch_size_given():
    """A batch_size given to the constructor bounds the block memory of the problems built
    from it: subset kept it, with_data fell back to the default."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3))
    y = rng.standard_normal(1000)
    p = fc.MLP(X, y, sizes=(3, 4, 1), loss="mse", batch_size=16)
    assert p.subset(np.arange(500)).batch_size == 16
    assert p.with_data(X[:700], y[:700]).batch_size == 16
    q = fc.MLP(X, y, sizes=(3, 4, 1), loss="mse")  # the default follows the new data
    assert q.with_data(X[:700], y[:700]).batch_size == fc.MLP(
        X[:700], y[:700], sizes=(3, 4, 1), loss="mse").batch_size


def test_shallow_copy_has_state_of_its_own():
    """copy.copy shared the recorded θ and the buffers: each problem then reused the other's
    pass as its own (HVPs 80-120% off)."""
    import copy

    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3))
    y = rng.standard_normal(40)
    p = fc.MLP(X, y, sizes=(3, 5, 1), l2=1e-2)
    t1, t2 = p.init(0), p.init(1)
    v = rng.standard_normal(p.n_params)
    p.hvp(t1, v)
    q = copy.copy(p)
    q.l2 = 1.0
    q.hvp(t2, v)
    fresh = fc.MLP(X, y, sizes=(3, 5, 1), l2=1e-2)
    assert np.array_equal(p.hvp(t2, v), fresh.hvp(t2, v))
    assert np.array_equal(p.hvp(t1, v), fresh.hvp(t1, v))
    fresh.l2 = 1.0
    assert np.array_equal(q.hvp(t2, v), fresh.hvp(t2, v))
    assert np.array_equal(q.ggn_vp(t1, v), fresh.ggn_vp(t1, v))


@pytest.mark.parametrize("bad", [{"relu", "tanh"}, frozenset({"tanh"}), b"tanh"])
def test_activation_without_order_is_refused(bad):
    X = np.ones((4, 2))
    with pytest.raises(TypeError, match="activation"):
        fc.MLP(X, np.ones(4), sizes=(2, 3, 3, 1), activation=bad)


def test_sizes_without_order_is_refused():
    with pytest.raises(TypeError, match="sizes"):
        fc.MLP(np.ones((4, 2)), np.ones(4), sizes={2, 1})
