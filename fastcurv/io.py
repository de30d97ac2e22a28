"""Reading data files: ``.npz`` (X, y), CSV and svmlight/libsvm text.

Every reader returns ``(X, y)`` with ``X`` a dense float64 array or a CSR matrix and ``y`` a
float64 vector, and raises :class:`DataError` (a ``ValueError``) with the file, the line and
what is wrong when a file cannot be used. The text formats may be gzip or bzip2 compressed
(told by the file's first bytes, as ``data.svm.gz``; read whole into memory).
"""

import bz2
import csv
import gzip
import io
import numbers
import os
import re
import warnings
import zipfile
import zlib

import numpy as np
import scipy.sparse as sp

from .kernels import svmlight


class DataError(ValueError):
    """A data file that cannot be read as asked; the message says where and why."""


def load(path, *, fmt=None, target=-1):
    """Read ``path`` by its extension (or ``fmt``: 'npz', 'csv', 'svmlight'): ``.npz``,
    ``.csv``, ``.svm``, ``.svmlight``, ``.libsvm`` or ``.txt`` (svmlight), the text formats
    also followed by ``.gz`` or ``.bz2``."""
    path = _checked_path(path)
    try:
        return _load(path, fmt, target)
    except OSError as exc:  # a read error: name the file
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _checked_path(path):
    """``path`` as a string, refused unless it names a regular file (every reader checks)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    return path


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
    if y.ndim != 1 or X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise DataError(f"{path}: X has shape {X.shape} but y has shape {y.shape}")
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
    if indptr.shape[0] != int(shape[0]) + 1 or indptr[0] != 0 or (
            indptr[-1] != data.shape[0] or indices.shape[0] != data.shape[0]):
        raise DataError(f"{path}: inconsistent CSR parts: X_indptr has {indptr.shape[0]} "
                        f"entries from {indptr[0]} to {indptr[-1]}, X_data "
                        f"{data.shape[0]}, X_indices {indices.shape[0]}, X_shape "
                        f"{tuple(int(k) for k in shape)} (expected X_shape[0] + 1 entries "
                        "from 0 to the number of stored values)")
    return sp.csr_matrix((data, indices, indptr), shape=tuple(int(k) for k in shape))


def load_csv(path, *, target=-1, delimiter=","):
    """Numeric CSV, one sample per line; column ``target`` (default the last) is ``y``.

    The first line that is not blank or a ``#`` comment is a header, and skipped, when none of
    its fields is a number (empty names are allowed, as pandas writes for its index column);
    a first line mixing numbers and other fields is data, and an error names its bad field.
    Blank lines (also of only spaces or tabs) and ``#`` comments are ignored; numbers may be
    quoted; ``\n``, ``\r\n`` and ``\r`` line ends alike. A file that starts with a UTF-8
    byte-order mark must be UTF-8 throughout (an error names the line of a byte that is not);
    without one, any 8-bit text encoding of the header and comments is accepted. An empty
    field, NaN or inf is an error naming its line and column.
    """
    target = _as_int(target, "target", "an integer column index (negative counts from the "
                     "last column)")
    path = _checked_path(path)
    raw = _decompressed(path)
    source = path if raw is None else raw
    encoding = _csv_encoding(source)
    try:
        data = _csv_table(path, source, encoding, delimiter)
    except UnicodeDecodeError:  # only after a byte-order mark: latin-1 decodes any byte
        raise DataError(_not_utf8(path, source)) from None
    ncol = data.shape[1]
    if not -ncol <= target < ncol:
        raise DataError(f"{path}: target column {target} does not exist (the file has {ncol} "
                        f"columns: 0 to {ncol - 1}, or -{ncol} to -1 from the last)")
    t = target % ncol
    y = data[:, t].copy()
    X = np.ascontiguousarray(np.delete(data, t, axis=1))
    return X, y


def _as_int(value, name, what):
    """``value`` as a Python int; TypeError for anything but an integer (bool included)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _csv_table(path, source, encoding, delimiter):
    """The numbers of the file as a 2-D float64 array, the header skipped, every value finite
    (``source``: the path, or the bytes of a decompressed file)."""
    first, text = _first_content_line(source, encoding)
    fields = _csv_fields(text, delimiter)
    header = text is not None and any(fields) and not any(map(_is_number, fields))
    skip = first if header else 0
    data = _loadtxt(source, encoding, delimiter, skip)
    if data is None:
        problem = _csv_problem(path, source, delimiter, skip, encoding)
        if problem:
            raise DataError(problem)
        # no bad line by this reader's rules: numpy refused a line that holds only spaces
        # (or an indented comment) as a row of one empty field; read again without them
        data = _loadtxt(source, encoding, delimiter, skip, blank_lines=True)
        if data is None:
            raise DataError(f"{path}: could not be read as numeric CSV")
    if data.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    if data.shape[1] < 2:
        raise DataError(f"{path}: needs at least one feature column and one target column"
                        + _delimiter_hint(text, delimiter))
    if not np.all(np.isfinite(data)):
        raise DataError(_csv_problem(path, source, delimiter, skip, encoding)
                        or f"{path}: could not be read as numeric CSV")
    return data


