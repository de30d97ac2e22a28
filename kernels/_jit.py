"""The one place Numba options live.

* ``cache=True``: compiled code is kept on disk, so a new process does not recompile.
* ``error_model="numpy"``: division by zero gives inf/NaN like NumPy instead of raising
  (and lets LLVM vectorize divisions).
* fastmath flags ``nsz, arcp, contract, reassoc`` allow vectorized reductions and FMA; never
  ``nnan``/``ninf`` (NaN checks must keep working) and never ``afn`` (``exp``/``log`` stay
  correctly rounded, as the loss values must be exact to the last digits).

Reductions: a loop that stores to memory never also carries a floating-point sum; the sum
gets a loop of its own that only loads. With ``reassoc`` LLVM vectorizes the sum (lanes
combined at the end: an order fixed by the trip count), but a loop that also stores runs its
vector version only after a runtime check that the stores do not alias the loads, and for
small arrays that check compares pointer *distances*: two distinct arrays that merely lie
within 128 bytes of each other fail it, and the loop then sums in the scalar order. The bits
of a result would then depend on heap addresses (one GLM shared by Python threads gave
``hvp`` entries 1 ulp apart this way). tests/test_sum_order.py audits the kernels' LLVM IR.
"""

import functools
import inspect
import threading
import types
import warnings

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})
#: for elementwise kernels whose formulas depend on the order of operations (Cody-Waite
#: argument reduction in ``exp``: ``(t − k c1) − k c2`` must not become ``t − k (c1 + c2)``):
#: FMA contraction only, no reassociation and no reciprocal approximation
FASTMATH_STRICT = frozenset({"nsz", "contract"})

_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))


def jit(fn=None, *, parallel=False, inline=False, strict=False):
    """Compile ``fn`` with the project's Numba options.

    ``parallel=True`` enables ``prange``; ``inline=True`` asks Numba to inline a small helper
    into its callers at the IR level (it then takes the caller's options); ``strict=True``
    uses :data:`FASTMATH_STRICT` (elementwise loops still vectorize without reassociation).
    """
    opts = dict(_OPTIONS, parallel=parallel)
    if strict:
        opts["fastmath"] = set(FASTMATH_STRICT)
    if inline:
        opts["inline"] = "always"

    def wrap(f):
        if parallel:
            return ChunkedKernel(f, opts)
        return njit(f, opts)

    return wrap(fn) if fn is not None else wrap


def njit(f, opts):
    """``numba.njit(**opts)(f)``, without the on-disk cache where Numba has nowhere to write
    it: an install that cannot be written by a user without a writable home (a service
    account, a container's ``USER`` with ``HOME=/nonexistent``) failed at ``import fastcurv``
    with "cannot cache function ...: no locator available". The kernels are then compiled in
    every process (seconds), and one warning says how to keep them
    (``NUMBA_CACHE_DIR``)."""
    try:
        return numba.njit(**opts)(f)
    except RuntimeError as exc:
        if not opts.get("cache") or "no locator available" not in str(exc):
            raise
        if not _NO_CACHE_WARNED:
            _NO_CACHE_WARNED.append(True)
            warnings.warn(
                "fastcurv: Numba cannot write its on-disk cache here (the package folder is "
                "read-only and there is no writable home folder), so the kernels are compiled "
                "again in every process; set NUMBA_CACHE_DIR to a writable folder to keep "
                "them", RuntimeWarning, stacklevel=2)
        return numba.njit(**dict(opts, cache=False))(f)


_NO_CACHE_WARNED = []


class ChunkedKernel:
    """A parallel kernel over the chunks ``starts`` of a fixed row partition, and its serial
    twin (the same function compiled without ``parallel``: ``prange`` is then ``range``).

    A call with a single chunk (``len(starts) == 2``) runs the serial twin: a parallel region
    wakes every worker thread even when only one has work, and on a virtual machine handing
    work to a sleeping thread cost up to 0.5 ms (a logistic HVP on 200 × 10 took 0.6 ms per
    call in a parallel region, 0.1 ms without). Both compute the same thing in the same order.
    Called with positional arguments, one of them named ``starts``; Python-level only (a
    compiled caller would call ``.parallel`` or ``.serial`` directly).

    Parallel regions launched from several Python threads at once (a problem shared by
    threads, Dask's threaded workers) are safe in Numba's ``omp`` and ``tbb`` threading
    layers, but the ``workqueue`` layer (chosen with ``NUMBA_THREADING_LAYER=workqueue``, or
    where neither OpenMP nor TBB is available) aborts the process on concurrent use. There
    the launches are serialized by a lock (see :func:`_launch`).
    """

    def __init__(self, f, opts):
        self.parallel = njit(f, opts)
        # a renamed copy: Numba's on-disk cache keys entries by the function's name and the
        # signature, not by the ``parallel`` flag, so the twins must not share a name
        self.serial = njit(_renamed(f, "__serial"), dict(opts, parallel=False))
        self._starts = list(inspect.signature(f).parameters).index("starts")
        functools.update_wrapper(self, f)

    def __call__(self, *args):
        if len(args[self._starts]) <= 2:
            return self.serial(*args)
        if _LAYER_IS_SAFE[0]:
            return self.parallel(*args)
        return _launch(self.parallel, args)


#: whether the threading layer is known to take concurrent launches (``omp``, ``tbb``); False
#: until the first parallel launch has chosen the layer
_LAYER_IS_SAFE = [False]
_LAUNCH_LOCK = threading.Lock()


def _launch(kernel, args):
    """Run a parallel kernel holding :data:`_LAUNCH_LOCK`: every launch before the layer is
    known (the first one chooses it), and every launch under ``workqueue``, which is not
    thread-safe. A waiting thread blocks in ``Lock.acquire`` with the GIL released."""
    with _LAUNCH_LOCK:
        out = kernel(*args)
        try:
            layer = numba.threading_layer()
        except ValueError:  # no layer started yet: keep locking
            layer = "workqueue"
        if layer != "workqueue":
            _LAYER_IS_SAFE[0] = True
        return out


def _renamed(f, suffix):
    """A copy of the function ``f`` (same code, globals and closure) named ``name + suffix``."""
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + suffix, f.__defaults__,
                           f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix
    g.__module__ = f.__module__
    g.__doc__ = f.__doc__
    return g
