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
    """The state-reuse test (a vectorized sum of |a - b|) finds a difference anywhere, one ulp
    or subnormal, NaN included, and treats -0.0 as 0.0 (== semantics); a difference that
    overflows still counts."""
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
        tiny = np.zeros(3, dtype)
        tiny[1] = np.finfo(dtype).smallest_subnormal
        assert not same_values(z, tiny) and not same_values(tiny, z)
        big = np.full(3, np.finfo(dtype).max)
        assert not same_values(big, -big)
        assert not same_values(np.full(3, np.inf, dtype), np.full(3, np.inf, dtype))


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


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_pickle_and_deepcopy_rebuild_the_buffers(sparse):
    """An MLP goes through pickle and ``copy.deepcopy`` (multiprocessing, joblib, saving):
    its per-thread buffers (a ``threading.local``, which cannot be pickled: TypeError before)
    are left behind and rebuilt. The copies, used after the original recorded a θ, give the
    bits of a fresh problem, with the l2 they were given."""
    import copy
    import pickle

    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 4))
    X[X < 0.3] = 0.0
    y = rng.integers(0, 3, 30)
    Xin = sp.csr_matrix(X) if sparse else X
    kw = dict(sizes=(4, 6, 3), loss="softmax_cross_entropy", l2=1e-2)
    p = fc.MLP(Xin, y, **kw)
    t1, t2 = p.init(0), p.init(1)
    v = rng.standard_normal(p.n_params)
    p.hvp(t1, v)
    fresh = fc.MLP(Xin, y, **kw)
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        for t in (t2, t1):
            assert np.array_equal(q.hvp(t, v), fresh.hvp(t, v))
            assert np.array_equal(q.grad(t), fresh.grad(t))
        q.l2 = 0.5
        assert np.array_equal(p.hvp(t2, v), fresh.hvp(t2, v))  # the original keeps its l2
    fresh.l2 = 0.5
    assert np.array_equal(q.ggn_vp(t1, v), fresh.ggn_vp(t1, v))


@pytest.mark.parametrize("bad", [{"relu", "tanh"}, frozenset({"tanh"}), b"tanh"])
def test_activation_without_order_is_refused(bad):
    X = np.ones((4, 2))
    with pytest.raises(TypeError, match="activation"):
        fc.MLP(X, np.ones(4), sizes=(2, 3, 3, 1), activation=bad)


def test_sizes_without_order_is_refused():
    with pytest.raises(TypeError, match="sizes"):
        fc.MLP(np.ones((4, 2)), np.ones(4), sizes={2, 1})


def _in_threads(work, n_threads):
    import threading
    errors = []

    def run(k):
        try:
            work(k)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_threads_sharing_one_problem_get_the_bits_of_a_lone_call():
    """Four Python threads calling one MLP at four θ: each call gives the bits of the same
    call made alone. (The threads shared the row-block buffers and the recorded θ: 70 % of
    the gradients and HVPs were wrong.) Chunked (3,000 rows) and one block (300 rows)."""
    rng = np.random.default_rng(7)
    for n in (3000, 300):
        X = rng.standard_normal((n, 12))
        y = rng.integers(0, 3, n)
        p = fc.MLP(X, y, sizes=(12, 16, 3), loss="softmax_cross_entropy", l2=1e-3)
        thetas = [p.init(seed=k) for k in range(4)]
        v = rng.standard_normal(p.n_params)
        ref = [(p.grad(t), p.hvp(t, v), p.ggn_vp(t, v)) for t in thetas]
        wrong = []

        def work(k, p=p, thetas=thetas, v=v, ref=ref, wrong=wrong):
            for _ in range(30):
                got = (p.grad(thetas[k]), p.hvp(thetas[k], v), p.ggn_vp(thetas[k], v))
                wrong.extend(name for name, a, b in zip(("grad", "hvp", "ggn"), got, ref[k],
                                                        strict=True)
                              if not np.array_equal(a, b))

        _in_threads(work, 4)
        assert not wrong, f"n={n}: {len(wrong)} of 360 results differ ({sorted(set(wrong))})"


