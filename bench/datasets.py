"""Deterministic synthetic problems for the benchmarks (same seed -> same data).

Each builder returns a ``Problem`` with the data, targets, two parameter points ``theta`` and
``theta2`` (fastcurv layout: ``[coef (d, K) C-order, intercept (K)]``) and a direction ``v``.
The parameters are chosen so that the curvature weights are far from 0 and 1.
"""

import os
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

#: ridge strength used by every benchmark problem (the penalty is part of every product)
L2 = 1e-3

#: FASTCURV_BENCH_SCALE=0.01 shrinks every row count (a quick smoke run of the harness);
#: the figures in bench/README.md are at scale 1
SCALE = float(os.environ.get("FASTCURV_BENCH_SCALE", "1"))


def _rows(n):
    return max(1000, int(round(n * SCALE)))


DENSE = dict(n=_rows(200_000), d=500)
MULTI = dict(n=_rows(100_000), d=300, K=10)
CSR = dict(n=_rows(500_000), d=50_000, nnz_per_row=60)


@dataclass
class Problem:
    name: str
    X: object
    y: np.ndarray
    theta: np.ndarray
    theta2: np.ndarray
    v: np.ndarray
    family: str
    n_classes: int = 1
    l2: float = L2
    info: dict = field(default_factory=dict)

    @property
    def nbytes(self):
        """Bytes one pass over X reads (data; for CSR also indices and indptr)."""
        X = self.X
        if sp.issparse(X):
            return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
        return X.nbytes


def _theta_vec(rng, coef, intercept):
    theta = np.concatenate([np.asarray(coef).ravel(), np.atleast_1d(intercept)])
    theta2 = theta + 0.05 * rng.standard_normal(theta.shape) * np.abs(theta).mean()
    v = rng.standard_normal(theta.shape)
    return theta, theta2, v


def dense_logistic(n=DENSE["n"], d=DENSE["d"], seed=0):
    """Binary logistic, X ~ N(0, 1) float64 C-order (n=200k, d=500: 800 MB)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d) / np.sqrt(d)
    b = 0.3
    y = (rng.random(n) < expit(X @ w + b)).astype(np.float64)
    theta, theta2, v = _theta_vec(rng, 0.8 * w, 0.2)
    return Problem(f"dense logistic {n}x{d} f64", X, y, theta, theta2, v, "logistic")


def as_float32(p):
    """The same problem with X (and theta, v) rounded to float32."""
    return Problem(p.name.replace("f64", "f32"), p.X.astype(np.float32), p.y,
                   p.theta.astype(np.float32), p.theta2.astype(np.float32),
                   p.v.astype(np.float32), p.family, p.n_classes, p.l2)


def dense_multinomial(n=MULTI["n"], d=MULTI["d"], K=MULTI["K"], seed=1):
    """Multinomial with K classes, X ~ N(0, 1) float64 (n=100k, d=300: 240 MB)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = 1.5 * rng.standard_normal((d, K)) / np.sqrt(d)
    b = 0.2 * rng.standard_normal(K)
    eta = X @ W + b
    y = np.argmax(eta + rng.gumbel(size=eta.shape), axis=1).astype(np.float64)
    theta, theta2, v = _theta_vec(rng, 0.8 * W, b)
    return Problem(f"multinomial K={K} {n}x{d} f64", X, y, theta, theta2, v, "multinomial",
                   n_classes=K)


def random_csr(n, d, nnz_per_row, rng, dtype=np.float64):
    """CSR with exactly ``nnz_per_row`` distinct, sorted, uniformly random columns per row.

    Rejection sampling without ``rng.choice``: draw the row's columns with replacement, sort,
    and redraw only the rows that hold a duplicate (about k^2 / 2d of them) until none do.
    """
    k = nnz_per_row
    cols = rng.integers(0, d, size=(n, k), dtype=np.int32)
    cols.sort(axis=1)
    bad = np.flatnonzero((np.diff(cols, axis=1) == 0).any(axis=1))
    while bad.size:
        redo = rng.integers(0, d, size=(bad.size, k), dtype=np.int32)
        redo.sort(axis=1)
        cols[bad] = redo
        bad = bad[(np.diff(redo, axis=1) == 0).any(axis=1)]
    data = rng.standard_normal(n * k).astype(dtype, copy=False)
    indptr = np.arange(0, n * k + 1, k, dtype=np.int32 if n * k < 2**31 else np.int64)
    X = sp.csr_matrix((data, cols.reshape(-1), indptr), shape=(n, d))
    X.has_sorted_indices = True
    return X


