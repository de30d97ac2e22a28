"""Catalogue of named GLM problems: family x dense/CSR x intercept x sample weights x dtype.

A :class:`Case` is a frozen description; its data are generated from a fixed seed, so every
test that uses a case sees the same numbers. ``case.glm()`` builds the :class:`fastcurv.GLM`,
``case.ref()`` the independent :class:`reference.RefGLM` on exactly the same (float64) data.

Sizes are small on purpose (n = 41, d = 4): every case runs in milliseconds, and the number of
Numba specializations stays small (float64 C-order dense and int32-index CSR here; other
layouts and float32 are exercised by dedicated tests).
"""

import dataclasses
import functools

import numpy as np
import pytest
import scipy.sparse as sp
from reference import RefGLM, dense64

import fastcurv as fc

#: family variants: (fastcurv family, K, n_classes passed to GLM, target kind)
VARIANTS = {
    "gaussian": ("gaussian", 1, None),
    "gaussian2": ("gaussian", 2, None),  # multi-output, y (n, 2)
    "logistic": ("logistic", 1, None),  # 0/1 labels
    "logistic2": ("logistic", 2, None),  # y (n, 2) probabilities in [0, 1]
    "poisson": ("poisson", 1, None),
    "poisson2": ("poisson", 2, None),
    "multinomial": ("multinomial", 3, None),  # K inferred from the labels
    "multinomial4": ("multinomial", 4, 4),  # n_classes given; class 3 never observed
}

#: (fit_intercept, weights kind, l2)
CONFIGS = {
    "plain": (True, None, 0.0),
    "weighted": (True, "random", 0.3),  # real weights, some exactly zero
    "noint": (False, "int", 0.1),  # integer weights (0..3), no intercept
}


@dataclasses.dataclass(frozen=True)
class Case:
    variant: str
    storage: str  # "dense" | "csr"
    config: str
    dtype: type = np.float64
    n: int = 41  # not a multiple of the kernels' 4-row blocks
    d: int = 4

    # ------------------------------------------------------------------ description
    @property
    def name(self):
        dt = "" if self.dtype == np.float64 else "-f32"
        return f"{self.variant}-{self.storage}-{self.config}{dt}"

    @property
    def family(self):
        return VARIANTS[self.variant][0]

    @property
    def K(self):
        return VARIANTS[self.variant][1]

    @property
    def n_classes(self):
        return VARIANTS[self.variant][2]

    @property
    def fit_intercept(self):
        return CONFIGS[self.config][0]

    @property
    def l2(self):
        return CONFIGS[self.config][2]

    @property
    def P(self):
        return (self.d + int(self.fit_intercept)) * self.K

    def twin(self, dtype):
        return dataclasses.replace(self, dtype=dtype)

    # ------------------------------------------------------------------ data
    def data(self):
        """(X, y, sample_weight): X dense ndarray or CSR in ``dtype``; y, w float64/int."""
        return _data(self.variant, self.storage, self.config, self.dtype, self.n, self.d)

    def glm(self, **overrides):
        X, y, w = self.data()
        kw = dict(family=self.family, l2=self.l2, fit_intercept=self.fit_intercept,
                  sample_weight=w)
        if self.n_classes is not None:
            kw["n_classes"] = self.n_classes
        kw.update(overrides)
        return fc.GLM(X, y, **kw)

    def ref(self):
        X, y, w = self.data()
        return RefGLM(dense64(X), y, self.family, self.K, self.l2, self.fit_intercept, w)

    def theta(self, seed=1, scale=0.5):
        """A generic point θ (not an optimum), exactly representable in ``dtype``."""
        rng = np.random.default_rng(1000 + seed)
        return rng.normal(0.0, scale, self.P).astype(self.dtype)

    def vectors(self, m=None, seed=2):
        """A direction v (P,) or a block (P, m), in ``dtype``."""
        rng = np.random.default_rng(2000 + seed)
        shape = (self.P,) if m is None else (self.P, m)
        return rng.standard_normal(shape).astype(self.dtype)


