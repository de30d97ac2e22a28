"""The Dask backend (fastcurv.distributed.DaskGLM) against the in-memory fc.GLM.

A real cluster on this machine (two single-threaded worker processes, module scope). Every
product of a GLM over a row-chunked Dask array must equal the in-memory GLM's on the
concatenated data to 1e-12 (max-norm relative, float64): the chunk problems are the same
kernels on the same rows, only the order of the sums over the rows differs. Chunks are
uneven, one chunk has zero total weight, and targets and weights come as Dask or numpy
arrays. Worker deaths must be survived with the same answer.
"""

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastcurv as fc

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

RTOL = 1e-12
#: uneven row chunks of the 203 rows (the second one gets zero weight in "weighted")
CHUNKS = (50, 37, 64, 52)
N, D = sum(CHUNKS), 5
FAMILIES = {"gaussian": 1, "gaussian2": 2, "logistic": 1, "poisson": 1, "multinomial": 3}
#: (fit_intercept, weights, l2, targets and weights passed as Dask arrays)
CONFIGS = {
    "plain": (True, None, 0.0, False),
    "weighted": (True, "real", 0.3, True),
    "noint": (False, "int", 0.1, False),
}


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def make_data(variant, storage, config, dtype=np.float64, seed=0):
    """(X in memory, y, weights, kwargs) of a named case; deterministic."""
    family = variant.rstrip("2")
    K = FAMILIES[variant]
    fit_intercept, wkind, l2, _ = CONFIGS[config]
    rng = np.random.default_rng(seed)
    if storage == "dense":
        X = rng.standard_normal((N, D))
    else:
        X = sp.random(N, D, density=0.4, format="csr", random_state=rng,
                      data_rvs=rng.standard_normal)
        X.sort_indices()
    X = X.astype(dtype)
    eta = np.asarray(X @ (0.5 * rng.standard_normal((D, K)))) + 0.1
    if family == "gaussian":
        y = eta + 0.3 * rng.standard_normal(eta.shape)
    elif family == "logistic":
        y = (rng.random(eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(0.5 * eta)).astype(float)
    else:
        y = np.argmax(eta + rng.gumbel(size=eta.shape), axis=1).astype(float)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    w = None
    if wkind == "real":
        w = rng.random(N) * 2
        w[rng.random(N) < 0.2] = 0.0
        w[CHUNKS[0]:CHUNKS[0] + CHUNKS[1]] = 0.0  # a whole chunk without weight
    elif wkind == "int":
        w = rng.integers(0, 4, N).astype(float)
        w[0] = 1.0
    kw = dict(family=family, l2=l2, fit_intercept=fit_intercept)
    if variant == "multinomial" and config == "noint":
        kw["n_classes"] = 4  # given (one class never observed); else inferred
    return X, y, w, kw


def dask_problem(X, y, w, kw, config, chunks=CHUNKS, **extra):
    as_dask = CONFIGS[config][3]
    dX = da.from_array(X, chunks=(chunks, X.shape[1]), asarray=not sp.issparse(X))
    if as_dask:
        y = da.from_array(y, chunks=(17,) + y.shape[1:])  # rechunked to X's rows
        w = None if w is None else da.from_array(w, chunks=23)
    return fc.GLM(dX, y, sample_weight=w, **kw, **extra)


def rel(got, want):
    got = got.toarray() if sp.issparse(got) else np.asarray(got, dtype=np.float64)
    want = want.toarray() if sp.issparse(want) else np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-300)


def point(p, seed=1):
    rng = np.random.default_rng(seed)
    theta = 0.3 * rng.standard_normal(p.n_params)
    v = rng.standard_normal(p.n_params)
    V = rng.standard_normal((p.n_params, 3))
    return theta, v, V


