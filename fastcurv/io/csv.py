"""Numeric CSV: the header rule, encodings (a UTF-8 byte-order mark, or any 8-bit text),
numpy's loadtxt, and messages naming the bad line and column."""

import csv
import io
import re
import warnings

import numpy as np

from ._errors import DataError
from ._files import _checked_path, _decompressed
from ._options import _as_int


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
        why = ""
        if header:  # one line, taken as a header: another delimiter is the likely reason
            hint = _delimiter_hint(text, delimiter).strip()[1:-1]  # its words, unbracketed
            why = f" (its only line was read as a header{'; ' + hint if hint else ''})"
        raise DataError(f"{path}: no data rows{why}")
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


def _raw_fields(text, delimiter):
    """The fields of one line as the csv module splits them, unstripped (empty for a line
    it cannot split)."""
    try:
        return next(csv.reader([text], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return []


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
            for col, raw in enumerate(_raw_fields(text, delimiter), start=1):
                if raw[:1] != '"' and raw.lstrip()[:1] == '"':
                    return (f"{path}: line {no}, column {col}: {_shown(raw, encoding)!r} has "
                            "a space before its opening quote, and a quote counts only at the "
                            "start of a field; remove the space (or the quotes)")
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
