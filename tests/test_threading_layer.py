"""Problems shared by Python threads under Numba's ``workqueue`` threading layer.

The ``workqueue`` layer (``NUMBA_THREADING_LAYER=workqueue``, or where neither OpenMP nor TBB
is available) aborts the process when two threads launch parallel regions at once; fastcurv
serializes its launches there (``kernels/_jit.py``). The layer is chosen once per process, so
the check runs in a fresh interpreter.
"""

import os
import subprocess
import sys

CODE = r"""
import threading
import numpy as np
import scipy.sparse as sp
import fastcurv as fc

rng = np.random.default_rng(0)
n, d = 40_000, 30
X = rng.standard_normal((n, d))
y = (rng.random(n) < 0.5).astype(float)
Xs = sp.random(n, 200, density=0.05, format="csr", random_state=1)
problems = [
    fc.GLM(X, y, family="logistic"),
    fc.GLM(Xs, y, family="logistic"),
    fc.MLP(X[:20_000], y[:20_000], sizes=(d, 64, 1), loss="sigmoid_cross_entropy"),
]
points = []
for p in problems:
    starts = p._starts if isinstance(p, fc.MLP) else p._design.starts
    assert len(starts) > 2  # several row chunks: the calls launch parallel regions
    theta = 0.1 * rng.standard_normal(p.n_params)
    v = rng.standard_normal(p.n_params)
    points.append((theta, v, p.hvp(theta, v).copy(), p.grad(theta).copy()))
bad = []


def work(k):
    for r in range(60):
        j = (k + r) % len(problems)
        theta, v, h, g = points[j]
        if not (np.array_equal(problems[j].hvp(theta, v), h)
                and np.array_equal(problems[j].grad(theta), g)):
            bad.append(j)


threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
import numba
assert numba.threading_layer() == "workqueue", numba.threading_layer()
assert not bad, bad
print("ok")
"""


def test_threads_sharing_problems_under_the_workqueue_layer():
    """Four threads calling three problems (dense and CSR GLMs, an MLP, each in several row
    chunks) under ``workqueue`` get the bits of a lone call. The process aborted before
    ("Concurrent access has been detected")."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert out.stdout.strip().endswith("ok")
