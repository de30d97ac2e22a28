"""Compile (or load from Numba's cache) the common kernels ahead of the first real call."""

import numpy as np
import scipy.sparse as sp

FAMILIES = ("logistic", "gaussian", "poisson", "multinomial")


def warmup(dtypes=("float64", "float32"), sparse=True, families=FAMILIES, mlp=True):
    """Run every GLM (and, with ``mlp``, MLP) kernel once on tiny data so later calls do not
    pay compile time.

    ``dtypes``, ``sparse`` (also CSR, not only dense) and ``families`` choose what to compile.

    With Numba's on-disk cache warm (``cache=True``), this loads compiled code in well under
    a second; on a fresh install it compiles once and fills the cache. Returns None.
    """
    from .problems.glm import GLM

    rng = np.random.default_rng(0)
    for dt in dtypes:
        X = rng.standard_normal((8, 3)).astype(dt)
        inputs = [X, sp.csr_matrix(X)] if sparse else [X]
        for Xi in inputs:
            targets = {
                "logistic": (rng.random(8) < 0.5).astype(float),
                "gaussian": rng.standard_normal(8),
                "poisson": rng.poisson(1.0, 8).astype(float),
                "multinomial": np.arange(8) % 3,
            }
            for family in families:
                y = targets[family]
                p = GLM(Xi, y, family=family, l2=0.1)
                theta = p.init()
                v = np.ones(p.n_params, dtype=dt)
                p.value_and_grad(theta)
                p.hvp(theta, v)
                p.hvp(theta, np.stack([v, v], axis=1))
                p.fisher_vp(theta, v)
                p.hessian_diag(theta)
                p.value_along(theta, v)(0.5)
        if mlp:
            _warm_mlp(X, sp.csr_matrix(X) if sparse else None, rng)


def _warm_mlp(X, Xs, rng):
    from .problems.mlp import MLP

    for Xi in (X, Xs):
        if Xi is None:
            continue
        p = MLP(Xi, np.arange(8) % 3, sizes=(3, 4, 3), activation="tanh",
                loss="softmax_cross_entropy", l2=0.1)
        theta = p.init()
        v = np.ones(p.n_params, dtype=X.dtype)
        p.value_and_grad(theta)
        p.hvp(theta, v)
        p.ggn_vp(theta, v)
        p.fisher_vp(theta, v)
        p.jvp(theta, v)
        p.ggn_diag(theta)
        if Xi is X:
            from .operators.ekfac import EKFACOperator

            EKFACOperator(p, theta, fisher="type2", damping=0.1).inverse() @ v
