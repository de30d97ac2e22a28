"""Data readers: svmlight/libsvm (bitwise against scikit-learn's reader), CSV, npz and the
dispatching ``load``. Every bad file must raise ``DataError`` (a ``ValueError``) that names the
line when there is one.

svmlight numbers must be the correctly rounded doubles of their decimal text, as
``sklearn.datasets.load_svmlight_file`` (strtod) gives them: compared bit for bit (``-0.0`` and
subnormals included), not to a tolerance.
"""

import bz2
import gzip
import io
import os
import re
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from fastcurv.io import DataError, load, load_csv, load_npz, load_svmlight

skd = pytest.importorskip("sklearn.datasets")


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def assert_same_as_sklearn(path, **kw):
    Xs, ys = skd.load_svmlight_file(str(path), **kw)
    Xf, yf = load_svmlight(path, **kw)
    assert sp.issparse(Xf) and Xf.format == "csr" and Xf.dtype == np.float64
    assert yf.dtype == np.float64 and yf.shape == ys.shape
    assert Xf.shape == Xs.shape
    np.testing.assert_array_equal(Xf.indptr, Xs.indptr)
    np.testing.assert_array_equal(Xf.indices, Xs.indices)
    np.testing.assert_array_equal(_bits(Xf.data), _bits(Xs.data))
    np.testing.assert_array_equal(_bits(yf), _bits(ys))
    return Xf, yf


# ---------------------------------------------------------------------- svmlight vs sklearn
def _matrix(n, d, density, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-8, 9, (n, d))
    X[rng.random((n, d)) >= density] = 0.0
    X[0, 0] = 1e-300
    X[1, 1] = 1.5e10
    X[2, 2] = 5e-324  # the smallest subnormal
    X[3, :] = 0.0  # a row with no entries
    return X


@pytest.mark.parametrize("density,zero_based,labels,sparse_in", [
    (0.9, True, "pm1", False),
    (0.9, False, "multiclass", True),
    (0.1, False, "pm1", True),
    (0.1, True, "real", False),
], ids=["dense-zero", "dense-one-multiclass", "sparse-one", "sparse-zero-real"])
def test_svmlight_dump_roundtrip_matches_sklearn(tmp_path, density, zero_based, labels,
                                                 sparse_in):
    n, d = 60, 9
    X = _matrix(n, d, density, seed=int(density * 10) + zero_based)
    rng = np.random.default_rng(1)
    y = {"pm1": np.where(rng.random(n) < 0.5, -1.0, 1.0),
         "multiclass": rng.integers(0, 5, n).astype(np.float64),
         "real": rng.standard_normal(n) * 1e5}[labels]
    path = tmp_path / "data.svmlight"
    skd.dump_svmlight_file(sp.csr_matrix(X) if sparse_in else X, y, str(path),
                           zero_based=zero_based, comment="written by\nthe test")
    Xf, yf = assert_same_as_sklearn(path)
    # and the values are the dumped ones (dump writes %.16g: equal to 16 digits)
    assert_same_as_sklearn(path, zero_based=zero_based)
    np.testing.assert_allclose(Xf.toarray()[:, :X.shape[1]], X, rtol=1e-15, atol=0)


def test_svmlight_query_ids_are_skipped(tmp_path):
    X = _matrix(30, 5, 0.5, seed=3)
    y = np.arange(30) % 3
    qid = np.repeat(np.arange(10), 3)
    path = tmp_path / "q.svm"
    skd.dump_svmlight_file(X, y, str(path), query_id=qid, zero_based=False)
    assert "qid:" in path.read_text()
    assert_same_as_sklearn(path)


def test_svmlight_handwritten_numbers_comments_blank_lines(tmp_path):
    rng = np.random.default_rng(4)
    # repr() gives the shortest round-trip form (up to 17 digits) over a wide exponent range
    vals = rng.standard_normal(40) * 10.0 ** rng.integers(-300, 300, 40)
    long = [repr(float(v)) for v in vals]
    lines = [
        "# a header comment",
        "",
        "-1 qid:3 1:1e-300 3:1.5E+10 7:-0.0 # trailing comment",
        "+1 2:0.30000000000000004 4:1e22 5:1e23 6:-2.5e-5 8:.5 9:5.",
        "   ",
        "2.0\t1:0.1000000000000000055511151231257827 2:9007199254740993 3:4.9406564584124654e-324",
        "1e0 1:2.2250738585072011e-308 2:123456789012345e-22 3:999999999999999e22 10:0",
        "3 " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(long[:20])),
        "\r",
        "-2.5 " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(long[20:])) + "\r",
        "0",  # a label with no features
        "# the end",
    ]
    path = tmp_path / "h.txt"
    path.write_text("\n".join(lines) + "\n")
    X, y = assert_same_as_sklearn(path)
    assert X.shape[0] == 7
    assert_same_as_sklearn(path, zero_based=False)
    # the explicit -0.0 is stored, with its sign bit (the third entry of the first row)
    assert X.indices[2] == 6 and X.data[2] == 0.0 and np.signbit(X.data[2])


