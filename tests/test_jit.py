"""The project's Numba options (kernels/_jit.py)."""

import warnings

import numba
import pytest
from fastcurv.kernels import _jit


def test_kernels_compile_without_a_cache_location():
    """Where Numba has nowhere to write its on-disk cache (a read-only install used by an
    account without a writable home) ``import fastcurv`` failed with "cannot cache function
    ...: no locator available". Compiling then goes on without the cache, with one warning.
    (A function defined by ``exec`` has no source file: Numba has no cache location for it.)"""
    ns = {}
    exec("def f(x):\n    return x + 1\n", ns)
    with pytest.raises(RuntimeError, match="no locator available"):
        numba.njit(cache=True)(ns["f"])
    _jit._NO_CACHE_WARNED.clear()
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        g = _jit.jit(ns["f"])
    assert g(41) == 42
    exec("def h(x, starts):\n    return x\n", ns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        k = _jit.jit(ns["h"], parallel=True)
    assert k.serial(7, None) == 7