def _csv_encoding(source):
    """'utf-8-sig' for a file that starts with a UTF-8 byte-order mark, else 'latin-1': the
    numbers are ASCII either way, and latin-1 decodes any byte of a header or comment."""
    with _binary(source) as fh:
        return "utf-8-sig" if fh.read(3) == b"\xef\xbb\xbf" else "latin-1"


def _binary(source):
    """The file (a path, or the bytes of a decompressed file) opened for reading bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _text(source, encoding, errors="strict"):
    """The file as text lines; every kind of line end (LF, CR LF, CR) ends a line."""
    return io.TextIOWrapper(_binary(source), encoding=encoding, errors=errors, newline=None)


#: a byte that is not UTF-8, as decoded by ``errors="surrogateescape"``
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _not_utf8(path, source):
    """Name the first byte that is not UTF-8 in a file that starts with a UTF-8 byte-order
    mark (only run once decoding has failed)."""
    with _text(source, "utf-8-sig", errors="surrogateescape") as fh:
        for no, line in enumerate(fh, start=1):
            bad = _NOT_UTF8.search(line)
            if bad:
                return (f"{path}: line {no}: byte 0x{ord(bad.group()) - 0xdc00:02x} at "
                        f"character {bad.start() + 1} is not UTF-8, but the file starts with a "
                        "UTF-8 byte-order mark; save the file as UTF-8 (or, in an 8-bit "
                        "encoding such as latin-1, without the byte-order mark)")
    return f"{path}: not UTF-8 after its byte-order mark; save the file as UTF-8"


def _is_blank(line):
    """Whether a CSV line holds no data: empty, only spaces and tabs, or a ``#`` comment."""
    text = line.strip()
    return not text or text.startswith("#")


def _loadtxt(source, encoding, delimiter, skip, *, blank_lines=False):
    """``np.loadtxt`` of the file after ``skip`` lines; None if numpy refuses it. numpy reads
    a path itself (its fast path); it is given the lines of decompressed bytes, and with
    ``blank_lines`` those that hold no data emptied (numpy skips only empty lines)."""
    kw = dict(delimiter=delimiter, skiprows=skip, dtype=np.float64, ndmin=2, comments="#",
              quotechar='"', encoding=encoding)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            if isinstance(source, str) and not blank_lines:
                return np.loadtxt(source, **kw)
            with _text(source, encoding) as fh:
                lines = ("\n" if _is_blank(ln) else ln for ln in fh) if blank_lines else fh
                return np.loadtxt(lines, **kw)
    except UnicodeDecodeError:
        raise
    except ValueError:
        return None


def _first_content_line(source, encoding):
    """(1-based number, stripped text) of the first line that is not blank or a comment;
    (0, None) for a file without one."""
    with _text(source, encoding) as fh:
        for no, line in enumerate(fh, start=1):
            if not _is_blank(line):
                return no, line.strip()
    return 0, None


