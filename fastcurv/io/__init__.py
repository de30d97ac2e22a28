"""Reading data files: ``.npz`` (X, y), CSV and svmlight/libsvm text.

Every reader returns ``(X, y)`` with ``X`` a dense float64 array or a CSR matrix and ``y`` a
float64 vector, and raises :class:`DataError` (a ``ValueError``) with the file, the line and
what is wrong when a file cannot be used. The text formats may be gzip or bzip2 compressed
(told by the file's first bytes, as ``data.svm.gz``; read whole into memory).
"""

from ._errors import DataError
from ._files import _checked_path, _format_of
from .csv import load_csv
from .npz import load_npz
from .svmlight import load_svmlight

__all__ = ["DataError", "load", "load_csv", "load_npz", "load_svmlight"]

# shown as fastcurv.io.DataError (in tracebacks, repr), as before the split into modules
DataError.__module__ = __name__


def load(path, *, fmt=None, target=-1):
    """Read ``path`` by its extension (or ``fmt``: 'npz', 'csv', 'svmlight'): ``.npz``,
    ``.csv``, ``.svm``, ``.svmlight``, ``.libsvm`` or ``.txt`` (svmlight), the text formats
    also followed by ``.gz`` or ``.bz2``."""
    path = _checked_path(path)
    try:
        return _load(path, fmt, target)
    except OSError as exc:  # a read error: name the file
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _load(path, fmt, target):
    if fmt is None:
        fmt = _format_of(path)
    if fmt == "npz":
        return load_npz(path)
    if fmt == "csv":
        return load_csv(path, target=target)
    if fmt == "svmlight":
        return load_svmlight(path)
    raise DataError(f"unknown format {fmt!r}; use 'npz', 'csv' or 'svmlight'")
