"""svmlight / libsvm text: the options, the compiled parse (:mod:`fastcurv.kernels.svmlight`)
and messages naming the line and token at fault."""

import re

import numpy as np
import scipy.sparse as sp

from ..kernels import svmlight
from ._errors import DataError
from ._files import _checked_path, _decompressed
from ._options import _as_int

_SVM_ERRORS = {
    1: "the label is not a number",
    2: "an entry is not of the form index:value with a numeric value (missing value?)",
    3: "a feature index is not a non-negative integer",
    4: "feature indices must increase along a line",
    5: f"a feature index is larger than {svmlight.MAX_INDEX:,} (2^40)",
}


def load_svmlight(path, *, zero_based="auto", n_features=None):
    """svmlight / libsvm text: ``label idx:val ...`` per line, ``#`` comments, ``qid:`` ignored,
    a UTF-8 byte-order mark at the start skipped.

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
        buf = np.fromfile(path, dtype=np.uint8)
    else:
        # a writable copy: the parser is compiled for writable arrays (a read-only buffer
        # would have it compiled a second time)
        buf = np.frombuffer(raw, dtype=np.uint8).copy()
    if buf[:3].tobytes() == _BOM:
        # a UTF-8 byte-order mark (Windows editors write one) read as spaces, which the parser
        # skips: offsets and line numbers in messages stay those of the file
        buf[:3] = 32
    return buf


_BOM = b"\xef\xbb\xbf"


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