# ------------------------------------------------------------------------- every product
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("storage", ["dense", "csr"])
@pytest.mark.parametrize("variant", list(FAMILIES))
def test_products_match_in_memory(client, variant, storage, config):
    X, y, w, kw = make_data(variant, storage, config)
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, config)
    assert type(p).__name__ == "DaskGLM" and not isinstance(p, fc.GLM)
    for name in ("n_params", "n_samples", "n_features", "n_outputs", "dtype", "is_sparse",
                 "family", "l2", "fit_intercept"):
        assert getattr(p, name) == getattr(ref, name), name
    theta, v, V = point(ref)
    f, g = p.value_and_grad(theta)
    f0, g0 = ref.value_and_grad(theta)
    assert abs(f - f0) <= RTOL * abs(f0)
    assert rel(g, g0) <= RTOL and g.dtype == g0.dtype
    assert abs(p.value(theta) - f0) <= RTOL * abs(f0)
    assert rel(p.grad(theta), g0) <= RTOL
    checks = {
        "hvp": (p.hvp(theta, v), ref.hvp(theta, v)),
        "hvp block": (p.hvp(theta, V), ref.hvp(theta, V)),
        "ggn_vp": (p.ggn_vp(theta, V), ref.ggn_vp(theta, V)),
        "fisher_vp": (p.fisher_vp(theta, v), ref.fisher_vp(theta, v)),
        "fisher_vp block": (p.fisher_vp(theta, V[:, :2]), ref.fisher_vp(theta, V[:, :2])),
        "hessian_diag": (p.hessian_diag(theta), ref.hessian_diag(theta)),
        "ggn_diag": (p.ggn_diag(theta), ref.ggn_diag(theta)),
        "fisher_diag": (p.fisher_diag(theta), ref.fisher_diag(theta)),
        "hessian": (p.hessian(theta), ref.hessian(theta)),
        "jvp": (p.jvp(theta, v), ref.jvp(theta, v)),
        "jvp block": (p.jvp(theta, V), ref.jvp(theta, V)),
    }
    U = np.random.default_rng(2).standard_normal((N, ref.n_outputs, 2))
    checks["vjp"] = (p.vjp(theta, U[:, :, 0]), ref.vjp(theta, U[:, :, 0]))
    checks["vjp block"] = (p.vjp(theta, U), ref.vjp(theta, U))
    rows = [120, 5, 3, 3, 202, 51]
    checks["per_sample_grads"] = (p.per_sample_grads(theta, rows),
                                  ref.per_sample_grads(theta, rows))
    for name, (got, want) in checks.items():
        assert rel(got, want) <= RTOL, name
    assert sp.issparse(checks["per_sample_grads"][0]) == (storage == "csr")
    assert p.per_sample_grads(theta).shape == (N, ref.n_params)
    # the line search's closure, at the points newton_cg evaluates first
    d = 0.5 * v
    p.value_and_grad(theta + d)
    ref.value_and_grad(theta + d)
    phi, phi0 = p.value_along(theta, d), ref.value_along(theta, d)
    for alpha in (1.0, 0.5, 0.125, 0.0):
        assert abs(phi(alpha) - phi0(alpha)) <= RTOL * abs(phi0(alpha)), alpha
    assert (p._diverging_message(theta) is None) == (ref._diverging_message(theta) is None)


def test_fused_diagonal_and_repeats_are_bitwise(client):
    X, y, w, kw = make_data("logistic", "dense", "weighted")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, "weighted")
    theta, v, _ = point(ref)
    p.fuse_diag = ref.fuse_diag = True
    p.value_and_grad(theta)
    ref.value_and_grad(theta)
    assert rel(p.hessian_diag(theta), ref.hessian_diag(theta)) <= RTOL
    h1 = p.hvp(theta, v)
    assert np.array_equal(h1, p.hvp(theta, v))
    # the sum over chunks runs in chunk order on the driver: the same bits in this process
    local = dask_problem(X, y, w, kw, "weighted", client="local")
    local.fuse_diag = True
    assert np.array_equal(h1, local.hvp(theta, v))
    assert np.array_equal(p.grad(theta), local.grad(theta))