def test_svmlight_n_features(tmp_path):
    path = tmp_path / "n.svm"
    path.write_text("1 1:1 3:2\n0 2:4\n")
    X, y = load_svmlight(path, n_features=6)
    Xs, _ = skd.load_svmlight_file(str(path), n_features=6)
    assert X.shape == Xs.shape == (2, 6)
    np.testing.assert_array_equal(X.toarray(), Xs.toarray())
    with pytest.raises(DataError):
        load_svmlight(path, n_features=2)



@pytest.mark.parametrize("kw,error", [
    (dict(n_features=4.5), TypeError),  # was truncated to 4 columns, silently
    (dict(n_features="5"), TypeError),  # was a raw TypeError from a comparison
    (dict(n_features=True), TypeError),
    (dict(n_features=-1), ValueError),
    (dict(zero_based=0), TypeError),  # these three were read as zero-based, silently
    (dict(zero_based=None), TypeError),
    (dict(zero_based="no"), ValueError),
], ids=["float", "str", "bool", "negative", "zb-0", "zb-None", "zb-no"])
def test_svmlight_options_are_checked(tmp_path, kw, error):
    path = tmp_path / "o.svm"
    path.write_text("1 1:1 3:2\n")
    name = next(iter(kw))
    with pytest.raises(error, match=rf"{name} must be .*, got {re.escape(repr(kw[name]))}"):
        load_svmlight(path, **kw)


def test_svmlight_options_accept_numpy_scalars(tmp_path):
    path = tmp_path / "o.svm"
    path.write_text("1 1:1 3:2\n0\n")
    X, _ = load_svmlight(path, zero_based=np.bool_(False), n_features=np.int64(5))
    assert X.shape == (2, 5) and list(X.indices) == [0, 2]
    X, _ = load_svmlight(path, zero_based=np.bool_(True))
    assert X.shape == (2, 4) and list(X.indices) == [1, 3]
    (tmp_path / "none.svm").write_text("1\n0\n")  # no features: n_features=0 is a fit
    assert load_svmlight(tmp_path / "none.svm", n_features=0)[0].shape == (2, 0)


@pytest.mark.parametrize("zero_based,n_features,line,index,takes,needed", [
    (True, 3, 3, 3, "zero-based indices 0 to 2", 5),  # the message once said "index 4"
    (False, 3, 3, 4, "one-based indices 1 to 3", 4),
    ("auto", 0, 1, 1, "no index", 4),  # auto: one-based, as no index is 0
])
def test_svmlight_n_features_too_small_names_the_index_as_written(
        tmp_path, zero_based, n_features, line, index, takes, needed):
    """The first index beyond n_features is named as written in the file, with its line."""
    path = tmp_path / "n.svm"
    path.write_text("1 1:1 2:1\n# note\n0 2:1 3:5 4:2\n")
    with pytest.raises(DataError, match=rf"line {line}: feature index {index} .* is beyond "
                       rf"n_features = {n_features}, which takes {takes}; pass n_features >= "
                       rf"{needed}\b"):
        load_svmlight(path, zero_based=zero_based, n_features=n_features)

BAD_LINES = {
    "label": "abc 1:2",
    "index": "1 x:2",
    "negative-index": "1 -3:2",
    "missing-value": "1 3:",
    "nan-value": "1 3:nan",
    "inf-value": "1 3:inf",
    "bad-value": "1 3:2x",
    "decreasing": "1 3:1 2:4",
    "duplicate": "1 3:1 3:4",
    "exponent": "1 3:1e",
}


@pytest.mark.parametrize("bad", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_svmlight_bad_line_raises_with_line_number(tmp_path, bad):
    path = tmp_path / "bad.svm"
    path.write_text(f"# comment\n1 1:1\n\n{bad}\n1 2:1\n")  # the bad line is line 4
    with pytest.raises(DataError, match=r"\bline 4\b") as info:
        load_svmlight(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad,token,char", [
    ("0 1:1e999", "1:1e999", 3),  # a value beyond the float64 range
    ("1e999 1:1", "1e999", 1),  # a label
    ("1 qid:7 2:1 3:-1e400", "3:-1e400", 13),  # qid: is not an entry
], ids=["value", "label", "after-qid"])
def test_svmlight_overflow_names_the_file_line_and_token(tmp_path, bad, token, char):
    """Found after parsing, a value beyond the float64 range is still reported at its line of
    the file (it once said "data line 2", counting neither comments nor blank lines)."""
    path = tmp_path / "o.svm"
    path.write_text(f"# header\n\n1 1:1\n{bad}\n")
    with pytest.raises(DataError, match=rf"line 4: '{re.escape(token)}' at character {char}\b"):
        load_svmlight(path)


