"""MLP products: fastcurv's ``fc.MLP`` against JAX (jit) and torch.func, and the forward-GEMM floor.

Problems (random data, fixed seed; θ Glorot-uniform with small random biases, v ~ N(0, 1);
l2 = 1e-3 so the penalty is part of every product):

* ``mlp784``: 784-512-512-10, tanh, softmax_cross_entropy, 1,024 rows, labels random in
  [0, 10), X ~ N(0, 1); float32 and float64 (P = 669,706).
* ``mlp20``: 20-64-64-1, tanh, mse, 128 rows, y ~ N(0, 1); float32 and float64 (P = 5,569).

Products: gradient, HVP, GGN-vector product, for

* fastcurv: ``p.grad(θ_k)`` on a new θ every call (harness.FreshTheta, as the GLM value+grad
  benchmarks); ``p.hvp(θ, v)`` / ``p.ggn_vp(θ, v)`` at a fixed θ after one
  ``p.value_and_grad(θ)`` (as Newton-CG calls them: a per-θ cache may answer part of the
  work) and again on a new θ every call (``fastcurv_new_theta``: the full cost, what JAX and
  torch pay on every call);
* JAX: ``jax.jit`` of ``jax.grad(F)``, ``jax.jvp(jax.grad(F))`` and jvp -> loss Hessian -> vjp
  (bench/mlp_baselines.py), inputs converted to JAX arrays once, ``block_until_ready()``;
* torch.func (eager): ``grad``, ``jvp(grad(F))``, jvp -> loss Hessian -> vjp; 2 threads.
  Timed twice: in this process (the pytest-benchmark row ``torch``) and, with the same
  rounds, gaps and checks, in a fresh interpreter that never loads Numba
  (``extra_info["own_process"]``; the torch ratios use this one). Numba's OpenMP runtime,
  which bench/conftest.py starts, slows torch's MKL tanh/exp kernels to ~3 ms per call at 2
  threads (see ``torch_own_process``);
* floor: the forward matrix products ``X @ W_1``, ``h_1 @ W_2``, ... alone in numpy (BLAS,
  preallocated outputs; no bias, activation or loss).

Before timing, every implementation's result is checked against an independent float64
numpy reference (hand-written backprop, R-operator HVP and J^T H J v; bench/mlp_baselines.py
checks it against finite differences): max-norm relative error <= 1e-10 for float64, <= 5e-5
for float32 (inputs rounded to float32, reference in float64 on the rounded inputs; measured:
~1e-15 and ~1e-6 for all three implementations), and the result dtype must be the problem's.
A disagreement fails the benchmark.

Timing: bench/harness.py's ``measure`` (quiet gate and 0.12 s idle gap before every round,
foreign load recorded). The 784 problem runs one call per round. The 20-64-64-1 products take
tens of microseconds: waking thread pools after the idle gap would dominate one call, so a
round there is ``CALLS_SMALL`` back-to-back calls (``calls_per_round`` in extra_info; the
generic table of bench/report.py shows the time per round, the MLP table below per call).

At the end of the session the MLP table (per-call medians over clean rounds, ratios
baseline / fastcurv, fastcurv's cost in gradients and in forward-GEMM floors) is printed and
stored in the JSON (``fastcurv.results.mlp_products``); ``python bench/bench_mlp.py OUT.json
[--markdown]`` prints it again from a JSON file.

Threads: the suite pins Numba and BLAS to 2 threads (conftest); torch gets
``torch.set_num_threads(2)`` (MKL + torch's own OpenMP). XLA's CPU client sizes its Eigen
thread pool to the CPUs the process may use (2 on this machine; there is no public "N
threads" setting). ``cpu_per_wall`` in extra_info is process CPU seconds per wall second over
back-to-back calls (includes spin-waiting threads).
"""

import json
import os
import subprocess
import sys
import time

import harness
import mlp_baselines as mb
import numpy as np
import pytest
import report
from harness import FreshTheta, assert_agree, interleaved, measure

L2 = 1e-3
# agreement with the float64 reference, relative to the result's max-norm. float32: sums of
# 1,024 rows x 784 features in float32 leave ~1e-5 relative error (torch.func's gradient was
# at 1.4e-5, fastcurv's and JAX's near 1e-6), so 5e-5
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 5e-5}
#: calls per timed round for the small network (each call is tens of microseconds)
CALLS_SMALL = int(os.environ.get("FASTCURV_BENCH_MLP_CALLS", "20"))
SEED = 0