def test_parameters_api(client):
    X, y, w, kw = make_data("multinomial", "dense", "plain")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, "plain")
    assert p.n_outputs == 3  # inferred from max(y) + 1 before the chunks were built
    theta0 = p.init()
    assert theta0.shape == (ref.n_params,) and not theta0.any()
    theta = point(ref)[0]
    (Wt,) = p.unflatten(theta)
    assert Wt.shape == ref.unflatten(theta)[0].shape
    assert np.array_equal(p.flatten([Wt]), theta)
    with pytest.raises(ValueError, match="theta"):
        p.hvp(theta[:-1], theta)
    with pytest.raises(ValueError, match="non-finite"):
        p.hvp(theta, np.full(p.n_params, np.nan))
    assert "DaskGLM" in repr(p) and "4 row chunks" in repr(p)


def test_monte_carlo_products_are_seeded(client):
    X, y, w, kw = make_data("logistic", "csr", "weighted")
    p = dask_problem(X, y, w, kw, "weighted")
    theta, v, _ = point(p)
    a = p._mc_fisher_vp(theta, v, 2, 7)
    assert np.array_equal(a, p._mc_fisher_vp(theta, v, 2, 7))
    assert not np.array_equal(a, p._mc_fisher_vp(theta, v, 2, 8))
    op = fc.FisherOperator(p, theta, kind="mc", mc_samples=2, seed=3)
    assert np.array_equal(op @ v, op @ v)
    d1 = p.ggn_diag(theta, mc_samples=50, seed=1)
    assert np.array_equal(d1, p.ggn_diag(theta, mc_samples=50, seed=1))
    exact = p.ggn_diag(theta)
    assert rel(d1, exact) < 0.5  # an estimate of the exact diagonal


def test_float32(client):
    X, y, w, kw = make_data("poisson", "dense", "weighted", dtype=np.float32)
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, "weighted")
    assert p.dtype == np.float32
    theta, v, _ = point(ref)
    theta, v = theta.astype(np.float32), v.astype(np.float32)
    got = p.hvp(theta, v)
    assert got.dtype == np.float32
    # each chunk rounds its float32 result once before the float64 sum on the driver
    assert rel(got, ref.hvp(theta, v)) <= 1e-5
    assert rel(p.grad(theta), ref.grad(theta)) <= 1e-5


# ------------------------------------------------------------------------- round trips
def test_one_round_trip_per_product_and_payload(client):
    X, y, w, kw = make_data("logistic", "dense", "plain")
    p = dask_problem(X, y, w, kw, "plain")
    theta, v, V = point(p)
    P = p.n_params
    holders = {a for h in client.who_has(p._backend.futures).values() for a in h}
    p.value_and_grad(theta)
    p.stats.reset()
    p.hvp(theta, v)
    s = p.stats.as_dict()
    assert s["round_trips"] == 1 and s["recoveries"] == 0
    assert s["bytes_sent"] == len(holders) * 2 * P * 8  # θ and v to every worker
    assert s["bytes_received"] == p.n_chunks * P * 8  # one P-vector from every chunk
    p.stats.reset()
    p.hvp(theta, V)
    assert p.stats.round_trips == 1 and p.stats.bytes_received == p.n_chunks * P * 3 * 8


def test_newton_cg_same_optimum(client):
    X, y, w, kw = make_data("logistic", "dense", "weighted")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, "weighted")
    r0 = fc.newton_cg(ref, preconditioner="diag")
    p.stats.reset()
    r1 = fc.newton_cg(p, preconditioner="diag")
    assert r1.success and r0.success
    assert rel(r1.x, r0.x) <= 1e-10
    assert abs(r1.fun - r0.fun) <= 1e-12 * abs(r0.fun)
    assert (r1.n_iter, r1.n_cg) == (r0.n_iter, r0.n_cg)
    assert p.fuse_diag is False  # restored by newton_cg
    # 1 initial value+grad; per Newton step 1 diagonal + 1 per CG iteration + 1 value+grad
    assert all(h["step"] == 1.0 for h in r1.history[1:])
    assert p.stats.round_trips == 1 + 2 * r1.n_iter + r1.n_hvp


def test_newton_cg_trust_region_csr_multinomial(client):
    X, y, w, kw = make_data("multinomial", "csr", "noint")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, "noint", transport="tasks")
    r0 = fc.newton_cg(ref, method="trust-region")
    r1 = fc.newton_cg(p, method="trust-region")
    assert r1.success and rel(r1.x, r0.x) <= 1e-10


