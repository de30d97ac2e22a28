"""Shared machinery of the benchmark suite: warm-up + agreement check + settle + time.

Every timed implementation goes through :func:`measure`:

1. one warm-up call (compiles / loads Numba code, faults pages, fills caches);
2. its result is checked against fastcurv's (or, for fastcurv, against an independent
   numpy reference): a benchmark that disagrees fails instead of producing a number;
3. ``benchmark.pedantic`` times a fixed number of rounds of one call each; before every round
   an untimed gap of ``ROUND_GAP`` s lets OpenBLAS / OpenMP worker threads stop spinning (they
   spin ~100 ms after a threaded call and slow a Numba parallel loop right after it), and is
   extended while other processes keep this 2-core machine busy (see :func:`wait_quiet`).
   The foreign CPU load seen during each round is recorded; the report takes medians over
   the rounds during which no other process competed for the CPUs ("clean" rounds) and
   flags rows that had too few of them.

Each benchmark carries ``extra_info`` with a unique ``key`` (``problem.op.impl``) and the bytes
one pass reads, from which :mod:`report` computes GB/s and ratios.
"""

import os
import platform
import time

import numpy as np

#: seconds to sleep between implementations (OpenBLAS threads spin ~100 ms)
SETTLE = 0.3
#: before each benchmark, wait up to this many seconds for other processes to go idle
QUIET_WAIT = float(os.environ.get("FASTCURV_BENCH_QUIET_WAIT", "60"))
#: "idle": other processes used at most this share of the machine's CPUs in the last window
QUIET_THRESHOLD = 0.03
#: untimed gap before every round (OpenBLAS threads stop spinning; load is checked). 0.12 s
#: was too short on the Intel Xeon of 2026-11-29: a float32 HVP 0.12 s after a threaded
#: ``X @ v`` took 26.4 ms, 0.15-0.25 s after it 21.5-22.1 (medians of 12; the other way round,
#: NumPy after fastcurv, no difference), which penalized fastcurv in every interleaved round
#: where it followed a BLAS baseline
ROUND_GAP = 0.2
#: ... extended up to this many seconds while other processes are busy
QUIET_WAIT_ROUND = float(os.environ.get("FASTCURV_BENCH_QUIET_WAIT_ROUND", "30"))
#: ... and at most this many seconds of such waiting per benchmark
QUIET_BUDGET = float(os.environ.get("FASTCURV_BENCH_QUIET_BUDGET", "120"))
#: rounds per benchmark: about TARGET_S seconds of timed calls, clamped
TARGET_S = float(os.environ.get("FASTCURV_BENCH_TARGET_S", "1.5"))
MIN_ROUNDS = int(os.environ.get("FASTCURV_BENCH_MIN_ROUNDS", "15"))
MAX_ROUNDS = 60
#: results that are not timings (memory, compile latency), added to the JSON by conftest
RESULTS = {}