@functools.lru_cache(maxsize=None)
def _data(variant, storage, config, dtype, n, d):
    family, K, n_classes = VARIANTS[variant]
    seed = sorted(VARIANTS).index(variant) * 10 + sorted(CONFIGS).index(config)
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 0.7, (n, d))
    if storage == "csr":
        X[rng.random((n, d)) < 0.5] = 0.0
        X[0] = 0.0  # an empty row
    X = X.astype(dtype)
    # targets drawn from a model with small coefficients
    eta = X.astype(np.float64) @ rng.normal(0.0, 0.5, (d, K)) + 0.2
    if family == "gaussian":
        y = eta + rng.standard_normal((n, K))
    elif family == "logistic":
        if K == 1:
            y = (rng.random((n, 1)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
        else:
            y = rng.random((n, K))
            y[:3] = np.array([0.0, 1.0])[rng.integers(0, 2, (3, K))]
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(np.float64)
    else:
        n_obs = K if n_classes is None else K - 1
        y = rng.integers(0, n_obs, n).astype(np.int64)
        y[:n_obs] = np.arange(n_obs)  # every observed class occurs
    if family != "multinomial" and K == 1:
        y = y[:, 0]
    kind = CONFIGS[config][1]
    if kind is None:
        w = None
    elif kind == "random":
        w = rng.uniform(0.0, 2.0, n)
        w[[1, 5, 9]] = 0.0
    else:
        w = rng.integers(0, 4, n).astype(np.int64)
        w[[2, 3]] = [0, 3]
    if storage == "csr":
        X = sp.csr_matrix(X)
    return X, y, w


CASES = [Case(v, s, c) for v in VARIANTS for s in ("dense", "csr") for c in CONFIGS]
DENSE_CASES = [c for c in CASES if c.storage == "dense"]
CSR_CASES = [c for c in CASES if c.storage == "csr"]
INT_WEIGHT_CASES = [c for c in CASES if CONFIGS[c.config][1] == "int"]
#: one case per variant and storage, for the more expensive checks
SMALL_SET = [c for c in CASES if c.config == "weighted"]


def by_name(name):
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(name)


def _ids(c):
    return c.name


@pytest.fixture(params=CASES, ids=_ids)
def case(request):
    """Every float64 case of the catalogue."""
    return request.param


@pytest.fixture(params=SMALL_SET, ids=_ids)
def small_case(request):
    """One case per family variant and storage (weights, intercept, l2 > 0)."""
    return request.param


@pytest.fixture(params=CSR_CASES, ids=_ids)
def csr_case(request):
    return request.param


@pytest.fixture(params=INT_WEIGHT_CASES, ids=_ids)
def int_weight_case(request):
    return request.param


# ---------------------------------------------------------------------- comparisons
def assert_close(actual, desired, rtol, what=""):
    """|actual - desired| <= rtol * max|desired| elementwise (a normwise-relative check).

    Components of a gradient or product can be near zero by cancellation, where a purely
    elementwise relative tolerance is meaningless; the error is measured against the scale of
    the whole array instead.
    """
    actual = np.asarray(actual.toarray() if sp.issparse(actual) else actual, dtype=np.float64)
    desired = np.asarray(desired.toarray() if sp.issparse(desired) else desired,
                         dtype=np.float64)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    scale = max(np.max(np.abs(desired), initial=0.0), np.finfo(np.float64).tiny)
    err = np.max(np.abs(actual - desired), initial=0.0)
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.1e} * scale {scale:.3e}"


# ---------------------------------------------------------------------- larger fitting data
def synthetic(family, n=400, d=5, seed=0, K=3, density=None, dtype=np.float64):
    """(X, y) drawn from a GLM of the family, for fitting tests (solvers vs oracles).

    Features are standard normal (so the Hessian at the optimum is well conditioned), scaled
    by 0.7; ``density`` < 1 zeroes entries at random and returns CSR. Multinomial labels are
    integers 0..K-1, logistic labels 0/1, Poisson counts, Gaussian real targets.
    """
    rng = np.random.default_rng(seed)
    X = 0.7 * rng.standard_normal((n, d))
    if density is not None:
        X[rng.random((n, d)) >= density] = 0.0
    Xf = X.astype(dtype)
    X64 = Xf.astype(np.float64)
    if family == "multinomial":
        eta = X64 @ rng.normal(0.0, 0.8, (d, K)) + rng.normal(0.0, 0.3, K)
        y = np.argmax(eta + rng.gumbel(size=(n, K)), axis=1).astype(np.int64)
    else:
        eta = X64 @ rng.normal(0.0, 0.6, d) + 0.3
        if family == "logistic":
            y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
        elif family == "poisson":
            y = rng.poisson(np.exp(eta)).astype(np.float64)
        elif family == "gaussian":
            y = eta + rng.standard_normal(n)
        else:
            raise ValueError(family)
    return (sp.csr_matrix(Xf) if density is not None else Xf), y