def csr_logistic(n=CSR["n"], d=CSR["d"], nnz_per_row=CSR["nnz_per_row"], seed=2):
    """Binary logistic on random CSR (n=500k, d=50k, 60 nnz/row: 30M nonzeros, 362 MB)."""
    rng = np.random.default_rng(seed)
    X = random_csr(n, d, nnz_per_row, rng)
    w = 1.5 * rng.standard_normal(d) / np.sqrt(nnz_per_row)
    b = -0.1
    y = (rng.random(n) < expit(X @ w + b)).astype(np.float64)
    theta, theta2, v = _theta_vec(rng, 0.8 * w, b)
    return Problem(f"CSR logistic {n}x{d} {nnz_per_row}nnz/row f64", X, y, theta, theta2, v,
                   "logistic")


def small_logistic(n=2_000, d=20, seed=3, dtype=np.float64):
    """A tiny problem for compile-latency and smoke checks."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random(n) < 0.5).astype(np.float64)
    theta = np.zeros(d + 1, dtype=dtype)
    v = np.ones(d + 1, dtype=dtype)
    return Problem("small logistic", X, y, theta, theta, v, "logistic")


# ---------------------------------------------------------------- whole fits (bench_newton.py)
FIT_DENSE = dict(n=_rows(100_000), d=300)
FIT_CSR = dict(n=_rows(500_000), d=50_000, nnz_per_row=60, n_informative=1_000)


def dense_fit_logistic(n=FIT_DENSE["n"], d=FIT_DENSE["d"], seed=0):
    """``fastcurv newton``'s embedded default problem (fastcurv.cli.default_problem): Gaussian
    features, 30 informative, intercept 0.5, labels sampled from the logistic model (240 MB)."""
    from fastcurv.cli import default_problem

    X, y = default_problem(n=n, d=d, seed=seed)
    z = np.zeros(d + 1)
    return Problem(f"dense logistic {n}x{d} f64 (fastcurv.cli.default_problem)", X, y, z, z,
                   z, "logistic")


def dense_correlated_logistic(n=FIT_DENSE["n"], d=FIT_DENSE["d"], seed=0):
    """An ill-conditioned dense problem like ANCHORS.md's whole-fit row:
    ``sklearn.datasets.make_classification(n, d, n_informative=30, n_redundant=30)``
    (correlated, redundant features; plain Newton-CG needs ~140 CG iterations here)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=d, n_informative=30, n_redundant=30,
                               random_state=seed)
    z = np.zeros(d + 1)
    return Problem(f"dense logistic {n}x{d} f64 (make_classification, correlated)", X,
                   y.astype(np.float64), z, z, z, "logistic")


def dense_correlated_multinomial(n=FIT_DENSE["n"], d=FIT_DENSE["d"], K=10, seed=0):
    """The issue's "multinomial K=10 on the dense problem": :func:`dense_correlated_logistic`'s
    generator with ``n_classes=K`` (``make_classification(n, d, n_informative=30,
    n_redundant=30, n_classes=10)``: correlated, redundant features; plain Newton-CG needs ~220
    CG iterations here, scikit-learn's newton-cg ~28 s)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=d, n_informative=30, n_redundant=30,
                               n_classes=K, random_state=seed)
    z = np.zeros((d + 1) * K)
    return Problem(f"multinomial K={K} {n}x{d} f64 (make_classification, correlated)", X,
                   y.astype(np.float64), z, z, z, "multinomial", n_classes=K)


def csr_classification(n=FIT_CSR["n"], d=FIT_CSR["d"], nnz_per_row=FIT_CSR["nnz_per_row"],
                       n_informative=FIT_CSR["n_informative"], seed=4):
    """Binary logistic on random CSR (as :func:`random_csr`) with labels sampled from a *sparse*
    true model: ``n_informative`` of the ``d`` coefficients are N(0, 2²), the rest 0, intercept
    −0.2 (each row meets ~1.2 informative columns, ``η`` has sd ≈ 2.2)."""
    rng = np.random.default_rng(seed)
    X = random_csr(n, d, nnz_per_row, rng)
    w = np.zeros(d)
    support = rng.choice(d, size=n_informative, replace=False)
    w[support] = 2.0 * rng.standard_normal(n_informative)
    y = (rng.random(n) < expit(X @ w - 0.2)).astype(np.float64)
    z = np.zeros(d + 1)
    return Problem(f"CSR logistic {n}x{d} {nnz_per_row}nnz/row f64, {n_informative} informative",
                   X, y, z, z, z, "logistic", info={"n_informative": n_informative})