def test_separable_data_stop_with_the_same_message(client):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 3))
    y = (X[:, 0] > 0).astype(float)
    ref = fc.GLM(X, y, l2=0.0)
    p = fc.GLM(da.from_array(X, chunks=(40, 3)), y, l2=0.0)
    r0, r1 = fc.newton_cg(ref), fc.newton_cg(p)
    assert not r1.success and r1.message == r0.message and "separable" in r1.message
    assert r1.n_iter == r0.n_iter


def test_runaway_intercept_stops_with_the_same_message(client):
    """Targets on one side of their range only (here: class 1 in no chunk, and y = 1 on every
    row of weight > 0, the zeros sitting in a chunk of weight 0): gathered from the chunks at
    construction, no extra round trip; the fit stops as the in-memory one does."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 3))
    y3 = rng.integers(0, 2, 120) * 2
    ref = fc.GLM(X, y3, family="multinomial", l2=1e-3)
    p = fc.GLM(da.from_array(X, chunks=(40, 3)), y3, family="multinomial", l2=1e-3)
    r0, r1 = fc.newton_cg(ref), fc.newton_cg(p)
    assert not r1.success and r1.message == r0.message and "class 1" in r1.message
    assert r1.n_iter == r0.n_iter == 0
    y = np.ones(120)
    y[40:80] = 0.0
    w = np.ones(120)
    w[40:80] = 0.0
    ref = fc.GLM(X, y, l2=1e-3, sample_weight=w)
    p = fc.GLM(da.from_array(X, chunks=(40, 3)), y, l2=1e-3, sample_weight=w)
    p.stats.reset()
    r0, r1 = fc.newton_cg(ref), fc.newton_cg(p)
    assert not r1.success and r1.message == r0.message and "y = 1" in r1.message
    assert p.stats.round_trips == 1  # the initial value and gradient only
    # a row of each label in another chunk: a finite minimizer, the fit converges
    w[45] = 1.0
    p = fc.GLM(da.from_array(X, chunks=(40, 3)), y, l2=1e-3, sample_weight=w)
    assert fc.newton_cg(p).success


# ------------------------------------------------------------------------- influence
@pytest.mark.parametrize("variant,storage,config", [
    ("logistic", "dense", "weighted"), ("multinomial", "csr", "plain"),
    ("poisson", "csr", "noint")])
def test_influence_matches_in_memory(client, variant, storage, config):
    X, y, w, kw = make_data(variant, storage, config)
    kw["l2"] = max(kw["l2"], 0.05)
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    p = dask_problem(X, y, w, kw, config)
    theta = fc.newton_cg(ref, gtol=1e-10).x
    Xt, yt, _, _ = make_data(variant, storage, config, seed=5)
    Xt, yt = Xt[:7], yt[:7]
    t_ref, t_p = ref.with_data(Xt, yt), p.with_data(Xt, yt)
    assert type(t_p) is fc.GLM
    rows = np.array([150, 3, 60, 61, 62, 0, 202])  # across chunks, out of order
    for method in ("cg", "direct"):
        a = fc.Influence(ref, theta, method, damping=1e-4)
        p.stats.reset()
        b = fc.Influence(p, theta, method, damping=1e-4)
        s = b.scores(t_p)
        # factors: one block CG (one round trip per iteration) or one dense Hessian; the
        # scores: one round trip for all 203 rows (a single score block)
        if method == "direct":
            assert p.stats.round_trips == 2
        else:  # test gradients are local; one matmat per iteration
            assert p.stats.round_trips == b.solver.info["n_matmat"] + 1
        assert rel(s, a.scores(t_ref)) <= 1e-9
        assert rel(b.scores(t_p, rows=rows), a.scores(t_ref, rows=rows)) <= 1e-9
        assert rel(b.self_influence(rows), a.self_influence(rows)) <= 1e-9
        assert rel(b.params_change(rows), a.params_change(rows)) <= 1e-9
        ia, sa = a.top_k(t_ref, 5, helpful=False)
        ib, sb = b.top_k(t_p, 5, helpful=False)
        assert np.array_equal(ia, ib) and rel(sb, sa) <= 1e-9
    # a Dask test problem, scored against the training rows: the transpose
    dt = fc.Influence(p, theta, "direct", damping=1e-4)
    tp_dask = p.with_data(da.from_array(Xt, chunks=(4, Xt.shape[1]),
                                        asarray=not sp.issparse(Xt)), yt)
    assert type(tp_dask) is type(p)
    assert rel(dt.scores(p, against=tp_dask).T, dt.scores(t_p)) <= 1e-9
    sub = p.subset(rows)
    want = ref.subset(rows)
    assert rel(sub.hvp(theta, np.ones(p.n_params)), want.hvp(theta, np.ones(p.n_params))) \
        <= 1e-12
    with pytest.raises(TypeError, match="needs the training rows here"):
        fc.loo_refit(p, theta, [0], t_p)
    with pytest.raises(TypeError, match="K-FAC needs every row"):
        fc.Influence(p, theta, "kfac", damping=1e-4)
    if variant != "multinomial":  # same parameter count, another family
        other = fc.GLM(Xt, yt, family="gaussian", fit_intercept=kw["fit_intercept"])
        with pytest.raises(TypeError, match="another model"):
            dt.scores(other)


def test_local_and_tasks_transports(client):
    X, y, w, kw = make_data("gaussian2", "csr", "weighted")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    theta, v, V = point(ref)
    want = ref.hvp(theta, V)
    # a second client that is not the default one (Dask binds actor handles to the default
    # client unless told otherwise), talking to the workers directly
    other = distributed.Client(client.scheduler.address, set_as_default=False,
                               direct_to_workers=True)
    try:
        for extra in ({"client": "local"}, {"transport": "tasks"}, {"client": client},
                      {"client": other}):
            p = dask_problem(X, y, w, kw, "weighted", **extra)
            assert rel(p.hvp(theta, V), want) <= RTOL, extra
            assert rel(p.grad(theta), ref.grad(theta)) <= RTOL, extra
            del p
    finally:
        other.close()


# ------------------------------------------------------------------------- errors
def test_errors(client, monkeypatch):
    X, y, w, kw = make_data("logistic", "dense", "plain")
    dX = da.from_array(X, chunks=(CHUNKS, D))
    bad = y.copy()
    bad[130] = 2.0
    with pytest.raises(ValueError, match=r"row chunk 2 .*starts at row 87"):
        fc.GLM(dX, bad, **kw)
    with pytest.raises(ValueError, match="rows to match X"):
        fc.GLM(dX, y[:-1], **kw)
    with pytest.raises(ValueError, match="transport"):
        fc.GLM(dX, y, transport="carrier-pigeon", **kw)
    with pytest.raises(ValueError, match="sample_weight is zero everywhere"):
        fc.GLM(dX, y, sample_weight=np.zeros(N), **kw)
    # a failed build leaves nothing on the workers (the chunks built before the bad one were
    # once pinned there by the raised exception's traceback), and the same data builds again
    gc.collect()
    held = set(client.futures)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"row chunk 2"):
            fc.GLM(dX, bad, **kw)
    gc.collect()
    assert set(client.futures) <= held
    w0 = np.ones(N)
    w0[:4] = 0.0
    p = fc.GLM(dX, y, sample_weight=w0, **kw)
    with pytest.raises(ValueError, match="rows selected all have sample_weight 0"):
        p.subset([0, 1, 3])
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.value(np.zeros(p.n_params))

    def no_client(c=None):
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", no_client)
    with pytest.raises(ValueError, match=r"Client\(\)|client='local'"):
        fc.GLM(dX, y, **kw)


def test_import_fastcurv_does_not_import_dask_and_error_without_it():
    code = (
        "import sys\n"
        "import fastcurv\n"
        "assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules), 'dask'\n"
        "sys.modules['dask'] = None\n"
        "try:\n"
        "    import fastcurv.distributed\n"
        "except ImportError as e:\n"
        "    assert 'pip install fastcurv[dask]' in str(e), str(e)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout


# ------------------------------------------------------------------------- faults
def _drop_actor(key, dask_worker=None):
    dask_worker.state.actors.pop(key, None)


def test_vanished_actor_is_detected(client):
    # Dask leaves a proxied call to a vanished actor pending forever; the backend polls
    X, y, w, kw = make_data("logistic", "dense", "weighted")
    p = dask_problem(X, y, w, kw, "weighted")
    theta, v, _ = point(p)
    want = p.hvp(theta, v)
    backend = p._backend
    backend.POLL_S = 0.2
    for _, creation, addr, _ in backend._agents:
        client.run(_drop_actor, creation.key, workers=[addr])
    assert np.array_equal(p.hvp(theta, v), want)
    assert p.stats.recoveries == 1
    assert np.array_equal(p.hvp(theta, v), want)  # on new actors
    assert p.stats.recoveries == 1
    backend.POLL_S = 0.01  # liveness checks during ordinary calls change nothing
    for _ in range(5):
        assert np.array_equal(p.hvp(theta, v), want)


def _kill_a_holder(client, p):
    """SIGKILL one worker process that runs one of ``p``'s actors (before the first actor
    call: one that holds chunks of ``p``); its nanny restarts it. Not just any holder: a
    worker may hold only copies of chunks (an actor placed elsewhere fetched them), and
    killing it left every actor call answered, so the fit had nothing to recover (seen once
    in CI: ``recoveries == 0``)."""
    agents = getattr(p._backend, "_agents", None)
    if agents:
        addr = sorted({a[2] for a in agents})[0]
    else:
        addr = sorted({a for h in client.who_has(p._backend.futures).values() for a in h})[0]
    pid = client.run(os.getpid, workers=[addr])[addr]
    os.kill(pid, signal.SIGKILL)
    # until the scheduler has seen the worker go: a fit that went on at once could finish its
    # last calls before that (seen in a suite run: 17 operations, ``recoveries == 0``)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        info = client.scheduler_info()["workers"].get(addr)
        if info is None or info.get("pid") != pid:
            break
        time.sleep(0.05)
    return addr


def test_worker_killed_during_a_fit(client):
    X, y, w, kw = make_data("logistic", "dense", "weighted")
    clean = dask_problem(X, y, w, kw, "weighted")
    want = fc.newton_cg(clean, preconditioner="diag")
    client.wait_for_workers(2, timeout=60)
    p = dask_problem(X, y, w, kw, "weighted")
    killed = []

    def callback(theta, info):
        # again at later iterations while no recovery has been needed: under load a kill
        # was once absorbed without one (17 operations, ``recoveries == 0``, cause not
        # found; the fit's result was right), which tests nothing of the recovery
        if info["iter"] == 1 or (killed and p.stats.recoveries == 0 and len(killed) < 3):
            killed.append(_kill_a_holder(client, p))

    got = fc.newton_cg(p, preconditioner="diag", callback=callback)
    assert killed and p.stats.recoveries >= 1, (killed, p.stats)
    # chunk results do not depend on where they are computed: the same bits
    assert np.array_equal(got.x, want.x) and got.fun == want.fun
    assert got.n_iter == want.n_iter and got.n_cg == want.n_cg


def test_worker_killed_during_products(client):
    client.wait_for_workers(2, timeout=60)
    X, y, w, kw = make_data("poisson", "csr", "plain", seed=5)
    p = dask_problem(X, y, w, kw, "plain", chunks=(51, 51, 51, 50))
    theta, v, _ = point(p)
    want = p.hvp(theta, v)
    wg = p.grad(theta)
    timer = threading.Timer(0.3, _kill_a_holder, args=(client, p))
    timer.start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 2.0 or p.stats.recoveries == 0:
        assert np.array_equal(p.hvp(theta, v), want)  # never a wrong answer
        n += 1
        assert time.monotonic() - t0 < 60
    timer.join()
    assert np.array_equal(p.grad(theta), wg)
    assert n > 10 and p.stats.recoveries >= 1


def test_empty_row_chunks_are_dropped(client):
    """A boolean row mask leaves empty chunks; the problem is built from the others and gives
    the in-memory numbers (an empty chunk was refused as X without rows)."""
    X, y, w, kw = make_data("logistic", "dense", "plain")
    keep = np.ones(N, dtype=bool)
    keep[CHUNKS[0]:CHUNKS[0] + CHUNKS[1]] = False  # the whole second chunk
    dX = da.from_array(X, chunks=(CHUNKS, D))
    dk = da.from_array(keep, chunks=(CHUNKS,))
    p = fc.GLM(dX[dk], da.from_array(y, chunks=CHUNKS)[dk], **kw)
    q = fc.GLM(X[keep], y[keep], **kw)
    t, v, _ = point(q)
    assert rel(p.value(t), q.value(t)) < 1e-12 and rel(p.grad(t), q.grad(t)) < 1e-12
    assert rel(p.hvp(t, v), q.hvp(t, v)) < 1e-12


def test_overflow_matches_in_memory(client):
    """value() is +inf where the objective overflows and finite (not NaN) for huge
    parameters without a penalty, as in memory; the gradient raises FloatingPointError."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((90, 2))
    y = (rng.random(90) < 0.5).astype(float)
    big = np.array([1e200, -1e200, 0.0])
    ref = fc.GLM(X, y, l2=0.0)
    p = fc.GLM(da.from_array(X, chunks=(30, 2)), y, l2=0.0)
    np.testing.assert_allclose(p.value(big), ref.value(big), rtol=1e-12)
    assert np.isfinite(p.value(big))
    counts = rng.poisson(1.0, 90).astype(float)
    hot = np.array([0.0, 0.0, 800.0])
    refp = fc.GLM(X, counts, family="poisson", l2=1e-3)
    pp = fc.GLM(da.from_array(X, chunks=(30, 2)), counts, family="poisson", l2=1e-3)
    assert pp.value(hot) == refp.value(hot) == np.inf
    assert pp.value_along(np.zeros(3), hot)(1.0) == np.inf
    with pytest.raises(FloatingPointError, match="overflows"):
        pp.grad(hot)


