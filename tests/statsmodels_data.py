"""statsmodels' bundled datasets as fastcurv test data (shared by the statsmodels oracles).

Import statsmodels only through ``pytest.importorskip`` in the test module; these helpers
import it when called.
"""

import numpy as np
import pytest


def dataset(name):
    """``statsmodels.datasets.<name>.load_pandas()``, or skip the test if it is unavailable."""
    import statsmodels.api as sm

    try:
        return getattr(sm.datasets, name).load_pandas()
    except Exception as exc:  # pragma: no cover - the datasets ship with statsmodels
        pytest.skip(f"statsmodels dataset {name!r} unavailable: {exc}")


def arrays(ds):
    """(X, y) as writable C-order float64 arrays: pandas hands out F-ordered (sometimes
    read-only) views, and layouts are tested elsewhere (test_glm_inputs.py); this keeps the
    number of Numba specializations down."""
    X = np.array(ds.exog.to_numpy(dtype=np.float64), order="C")
    y = np.array(ds.endog.to_numpy(), dtype=np.float64)
    return X, y


def first_to_last(a, axis=-1):
    """statsmodels order (constant first) -> fastcurv order (intercept last), along ``axis``."""
    a = np.asarray(a)
    return np.concatenate([a.take(np.arange(1, a.shape[axis]), axis), a.take([0], axis)], axis)