def _csv_fields(text, delimiter):
    """The fields of one line, stripped of spaces and quotes; a quoted field may hold the
    delimiter (``"1,5"`` is one field, as numpy reads it). With an unbalanced quote the line is
    split at every delimiter: read as one field it would look like a header."""
    if text is None:
        return []
    fields = None
    if text.count('"') % 2 == 0:
        try:
            fields = next(csv.reader([text], delimiter=delimiter))
        except csv.Error:  # a field beyond the csv module's size limit
            pass
    if fields is None:
        fields = text.split(delimiter)
    return [t.strip().strip('"').strip() for t in fields]


def _is_number(tok):
    """Whether ``tok`` is a number as ``np.loadtxt`` reads one (Python's ``float`` also takes
    ``1_000`` and non-ASCII digits, which loadtxt refuses)."""
    if "_" in tok or not tok.isascii():
        return False
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _delimiter_hint(text, delimiter):
    for other, name in ((";", "';'"), ("\t", "tabs")):
        if text is not None and other != delimiter and other in text:
            return (f" (the fields seem to be separated by {name}; this reader takes "
                    f"{delimiter!r}-separated values)")
    return ""


def _value_hint(tok, delimiter):
    """Why a field might not be a number: a decimal comma, another delimiter."""
    if "," in tok and _is_number(tok.replace(",", ".")):
        return " (a decimal comma? this reader takes '.' as the decimal point)"
    return _delimiter_hint(tok, delimiter)


def _shown(tok, encoding):
    """``tok`` for a message, cut to 40 characters; read as latin-1 (no byte-order mark), UTF-8
    text shows as its own characters."""
    if encoding == "latin-1" and not tok.isascii():
        try:
            tok = tok.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            pass
    return tok if len(tok) <= 40 else tok[:40] + "..."


def _csv_problem(path, source, delimiter, skip, encoding):
    """Describe the first bad line of a CSV file (only run once reading has failed); None if
    every line is good by these rules."""
    width = None
    first = None  # the first line read as data
    with _text(source, encoding) as fh:
        for no, line in enumerate(fh, start=1):
            if no <= skip or _is_blank(line):
                continue
            first = first or no
            text = line.split("#", 1)[0].strip()  # numpy drops a comment after the data
            if text.count('"') % 2:
                return (f"{path}: line {no}: a quote (\") opens a field that is not closed on "
                        "this line; remove it or close the field")
            fields = _csv_fields(text, delimiter)
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                return f"{path}: line {no} has {len(fields)} fields, expected {width}"
            for col, tok in enumerate(fields, start=1):
                if not (_is_number(tok) and np.isfinite(float(tok))):
                    what = ("missing value" if tok == ""
                            else f"value {_shown(tok, encoding)!r} is not a finite number")
                    hint = _value_hint(tok, delimiter)
                    if not hint and skip == 0 and no == first:
                        hint = (" (the first line is read as a header only when none of its "
                                "fields is a number)")
                    return f"{path}: line {no}, column {col}: {what}; remove or impute it{hint}"
    return None


_SVM_ERRORS = {
    1: "the label is not a number",
    2: "an entry is not of the form index:value with a numeric value (missing value?)",
    3: "a feature index is not a non-negative integer",
    4: "feature indices must increase along a line",
    5: f"a feature index is larger than {svmlight.MAX_INDEX:,} (2^40)",
}


def load_svmlight(path, *, zero_based="auto", n_features=None):
    """svmlight / libsvm text: ``label idx:val ...`` per line, ``#`` comments, ``qid:`` ignored.

    Indices are one-based unless ``zero_based`` is True; ``"auto"`` treats the file as
    zero-based only if an index 0 occurs (scikit-learn's rule). Parsed in one compiled pass;
    numbers are converted exactly (see :mod:`fastcurv.kernels.svmlight`). An error names the
    file's line (blank and comment lines counted) and the token at fault.

    ``n_features`` (None or an integer >= 0) fixes the number of columns; None takes one past
    the largest index (at least 1).
    """
    zero_based, n_features = _svm_options(zero_based, n_features)
    path = _checked_path(path)
    buf = _svm_bytes(path)
    labels, indices, values, indptr = _svm_parse(path, buf)
    _svm_check_finite(path, buf, labels, values, indptr)
    indices, one_based = _svm_zero_based(path, buf, indices, indptr, zero_based)
    d = _svm_n_columns(path, buf, indices, indptr, one_based, n_features)
    n, nnz = labels.shape[0], indices.shape[0]
    idx_dtype = np.int32 if d < 2**31 and nnz < 2**31 else np.int64
    X = sp.csr_matrix((values, indices.astype(idx_dtype), indptr.astype(idx_dtype)),
                      shape=(n, d))
    return X, labels


