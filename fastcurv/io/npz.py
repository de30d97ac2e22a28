"""``.npz`` files: arrays ``X`` (dense, or the parts written by ``scipy.sparse.save_npz``)
and ``y``."""

import zipfile

import numpy as np
import scipy.sparse as sp

from ._errors import DataError
from ._files import _checked_path


def load_npz(path):
    """``.npz`` with arrays ``X`` and ``y``; ``X`` may also be stored sparse next to ``y`` as
    the parts ``scipy.sparse.save_npz`` writes, prefixed: ``X_data, X_indices, X_indptr,
    X_shape`` and optionally ``X_format`` (``'csr'``, the default, or ``'csc'``; a CSC matrix
    is converted to CSR)."""
    path = _checked_path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "y" not in keys:
                raise DataError(f"{path}: no array 'y' (found: {', '.join(sorted(keys))})")
            y = _npz_array(path, f, "y")
            fmt = _format(path, f) if "X" not in keys and "X_format" in keys else "csr"
            if "X" in keys:
                X = _npz_array(path, f, "X")
            elif {"X_data", "X_indices", "X_indptr", "X_shape"} <= keys:
                X = _csr_from_parts(path, *(_npz_array(path, f, f"X_{part}")
                                            for part in ("data", "indices", "indptr", "shape")),
                                    fmt=fmt)
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


def _format(path, f):
    """``X_format`` (as ``scipy.sparse.save_npz`` writes ``format``): ``"csr"`` or ``"csc"``."""
    a = _npz_array(path, f, "X_format")
    fmt = a.item() if a.ndim == 0 or a.size == 1 else None
    if isinstance(fmt, bytes):
        fmt = fmt.decode("ascii", "replace")
    if fmt not in ("csr", "csc"):
        raise DataError(f"{path}: X_format {fmt!r} is not supported: store X_data, X_indices, "
                        "X_indptr and X_shape of a CSR (or CSC) matrix, with X_format 'csr' "
                        "(or 'csc'), or store X dense")
    return fmt


def _csr_from_parts(path, data, indices, indptr, shape, fmt="csr"):
    """The CSR matrix of ``scipy.sparse.save_npz``'s parts (of a CSR matrix, or of a CSC one
    for ``fmt="csc"``: ``X_indptr`` then runs over columns and ``X_indices`` holds rows),
    refusing parts that scipy would silently repair (fractional indices truncated, entries
    past ``indptr[-1]`` dropped)."""
    major, minor = (0, 1) if fmt == "csr" else (1, 0)
    what = "column" if fmt == "csr" else "row"
    for name, a in (("X_indices", indices), ("X_indptr", indptr), ("X_shape", shape)):
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise DataError(f"{path}: {name} must be a 1-D integer array (got {a.ndim}-D "
                            f"{a.dtype}); write the matrix with scipy.sparse.save_npz")
    if shape.shape[0] != 2 or data.ndim != 1:
        raise DataError(f"{path}: X_shape must hold 2 numbers and X_data be 1-D (got "
                        f"{shape.shape[0]} and {data.ndim}-D)")
    if int(shape.min()) < 0:
        raise DataError(f"{path}: X_shape {tuple(int(k) for k in shape)} is negative")
    if indptr.shape[0] != int(shape[major]) + 1 or indptr[0] != 0 or (
            indptr[-1] != data.shape[0] or indices.shape[0] != data.shape[0]):
        raise DataError(f"{path}: inconsistent {fmt.upper()} parts: X_indptr has "
                        f"{indptr.shape[0]} entries from {indptr[0]} to {indptr[-1]}, X_data "
                        f"{data.shape[0]}, X_indices {indices.shape[0]}, X_shape "
                        f"{tuple(int(k) for k in shape)} (expected X_shape[{major}] + 1 "
                        "entries from 0 to the number of stored values)")
    if np.any(indptr[1:] < indptr[:-1]):
        raise DataError(f"{path}: X_indptr decreases ({'row' if major == 0 else 'column'} "
                        "boundaries must never go down); write the matrix with "
                        "scipy.sparse.save_npz")
    n_minor = int(shape[minor])
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_minor):
        raise DataError(f"{path}: X_indices holds {what} indices outside [0, {n_minor}) "
                        f"(from {int(indices.min())} to {int(indices.max())}); such a matrix "
                        "loses values or crashes the process when used")
    shape = tuple(int(k) for k in shape)
    if fmt == "csc":
        return sp.csc_matrix((data, indices, indptr), shape=shape).tocsr()
    X = sp.csr_matrix((data, indices, indptr), shape=shape)
    # column indices out of order within a row are valid CSR (scipy sorts them on demand);
    # the problems refuse them, with advice for Python callers, so they are sorted here
    if not X.has_sorted_indices:
        X.sort_indices()
    return X
