"""Compile (or load from Numba's cache) the common kernels ahead of the first real call."""

import numpy as np
import scipy.sparse as sp

FAMILIES = ("logistic", "gaussian", "poisson", "multinomial")


def warmup(dtypes=("float64", "float32"), sparse=True, families=FAMILIES, mlp=True):
    """Run every GLM (and, with ``mlp``, MLP) kernel once on tiny data so later calls do not
    pay compile time.

    ``dtypes``, ``sparse`` (also CSR, not only dense) and ``families`` choose what to compile.

    With Numba's on-disk cache warm (``cache=True``), this loads the compiled code and runs
    each kernel once in 1.3-1.7 s (2 cores; a review measured 5.8 s on a busy machine); on a
    fresh install it compiles once and fills the cache. Returns None.
    """
    from .problems.glm import GLM

    rng = np.random.default_rng(0)
    for dt in dtypes:
        # 8 rows: one row chunk (the kernels' serial twins); 1,100 rows of 64 nonzeros: two
        # chunks dense and CSR (their parallel versions, see kernels._jit.ChunkedKernel)
        for n, d in ((8, 3), (1100, 64)):
            X = rng.standard_normal((n, d)).astype(dt)
            inputs = [X, sp.csr_matrix(X)] if sparse else [X]
            for Xi in inputs:
                targets = {
                    "logistic": (rng.random(n) < 0.5).astype(float),
                    "gaussian": rng.standard_normal(n),
                    "poisson": rng.poisson(1.0, n).astype(float),
                    "multinomial": np.arange(n) % 3,
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
            X = rng.standard_normal((8, 3)).astype(dt)
            _warm_mlp(X, sp.csr_matrix(X) if sparse else None, (3, 4, 3))
            # 2,048 rows x 8,707 parameters: above PARALLEL_MIN_MACS, 4 parallel row chunks
            X = rng.standard_normal((2048, 64)).astype(dt)
            _warm_mlp(X, sp.csr_matrix(X) if sparse else None, (64, 128, 3))


def _warm_mlp(X, Xs, sizes):
    from .problems.mlp import MLP

    for Xi in (X, Xs):
        if Xi is None:
            continue
        p = MLP(Xi, np.arange(X.shape[0]) % 3, sizes=sizes, activation="tanh",
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
