"""``.npz`` files: arrays ``X`` (dense, or the parts written by ``scipy.sparse.save_npz``)
and ``y``."""

import zipfile

import numpy as np
import scipy.sparse as sp

from ._errors import DataError
from ._files import _checked_path


def load_npz(path):
    """``.npz`` with arrays ``X`` and ``y``; ``X`` may also be stored by ``scipy.sparse.save_npz``
    next to ``y`` as ``X_data, X_indices, X_indptr, X_shape``."""
    path = _checked_path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "y" not in keys:
                raise DataError(f"{path}: no array 'y' (found: {', '.join(sorted(keys))})")
            y = _npz_array(path, f, "y")
            if "X" in keys:
                X = _npz_array(path, f, "X")
            elif {"X_data", "X_indices", "X_indptr", "X_shape"} <= keys:
                X = _csr_from_parts(path, *(_npz_array(path, f, f"X_{part}")
                                            for part in ("data", "indices", "indptr", "shape")))
            else:
                raise DataError(f"{path}: no array 'X' (found: {', '.join(sorted(keys))})")
    except DataError:
        raise
    except Exception as exc:  # a corrupt or non-npz file
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not an .npz file (not a zip archive of .npy arrays; "
                            "write one with numpy.savez)") from None
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if X.ndim != 2:
        raise DataError(f"{path}: X must be a 2-D array (samples x features), got shape "
                        f"{X.shape}" + ("; for one feature store X.reshape(-1, 1)"
                                        if X.ndim == 1 else ""))
    if y.ndim != 1:
        raise DataError(f"{path}: y must be a 1-D array of targets, got shape {y.shape}"
                        + ("; for one-hot class labels store y.argmax(axis=1)"
                           if y.ndim == 2 else ""))
    if y.shape[0] != X.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]} entries")
    if X.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DataError(f"{path}: X and y must be numeric (got {X.dtype} and {y.dtype})")
    return X.astype(np.float64, copy=False), y.astype(np.float64, copy=False)


def _npz_array(path, f, name):
    """Array ``name`` of the open ``.npz`` ``f``; numpy gives the raw bytes of a member that is
    not a ``.npy`` array, and those are refused."""
    a = f[name]
    if not isinstance(a, np.ndarray):
        raise DataError(f"{path}: {name} is not a valid .npy array (the archive member holds "
                        "other data); write the file with numpy.savez")
    return a


def _csr_from_parts(path, data, indices, indptr, shape):
    """The CSR matrix of ``scipy.sparse.save_npz``'s parts, refusing parts that scipy would
    silently repair (fractional indices truncated, entries past ``indptr[-1]`` dropped)."""
    for name, a in (("X_indices", indices), ("X_indptr", indptr), ("X_shape", shape)):
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise DataError(f"{path}: {name} must be a 1-D integer array (got {a.ndim}-D "
                            f"{a.dtype}); write the matrix with scipy.sparse.save_npz")
    if shape.shape[0] != 2 or data.ndim != 1:
        raise DataError(f"{path}: X_shape must hold 2 numbers and X_data be 1-D (got "
                        f"{shape.shape[0]} and {data.ndim}-D)")
    if int(shape.min()) < 0:
        raise DataError(f"{path}: X_shape {tuple(int(k) for k in shape)} is negative")
    if indptr.shape[0] != int(shape[0]) + 1 or indptr[0] != 0 or (
            indptr[-1] != data.shape[0] or indices.shape[0] != data.shape[0]):
        raise DataError(f"{path}: inconsistent CSR parts: X_indptr has {indptr.shape[0]} "
                        f"entries from {indptr[0]} to {indptr[-1]}, X_data "
                        f"{data.shape[0]}, X_indices {indices.shape[0]}, X_shape "
                        f"{tuple(int(k) for k in shape)} (expected X_shape[0] + 1 entries "
                        "from 0 to the number of stored values)")
    if np.any(indptr[1:] < indptr[:-1]):
        raise DataError(f"{path}: X_indptr decreases (row boundaries must never go down); "
                        "write the matrix with scipy.sparse.save_npz")
    n_cols = int(shape[1])
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_cols):
        raise DataError(f"{path}: X_indices holds column indices outside [0, {n_cols}) "
                        f"(from {int(indices.min())} to {int(indices.max())}); such a matrix "
                        "loses values or crashes the process when used")
    return sp.csr_matrix((data, indices, indptr), shape=tuple(int(k) for k in shape))