def test_scores_of_rows_out_of_order_or_repeated(client):
    """Influence scores of rows given out of order or twice, within one chunk: the chunk took
    any run of the right length for the contiguous rows lo..hi (rows [0, 2, 1, 3] came back
    as 0, 1, 2, 3), where the in-memory GLM checks the run."""
    X, y, w, kw = make_data("logistic", "dense", "weighted")
    ref = fc.GLM(X, y, sample_weight=w, **kw)
    theta = fc.newton_cg(ref, gtol=1e-10).x
    p = dask_problem(X, y, w, kw, "weighted", client=client)
    tp = ref.with_data(X[:3], y[:3])
    for rows in ([0, 2, 1, 3], [0, 0, 3, 3], [5, 4]):
        want = fc.Influence(ref, theta, "direct").scores(tp, rows=rows)
        got = fc.Influence(p, theta, "direct").scores(tp, rows=rows)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_label_and_option_checks_as_in_memory(client):
    """n_classes inferred from labels that would leave most classes empty is refused, and
    n_classes for another family too, as fastcurv.GLM does (the first silently built a
    5,001-class model)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2))
    y = np.arange(40) % 4
    y[7] = 5000
    for make in (lambda X, y, **k: fc.GLM(X, y, **k),
                 lambda X, y, **k: fc.GLM(da.from_array(X, chunks=(20, 2)), y, client="local",
                                          **k)):
        with pytest.raises(ValueError, match="only 5 distinct values occur"):
            make(X, y, family="multinomial")
        with pytest.raises(ValueError, match="only used by family='multinomial'"):
            make(X, (y > 2).astype(float), family="logistic", n_classes=2)
        q = make(X, np.arange(40) % 4, family="multinomial")
        with pytest.raises(ValueError, match="non-finite"):
            q.flatten([np.full((3, 4), np.nan)])
        with pytest.raises(ValueError, match="one layer"):
            q.flatten(3.0)


def test_zero_weight_chunk_behaves_as_zero_weight_rows(client):
    """A chunk whose weights are all 0 is built with unit weights and the share 0; its rows
    must still behave as rows of weight 0 do in memory: another row's overflow in the chunk
    does not fail a per-sample gradient or a score, and soft labels there do not hide
    separable data from the separability check (in memory they did: the check now ignores
    rows of weight 0 there too)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2))
    y = rng.poisson(1.0, 40).astype(float)
    X[15, 0] = 1000.0  # weight 0; exp(η) overflows at θ below
    w = np.ones(40)
    w[10:20] = 0.0
    th = np.array([1.0, 0.0, 0.0])
    ref = fc.GLM(X, y, family="poisson", sample_weight=w)
    p = fc.GLM(da.from_array(X, chunks=((10, 10, 20), 2)), y, family="poisson",
               sample_weight=w, client="local")
    np.testing.assert_allclose(p.per_sample_grads(th, [12]), ref.per_sample_grads(th, [12]),
                               rtol=1e-14)
    tp = ref.with_data(X[:2], y[:2])
    np.testing.assert_allclose(
        fc.Influence(p, th, "direct", damping=1.0).scores(tp, rows=np.arange(10, 14)),
        fc.Influence(ref, th, "direct", damping=1.0).scores(tp, rows=np.arange(10, 14)),
        rtol=1e-12)
    # separable weighted rows, soft labels on the rows of weight 0
    Xs = rng.standard_normal((60, 2))
    ys = (Xs[:, 0] > 0).astype(float)
    ys[20:40] = 0.5
    ws = np.ones(60)
    ws[20:40] = 0.0
    r0 = fc.newton_cg(fc.GLM(Xs, ys, l2=0.0, sample_weight=ws))
    for chunks in ((30, 30), (20, 20, 20)):
        r = fc.newton_cg(fc.GLM(da.from_array(Xs, chunks=(chunks, 2)), ys, l2=0.0,
                                sample_weight=ws, client="local"))
        assert r.message == r0.message and "separable" in r.message
        assert r.n_iter == r0.n_iter


