"""CG iterations with and without K-FAC when the GGN is (not) low rank: a side experiment.

On bench_kfac.py's problem (P = 669,706 parameters, n (K − 1) = 9,216) the GGN is a matrix of
rank at most n (K − 1) plus the L2 penalty and δ on the diagonal, and every preconditioner
tried there needs *more* CG iterations than none. This script counts iterations (no timing)
for smaller networks on the same kind of data (X ~ N(0, 1), 10 random classes, tanh,
softmax cross-entropy, l2 = 1e-3, θ = p.init(0) + 0.1 N(0, 1) biases) once with
n (K − 1) < P and once with n (K − 1) > P, so one can see whether the preconditioners help
when the GGN has full rank::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        OMP_NUM_THREADS=2 python bench/kfac_cg_regimes.py        # about 1 minute

CG as in bench_kfac.py: scipy.sparse.linalg.cg, rtol 1e-4, on ``fc.GGNOperator(p, θ, δ)
x = p.grad(θ)``, preconditioners from ``bench_kfac.make_preconditioner``.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kfac import CG_RTOL, make_preconditioner  # noqa: E402

PRECONDITIONERS = ("none", "jacobi", "kfac_type2", "ekfac_type2")
#: (rows, sizes, δ)
REGIMES = [
    (256, (784, 32, 10), 1e-3),
    (8192, (784, 32, 10), 1e-3),
    (32768, (784, 32, 10), 1e-3),
    (256, (100, 32, 10), 1e-3),
    (16384, (100, 32, 10), 1e-3),
]


def iterations(n, sizes, delta, maxiter=2000):
    from scipy.sparse.linalg import cg

    import fastcurv as fc

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0]))
    y = rng.integers(0, sizes[-1], n)
    p = fc.MLP(X, y, sizes=sizes, activation="tanh", loss="softmax_cross_entropy", l2=1e-3)
    theta = p.init(0).copy()
    brng = np.random.default_rng(1)
    for Wt in p.unflatten(theta):
        Wt[-1] = 0.1 * brng.standard_normal(Wt.shape[1])
    g = p.grad(theta)
    A = fc.GGNOperator(p, theta, damping=delta)
    out = {}
    for name in PRECONDITIONERS:
        M = make_preconditioner(p, theta, name, delta)
        count = [0]

        def cb(_xk, count=count):
            count[0] += 1
        _, info = cg(A, g, rtol=CG_RTOL, maxiter=maxiter, M=M, callback=cb)
        out[name] = count[0] if info == 0 else f">{maxiter}"
    return p.n_params, out


def main():
    from threadpoolctl import threadpool_limits

    threadpool_limits(2)
    print("| rows n | sizes | P | n (K − 1) | δ | " + " | ".join(PRECONDITIONERS) + " |")
    print("|" + "---|" * (5 + len(PRECONDITIONERS)))
    for n, sizes, delta in REGIMES:
        P, its = iterations(n, sizes, delta)
        print(f"| {n:,} | {'-'.join(map(str, sizes))} | {P:,} | {n * (sizes[-1] - 1):,} | "
              f"{delta:g} | " + " | ".join(str(its[k]) for k in PRECONDITIONERS) + " |",
              flush=True)


if __name__ == "__main__":
    main()
