"""svmlight / libsvm reading speed: fastcurv.io.load_svmlight vs sklearn load_svmlight_file.

One file per session, written to a temporary directory (deleted afterwards) by
``sklearn.datasets.dump_svmlight_file`` (one-based indices, as libsvm writes them) from a CSR
matrix built like the benchmark CSR problems (datasets.random_csr: 200,000 rows, 50,000
columns, 48 random sorted columns per row, 9.6M nonzeros) whose values are N(0, 1) rounded to 6
significant digits and labels ±1. The values are made as ``m / 10**k`` (or ``m * 10**-k``)
from a 6-digit integer ``m``: one correctly rounded operation, so each is the double nearest
its 6-digit decimal. scikit-learn writes ``%.16g``: most values come out as 6-digit numbers
like ``-0.512933`` or ``1.07761e-05``, but a double that lies more than half a 16th-digit unit
from its decimal comes out with 16 digits (``0.583899`` -> ``0.5838989999999999``); the share
of those is recorded (``share_16_digit_values``). About 150 MB.

Before timing, both readers' results must be identical (``array_equal``) to each other and to
the matrix that was written: shape, indptr, indices, data and labels. Both read the file from
the page cache (it was just written and is read once untimed first). MB/s = file bytes /
median seconds.
"""

import os
import tempfile

import datasets
import numpy as np
import pytest
from harness import measure

N_ROWS = max(1000, int(round(200_000 * datasets.SCALE)))
N_COLS = 50_000
NNZ_PER_ROW = 48
ROUNDS = {"fastcurv": 7, "sklearn": 3}
G_READ = f"svmlight read: {N_ROWS}x{N_COLS}, {NNZ_PER_ROW} nnz/row, 6-digit values"


def six_digit_normal(rng, size):
    """N(0, 1) draws rounded to 6 significant digits, each the double nearest its decimal."""
    z = rng.standard_normal(size)
    z[z == 0] = 1.0
    k = 5 - np.floor(np.log10(np.abs(z))).astype(np.int64)  # m has 6 digits
    m = np.rint(np.abs(z) * 10.0 ** k.astype(np.float64))
    up = m >= 1e6  # rounded up to 7 digits (e.g. |z| = 0.9999996): 1e6 / 10**k = 1e5 / 10**(k-1)
    m[up] = 1e5
    k[up] -= 1
    pos = k >= 0
    val = np.empty(size)
    val[pos] = m[pos] / 10.0 ** k[pos]  # m < 2**53 and 10**k exact (k <= 22): one rounding
    val[~pos] = m[~pos] * 10.0 ** (-k[~pos])
    assert np.all(k <= 22)
    return np.copysign(val, z)


@pytest.fixture(scope="module")
def svm_file():
    from sklearn.datasets import dump_svmlight_file

    rng = np.random.default_rng(5)
    X = datasets.random_csr(N_ROWS, N_COLS, NNZ_PER_ROW, rng)
    X.data[:] = six_digit_normal(rng, X.nnz)
    y = np.where(rng.random(N_ROWS) < 0.5, -1.0, 1.0)
    with tempfile.TemporaryDirectory(prefix="fastcurv-bench-io-") as tmp:
        path = os.path.join(tmp, "bench.svmlight")
        dump_svmlight_file(X, y, path, zero_based=False)
        with open(path, "rb") as f:
            first = f.readline().decode().split()
        assert first[0] in ("1", "-1"), first[0]
        # %.16g prints the double nearest a 6-digit decimal with 16 digits when that double
        # is more than half a 16th-digit unit away from it (0.583899 -> 0.5838989999999999):
        # the share of such values, from a sample (more than 15 digits: off fastcurv's fast path)
        sample = X.data[:: max(1, X.nnz // 100_000)]
        long16 = float(np.mean([len(("%.16g" % v).lstrip("-").split("e")[0].replace(".", "")
                                    .lstrip("0")) > 15 for v in sample]))
        yield {"path": path, "X": X, "y": y, "bytes": os.path.getsize(path),
               "share_16_digit_values": round(long16, 4)}


def _same(got, want, what):
    (Xg, yg), (Xw, yw) = got, want
    assert Xg.shape == Xw.shape, f"{what}: shape {Xg.shape} != {Xw.shape}"
    assert Xg.format == "csr"
    for name in ("indptr", "indices", "data"):
        a, b = getattr(Xg, name), getattr(Xw, name)
        assert np.array_equal(a, b), f"{what}: {name} differ"
    assert Xg.data.dtype == np.float64
    assert np.array_equal(yg, yw), f"{what}: labels differ"
    return 0.0


@pytest.fixture(scope="module")
def readers(svm_file):
    """Both readers once (untimed): identical to each other and to the matrix written."""
    from sklearn.datasets import load_svmlight_file

    from fastcurv.io import load_svmlight

    path = svm_file["path"]
    want = (svm_file["X"], svm_file["y"])
    sk = load_svmlight_file(path)
    _same(sk, want, "sklearn load_svmlight_file vs the matrix written")
    fcr = load_svmlight(path)
    _same(fcr, want, "fastcurv load_svmlight vs the matrix written")
    _same(fcr, sk, "fastcurv vs sklearn")
    return {"want": want}


@pytest.mark.benchmark(group=G_READ)
def test_read_fastcurv(benchmark, svm_file, readers):
    from fastcurv.io import load_svmlight

    measure(benchmark, load_svmlight, svm_file["path"], key="svmlight.read.fastcurv",
            nbytes=svm_file["bytes"], rounds=ROUNDS["fastcurv"],
            check=lambda out: _same(out, readers["want"], "fastcurv"),
            file_bytes=svm_file["bytes"], nnz=int(svm_file["X"].nnz), clean_share=0.10,
            clean_min=1, share_16_digit_values=svm_file["share_16_digit_values"],
            note="file in the page cache")


@pytest.mark.benchmark(group=G_READ)
def test_read_sklearn(benchmark, svm_file, readers):
    from sklearn.datasets import load_svmlight_file

    measure(benchmark, load_svmlight_file, svm_file["path"], key="svmlight.read.sklearn",
            nbytes=svm_file["bytes"], rounds=ROUNDS["sklearn"],
            check=lambda out: _same(out, readers["want"], "sklearn"),
            file_bytes=svm_file["bytes"], nnz=int(svm_file["X"].nnz), clean_share=0.10,
            clean_min=1, share_16_digit_values=svm_file["share_16_digit_values"],
            note="file in the page cache")