def test_svmlight_error_shows_the_bad_token_of_a_long_line(tmp_path):
    """The message shows the token at fault and where it is, not the line's first 80
    characters (a bad entry at the end of a long line was not visible)."""
    line = "1 " + " ".join(f"{i}:0.{i}" for i in range(1, 300)) + " 300:0.3x"
    path = tmp_path / "long.svm"
    path.write_text(f"1 1:1\n{line}\n")
    with pytest.raises(DataError, match=r"line 2: an entry is not of the form") as info:
        load_svmlight(path)
    assert f"'300:0.3x' at character {line.index('300:0.3x') + 1}" in str(info.value)


def test_svmlight_index_0_read_as_one_based_names_the_line(tmp_path):
    path = tmp_path / "z.svm"
    path.write_text("1 1:1\n# note\n1 qid:2 0:1 2:1\n")
    with pytest.raises(DataError, match=r"line 3: feature index 0 \('0:1' at character 9\)"
                       r".*pass zero_based=True or 'auto'"):
        load_svmlight(path, zero_based=False)


def test_svmlight_exponent_with_many_digits(tmp_path):
    """An exponent too long for the fast path goes to the exact one: after 100,000 leading
    fraction zeros, 1e1000000 is 1e900000 (inf: refused), not 1; 1e100005 is 1e5."""
    zeros = "0." + "0" * 99999
    path = tmp_path / "big.svm"
    path.write_text(f"1 1:{zeros}1e100005 2:{zeros}123e100002\n")
    X, y = load_svmlight(path)
    np.testing.assert_array_equal(X.toarray(), [[1e5, 1.23e2]])
    for line in (f"1 1:{zeros}1e1000000\n", f"{zeros}1e1000000 1:1\n"):
        path.write_text(line)
        with pytest.raises(DataError, match=r"\bline 1\b"):
            load_svmlight(path)


def test_svmlight_other_errors(tmp_path):
    empty = tmp_path / "empty.svm"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(DataError):
        load_svmlight(empty)
    zero = tmp_path / "zero.svm"
    zero.write_text("1 0:1 2:3\n")
    with pytest.raises(DataError):
        load_svmlight(zero, zero_based=False)  # index 0 in a one-based file
    X, _ = load_svmlight(zero)  # "auto": an index 0 makes it zero-based
    np.testing.assert_array_equal(X.toarray(), [[1.0, 0.0, 3.0]])


@pytest.mark.parametrize("name,compress", [
    ("d.svm.gz", gzip.compress), ("d.svmlight.bz2", bz2.compress), ("d.txt.gz", gzip.compress),
])
def test_svmlight_compressed_matches_sklearn(tmp_path, name, compress):
    """gzip and bzip2 files are read as scikit-learn reads them (by name, as they were
    refused: "unknown extension '.gz'"), and by their first bytes whatever the name (fmt=
    'svmlight' on a compressed file said "the label is not a number")."""
    X = _matrix(40, 6, 0.5, seed=8)
    y = np.arange(40) % 3
    plain = tmp_path / "plain.svm"
    skd.dump_svmlight_file(X, y, str(plain), zero_based=False, comment="compressed")
    path = tmp_path / name
    path.write_bytes(compress(plain.read_bytes()))
    Xf, yf = assert_same_as_sklearn(path)
    for X2, y2 in (load(path), load(plain), load_svmlight(plain)):
        np.testing.assert_array_equal(X2.toarray(), Xf.toarray())
        np.testing.assert_array_equal(y2, yf)
    anonymous = tmp_path / "data"  # no extension: the format is given, compression is seen
    anonymous.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(load(anonymous, fmt="svmlight")[0].toarray(), Xf.toarray())


@pytest.mark.parametrize("name,compress,fmt", [
    ("d.csv.gz", gzip.compress, None), ("d.csv.bz2", bz2.compress, None),
    ("d.gz", gzip.compress, "csv"),  # the first data row was dropped, silently
    ("d.dat", bz2.compress, "csv"),
])
def test_csv_compressed_reads_every_row(tmp_path, name, compress, fmt):
    raw = b"\xef\xbb\xbfx1,x2,y\r\n1,2,0\r\n  \r\n3,4,1\r\n"  # BOM, header, CRLF, blank
    path = tmp_path / name
    path.write_bytes(compress(raw))
    X, y = load(path, fmt=fmt)
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(y, [0.0, 1.0])
    path.write_bytes(compress(raw.replace(b"3,4,1", b"3,4,x")))  # messages read it too
    with pytest.raises(DataError, match=r"line 4, column 3: value 'x'"):
        load(path, fmt=fmt)