_BIG = dict(sizes=(784, 512, 512, 10), activation="tanh", loss="softmax_cross_entropy", n=1024,
            calls=1)
_SMALL = dict(sizes=(20, 64, 64, 1), activation="tanh", loss="mse", n=128, calls=CALLS_SMALL)
CASES = {
    "mlp784f32": dict(_BIG, dtype=np.float32),
    "mlp784f64": dict(_BIG, dtype=np.float64),
    "mlp20f32": dict(_SMALL, dtype=np.float32),
    "mlp20f64": dict(_SMALL, dtype=np.float64),
}
OPS = ("grad", "hvp", "ggn")
OP_NAMES = {"grad": "gradient", "hvp": "HVP", "ggn": "GGN-vector product",
            "floor": "forward GEMMs"}
IMPLS = {"grad": ("fastcurv", "jax", "torch"),
         "hvp": ("fastcurv", "fastcurv_new_theta", "jax", "torch"),
         "ggn": ("fastcurv", "fastcurv_new_theta", "jax", "torch")}
FLOOR = "numpy_gemm_floor"

#: torch 2.13 warns about its own internal use of torch.jit.script on import
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def _case_title(case):
    c = CASES[case]
    dt = "f32" if c["dtype"] == np.float32 else "f64"
    loss = "softmax CE" if c["loss"] == "softmax_cross_entropy" else c["loss"]
    return f"MLP {'-'.join(map(str, c['sizes']))} {c['activation']} {loss} n={c['n']} {dt}"


def group_name(case, op):
    c = CASES[case]
    per = "" if c["calls"] == 1 else f" (times per round of {c['calls']} calls)"
    label = "gradient + forward-GEMM floor" if op == "grad" else OP_NAMES[op]
    return f"{_case_title(case)}: {label}{per}"


# ----------------------------------------------------------------------------- data
_DATA = {}
_MODELS = {}


def data(case):
    """(X, y, theta, v, reference products) of a case; the reference is float64 numpy on the
    case's (possibly float32-rounded) inputs."""
    if case not in _DATA:
        c = CASES[case]
        rng = np.random.default_rng(SEED)
        d, K = c["sizes"][0], c["sizes"][-1]
        X = rng.standard_normal((c["n"], d)).astype(c["dtype"])
        if c["loss"] == "softmax_cross_entropy":
            y = rng.integers(0, K, c["n"])
        else:
            y = rng.standard_normal(c["n"]).astype(c["dtype"])
        theta = mb.glorot_theta(c["sizes"], SEED + 1).astype(c["dtype"])
        v = rng.standard_normal(theta.size).astype(c["dtype"])
        ref = mb.NumpyMLP(X, y, c["sizes"], c["activation"], c["loss"], L2)
        want = {"grad": ref.grad(theta), "hvp": ref.hvp(theta, v), "ggn": ref.ggn_vp(theta, v)}
        _DATA[case] = dict(X=X, y=y, theta=theta, v=v, want=want, spec=ref.spec)
    return _DATA[case]


def model(case, impl):
    """fc.MLP / JaxMLP / TorchMLP for a case (built once)."""
    key = (case, impl)
    if key not in _MODELS:
        c, D = CASES[case], data(case)
        args = (D["X"], D["y"], c["sizes"])
        kw = dict(activation=c["activation"], loss=c["loss"], l2=L2)
        if impl.startswith("fastcurv"):
            import fastcurv as fc

            # one problem per variant: an MLP keeps the passes of one θ only, so a fixed-θ
            # call after a new-θ call on a shared problem would redo them (timed in
            # alternation, every other fixed-θ round was a full-cost call)
            p = fc.MLP(*args, **kw)
            assert p.dtype == c["dtype"] and p.n_params == D["theta"].size
            _MODELS[key] = p
        elif impl == "jax":
            pytest.importorskip("jax")
            _MODELS[key] = mb.JaxMLP(*args, dtype=c["dtype"], **kw)
        elif impl == "torch":
            pytest.importorskip("torch")
            _MODELS[key] = mb.TorchMLP(*args, dtype=c["dtype"], threads=2, **kw)
        else:
            raise ValueError(impl)
    return _MODELS[key]