def _svm_options(zero_based, n_features):
    """``(zero_based, n_features)`` checked: True, False or 'auto'; None or an integer >= 0."""
    if isinstance(zero_based, (bool, np.bool_)):
        zero_based = bool(zero_based)
    elif not (isinstance(zero_based, str) and zero_based == "auto"):
        kind = ValueError if isinstance(zero_based, str) else TypeError
        raise kind(f"zero_based must be True, False or 'auto', got {zero_based!r}")
    if n_features is not None:
        n_features = _as_int(n_features, "n_features", "a non-negative integer or None")
        if n_features < 0:
            raise ValueError(f"n_features must be a non-negative integer or None, got "
                             f"{n_features}")
    return zero_based, n_features


def _svm_bytes(path):
    """The file's bytes (decompressed for gzip or bzip2) as a writable uint8 array."""
    raw = _decompressed(path)
    if raw is None:
        return np.fromfile(path, dtype=np.uint8)
    # a writable copy: the parser is compiled for writable arrays (a read-only buffer would
    # have it compiled a second time)
    return np.frombuffer(raw, dtype=np.uint8).copy()


def _svm_parse(path, buf):
    """``(labels, indices, values, indptr)`` of svmlight bytes, the indices as written."""
    n_lines = int(np.count_nonzero(buf == 10)) + 1
    n_pairs = int(np.count_nonzero(buf == 58))
    labels = np.empty(n_lines)
    indices = np.empty(n_pairs, dtype=np.int64)
    values = np.empty(n_pairs)
    indptr = np.empty(n_lines + 1, dtype=np.int64)
    slow_buf = np.empty(buf.shape[0] + n_lines + n_pairs + 1, dtype=np.uint8)
    slow_at = np.empty(n_lines + n_pairs, dtype=np.int64)
    n, nnz, n_slow, n_bytes, err, line, at = svmlight.parse(
        buf, labels, indices, values, indptr, slow_buf, slow_at
    )
    if err:
        start = svmlight.row_line(buf, n)[1]  # the line of the row that failed
        tok, char = _svm_token(buf, start, at)
        hint = _svm_csv_hint(_LINE.match(buf, start).group()) if n == 0 else ""
        raise DataError(f"{path}: line {line}: {_SVM_ERRORS[err]}: {tok!r} at character "
                        f"{char}{hint}")
    if n == 0:
        raise DataError(f"{path}: no data lines")
    if n_slow:
        # numbers off the exact fast path: one correctly rounded C conversion for all of them
        exact = np.fromstring(slow_buf[:n_bytes].tobytes(), dtype=np.float64, sep=" ")
        if exact.shape[0] != n_slow:
            raise DataError(f"{path}: a number could not be converted")
        at = slow_at[:n_slow]
        is_label = at < 0
        labels[-1 - at[is_label]] = exact[is_label]
        values[at[~is_label]] = exact[~is_label]
    return labels[:n], indices[:nnz], values[:nnz], indptr[: n + 1]