# ------------------------------------------------------------------ a review's findings (s19)
def test_inferred_class_count_and_l2_follow_the_in_memory_glm():
    """Labels {0, 5} without n_classes: the in-memory GLM infers 6 classes, the Dask one
    refused them (its sparse-label check ignored the 1,000-class threshold). ``l2`` was a
    plain attribute: a negative or non-numeric value was taken (a negative penalty in
    ``value``)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = np.where(rng.random(40) < 0.5, 0.0, 5.0)
    dX = da.from_array(X, chunks=(15, 3))
    p = fc.GLM(dX, y, family="multinomial", l2=0.1, client="local")
    q = fc.GLM(X, y, family="multinomial", l2=0.1)
    assert p.n_outputs == q.n_outputs == 6
    theta = 0.1 * rng.standard_normal(p.n_params)
    np.testing.assert_allclose(p.value(theta), q.value(theta), rtol=1e-13)
    for bad, err in ((-1.0, ValueError), ("0.1", TypeError), (np.nan, ValueError)):
        with pytest.raises(err, match="l2"):
            p.l2 = bad
    assert p.l2 == 0.1
    p.l2 = q.l2 = 0.5
    np.testing.assert_allclose(p.value(theta), q.value(theta), rtol=1e-13)


def test_non_finite_label_with_inferred_classes_is_named_by_row_and_chunk():
    y = np.zeros(40)
    y[::2] = 1.0
    y[27] = np.nan
    dX = da.from_array(np.random.default_rng(1).standard_normal((40, 3)), chunks=(20, 3))
    with pytest.raises(ValueError, match=r"row 7.*row chunk 1.*starts at row 20"):
        fc.GLM(dX, y, family="multinomial", client="local")


def test_a_restarted_cluster_says_to_build_the_problem_again():
    """After ``client.restart()`` the first call raised distributed's FutureCancelledError
    (naming an internal task) and the next one its FuturesCancelledError; both now raise the
    RuntimeError that says what happened and what to do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
        with distributed.Client(cluster) as c:
            X, y, w, kw = make_data("logistic", "dense", "plain")
            p = fc.GLM(da.from_array(X, chunks=(50, X.shape[1])), y, client=c, **kw)
            theta = np.zeros(p.n_params)
            p.value(theta)
            c.restart()
            for _ in range(2):
                with pytest.raises(RuntimeError, match="build the problem again"):
                    p.value(theta)
        cluster.close()