def test_compressed_file_damaged_or_not_a_text_format(tmp_path):
    path = tmp_path / "cut.svm.gz"
    path.write_bytes(gzip.compress(b"1 1:2 3:4\n" * 100)[:30])
    with pytest.raises(DataError, match=r"cut.svm.gz: cannot be decompressed as gzip .*cut "
                       r"short"):
        load(path)
    path = tmp_path / "bad.csv.bz2"
    path.write_bytes(bz2.compress(b"1,2,0\n")[:16] + b"x" * 40)
    with pytest.raises(DataError, match=r"cannot be decompressed as bzip2"):
        load(path)
    (tmp_path / "d.npz.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(DataError, match=r"unknown extension '.npz.gz'"):
        load(tmp_path / "d.npz.gz")
    (tmp_path / "plain.svm.gz").write_text("1 1:2\n")  # not compressed after all: plain text
    np.testing.assert_array_equal(load(tmp_path / "plain.svm.gz")[0].toarray(), [[2.0]])


@pytest.mark.parametrize("text,hint", [
    ("x1,x2,y\n1,2,0\n3,4,1\n", True),  # a header
    ("# exported\n\n1,2,0\n3,4,1\n", True),  # the first data line, after a comment
    ("1 1:2\n3,4,1\n", False),  # not on the first data line: an svmlight file with a bad line
    ("a b c\n1 2 0\n", False),  # no commas
], ids=["header", "after-comment", "later-line", "no-commas"])
def test_svmlight_reading_a_csv_file_hints_at_fmt_csv(tmp_path, text, hint):
    """A CSV file saved as .txt goes to the svmlight reader; when its first data line fails and
    looks like CSV, the message says so ("the label is not a number" alone gave no clue)."""
    path = tmp_path / "d.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=r"the label is not a number") as info:
        load(path)
    assert ("; this looks like CSV: pass fmt='csv'" in str(info.value)) == hint
    if hint:
        X, y = load(path, fmt="csv")
        np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])


# ---------------------------------------------------------------------- CSV
def _write_csv(path, data, header=None):
    with open(path, "w") as fh:
        if header:
            fh.write(",".join(header) + "\n")
        for row in data:
            fh.write(",".join(repr(float(v)) for v in row) + "\n")


@pytest.mark.parametrize("header", [None, ["a", "b", "c", "target"]], ids=["plain", "header"])
@pytest.mark.parametrize("target", [-1, 0, 1, -3])
def test_csv_columns_and_target(tmp_path, header, target):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((7, 4)) * 10.0 ** rng.integers(-5, 5, (7, 4))
    path = tmp_path / "d.csv"
    _write_csv(path, data, header)
    X, y = load_csv(path, target=target)
    t = target % 4
    np.testing.assert_array_equal(y, data[:, t])
    np.testing.assert_array_equal(X, np.delete(data, t, axis=1))
    assert X.dtype == np.float64 and y.dtype == np.float64 and X.flags.c_contiguous


