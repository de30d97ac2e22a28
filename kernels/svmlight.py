"""A one-pass parser of svmlight / libsvm text (``label idx:val idx:val ... # comment``).

Numbers are parsed on the exact fast path (Clinger 1990): a decimal with at most 15
significant digits and a power-of-ten exponent of at most 22 in magnitude converts with a
single rounding, so the result equals ``float(token)``. Any other number is reported back
(copied, space-separated, into ``slow_buf``) for the caller to convert exactly in one
C call (``numpy.fromstring(..., sep=" ")``, which rounds correctly).
"""

import numpy as np

from ._jit import jit

_POW10 = np.array([10.0**k for k in range(23)])
#: largest feature index accepted (2^40, ~1.1e12: beyond any real feature space; larger
#: indices are an error instead of an int64 overflow)
MAX_INDEX = 2**40


@jit
def _is_space(ch):
    return ch == 32 or ch == 9 or ch == 13


@jit
def _number(buf, pos, end, pow10):
    """Parse a decimal at ``buf[pos:end]``: ``(value, next_pos, ok, exact)``.

    ``ok`` is False if no valid number starts there; ``exact`` False if the value needs the
    slow exact path (too many digits, a large exponent, inf/nan spellings).
    """
    i = pos
    neg = False
    if i < end and (buf[i] == 45 or buf[i] == 43):  # - +
        neg = buf[i] == 45
        i += 1
    mant = 0
    ndig = 0
    exp10 = 0
    any_digit = False
    huge_exp = False
    while i < end and 48 <= buf[i] <= 57:
        any_digit = True
        if mant == 0 and buf[i] == 48:
            pass
        elif ndig < 19:
            mant = mant * 10 + (buf[i] - 48)
            ndig += 1
        else:
            exp10 += 1
            ndig += 1
        i += 1
    if i < end and buf[i] == 46:  # .
        i += 1
        while i < end and 48 <= buf[i] <= 57:
            any_digit = True
            if mant == 0 and buf[i] == 48:
                exp10 -= 1
            elif ndig < 19:
                mant = mant * 10 + (buf[i] - 48)
                ndig += 1
                exp10 -= 1
            else:
                ndig += 1
            i += 1
    if not any_digit:
        return 0.0, i, False, False
    if i < end and (buf[i] == 101 or buf[i] == 69):  # e E
        j = i + 1
        eneg = False
        if j < end and (buf[j] == 45 or buf[j] == 43):
            eneg = buf[j] == 45
            j += 1
        if j < end and 48 <= buf[j] <= 57:
            e = 0
            while j < end and 48 <= buf[j] <= 57:
                if e < 100000:
                    e = e * 10 + (buf[j] - 48)
                else:
                    # digits dropped: the exponent is not known here, so the slow exact path
                    # reads the token (1e1000000 after 100,000 leading fraction zeros would
                    # otherwise come out as 1)
                    huge_exp = True
                j += 1
            exp10 += -e if eneg else e
            i = j
        else:
            return 0.0, i, False, False
    exact = ndig <= 15 and -22 <= exp10 <= 22 and not huge_exp
    if mant == 0:
        value = 0.0
        exact = True
    elif exact:
        value = float(mant)
        if exp10 >= 0:
            value *= pow10[exp10]
        else:
            value /= pow10[-exp10]
    else:
        value = 0.0
    if neg:
        value = -value
    return value, i, True, exact


@jit
def _copy_token(buf, lo, hi, out, nb):
    for q in range(lo, hi):
        out[nb] = buf[q]
        nb += 1
    out[nb] = 32
    return nb + 1


