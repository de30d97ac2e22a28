"""Thread control of the BLAS that the compiled kernels call.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``; in SciPy's wheels, a
bundled OpenBLAS). For the small matrix products of a small network (20-64-64-1 on 128 rows,
say) OpenBLAS's second thread costs more in wake-up and synchronization than it saves: one
thread ran the whole HVP 17% faster here. That library is switched to one thread for the
duration of a call (:func:`one_thread`, :func:`restore`) and the previous count restored.
``newton_cg`` switches NumPy's OpenBLAS too (CG's dot products) through the same counts, so
overlapping calls in several Python threads never leave a library on the wrong count.
``FASTCURV_NO_BLAS_THREAD_CONTROL=1`` turns this off. Where a library cannot be found
(another BLAS, another platform) it does nothing.
"""

import contextlib
import ctypes
import os
import threading

_LIBS = None  # {"scipy" | "numpy": (path, get, set)}, found once
_SEARCHED = False
_DISABLED = bool(os.environ.get("FASTCURV_NO_BLAS_THREAD_CONTROL"))
_LOCK = threading.Lock()
_USERS = {}  # library -> calls between one_thread and restore
_SAVED = {}  # library -> the thread count to restore when the last of them ends (0: none)
_LIFTED = set()  # libraries given their threads back for BLAS-3 work (:func:`lifted`)
_HELD = {}  # names asked for -> those of them found
#: the libraries of the Numba kernels' np.dot (SciPy's) and of NumPy's dot products (CG's)
KERNELS = ("scipy",)
SOLVER = ("scipy", "numpy")


def _find():
    """The OpenBLAS copies of SciPy and NumPy as ``{name: (path, get, set)}`` (thread count
    functions through ctypes); searched once (under the lock: a thread must not see the
    search begun and its result not yet)."""
    global _LIBS, _SEARCHED
    with _LOCK:
        if not _SEARCHED:
            _LIBS = _search()
            _SEARCHED = True
    return _LIBS


def _search():
    try:
        import numpy  # noqa: F401
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)

        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except (OSError, ImportError):
        return {}
    found = {}
    for path in sorted(paths):
        name = ("scipy" if ("scipy.libs" in path or "scipy/.libs" in path) else
                "numpy" if ("numpy.libs" in path or "numpy/.libs" in path) else None)
        if name is None or name in found:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None and name not in found:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    found[name] = (path, get, set_)
    return found


def controlled_paths():
    """File paths of the libraries this module switches (other tools must leave them be)."""
    if _DISABLED:
        return set()
    return {path for path, _, _ in (_LIBS if _SEARCHED else _find()).values()}


def one_thread(names=KERNELS):
    """Switch the named BLAS libraries (:data:`KERNELS`: SciPy's, which the compiled kernels
    call; :data:`SOLVER`: NumPy's too) to one thread; returns a token for :func:`restore`
    (0 if nothing is controlled: no library found, or control turned off). Calls may overlap
    (one problem per Python thread, a solver in another): the first switches a library, the
    last restores the count it found, so none runs threaded BLAS while another still needs
    one thread (a call ending early used to restore two threads under a call still running,
    whose bits then changed; a solver's own limits, recorded and restored by threadpoolctl,
    could leave a library on one thread for good). Plain functions rather than a context
    manager: this runs around every call of a small model, where a generator-based ``with``
    costs a microsecond."""
    if _DISABLED:
        return 0
    libs = _LIBS if _SEARCHED else _find()
    held = _HELD.get(names)
    if held is None:  # (once per tuple of names: a generator here costs a microsecond a call)
        held = _HELD[names] = tuple(n for n in names if n in libs)
    if not held:
        return 0
    with _LOCK:
        for n in held:
            users = _USERS.get(n, 0) + 1
            _USERS[n] = users
            if users == 1:
                before = libs[n][1]()
                _SAVED[n] = before if before > 1 else 0
                if _SAVED[n]:
                    libs[n][2](1)
            elif n in _LIFTED:  # lifted for another call's BLAS-3 work: one thread again
                _LIFTED.discard(n)
                libs[n][2](1)
    return held


def restore(token):
    """Undo :func:`one_thread` (the count comes back when the last overlapping call ends)."""
    if not token:
        return
    with _LOCK:
        for n in token:
            _USERS[n] -= 1
            if _USERS[n] == 0:
                _LIFTED.discard(n)
                if _SAVED.get(n):
                    _LIBS[n][2](_SAVED[n])
                    _SAVED[n] = 0


@contextlib.contextmanager
def lifted(token):
    """Inside a :func:`one_thread` call: give the token's libraries their threads back for
    BLAS-3 work (a Cholesky or K-FAC factor), where that call is their only user. Another
    call that overlaps keeps (or gets back) its one thread."""
    mine = []
    with _LOCK:
        for n in token or ():
            if _USERS.get(n) == 1 and _SAVED.get(n):
                _LIBS[n][2](_SAVED[n])
                _LIFTED.add(n)
                mine.append(n)
    try:
        yield
    finally:
        with _LOCK:
            for n in mine:
                if n in _LIFTED:
                    _LIFTED.discard(n)
                    _LIBS[n][2](1)