def test_csv_nan_raises_with_line(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("x1,x2,y\n1,2,0\n3,4,1\n5,nan,1\n")
    with pytest.raises(DataError, match=r"\bline 4\b"):
        load_csv(path)


def test_csv_empty_field_raises(tmp_path):
    """A missing value is an error, never a silent NaN or a dropped row (the line number in
    the message is checked by test_csv_error_names_the_file_line)."""
    path = tmp_path / "empty.csv"
    path.write_text("x1,x2,y\n1,2,0\n3,,1\n")
    with pytest.raises(DataError):
        load_csv(path)
    path.write_text("1,2,0\n3,4,\n")  # a missing target at the end of a line
    with pytest.raises(DataError):
        load_csv(path)


def test_csv_too_few_columns(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("1\n2\n")
    with pytest.raises(DataError):
        load_csv(path)


def test_csv_ragged_rows(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2,0\n3,4\n")
    with pytest.raises(DataError):
        load_csv(path)


@pytest.mark.parametrize("text,line", [
    ("x1,x2,y\n1,2,0\n3,,1\n", 3),  # empty field on line 3
    ("x1,x2,y\n1,2,0\n\n# note\n3,nan,1\n", 5),  # NaN on line 5 after a blank and a comment
], ids=["empty-field", "nan-after-blank-line"])
def test_csv_error_names_the_file_line(tmp_path, text, line):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"\bline {line}\b"):
        load_csv(path)


def test_csv_missing_value_on_first_line(tmp_path):
    path = tmp_path / "first.csv"
    path.write_text("1,,0\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"\bline 1\b"):
        load_csv(path)


def test_csv_target_out_of_range(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(DataError):
        load_csv(path, target=3)


@pytest.mark.parametrize("target", [1.0, "1", True, None])
def test_csv_target_must_be_an_integer(tmp_path, target):
    """target=1.0 raised an IndexError and "1" a raw TypeError from a comparison."""
    path = tmp_path / "t.csv"
    path.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(TypeError, match=rf"target must be an integer column index .*, got "
                       rf"{re.escape(repr(target))}"):
        load_csv(path, target=target)
    with pytest.raises(DataError, match=r"target column -4 does not exist \(the file has 3 "
                       r"columns: 0 to 2, or -3 to -1"):
        load_csv(path, target=-4)
    X, y = load_csv(path, target=np.int64(-3))
    np.testing.assert_array_equal(y, [1.0, 3.0])


@pytest.mark.parametrize("raw", [
    b"x1,x2,y\n1,2,0\n   \n3,4,1\n",  # a line of spaces
    b" \t\nx1,x2,y\n1,2,0\n\t\n3,4,1\n",  # before the header, and a tab
    b"1,2,0\n  # an indented comment\n3,4,1\n  \n",
    b"x1,x2,y\r1,2,0\r  \r3,4,1\r",  # CR line ends
], ids=["spaces", "before-header", "indented-comment", "cr"])
def test_csv_whitespace_only_lines_are_blank(tmp_path, raw):
    """A line of only spaces or tabs is a blank line, ignored (numpy reads it as a row of one
    empty field, and the file was refused without a line number)."""
    path = tmp_path / "w.csv"
    path.write_bytes(raw)
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(y, [0.0, 1.0])
    path.write_bytes(raw.replace(b"3,4,1", b"3,x,1"))  # counted as lines by the messages
    line = raw.replace(b"\r", b"\n").split(b"\n").index(b"3,4,1") + 1
    with pytest.raises(DataError, match=rf"line {line}, column 2: value 'x'"):
        load_csv(path)


@pytest.mark.parametrize("text,pattern", [
    ('x,y,t\n"1,5",2,0\n3,4,1\n',
     r"line 2, column 1: value '1,5' is not a finite number.*decimal comma"),
    ('x,y,t\n1,2,0\n"3,4,1\n5,6,0\n', r"line 3: a quote \(\"\) opens a field that is not closed"),
    ('"1,2,0\n3,4,1\n', r"line 1: a quote"),  # not a header, whose row would be dropped
    ("\ufeffx,y,t\n1,2,0\n\u0661,4,1\n", r"line 3, column 1: value '\u0661'"),  # arabic-indic 1
    ("x,y,t\n1,2,0 # a comment\n3,4,x\n", r"line 3, column 3: value 'x'"),
    # numpy takes a quote only at a field's start; the check stripped the space first and
    # found nothing, and the error named no line (a review's finding)
    ('a,b,y\n1,2,3\n4, "5",6\n', r"line 3, column 2: ' \"5\"' has a space before its"),
], ids=["quoted-decimal-comma", "unbalanced-quote", "unbalanced-quote-first-line",
        "non-ascii-digit", "comment-after-data", "space-before-quote"])
def test_csv_errors_name_the_right_line(tmp_path, text, pattern):
    """Quotes are honoured when the bad line is looked for: a quoted decimal comma was blamed on
    the next line, an unbalanced quote, like a non-ASCII digit, named no line."""
    path = tmp_path / "q.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        load_csv(path)


@pytest.mark.parametrize("raw,line,char", [
    (b"caf\xe9,b,y\n1,2,0\n3,4,1\n", 1, 4),  # a latin-1 header after a UTF-8 BOM
    (b"x,b,y\n1,2,0\n3,4\xe9,1\n", 3, 4),
    (b"# caf\xe9\nx,b,y\n1,2,0\n3,4,1\n", 1, 6),
    (b"x,b,y\r" + b"1,2,0\r" * 3000 + b"3,4\xe9,1\r", 3002, 4),  # found by numpy's reader
], ids=["header", "data", "comment", "far-cr"])
def test_csv_bom_then_a_byte_that_is_not_utf8(tmp_path, raw, line, char):
    """A file that starts with a UTF-8 byte-order mark must be UTF-8: a latin-1 byte is named
    by line, with the fix (it raised a bare UnicodeDecodeError, naming neither)."""
    path = tmp_path / "b.csv"
    path.write_bytes(b"\xef\xbb\xbf" + raw)
    with pytest.raises(DataError, match=rf"line {line}: byte 0xe9 at character {char} is not "
                       r"UTF-8, but the file starts with a UTF-8 byte-order mark; save the "
                       r"file as UTF-8") as info:
        load_csv(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("raw,shown", [
    (b"x,b,y\n1,2,0\n3,4\xe9,1\n", "4\xe9"),  # latin-1
    ("x,b,y\n1,2,0\n3,4\u0661,1\n".encode(), "4\u0661"),  # UTF-8: shown as written
], ids=["latin1", "utf8"])
def test_csv_without_bom_any_8bit_text_and_bad_bytes_named(tmp_path, raw, shown):
    """Without a byte-order mark any 8-bit encoding is read (a latin-1 header is accepted, see
    test_csv_variants_read_every_row); a non-ASCII byte in a number is named by line and column."""
    path = tmp_path / "n.csv"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=rf"line 3, column 2: value '{shown}' is not a finite"):
        load_csv(path)


# ---------------------------------------------------------------------- npz
def test_npz_dense(tmp_path):
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((9, 3)), rng.standard_normal(9)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    Xl, yl = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(Xl, X)
    np.testing.assert_array_equal(yl, y)
    # y stored as a column is accepted as (n,)
    np.savez(tmp_path / "c.npz", X=X, y=y[:, None])
    assert load_npz(tmp_path / "c.npz")[1].shape == (9,)


def test_npz_sparse_parts(tmp_path):
    A = sp.random(12, 7, density=0.3, format="csr", random_state=7)
    y = np.arange(12.0)
    np.savez(tmp_path / "s.npz", X_data=A.data, X_indices=A.indices, X_indptr=A.indptr,
             X_shape=np.array(A.shape), y=y)
    X, yl = load_npz(tmp_path / "s.npz")
    assert sp.issparse(X) and X.format == "csr" and X.shape == (12, 7)
    np.testing.assert_array_equal(X.toarray(), A.toarray())
    np.testing.assert_array_equal(yl, y)


def _save_with_prefix(path, A, y):
    """``A`` as ``scipy.sparse.save_npz`` writes it, every part prefixed ``X_``, next to y."""
    sp.save_npz(path.with_suffix(".tmp.npz"), A, compressed=False)
    with np.load(path.with_suffix(".tmp.npz")) as f:
        parts = {f"X_{k}": f[k] for k in f.files}
    np.savez(path, y=y, **parts)
    return parts


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_npz_sparse_parts_with_their_format(tmp_path, fmt):
    """The parts of ``save_npz`` with their ``format``: a CSC matrix's parts (indptr over
    columns, row indices) were read as CSR: a wrong matrix, or an error about X_indptr."""
    A = sp.random(12, 7, density=0.3, format=fmt, random_state=7)
    y = np.arange(12.0)
    parts = _save_with_prefix(tmp_path / "s.npz", A, y)
    assert parts["X_format"].item() == fmt.encode()
    X, yl = load_npz(tmp_path / "s.npz")
    assert sp.issparse(X) and X.format == "csr" and X.shape == (12, 7)
    np.testing.assert_array_equal(X.toarray(), A.toarray())
    B = sp.random(12, 12, density=0.3, format=fmt, random_state=8)  # square: no shape clash
    _save_with_prefix(tmp_path / "q.npz", B, y)
    np.testing.assert_array_equal(load_npz(tmp_path / "q.npz")[0].toarray(), B.toarray())


def test_npz_sparse_parts_of_another_format_are_refused(tmp_path):
    y = np.arange(5.0)
    _save_with_prefix(tmp_path / "c.npz", sp.random(5, 4, density=0.5, format="coo",
                                                    random_state=0), y)
    with pytest.raises(DataError, match="X_format 'coo' is not supported"):
        load_npz(tmp_path / "c.npz")
    A = sp.random(5, 4, density=0.5, format="csr", random_state=0)
    np.savez(tmp_path / "b.npz", y=y, X_data=A.data, X_indices=A.indices, X_indptr=A.indptr,
             X_shape=np.array(A.shape), X_format=np.array(b"bsr"))
    with pytest.raises(DataError, match="X_format 'bsr' is not supported"):
        load_npz(tmp_path / "b.npz")
    # a CSC matrix's parts are checked against its column count: row index 5 of 5 rows
    C = sp.random(5, 4, density=0.5, format="csc", random_state=0)
    ind = C.indices.copy()
    ind[0] = 5
    np.savez(tmp_path / "x.npz", y=y, X_data=C.data, X_indices=ind, X_indptr=C.indptr,
             X_shape=np.array(C.shape), X_format=np.array("csc"))
    with pytest.raises(DataError, match=r"row indices outside \[0, 5\)"):
        load_npz(tmp_path / "x.npz")


_IND = np.array([0, 2, 1, 0, 2], np.int32)
_PTR = np.array([0, 2, 3, 3, 5], np.int32)


@pytest.mark.parametrize("parts, name", [
    (dict(X_indices=_IND + 0.5), "X_indices"),  # scipy would truncate them to integers
    (dict(X_indptr=_PTR + np.array([0, .7, .2, .9, 0])), "X_indptr"),  # ... and floor these
    (dict(X_indptr=np.array([0, 2, 3, 3, 4], np.int32)), "X_indptr"),  # would drop a value
    (dict(X_indptr=_PTR[:-1]), "X_indptr"),  # one row short of X_shape
    (dict(X_shape=np.array([4.0, 3.0])), "X_shape"),
    # column indices outside [0, 3) and a decreasing indptr: scipy builds the matrix, then
    # drops values in toarray() and crashes the process in X @ v (a review's finding)
    (dict(X_indices=np.array([0, 7, 1, 0, 2], np.int32)), "X_indices"),
    (dict(X_indices=np.array([0, -5, 1, 0, 2], np.int32)), "X_indices"),
    (dict(X_indptr=np.array([0, 4, 3, 3, 5], np.int32)), "X_indptr"),
    (dict(X_shape=np.array([4, -3])), "X_shape"),
], ids=["fractional-indices", "fractional-indptr", "indptr-ends-early", "indptr-short",
        "float-shape", "index-too-large", "index-negative", "indptr-decreases",
        "negative-shape"])
def test_npz_sparse_parts_are_not_repaired(tmp_path, parts, name):
    """Parts that scipy.sparse.csr_matrix would silently repair, or that would crash the
    process when used, are refused, by name."""
    arrays = dict(X_data=np.arange(1.0, 6.0), X_indices=_IND, X_indptr=_PTR,
                  X_shape=np.array([4, 3]), y=np.array([0.0, 1, 0, 1]))
    path = tmp_path / "parts.npz"
    np.savez(path, **arrays)
    X, _ = load_npz(path)  # the consistent parts are read
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 2], [0, 3, 0], [0, 0, 0], [4, 0, 5]])
    np.savez(path, **dict(arrays, **parts))
    with pytest.raises(DataError, match=name):
        load_npz(path)


@pytest.mark.parametrize("arrays,match", [
    (dict(X=np.ones((3, 2))), "y"),  # no y
    (dict(y=np.ones(3)), "X"),  # no X
    (dict(X=np.ones((3, 2)), y=np.ones(4)), "X has 3 rows but y has 4 entries"),
    (dict(X=np.ones(3), y=np.ones(3)), r"X must be a 2-D array.*X.reshape\(-1, 1\)"),
    (dict(X=np.ones((3, 2)), y=np.eye(3)[:, :2]), r"y must be a 1-D.*y.argmax\(axis=1\)"),
], ids=["no-y", "no-X", "length", "X-1d", "y-one-hot"])
def test_npz_errors(tmp_path, arrays, match):
    """Each shape problem is named as such (a one-hot y and a 1-D X were both reported as "X
    has shape (30, 2) but y has shape (30, 2)")."""
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_npz(path)


def test_npz_not_an_npz(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_text("this is not a zip file\n")
    with pytest.raises(DataError):
        load_npz(path)


@pytest.mark.parametrize("reader", [load_npz, load_csv, load_svmlight, load])
def test_missing_file_is_no_such_file(tmp_path, reader):
    """load_npz said "not an .npz file (not a zip archive ...)"; load_csv and load_svmlight
    raised FileNotFoundError."""
    with pytest.raises(DataError, match=r"missing.npz: no such file$"):
        reader(tmp_path / "missing.npz")


@pytest.mark.parametrize("members,name", [
    (dict(X=b"garbage", y=b"garbage"), "y"),  # was "X has shape () but y has shape ()"
    (dict(X=b"garbage", y=np.ones(3)), "X"),
    (dict(X_data=np.ones(2), X_indices=np.array([0, 1]), X_indptr=np.array([0, 1, 2]),
          X_shape=b"\x93NUMPX", y=np.ones(2)), "X_shape"),
], ids=["both", "X", "sparse-part"])
def test_npz_member_that_is_not_npy(tmp_path, members, name):
    path = tmp_path / "junk.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, value)
                value = buf.getvalue()
            z.writestr(f"{key}.npy", value)
    with pytest.raises(DataError, match=rf"junk.npz: {name} is not a valid .npy array"):
        load_npz(path)


def test_npz_returns_float64(tmp_path):
    np.savez(tmp_path / "f.npz", X=np.ones((3, 2), np.float32), y=np.array([0, 1, 1]))
    X, y = load_npz(tmp_path / "f.npz")
    assert X.dtype == np.float64 and y.dtype == np.float64


# ---------------------------------------------------------------------- load()
def test_load_dispatches_by_extension(tmp_path):
    data = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 1.0]])
    _write_csv(tmp_path / "a.csv", data)
    _write_csv(tmp_path / "A.CSV", data)
    np.savez(tmp_path / "a.npz", X=data[:, :2], y=data[:, 2])
    for name in ("a.csv", "A.CSV", "a.npz"):
        X, y = load(tmp_path / name)
        np.testing.assert_array_equal(X, data[:, :2])
        np.testing.assert_array_equal(y, data[:, 2])
    for ext in (".svm", ".svmlight", ".libsvm", ".txt"):
        (tmp_path / f"a{ext}").write_text("0 1:1 2:2\n1 1:3 2:4\n")
        X, y = load(tmp_path / f"a{ext}")
        assert sp.issparse(X)
        np.testing.assert_array_equal(X.toarray(), data[:, :2])
        np.testing.assert_array_equal(y, data[:, 2])
    # an explicit format overrides the extension; target is passed to the CSV reader
    _write_csv(tmp_path / "a.data", data)
    X, y = load(tmp_path / "a.data", fmt="csv", target=0)
    np.testing.assert_array_equal(y, data[:, 0])