def _svm_check_finite(path, buf, labels, values, indptr):
    """Refuse a value or label beyond the float64 range, naming its line and token."""
    if np.all(np.isfinite(values)) and np.all(np.isfinite(labels)):
        return
    n = labels.shape[0]
    bad_label = np.flatnonzero(~np.isfinite(labels))
    bad_value = np.flatnonzero(~np.isfinite(values))
    label_row = int(bad_label[0]) if bad_label.size else n
    value_row = _svm_row_of(indptr, bad_value[0]) if bad_value.size else n
    if label_row <= value_row:
        line, tok, char = _svm_row_token(buf, label_row, 0)
    else:
        line, tok, char = _svm_row_token(buf, value_row, 1 + bad_value[0] - indptr[value_row])
    raise DataError(f"{path}: line {line}: {tok!r} at character {char} holds a NaN or inf "
                    "value, or one beyond the float64 range; remove or impute it")


def _svm_zero_based(path, buf, indices, indptr, zero_based):
    """``(indices counted from 0, whether the file was read as one-based)``."""
    one_based = (zero_based is False) or (zero_based == "auto" and indices.size > 0
                                          and indices.min() > 0)
    if not one_based or indices.size == 0:
        return indices, one_based
    if indices.min() < 1:
        entry = int(np.argmin(indices))
        row = _svm_row_of(indptr, entry)
        line, tok, char = _svm_row_token(buf, row, 1 + entry - indptr[row])
        raise DataError(f"{path}: line {line}: feature index 0 ({tok!r} at character {char}) "
                        "in a file read as one-based (zero_based=False); pass zero_based=True "
                        "or 'auto' to read the indices as counted from 0")
    return indices - 1, one_based


def _svm_n_columns(path, buf, indices, indptr, one_based, n_features):
    """The number of columns: ``n_features``, which must hold every (zero-based) index, or
    one past the largest index (at least 1)."""
    needed = int(indices.max()) + 1 if indices.size else 0
    if n_features is None:
        return max(needed, 1)
    if needed > n_features:
        entry = int(np.argmax(indices >= n_features))  # the first one beyond
        row = _svm_row_of(indptr, entry)
        line, tok, char = _svm_row_token(buf, row, 1 + entry - indptr[row])
        base = int(one_based)
        takes = (f"{('zero', 'one')[base]}-based indices {base} to {n_features - 1 + base}"
                 if n_features else "no index")
        raise DataError(f"{path}: line {line}: feature index {int(indices[entry]) + base} "
                        f"({tok!r} at character {char}) is beyond n_features = {n_features}, "
                        f"which takes {takes}; pass n_features >= {needed}, or None to take "
                        "the number of features from the file")
    return n_features


def _svm_row_of(indptr, entry):
    """The data row (0-based) that holds stored entry ``entry``."""
    return int(np.searchsorted(indptr, entry, side="right")) - 1


#: a line, and a token of the svmlight parser, from an offset (``re`` reads the uint8 array)
_LINE = re.compile(rb"[^\n]*")
_TOKEN = re.compile(rb"[^ \t\r\n#]*")


def _svm_token(buf, start, at):
    """``(text, character)``: the token at offset ``at`` of the line that starts at ``start``,
    cut to 40 characters, and its 1-based position in the line. Only for messages."""
    char = len(bytes(buf[start:at]).decode("utf-8", "replace")) + 1
    text = _TOKEN.match(buf, at).group()[:200].decode("utf-8", "replace")
    return (text if len(text) <= 40 else text[:40] + "..."), char


def _svm_row_token(buf, row, k):
    """``(line, text, character)`` of token ``k`` of data row ``row``: its label for 0, else
    its k-th ``index:value`` entry (``qid:`` skipped as the parser does). Only for messages:
    the row's line is found by scanning the file again."""
    line, start = svmlight.row_line(buf, row)
    text = _LINE.match(buf, start).group().split(b"#", 1)[0]
    tokens = [m.start() for m in re.finditer(rb"[^ \t\r]+", text)]
    tokens = tokens[:1] + [t for t in tokens[1:] if not text.startswith(b"qid:", t)]
    return (line, *_svm_token(buf, start, start + tokens[int(k)]))


def _svm_csv_hint(line):
    """A hint for a first data line that looks like CSV: commas, no ``index:value``."""
    text = line.split(b"#", 1)[0]
    return "; this looks like CSV: pass fmt='csv'" if b"," in text and b":" not in text else ""