@jit
def parse(buf, labels, indices, values, indptr, slow_buf, slow_at):
    """Parse the whole buffer (uint8) into CSR pieces; arrays are sized by the caller.

    Returns ``(n_rows, nnz, n_slow, slow_bytes, err_code, err_line, err_at)``. err_code: 0 ok,
    1 bad label, 2 bad ``index:value`` pair, 3 a non-integer or negative index, 4 indices not
    increasing within a line, 5 an index above ``MAX_INDEX``; ``err_line`` is the file's line
    (1-based) and ``err_at`` the offset in ``buf`` of the token at fault (the label or the
    ``index:value`` entry). Numbers that need the exact slow path are copied into ``slow_buf``
    followed by a space; ``slow_at`` says where each goes: ``-1 - row`` for a label, else the
    entry.
    """
    pow10 = _POW10
    n = buf.shape[0]
    pos = 0
    row = 0
    nnz = 0
    n_slow = 0
    nb = 0
    line_no = 0
    indptr[0] = 0
    while pos < n:
        line_no += 1
        eol = pos
        while eol < n and buf[eol] != 10:
            eol += 1
        stop = pos
        while stop < eol and buf[stop] != 35:  # '#'
            stop += 1
        i = pos
        while i < stop and _is_space(buf[i]):
            i += 1
        if i == stop:  # blank or comment-only line
            pos = eol + 1
            continue
        value, j, ok, exact = _number(buf, i, stop, pow10)
        if not ok or (j < stop and not _is_space(buf[j])):
            return row, nnz, n_slow, nb, 1, line_no, i
        if not exact:
            nb = _copy_token(buf, i, j, slow_buf, nb)
            slow_at[n_slow] = -1 - row
            n_slow += 1
        labels[row] = value
        i = j
        prev = -1
        while True:
            while i < stop and _is_space(buf[i]):
                i += 1
            if i >= stop:
                break
            # qid:N is skipped
            if stop - i > 4 and buf[i] == 113 and buf[i + 1] == 105 and buf[i + 2] == 100 \
                    and buf[i + 3] == 58:
                i += 4
                while i < stop and not _is_space(buf[i]):
                    i += 1
                continue
            idx = 0
            k = i
            big = False
            while k < stop and 48 <= buf[k] <= 57:
                if not big:
                    idx = idx * 10 + (buf[k] - 48)
                    big = idx > MAX_INDEX
                k += 1
            if k == i:
                return row, nnz, n_slow, nb, 3, line_no, i
            if k >= stop or buf[k] != 58:  # ':'
                return row, nnz, n_slow, nb, 2, line_no, i
            if big:
                return row, nnz, n_slow, nb, 5, line_no, i
            if idx <= prev:
                return row, nnz, n_slow, nb, 4, line_no, i
            prev = idx
            value, j, ok, exact = _number(buf, k + 1, stop, pow10)
            if not ok or (j < stop and not _is_space(buf[j])):
                return row, nnz, n_slow, nb, 2, line_no, i
            if not exact:
                nb = _copy_token(buf, k + 1, j, slow_buf, nb)
                slow_at[n_slow] = nnz
                n_slow += 1
            indices[nnz] = idx
            values[nnz] = value
            nnz += 1
            i = j
        row += 1
        indptr[row] = nnz
        pos = eol + 1
    return row, nnz, n_slow, nb, 0, 0, 0


@jit
def row_line(buf, row):
    """``(line, offset)``: the file's line number (1-based) of data row ``row`` (0-based) and
    the offset in ``buf`` where that line starts, skipping blank and comment-only lines as
    ``parse`` does; for messages about a row found bad after parsing. ``(0, 0)`` if there is
    no such row. (Its line scan repeats ``parse``'s rather than sharing a helper: the parser
    ran 5% slower with the scan moved into a function.)"""
    n = buf.shape[0]
    pos = 0
    line_no = 0
    seen = -1
    while pos < n:
        line_no += 1
        eol = pos
        while eol < n and buf[eol] != 10:
            eol += 1
        i = pos
        while i < eol and _is_space(buf[i]):
            i += 1
        if i < eol and buf[i] != 35:  # not blank, not a comment
            seen += 1
            if seen == row:
                return line_no, pos
        pos = eol + 1
    return 0, 0