def test_load_errors(tmp_path):
    with pytest.raises(DataError):
        load(tmp_path / "missing.csv")
    (tmp_path / "a.dat").write_text("1,2\n")
    with pytest.raises(DataError, match="extension"):
        load(tmp_path / "a.dat")
    with pytest.raises(DataError):
        load(tmp_path / "a.dat", fmt="parquet")


@pytest.mark.parametrize("name,raw", [
    ("bom", b"\xef\xbb\xbf1,2,0\n3,4,1\n"),  # UTF-8 byte-order mark (Excel)
    ("cr-only", b"1,2,0\r3,4,1\r"),  # old Mac line ends
    ("pandas-index-header", b",b,y\n1,2,0\n3,4,1\n"),
    ("latin1-header", b"caf\xe9,b,y\n1,2,0\n3,4,1\n"),
    ("comment-before-header", b"# caf\xe9\n\nx1,x2,y\n1,2,0\n3,4,1\n"),
    ("quoted", b'"x1","x2","y"\n"1","2","0"\n"3","4","1"\n'),
])
def test_csv_variants_read_every_row(tmp_path, name, raw):
    """Every row is data in these common variants (a BOM, CR line ends and a first row with a
    bad field were once taken for a header and the row silently dropped)."""
    path = tmp_path / "v.csv"
    path.write_bytes(raw)
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(y, [0.0, 1.0])


