"""Compile latency: ``import fastcurv`` + a first HVP in a fresh process, Numba cache warm.

    python bench/compile_latency.py [--runs 5]      # prints one JSON object

One untimed run first fills Numba's on-disk cache if it is cold (e.g. after a kernel edit);
then ``--runs`` fresh interpreters each time, from just before ``import fastcurv`` (numpy is
already imported, as it is in any user's process that has data) to the return of the first
``p.hvp`` on a 2,000 x 20 logistic problem (which also runs the first value+grad pass).
Also reported: the import alone, and the whole process wall time (Python start-up included).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SNIPPET = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import fastcurv as fc
t2 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.standard_normal((2000, 20))
y = (rng.random(2000) < 0.5).astype(np.float64)
p = fc.GLM(X, y, family="logistic", l2=1e-3)
out = p.hvp(np.zeros(21), np.ones(21))
t3 = time.perf_counter()
assert out.shape == (21,) and np.all(np.isfinite(out))
print(json.dumps({"numpy_import_s": t1 - t0, "import_s": t2 - t1, "first_hvp_s": t3 - t2,
                  "import_and_first_hvp_s": t3 - t1}))
"""


def run_once():
    t0 = time.perf_counter()
    cp = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                        env=os.environ.copy(), check=True)
    wall = time.perf_counter() - t0
    res = json.loads(cp.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    first = run_once()  # warms the cache if needed (not counted)
    runs = [run_once() for _ in range(args.runs)]
    keys = ["import_s", "first_hvp_s", "import_and_first_hvp_s", "process_wall_s",
            "numpy_import_s"]
    res = {k: statistics.median(r[k] for r in runs) for k in keys}
    res["max_import_and_first_hvp_s"] = max(r["import_and_first_hvp_s"] for r in runs)
    res["cache_fill_run_s"] = first["import_and_first_hvp_s"]
    res["runs"] = args.runs
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
