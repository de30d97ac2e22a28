"""Thread control of the BLAS that the compiled kernels call.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``; in SciPy's wheels, a
bundled OpenBLAS). For the small matrix products of a small network (20-64-64-1 on 128 rows,
say) OpenBLAS's second thread costs more in wake-up and synchronization than it saves: one
thread ran the whole HVP 17% faster here. that library is switched to one
thread for the duration of a call (:func:`one_thread`, :func:`restore`) and restores the
previous count. ``FASTCURV_NO_BLAS_THREAD_CONTROL=1`` turns this off. Where the library cannot be
found (another BLAS, another platform) it does nothing.
"""

import ctypes
import os
import threading

_LIB = None
_SEARCHED = False
_DISABLED = bool(os.environ.get("FASTCURV_NO_BLAS_THREAD_CONTROL"))
_LOCK = threading.Lock()
_USERS = 0  # calls between one_thread and restore
_SAVED = 0  # the thread count to restore when the last of them ends (0: none)


def _find():
    """SciPy's OpenBLAS as a ctypes handle with (get, set) thread functions, or None; searched
    once (under the lock: a thread must not see the search begun and its result not yet)."""
    global _LIB, _SEARCHED
    with _LOCK:
        if not _SEARCHED:
            _LIB = _search()
            _SEARCHED = True
    return _LIB


def _search():
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)

        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except (OSError, ImportError):
        return None
    # SciPy's own copy (not NumPy's, which Numba does not call)
    for path in sorted(paths):
        if "scipy.libs" not in path and "scipy/.libs" not in path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(lib, prefix + "_get_num_threads", None)
            set_ = getattr(lib, prefix + "_set_num_threads", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                return get, set_
    return None


def one_thread():
    """Switch SciPy's BLAS to one thread; returns a token for :func:`restore` (0 if nothing
    is controlled: the library not found, or control turned off). Calls may overlap (one
    problem per Python thread): the first switches, the last restores the count it found,
    so none runs threaded BLAS while another still needs one thread (a call ending early
    used to restore two threads under a call still running, whose bits then changed).
    Plain functions rather than a context manager: this runs around every call of a small
    model, where a generator-based ``with`` costs a microsecond."""
    global _USERS, _SAVED
    if _DISABLED:
        return 0
    lib = _LIB if _SEARCHED else _find()
    if lib is None:
        return 0
    with _LOCK:
        _USERS += 1
        if _USERS == 1:
            before = lib[0]()
            _SAVED = before if before > 1 else 0
            if _SAVED:
                lib[1](1)
    return 1


def restore(token):
    """Undo :func:`one_thread` (the count comes back when the last overlapping call ends)."""
    global _USERS, _SAVED
    if not token:
        return
    with _LOCK:
        _USERS -= 1
        if _USERS == 0 and _SAVED:
            _LIB[1](_SAVED)
            _SAVED = 0
