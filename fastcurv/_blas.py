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

_LIB = None
_SEARCHED = False
_DISABLED = bool(os.environ.get("FASTCURV_NO_BLAS_THREAD_CONTROL"))


def _find():
    """SciPy's OpenBLAS as a ctypes handle with (get, set) thread functions, or None."""
    global _LIB, _SEARCHED
    if _SEARCHED:
        return _LIB
    _SEARCHED = True
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
                _LIB = (get, set_)
                return _LIB
    return None


def one_thread():
    """Switch SciPy's BLAS to one thread; returns the previous count, to be given to
    :func:`restore` (0 if nothing was changed: the library not found, or already one
    thread). Plain functions rather than a context manager: this runs around every call of a
    small model, where a generator-based ``with`` costs a microsecond."""
    if _DISABLED:
        return 0
    lib = _LIB if _SEARCHED else _find()
    if lib is None:
        return 0
    before = lib[0]()
    if before <= 1:
        return 0
    lib[1](1)
    return before


def restore(before):
    """Undo :func:`one_thread`."""
    if before:
        _LIB[1](before)