def _as_numpy(out):
    if hasattr(out, "detach"):
        out = out.detach().numpy()
    return np.asarray(out)


def _cpu_per_wall(fn, calls):
    """Process CPU seconds per wall second over back-to-back calls (threads busy or spinning)."""
    n = max(3, calls)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.process_time() - c0) / (time.perf_counter() - t0), 2)


def _time(benchmark, case, op, impl, fn, want, **info):
    """Warm up (compiles) and check ``fn()`` against the reference, then time it with the
    harness, ``calls`` back-to-back calls per round."""
    c = CASES[case]
    benchmark.group = group_name(case, op if op != "floor" else "grad")
    out = _as_numpy(fn())  # the first call compiles (JAX, Numba) and is the one checked
    assert out.dtype == c["dtype"], f"{impl} {op}: result dtype {out.dtype} != {c['dtype']}"
    err = assert_agree(out, want, RTOL[np.dtype(c["dtype"])],
                       f"{case} {impl} {op} vs float64 numpy reference")
    del out
    calls = c["calls"]
    if calls == 1:
        run = fn
    else:
        def run():
            for _ in range(calls - 1):
                fn()
            return fn()
    measure(benchmark, run, key=f"{case}.{op}.{impl}", nbytes=0, rel_err_vs_ref=err,
            calls_per_round=calls, cpu_per_wall=_cpu_per_wall(fn, calls),
            gemm_floor_gflop=data(case)["spec"].gemm_flops() / 1e9, **info)


# --------------------------------------------------------------------------- benchmarks
def _params():
    out = []
    for case in CASES:
        out.append(pytest.param(case, "floor", FLOOR, id=f"{case}-floor"))
        for op in OPS:
            for impl in IMPLS[op]:
                out.append(pytest.param(case, op, impl, id=f"{case}-{op}-{impl}"))
    return out


def _impl_fn(case, op, impl):
    """(zero-argument call, note) of one implementation of a product (not the floor)."""
    D = data(case)
    theta, v = D["theta"], D["v"]
    if impl.startswith("fastcurv"):
        p = model(case, impl)
        if op == "grad":
            return FreshTheta(p.grad, theta), "p.grad on a new theta every call"
        f = p.hvp if op == "hvp" else p.ggn_vp
        if impl == "fastcurv_new_theta":
            return (FreshTheta(lambda t: f(t, v), theta),
                    f"p.{f.__name__} on a new theta every call")
        p.value_and_grad(theta)  # state at theta, as Newton-CG leaves it

        def fn():
            return f(theta, v)
        return fn, f"p.{f.__name__} at a fixed theta after p.value_and_grad(theta)"
    if impl == "jax_fixed":
        m = model(case, "jax")
        f = m.hvp_at if op == "hvp" else m.ggn_vp_at
        apply, vn = f(m.native(theta)), m.native(v)
        return (lambda: apply(vn).block_until_ready(),
                "jax.jit of the linear map of jax.linearize at a fixed theta (built once, "
                "as fastcurv's p.value_and_grad(theta))")
    fn = _framework_fn(model(case, impl), op, theta, v)
    return fn, {"jax": "jax.jit; inputs JAX arrays; block_until_ready",
                "torch": "torch.func eager, 2 threads, in the suite's process (Numba's OpenMP "
                         "runtime initialized: slows torch's MKL-VML tanh/exp)"}[impl]


@pytest.mark.parametrize(("case", "op", "impl"), _params())
def test_mlp(benchmark, case, op, impl):
    D = data(case)
    if impl == FLOOR:
        fl = mb.GemmFloor(D["X"], D["theta"], CASES[case]["sizes"])
        _time_floor(benchmark, case, fl)
        return
    fn, note = _impl_fn(case, op, impl)
    _time(benchmark, case, op, impl, fn, D["want"][op], note=note)
    if impl == "torch":
        # the same product timed in a fresh process without Numba's OpenMP runtime
        benchmark.extra_info["own_process"] = torch_own_process(case, op)


