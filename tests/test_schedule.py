"""The chunk schedule of the parallel kernels (kernels/schedule.py): every chunk runs exactly
once, whatever the thread count, and a thread that finishes early takes more chunks."""

import numba
import numpy as np
import pytest
from fastcurv.kernels.schedule import claim
from numba import prange


@numba.njit(parallel=True)
def _claims(n_chunks, spin, hits, who):
    """The kernels' loop (see kernels/schedule.py): each chunk records how often it ran and
    on which thread; chunk c busy-waits ``spin[c]`` steps."""
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            hits[c] += _spin(spin[c])
            who[c] = numba.get_thread_id()


@numba.njit(parallel=True)
def _fixed_split(n_chunks, spin, hits, who):
    """The same with ``prange`` over the chunks: Numba splits them evenly ahead of time."""
    for c in prange(n_chunks):
        hits[c] += _spin(spin[c])
        who[c] = numba.get_thread_id()


@numba.njit
def _spin(steps):
    s = 0.0
    for _ in range(steps):
        s = s * 0.5 + 1.0
    return 1 if s >= 0.0 else 2  # always 1; keeps the loop


@numba.njit
def _claims_serial(n_chunks, order):
    counter = np.zeros(1, dtype=np.int64)
    for k in range(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            order[c] = k + 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_chunks", [0, 1, 2, 3, 1000])
def test_every_chunk_runs_once(threads, n_chunks):
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        hits = np.zeros(n_chunks, dtype=np.int64)
        who = np.full(n_chunks, -1, dtype=np.int64)
        _claims(n_chunks, np.zeros(n_chunks, dtype=np.int64), hits, who)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(hits, 1)
    assert np.all((who >= 0) & (who < threads))


def test_serial_loop_takes_every_chunk_in_order():
    order = np.zeros(7, dtype=np.int64)
    _claims_serial(7, order)
    np.testing.assert_array_equal(order, 1)  # all by the first worker


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
def test_a_held_up_thread_leaves_its_chunks_to_the_other():
    """Chunk 0 spins for ~0.1 s, the 63 others for microseconds. Split evenly ahead of time
    (``prange`` over the chunks), the thread of chunk 0 also runs chunks 1-31 after it; with
    claims, the other thread runs them while chunk 0 spins."""
    n = 64
    spin = np.full(n, 1_000, dtype=np.int64)
    spin[0] = 50_000_000
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        ran = {}
        for name, kernel in (("fixed", _fixed_split), ("claims", _claims)):
            hits = np.zeros(n, dtype=np.int64)
            who = np.full(n, -1, dtype=np.int64)
            kernel(n, spin, hits, who)
            np.testing.assert_array_equal(hits, 1)
            ran[name] = int(np.sum(who == who[0]))
    finally:
        numba.set_num_threads(old)
    assert ran["fixed"] == n // 2  # Numba's even split: what the claims avoid
    assert ran["claims"] < n // 4


def test_claim_needs_an_int64_counter():
    @numba.njit
    def bad(counter):
        return claim(counter)

    with pytest.raises((TypeError, numba.core.errors.TypingError), match="1-D int64 array"):
        bad(np.zeros(1, dtype=np.int32))


def _parallel_kernels():
    import importlib
    import pkgutil

    import fastcurv.kernels as K
    from fastcurv.kernels._jit import ChunkedKernel

    found = {}
    for info in pkgutil.iter_modules(K.__path__):
        mod = importlib.import_module(f"fastcurv.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, ChunkedKernel) and obj.parallel.py_func.__module__ == mod.__name__:
                found[f"{info.name}.{name}"] = obj.parallel.py_func
    return found


def test_every_parallel_kernel_claims_its_chunks():
    """Each ``prange`` loop of the kernels is the claiming loop of kernels/schedule.py (a loop
    split evenly ahead of time waits for the slower thread's half)."""
    import inspect
    import re

    kernels = _parallel_kernels()
    assert len(kernels) >= 10
    for name, f in kernels.items():
        lines = inspect.getsource(f).splitlines()
        loops = [i for i, ln in enumerate(lines) if "prange(" in ln]
        assert loops, name
        for i in loops:
            n = re.search(r"for _ in prange\((\w+)\):", lines[i])
            assert n, f"{name}: {lines[i].strip()}"
            body = [ln.strip() for ln in lines[i + 1:i + 5]]
            c = re.fullmatch(r"(\w+) = claim\(counter\)", body[1])
            assert c, (name, body)
            assert body == ["while True:", body[1], f"if {c.group(1)} >= {n.group(1)}:",
                            "break"], (name, body)
            assert lines[i - 1].strip().startswith("counter = np.zeros(1, dtype=np.int64)"), name