def assert_agree(got, want, rtol, what):
    """``max|got − want| <= rtol · max|want|`` (norm-wise, robust to tiny entries)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-300)
    err = float(np.max(np.abs(got - want)))
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:g} * {scale:.3e}"
    return err / scale


def agree_value_grad(got, want, rtol, what):
    (fg, gg), (fw, gw) = got, want
    assert abs(fg - fw) <= rtol * max(abs(fw), 1e-300), f"{what}: value {fg!r} != {fw!r}"
    return assert_agree(gg, gw, rtol, f"{what} (gradient)")


def measure(benchmark, fn, *args, key, nbytes, check=None, rounds=None, **info):
    """Warm up ``fn(*args)``, check its result with ``check(result)``, then time it.

    Timed with ``benchmark.pedantic``: ``rounds`` rounds of one call each (default: enough for
    about ``TARGET_S`` seconds, between ``MIN_ROUNDS`` and ``MAX_ROUNDS``). Before every
    round a short untimed gate (:class:`RoundGate`) lets other thread pools go idle and waits
    while other processes keep the machine busy; the foreign load seen during each round is
    recorded in ``extra_info``.
    """
    import gc

    gc.collect()
    t0 = time.perf_counter()
    result = fn(*args)  # warm-up
    t_warm = time.perf_counter() - t0
    rel_err = check(result) if check is not None else None
    del result
    problem, op, impl = key.split(".")
    benchmark.extra_info.update(key=key, problem=problem, op=op, impl=impl, bytes=int(nbytes))
    if rel_err is not None:
        benchmark.extra_info["rel_err_vs_ref"] = float(rel_err)
    benchmark.extra_info.update(info)
    if rounds is None:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_S / max(t_warm, 1e-6))))
    waited, _ = wait_quiet(SETTLE, QUIET_WAIT)
    gate = RoundGate()
    mon = CPUMonitor()
    out = benchmark.pedantic(fn, args=args, setup=gate.setup, rounds=rounds, iterations=1)
    shares = gate.finish()
    busy = mon.foreign()
    benchmark.extra_info["waited_for_quiet_s"] = round(waited + gate.waited, 2)
    if busy is not None:
        # over the whole timed phase (rounds and gaps): precise over a few seconds
        benchmark.extra_info["foreign_cpu_share"] = round(busy["foreign_share_of_machine"], 3)
    if shares and len(shares) == rounds:
        # per round, over the round and the gap before it (RoundGate): a competing process
        # shows up as >~ 0.4
        benchmark.extra_info["round_foreign_share"] = [round(x, 3) for x in shares]
    return out


#: interleaved comparisons: about this many seconds of timed calls per comparison, clamped
INTERLEAVED_TARGET_S = float(os.environ.get("FASTCURV_BENCH_INTERLEAVED_TARGET_S", "8"))
INTERLEAVED_MIN_ROUNDS = int(os.environ.get("FASTCURV_BENCH_INTERLEAVED_MIN_ROUNDS", "12"))


def interleaved(benchmark, impls, *, key, calls=1, rounds=None, **info):
    """Time several implementations in alternation: the ratio of two of them is then measured
    under the same machine conditions.

    ``impls`` is a list of ``(name, fn, args, check)``; each ``name`` is the key its own
    benchmark has in the suite (``problem.op.impl``). Every ``fn(*args)`` is warmed up once
    and its result checked with ``check(result)`` (None: not checked). Then each round calls
    every implementation once (``calls`` times, timed together, for microsecond calls), in
    the listed order on even rounds and the reverse order on odd ones, each call after the
    untimed gate of :class:`RoundGate` (a ``ROUND_GAP`` s pause for other thread pools to
    stop spinning, longer while other processes keep the machine busy).

    Why: on a virtual machine the speed of memory and cores drifts by 1.5-2x within minutes
    (measured on the 2-core Intel Xeon of 2026-11-29: the same dense probe took 36 ms, then
    63 ms). Separate benchmarks of A and B, each a few seconds long and minutes apart, give a
    ratio of medians that carries that drift; alternating calls give each the same
    conditions. ``extra_info["interleaved"]`` holds each implementation's per-call times
    (seconds) and ``extra_info["interleaved_share"]`` the foreign CPU share seen during each
    call; :mod:`report` computes the ratios. pytest-benchmark's own statistics of this entry
    time whole rounds (gaps included) and mean nothing.
    """
    import gc

    gc.collect()
    errs = {}
    for name, fn, args, check in impls:
        result = fn(*args)
        if check is not None:
            err = check(result)
            if err is not None:
                errs[name] = float(err)
        del result
    if rounds is None:
        # from a second call of each (the first one compiles: Numba, JAX, the probe)
        t_round = 0.0
        for _, fn, args, _ in impls:
            t0 = time.perf_counter()
            fn(*args)
            t_round += time.perf_counter() - t0
        rounds = int(min(MAX_ROUNDS, max(INTERLEAVED_MIN_ROUNDS,
                                         INTERLEAVED_TARGET_S / max(t_round * calls, 1e-6))))
    times = {name: [] for name, *_ in impls}
    order = []
    gate = RoundGate()
    state = {"round": 0}

    def one_round():
        r = state["round"]
        state["round"] += 1
        for name, fn, args, _ in (impls if r % 2 == 0 else impls[::-1]):
            gate.setup()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(*args)
            times[name].append((time.perf_counter() - t0) / calls)
            order.append(name)

    problem, op, impl = key.split(".")
    waited, _ = wait_quiet(SETTLE, QUIET_WAIT)
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    shares = gate.finish()
    by_name = {name: [] for name in times}
    if len(shares) == len(order):
        for name, sh in zip(order, shares, strict=True):
            by_name[name].append(round(sh, 3))
    benchmark.extra_info.update(
        key=key, problem=problem, op=op, impl=impl, bytes=0, interleaved=times,
        interleaved_share=by_name, calls_per_round=calls,
        waited_for_quiet_s=round(waited + gate.waited, 2),
        note="implementations called in alternation (order reversed every other round); "
             "the ratios are in report.py's interleaved table", **info)
    if errs:
        benchmark.extra_info["rel_err_vs_ref"] = errs
    return times


class RoundGate:
    """``setup`` of every pedantic round (untimed).

    Closes the load monitor of the previous round, waits ``ROUND_GAP`` s, and longer (up to
    ``QUIET_WAIT_ROUND`` s per round and ``QUIET_BUDGET`` s per benchmark) while other
    processes keep the machine busy. A round's foreign share is measured from the start of
    the last ``ROUND_GAP`` window before it to its end: /proc/stat counts busy time in 10 ms
    ticks, so over a round of a few milliseconds alone one tick read as a share of 1.6 or
    more (up to 9 recorded for 3 ms rounds of the small MLP), and the report's filter of
    loaded rounds dropped a third of the rounds at random (a review: ratios moved by up to
    ±0.27). Over the gap plus the round the tick error is ~5% of the machine.
    """

    def __init__(self):
        self.waited = 0.0
        self.shares = []
        self.mon = None

    def _close(self):
        if self.mon is not None:
            busy = self.mon.foreign()
            self.shares.append(busy["foreign_share_of_machine"] if busy else 0.0)
            self.mon = None

    def setup(self):
        self._close()
        budget = max(0.0, min(QUIET_WAIT_ROUND, QUIET_BUDGET - self.waited))
        w, _, self.mon = _wait_quiet(ROUND_GAP, budget)
        self.waited += max(0.0, w - ROUND_GAP)

    def finish(self):
        self._close()
        return self.shares


def wait_quiet(window=SETTLE, max_wait=None, threshold=None):
    """Sleep ``window`` s (lets other thread pools go idle); repeat, up to ``max_wait`` s in all,
    while other processes used more than ``threshold`` of the machine during the window.

    Returns (seconds waited, foreign share of the last window). Timings taken while another
    process computes on this 2-core machine are meaningless (a parallel loop waits for the
    slower of its threads, and the scheduler hands out ~4 ms slices), so the suite waits for a
    quiet moment and records the foreign load seen during each benchmark.
    """
    waited, share, _ = _wait_quiet(window, max_wait, threshold)
    return waited, share


def _wait_quiet(window, max_wait=None, threshold=None):
    """:func:`wait_quiet`, also returning the :class:`CPUMonitor` started at the beginning of
    its last window (still running)."""
    max_wait = QUIET_WAIT if max_wait is None else max_wait
    threshold = QUIET_THRESHOLD if threshold is None else threshold
    t0 = time.monotonic()
    while True:
        mon = CPUMonitor()
        time.sleep(window)
        busy = mon.foreign()
        share = busy["foreign_share_of_machine"] if busy else 0.0
        if share <= threshold or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, share, mon


class FreshTheta:
    """``fn(θ_k)`` with a new parameter vector on every call, so no per-θ cache can answer.

    ``θ_0 = theta`` exactly (the warm-up call, whose result is checked against a reference),
    then ``θ_k = theta + k·ε·δ`` with a fixed direction δ and a tiny ε: every call is a
    different point as far as any cache keyed on θ is concerned (fastcurv keeps the state of
    its most recent points), and the values stay those of the reference problem. Building
    θ_k is one length-P vector operation, negligible next to a pass over X.
    """

    EPS = 1e-9

    def __init__(self, fn, theta, seed=0):
        self.fn = fn
        self.theta = np.asarray(theta)
        rng = np.random.default_rng(seed)
        self.delta = (self.EPS * rng.standard_normal(self.theta.shape)).astype(
            self.theta.dtype)
        self.k = 0

    def __call__(self):
        k = self.k
        self.k += 1
        theta = self.theta if k == 0 else self.theta + k * self.delta
        return self.fn(theta)


# ------------------------------------------------------------------ environment
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment():
    """Versions, BLAS kernel (threadpoolctl), thread counts and suspicious env variables."""
    import numba
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    blas = [
        {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                               "threading_layer", "filepath")}
        for i in threadpool_info()
    ]
    for b in blas:
        b["filepath"] = os.path.basename(b["filepath"] or "")
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "(not initialized)"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "git": git_state(),
        "cpu": cpu_model(),
        "n_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "sklearn": sklearn.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "threadpools": blas,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                "NUMBA_NUM_THREADS")},
    }


def hugepage_fraction(arr):
    """Share of ``arr``'s resident bytes backed by transparent huge pages (/proc/self/smaps).

    numpy asks for huge pages on large arrays (madvise); whether it gets them depends on
    memory fragmentation, and 4 KB pages cost streaming bandwidth (TLB misses, prefetchers
    stop at page boundaries). Recorded with each probe so that two different arrays (f32 vs
    f64) can be compared with that in mind. None where smaps is unavailable.
    """
    import re

    lo_a = arr.__array_interface__["data"][0]
    hi_a = lo_a + arr.nbytes
    hdr = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s")
    rss = huge = 0
    inside = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                m = hdr.match(line)
                if m:
                    lo, hi = int(m.group(1), 16), int(m.group(2), 16)
                    inside = lo < hi_a and hi > lo_a
                elif inside and line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif inside and line.startswith("AnonHugePages:"):
                    huge += int(line.split()[1]) * 1024
    except OSError:
        return None
    return round(huge / rss, 3) if rss else None


def git_state():
    """HEAD of the checkout and whether the library sources differ from it (the kernels are
    timed as they are on disk, committed or not)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels", "fastcurv"],
                               cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    n = len(dirty.splitlines()) if dirty else 0
    return head + (f" + uncommitted changes in {n} library file(s)" if n else "")


class CPUMonitor:
    """CPU seconds used by *other* processes on this machine while the suite ran.

    /proc/stat gives all busy CPU time; our own process (and reaped children) is subtracted.
    A large number means the timings were taken on a busy machine.
    """

    def __init__(self):
        self.t0 = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / hz
        t = os.times()
        own = time.process_time() + t.children_user + t.children_system
        return busy, own, time.monotonic()

    def foreign(self):
        t1 = self._sample()
        if self.t0 is None or t1 is None:
            return None
        busy = t1[0] - self.t0[0]
        own = t1[1] - self.t0[1]
        wall = t1[2] - self.t0[2]
        return {"wall_s": wall, "own_cpu_s": own, "foreign_cpu_s": max(0.0, busy - own),
                "foreign_share_of_machine": max(0.0, busy - own) / (wall * os.cpu_count())}