def test_overlapping_calls_keep_blas_on_one_thread():
    """Two problems in two threads: one call ending must not give BLAS its threads back while
    the other still runs (a single-chunk network above the small-model size, whose row sums
    OpenBLAS splits by thread count, then changed its last bits)."""
    tpc = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(8)
    big = fc.MLP(rng.standard_normal((400, 100)), rng.integers(0, 10, 400),
                 sizes=(100, 128, 128, 10), loss="softmax_cross_entropy", l2=1e-4)
    small = fc.MLP(rng.standard_normal((64, 5)), rng.standard_normal(64), sizes=(5, 4, 1))
    th, ts = big.init(seed=0), small.init(seed=0)
    v = rng.standard_normal(big.n_params)
    with tpc.threadpool_limits(limits=2):
        ref = (big.grad(th), big.hvp(th, v))
        wrong = []

        def work(k):
            for _ in range(40 if k == 0 else 2000):
                if k == 0:
                    got = (big.grad(th), big.hvp(th, v))
                    wrong.extend(not np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
                else:
                    small.grad(ts)

        _in_threads(work, 2)
    assert not any(wrong), f"{sum(wrong)} of 80 results changed"


def test_row_chunks_follow_the_work_not_the_width():
    """Dense data: up to 8 chunks of >= 512 rows above the parallel threshold. Wide CSR
    input: at most macs / (4 P) chunks, each chunk's P-long outputs costing more than its
    share of a pass over few nonzeros."""
    from fastcurv.problems.mlp import _n_chunks

    assert _n_chunks(128, 5_000, 128 * 5_000) == 1  # below the threshold: no parallel region
    assert _n_chunks(100_000, 10_000, 100_000 * 10_000) == 8
    assert _n_chunks(1_500, 100_000, 1_500 * 100_000) == 2  # 512 rows per chunk at least
    P = 200_001 * 64 + 65 * 10  # 200,000 features -> 64 -> 10
    macs = 50_000 * 30 * 64 + 50_000 * (P - 200_000 * 64)  # 30 nonzeros per row
    assert _n_chunks(50_000, P, macs) == 2


def test_reassigning_l2_while_another_thread_computes():
    """One thread computes while another reassigns ``l2`` back and forth: every gradient and
    HVP is that of one λ or the other, never a mix, and no call fails (the setter used to drop
    the packed kernel arguments between a call's packing and their use: a TypeError)."""
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((200, 6)), rng.standard_normal(200)
    p = fc.MLP(X, y, sizes=(6, 8, 1), l2=0.0)
    th = p.init(seed=0)
    v = rng.standard_normal(p.n_params)
    refs = [fc.MLP(X, y, sizes=(6, 8, 1), l2=lam) for lam in (0.0, 0.5)]
    want = {"grad": [q.grad(th) for q in refs], "hvp": [q.hvp(th, v) for q in refs]}
    bad = []

    def work(k):
        for i in range(3000 if k == 0 else 1500):
            if k == 0:
                p.l2 = 0.5 if i % 2 else 0.0
                continue
            for name, got in (("grad", p.grad(th)), ("hvp", p.hvp(th, v))):
                if not any(np.array_equal(got, w) for w in want[name]):
                    bad.append((i, name))

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race window is microseconds
    try:
        _in_threads(work, 2)
    finally:
        sys.setswitchinterval(interval)
    assert not bad, f"{len(bad)} results matched neither λ: {bad[:5]}"


def test_dense_hessian_and_diagonal_use_one_lambda_across_their_blocks():
    """``hessian``/``ggn``/``hessian_diag`` run one product per 64 columns; with ``l2``
    reassigned between two of them (by another thread) the blocks mixed the two λ: a matrix
    that is the Hessian at neither (a review's finding). Here the reassignment happens
    deterministically after every block; the result is that of the λ on entry."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((80, 5)), rng.integers(0, 3, 80).astype(float)
    kw = dict(sizes=(5, 12, 3), loss="softmax_cross_entropy")
    ref = fc.MLP(X, y, l2=1e-3, **kw)
    th = ref.init(seed=1)
    assert ref.n_params > 64  # two blocks at least
    for method in ("hessian", "ggn", "hessian_diag"):
        p = fc.MLP(X, y, l2=1e-3, **kw)
        inner = p.ggn_vp if method == "ggn" else p.hvp

        def product(theta, E, inner=inner, p=p):
            out = inner(theta, E)
            p.l2 = 3e-2 if p.l2 == 1e-3 else 1e-3  # another thread's reassignment
            return out

        if method == "ggn":
            p.ggn_vp = product
        else:
            p.hvp = product
        got = getattr(p, method)(th)
        np.testing.assert_array_equal(got, getattr(ref, method)(th), err_msg=method)