#: implementations timed in alternation (torch runs in a process of its own, see below)
#: ``jax_fixed``: JAX's own reuse at a fixed θ (``jax.linearize``: the forward pass and its
#: residuals once per θ, then only the linear map per v), the like-for-like baseline of
#: fastcurv at a fixed θ; ``jax`` (``jax.jvp(jax.grad)``, the issue's baseline) redoes
#: everything per call, like ``fastcurv_new_theta``
INTERLEAVED = {"grad": ("fastcurv", "jax", FLOOR),
               "hvp": ("fastcurv", "fastcurv_new_theta", "jax", "jax_fixed"),
               "ggn": ("fastcurv", "fastcurv_new_theta", "jax", "jax_fixed")}


@pytest.mark.parametrize(("case", "op"), [pytest.param(c, o, id=f"{c}-{o}")
                                          for c in CASES for o in OPS])
def test_mlp_interleaved(benchmark, case, op):
    """fastcurv and JAX (and, for the gradient, the forward-GEMM floor) called in
    alternation, so that their ratio does not carry the machine's drift between benchmarks
    (``harness.interleaved``)."""
    c, D = CASES[case], data(case)
    if "jax" in INTERLEAVED[op]:
        pytest.importorskip("jax")
    rtol = RTOL[np.dtype(c["dtype"])]
    impls = []
    for impl in INTERLEAVED[op]:
        if impl == FLOOR:
            fl = mb.GemmFloor(D["X"], D["theta"], c["sizes"])
            impls.append((f"{case}.floor.{FLOOR}", fl, (), lambda out, fl=fl: assert_agree(
                out[:64], fl.reference(64), rtol, f"{case} forward GEMMs vs einsum")))
            continue
        fn, _ = _impl_fn(case, op, impl)
        impls.append((f"{case}.{op}.{impl}", fn, (), lambda out, impl=impl: assert_agree(
            _as_numpy(out), D["want"][op], rtol, f"{case} {impl} {op} vs numpy reference")))
    benchmark.group = f"{group_name(case, op)} (interleaved)"
    interleaved(benchmark, impls, key=f"{case}.{op}.interleaved", calls=c["calls"])


def _framework_fn(m, op, theta, v):
    """A zero-argument call of a JaxMLP / TorchMLP product on pre-converted inputs."""
    tn = m.native(theta)
    vn = m.native(v)
    if op == "grad":
        return lambda: m.grad_n(tn)
    if op == "hvp":
        return lambda: m.hvp_n(tn, vn)
    return lambda: m.ggn_vp_n(tn, vn)


# ------------------------------------------------------------- torch in its own process
# Numba's "omp" threading layer (initialized by bench/conftest.py) loads the system libgomp;
# torch then runs its MKL vector-math kernels (tanh, exp) through that runtime, and with 2
# threads each such call takes ~3 ms whatever its size (8,192 doubles: 11 us in a clean
# process; `mul` is unaffected; with NUMBA_THREADING_LAYER=workqueue or 1 torch thread it
# does not happen). That made torch.func 7-8x slower on the 20-64-64-1 network and 20-30%
# slower on the 784 network than in a process of its own. The in-suite row is kept (it is
# what this process measures); the fair torch number is the same product timed the same way
# (harness round gate, rounds, calls per round) in a fresh interpreter that never imports
# Numba, reported in extra_info["own_process"] and used for the torch ratios.

