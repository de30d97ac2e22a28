"""Thread control of the BLAS that the compiled kernels call.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``; in SciPy's wheels, a
bundled OpenBLAS). For the small matrix products of a small network (20-64-64-1 on 128 rows,
say) OpenBLAS's second thread costs more in wake-up and synchronization than it saves: one
thread ran the whole HVP 17% faster here. :func:`single_threaded` switches that library to one
thread for the duration of a call and restores the previous count. Where the library cannot be
found (another BLAS, another platform) it does nothing.
"""

import contextlib
import ctypes
import os

_LIB = None
_SEARCHED = False


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


@contextlib.contextmanager
def single_threaded(enabled=True):
    """Run the body with SciPy's BLAS on one thread (no-op if ``enabled`` is False or the
    library is not OpenBLAS)."""
    lib = _find() if enabled and not os.environ.get("FASTCURV_NO_BLAS_THREAD_CONTROL") else None
    if lib is None:
        yield
        return
    get, set_ = lib
    before = get()
    if before <= 1:
        yield
        return
    set_(1)
    try:
        yield
    finally:
        set_(before)