@pytest.mark.parametrize("text,pattern", [
    ("1,NA,0\n3,4,1\n", r"line 1, column 2: value 'NA'.*header"),
    ("1_000,2,0\n3,4,1\n", r"line 1, column 1: value '1_000'"),
    ("1;2;0\n3;4;1\n", r"separated by ';'"),
    ("1\t2\t0\n3\t4\t1\n", r"separated by tabs"),
])
def test_csv_first_row_is_data_unless_all_names(tmp_path, text, pattern):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_csv(path)


def test_svmlight_index_beyond_limit_is_an_error(tmp_path):
    """An index is never cut short: beyond 2^40 the line is refused (it once read
    1234567890123456789 as 1234567890123455, silently)."""
    path = tmp_path / "i.svm"
    path.write_text("1 1:0.5\n0 2:1 1234567890123456789:1\n")
    with pytest.raises(DataError, match=r"line 2: a feature index is larger than .*: "
                       r"'1234567890123456789:1' at character 7\b"):
        load_svmlight(path)
    path.write_text("1 1:0.5 1099511627776:2\n")  # 2^40 itself is read exactly
    X, _ = load_svmlight(path)
    assert X.shape == (1, 2**40) and X.indices[-1] == 2**40 - 1


def test_load_names_directories_and_non_npz(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load(tmp_path)
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataError, match="not an .npz file") as err:
        load(tmp_path / "t.npz")
    assert "pickle" not in str(err.value)
    np.savez(tmp_path / "s.npz", X=np.ones((3, 2)), y=np.array(1.0))
    with pytest.raises(DataError, match="shape"):
        load(tmp_path / "s.npz")


