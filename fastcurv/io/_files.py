"""The data file itself: path checks, the format named by the extension, gzip or bzip2
compression told by the file's first bytes, and decompression."""

import bz2
import gzip
import os
import zlib

from ._errors import DataError


def _checked_path(path):
    """``path`` as a string (bytes decoded as the file system does), refused unless it names
    a regular file (every reader checks)."""
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    return path


_EXTENSIONS = {".npz": "npz", ".csv": "csv", ".svm": "svmlight", ".svmlight": "svmlight",
               ".libsvm": "svmlight", ".txt": "svmlight"}


def _format_of(path):
    """The format named by the file's extension, which for a text format may be followed by
    ``.gz`` or ``.bz2`` (``data.svm.gz``)."""
    stem, ext = os.path.splitext(path.lower())
    if ext in (".gz", ".bz2"):
        inner = os.path.splitext(stem)[1]
        if _EXTENSIONS.get(inner) in ("csv", "svmlight"):
            return _EXTENSIONS[inner]
        ext = inner + ext
    if ext not in _EXTENSIONS:
        raise DataError(f"{path}: unknown extension {ext!r}; use .npz, .csv or .svmlight (the "
                        "text formats also as .csv.gz or .svm.bz2, say), or pass fmt='npz', "
                        "'csv' or 'svmlight'")
    return _EXTENSIONS[ext]


#: readers of compressed files, by the format that the file's first bytes show
_DECOMPRESS = {"gzip": gzip.open, "bzip2": bz2.open}


def _compression(path):
    """'gzip' or 'bzip2' for a file that starts with that format's magic bytes, else None."""
    with open(path, "rb") as fh:
        head = fh.read(10)
    if head[:3] == b"\x1f\x8b\x08":  # gzip, deflate method
        return "gzip"
    # bzip2: "BZh", the block size, then the magic of a block or of the end of the stream
    if head[:3] == b"BZh" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    return None


def _decompressed(path):
    """The decompressed bytes of a gzip or bzip2 file; None for a file that is neither."""
    kind = _compression(path)
    if kind is None:
        return None
    try:
        with _DECOMPRESS[kind](path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be decompressed as {kind} ({exc}); the file is "
                        "damaged or cut short") from None