def torch_own_process(case, op, timeout=900):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", case, op]
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise AssertionError(f"torch worker {case} {op} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    med, n_clean, n, _ = report.clean_stats(_as_bench(res))
    res.update(median_s=med, clean=n_clean)
    return res


def _as_bench(res):
    """A worker result in the shape report.clean_stats reads."""
    t = sorted(res["round_s"])
    m = len(t)
    med = t[m // 2] if m % 2 else 0.5 * (t[m // 2 - 1] + t[m // 2])
    return {"stats": {"data": res["round_s"], "median": med, "min": t[0], "rounds": m},
            "extra_info": {"round_foreign_share": res["round_foreign_share"]}}


def _torch_worker(case, op):
    """Child process: check, then time ``op`` of TorchMLP like harness.measure does."""
    import torch

    c, D = CASES[case], data(case)
    m = mb.TorchMLP(D["X"], D["y"], c["sizes"], c["activation"], c["loss"], L2,
                    dtype=c["dtype"], threads=2)
    fn = _framework_fn(m, op, D["theta"], D["v"])
    out = _as_numpy(fn())
    assert out.dtype == c["dtype"]
    err = assert_agree(out, D["want"][op], RTOL[np.dtype(c["dtype"])],
                       f"{case} torch (own process) {op} vs float64 numpy reference")
    calls = c["calls"]

    def run():
        for _ in range(calls):
            fn()

    t0 = time.perf_counter()
    run()
    t_warm = time.perf_counter() - t0
    rounds = int(min(harness.MAX_ROUNDS, max(harness.MIN_ROUNDS,
                                              harness.TARGET_S / max(t_warm, 1e-6))))
    harness.wait_quiet(harness.SETTLE, harness.QUIET_WAIT)
    gate = harness.RoundGate()
    times = []
    for _ in range(rounds):
        gate.setup()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    shares = gate.finish()
    with open("/proc/self/maps") as fh:
        gomp = sorted({ln.split()[-1].rsplit("/", 1)[-1] for ln in fh if "gomp" in ln})
    print(json.dumps({"round_s": times, "round_foreign_share": shares, "calls_per_round": calls,
                      "rel_err_vs_ref": err, "threads": torch.get_num_threads(),
                      "numba_loaded": "numba" in sys.modules, "libgomp": gomp,
                      "cpu_per_wall": _cpu_per_wall(fn, calls)}))


def _time_floor(benchmark, case, fl):
    c = CASES[case]
    benchmark.group = group_name(case, "grad")
    got = fl()[:64]
    assert got.dtype == c["dtype"]
    err = assert_agree(got, fl.reference(64), RTOL[np.dtype(c["dtype"])],
                       f"{case} forward GEMMs vs einsum")
    calls = c["calls"]
    if calls == 1:
        run = fl
    else:
        def run():
            for _ in range(calls):
                fl()
    measure(benchmark, run, key=f"{case}.floor.{FLOOR}", nbytes=0, rel_err_vs_ref=err,
            calls_per_round=calls, cpu_per_wall=_cpu_per_wall(fl, calls),
            gemm_floor_gflop=fl.flops / 1e9,
            note="X @ W1, h1 @ W2, ... alone (numpy BLAS, preallocated outputs)")


# ------------------------------------------------------------------------- the MLP table
def thread_info():
    """Threads each library was set to or uses (for the JSON and the table's footer)."""
    info = {"n_cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/self/status") as f:
            info["os_threads_in_process"] = int(
                next(ln for ln in f if ln.startswith("Threads:")).split()[1])
    except (OSError, StopIteration):
        pass
    if mb._TORCH is not None:
        t = mb._TORCH
        info["torch"] = f"{t.__version__}, {t.get_num_threads()} intra-op threads"
    if mb._JAX is not None:
        jax = mb._JAX[0]
        info["jax"] = (f"{jax.__version__}, backend {jax.default_backend()}, XLA Eigen pool = "
                       f"CPUs available to the process ({len(os.sched_getaffinity(0))}); "
                       f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    return info


def _per_call(b):
    """(median over clean rounds, min) per call, seconds."""
    calls = (b.get("extra_info") or {}).get("calls_per_round", 1)
    med = report.clean_stats(b)[0]
    s = b.get("stats") or b
    return med / calls, s["min"] / calls


def mlp_rows(benchmarks):
    """One row per (case, product): per-call medians and ratios."""
    idx = {}
    for b in benchmarks:
        info = b.get("extra_info") or {}
        key = info.get("key", "")
        if key.startswith("mlp") and "interleaved" not in info:
            idx[key] = _per_call(b)
            own = info.get("own_process")
            if own:
                calls = own.get("calls_per_round", 1)
                idx[key + "_own_process"] = (own["median_s"] / calls,
                                             min(own["round_s"]) / calls)
    rows = []
    for case in CASES:
        floor = idx.get(f"{case}.floor.{FLOOR}")
        grad = idx.get(f"{case}.grad.fastcurv")
        for op in OPS:
            t = {impl: idx.get(f"{case}.{op}.{impl}") for impl in IMPLS[op]}
            t_suite = t.get("torch")
            if idx.get(f"{case}.{op}.torch_own_process"):
                t["torch"] = idx[f"{case}.{op}.torch_own_process"]
            if not any(t.values()):
                continue
            fcm = t.get("fastcurv")
            fcn = t.get("fastcurv_new_theta")

            def ratio(a, b):
                return a[0] / b[0] if a and b else None

            def ratio_min(a, b):
                return a[1] / b[1] if a and b else None

            rows.append({
                "case": case, "problem": _case_title(case), "op": op,
                "product": OP_NAMES[op],
                "floor_ms": floor[0] * 1e3 if floor else None,
                "fastcurv_ms": fcm[0] * 1e3 if fcm else None,
                "fastcurv_new_theta_ms": fcn[0] * 1e3 if fcn else None,
                "jax_ms": t["jax"][0] * 1e3 if t.get("jax") else None,
                "torch_ms": t["torch"][0] * 1e3 if t.get("torch") else None,
                "torch_in_suite_ms": t_suite[0] * 1e3 if t_suite else None,
                "jax_over_fastcurv": ratio(t.get("jax"), fcm),
                "torch_over_fastcurv": ratio(t.get("torch"), fcm),
                "jax_over_fastcurv_new_theta": ratio(t.get("jax"), fcn),
                "torch_over_fastcurv_new_theta": ratio(t.get("torch"), fcn),
                "fastcurv_in_grads": ratio(fcm, grad),
                "fastcurv_new_theta_in_grads": ratio(fcn, grad),
                "fastcurv_in_floors": ratio(fcm, floor),
                "jax_in_floors": ratio(t.get("jax"), floor),
                "torch_in_floors": ratio(t.get("torch"), floor),
                "fastcurv_min_ms": fcm[1] * 1e3 if fcm else None,
                "jax_over_fastcurv_min": ratio_min(t.get("jax"), fcm),
                "torch_over_fastcurv_min": ratio_min(t.get("torch"), fcm),
            })
    return rows


def mlp_interleaved_rows(benchmarks):
    """One row per (case, product) timed in alternation: ratios of per-call medians over
    clean calls (``report._clean_median``), the median of the rounds' paired ratios, and
    fastcurv's time in forward-GEMM floors (gradient)."""
    import statistics

    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        T = info.get("interleaved")
        if not T or not info.get("key", "").startswith("mlp"):
            continue
        S = info.get("interleaved_share") or {}
        case, op = info["problem"], info["op"]
        med = {k.split(".")[-1]: report._clean_median(t, S.get(k)) for k, t in T.items()}
        by = {k.split(".")[-1]: t for k, t in T.items()}

        def ratio(a, b, med=med):
            return med[a] / med[b] if a in med and b in med else None

        def paired(a, b, by=by):
            if a not in by or b not in by:
                return None
            return statistics.median(x / y for x, y in zip(by[a], by[b], strict=True))

        rows.append({"problem": _case_title(case), "product": OP_NAMES[op],
                     "rounds": len(by["fastcurv"]), "fastcurv_ms": med["fastcurv"] * 1e3,
                     "jax_ms": med["jax"] * 1e3 if "jax" in med else None,
                     "jax_over_fastcurv": ratio("jax", "fastcurv"),
                     "jax_over_fastcurv_paired": paired("jax", "fastcurv"),
                     "jax_over_fastcurv_new_theta": ratio("jax", "fastcurv_new_theta"),
                     "jax_fixed_over_fastcurv": ratio("jax_fixed", "fastcurv"),
                     "fastcurv_in_floors": ratio("fastcurv", FLOOR),
                     "jax_in_floors": ratio("jax", FLOOR)})
    return rows


INTERLEAVED_COLUMNS = [("problem", "problem", None), ("product", "product", None),
                       ("rounds", "rounds", None), ("fastcurv ms", "fastcurv_ms", 3),
                       ("JAX ms", "jax_ms", 3), ("JAX / fc", "jax_over_fastcurv", 2),
                       ("JAX / fc, paired", "jax_over_fastcurv_paired", 2),
                       ("JAX / fc new-θ", "jax_over_fastcurv_new_theta", 2),
                       ("JAX linearized / fc", "jax_fixed_over_fastcurv", 2),
                       ("fc in floors", "fastcurv_in_floors", 2),
                       ("JAX in floors", "jax_in_floors", 2)]


COLUMNS = [("problem", "problem", None), ("product", "product", None),
           ("floor ms", "floor_ms", 3), ("fastcurv ms", "fastcurv_ms", 3),
           ("fastcurv new-θ ms", "fastcurv_new_theta_ms", 3), ("JAX ms", "jax_ms", 3),
           ("torch ms", "torch_ms", 3), ("torch in-suite ms", "torch_in_suite_ms", 3),
           ("JAX / fc", "jax_over_fastcurv", 2),
           ("torch / fc", "torch_over_fastcurv", 2),
           ("JAX / fc new-θ", "jax_over_fastcurv_new_theta", 2),
           ("torch / fc new-θ", "torch_over_fastcurv_new_theta", 2),
           ("fc in grads", "fastcurv_in_grads", 2), ("fc in floors", "fastcurv_in_floors", 1),
           ("JAX in floors", "jax_in_floors", 1), ("torch in floors", "torch_in_floors", 1),
           ("JAX / fc (mins)", "jax_over_fastcurv_min", 2),
           ("torch / fc (mins)", "torch_over_fastcurv_min", 2)]


def _table(columns, rows, markdown):
    header = [h for h, _, _ in columns]
    body = []
    for r in rows:
        line = []
        for _, k, nd in columns:
            x = r[k]
            line.append(x if nd is None else ("—" if x is None else f"{x:.{nd}f}"))
        body.append(line)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return out + ["| " + " | ".join(map(str, ln)) + " |" for ln in body]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    return out + ["  ".join(str(c).ljust(w) for c, w in zip(ln, widths, strict=True))
                  for ln in body]


def render_mlp(benchmarks, markdown=False, threads=None):
    rows = mlp_rows(benchmarks)
    irows = mlp_interleaved_rows(benchmarks)
    if not rows and not irows:
        return ""
    out = []
    if rows:
        out += _table(COLUMNS, rows, markdown)
        out.append("per call: medians over clean rounds / calls per round; fc = fastcurv at a "
                   "fixed θ after value_and_grad(θ); fc new-θ = a new θ every call; ratios = "
                   "baseline / fastcurv (> 1: fastcurv faster); 'in grads' = fastcurv product / "
                   "fastcurv gradient; 'in floors' = time / forward-GEMM floor; torch ms = "
                   "torch.func timed in a process of its own (no Numba OpenMP runtime), used "
                   "for the torch ratios; torch in-suite ms = the pytest-benchmark row of this "
                   "process")
    if irows:
        out += ["", "fastcurv and JAX called in alternation (one round of calls each, order "
                "reversed every other round; the gradient with the forward-GEMM floor): both "
                "see the same machine speed. JAX / fc: jax.jvp(jax.grad) (the issue's "
                "baseline, full cost per call) against fastcurv at a fixed θ; new-θ: against "
                "fastcurv's full cost; JAX linearized / fc: both at a fixed θ, JAX reusing "
                "its jax.linearize residuals"]
        out += _table(INTERLEAVED_COLUMNS, irows, markdown)
    if threads:
        out.append("threads: " + "; ".join(f"{k}: {v}" for k, v in threads.items()))
    return "\n".join(out)


class _Summary:
    """Prints the MLP table at the end of the session (registered by the fixture below)."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter, config):
        text = harness.RESULTS.get("mlp_products", {}).get("table")
        if text:
            terminalreporter.write_sep("=", "fastcurv MLP products (per call, same run)")
            terminalreporter.write_line(text)


@pytest.fixture(scope="module", autouse=True)
def _mlp_report(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("fastcurv-mlp-summary"):
        pm.register(_Summary(), "fastcurv-mlp-summary")
    yield
    bs = getattr(request.config, "_benchmarksession", None)
    benchmarks = [b.as_dict(include_data=True) for b in (bs.benchmarks if bs else [])
                  if not b.has_error]
    threads = thread_info()
    harness.RESULTS["mlp_products"] = {"rows": mlp_rows(benchmarks), "threads": threads,
                                       "table": render_mlp(benchmarks, threads=threads)}
    _MODELS.clear()
    _DATA.clear()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-worker":
        _torch_worker(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) < 2:
        print("usage: python bench/bench_mlp.py OUT.json [--markdown]")
        sys.exit(2)
    with open(sys.argv[1]) as fh:
        doc = json.load(fh)
    thr = (doc.get("fastcurv", {}).get("results", {}).get("mlp_products") or {}).get("threads")
    print(render_mlp(doc.get("benchmarks", []), markdown="--markdown" in sys.argv,
                     threads=thr))