def test_load_takes_a_bytes_path(tmp_path):
    """``load(b".../m.svm")`` compared the bytes extension with strings and answered
    "unknown extension b'.svm'" (``load_svmlight`` read the same path)."""
    path = tmp_path / "m.svm"
    path.write_text("1 1:0.5 3:2\n0 2:1\n")
    X, y = load(os.fsencode(str(path)))
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 2], [0, 1, 0]])
    np.testing.assert_array_equal(y, [1, 0])


def test_svmlight_byte_order_mark_is_skipped(tmp_path):
    """A UTF-8 byte-order mark (Windows editors write one) before the first label was read
    as part of it: "the label is not a number: '\\ufeff1'" (a review)."""
    body = b"1 1:0.5 3:2\n0 2:1.5\n"
    (tmp_path / "bom.svm").write_bytes(b"\xef\xbb\xbf" + body)
    (tmp_path / "plain.svm").write_bytes(body)
    X, y = load_svmlight(tmp_path / "bom.svm")
    X0, y0 = load_svmlight(tmp_path / "plain.svm")
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(X.toarray(), X0.toarray())
    # and with gzip
    with gzip.open(tmp_path / "bom.svm.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + body)
    np.testing.assert_array_equal(load_svmlight(tmp_path / "bom.svm.gz")[0].toarray(),
                                  X0.toarray())


def test_npz_csr_parts_with_unsorted_indices_are_sorted(tmp_path):
    """Column indices out of order within a row are valid CSR (scipy sorts them on demand):
    the reader returned them as stored, and the problem then asked the command-line user to
    call ``X.sort_indices()`` (a review). The reader sorts them, values along."""
    rng = np.random.default_rng(0)
    D = np.where(rng.random((6, 5)) < 0.5, rng.standard_normal((6, 5)), 0.0)
    A = sp.csr_matrix(D)
    idx, dat = A.indices.copy(), A.data.copy()
    for i in range(6):
        a, b = A.indptr[i], A.indptr[i + 1]
        idx[a:b], dat[a:b] = idx[a:b][::-1].copy(), dat[a:b][::-1].copy()
    np.savez(tmp_path / "u.npz", X_data=dat, X_indices=idx, X_indptr=A.indptr,
             X_shape=np.array(A.shape), y=np.arange(6.0))
    X, _ = load_npz(tmp_path / "u.npz")
    assert X.has_sorted_indices
    assert np.all(np.diff(X.indices[X.indptr[2]:X.indptr[3]]) > 0)
    np.testing.assert_array_equal(X.toarray(), D)


def test_csv_single_line_with_another_delimiter_says_so(tmp_path):
    """A one-line ``;``-separated file: its line was taken as a header and the error said
    only "no data rows", without the delimiter hint multi-line files get (a review)."""
    (tmp_path / "one.csv").write_text("1;2;3\n")
    with pytest.raises(DataError, match=r"no data rows \(its only line was read as a header; "
                                        r"the fields seem to be separated by ';'"):
        load_csv(tmp_path / "one.csv")
