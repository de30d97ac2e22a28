"""Peak extra memory of repeated HVPs on the 800 MB dense logistic problem.

    python bench/memory_check.py [--n-hvp 100]      # prints one JSON object

Runs in its own process (bench_system.py starts it) so that nothing else in the heap
disturbs the numbers. After building the data and the problem and one warm-up HVP, it
measures the 100 HVPs three ways:

* ``tracemalloc`` peak (started right before the loop): every numpy allocation is traced
  (numpy reports its data buffers to tracemalloc); Numba's own runtime allocations are not;
* peak resident set size: the kernel's high-water mark ``VmHWM`` is reset by writing ``5``
  to ``/proc/self/clear_refs`` right before the loop, then ``VmHWM − VmRSS(before)`` is the
  largest growth of resident memory during the loop, whatever allocated it (Linux only);
* ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before/after (cannot be reset: it only shows
  growth above the setup's peak, a coarse cross-check).

``peak_extra_bytes`` is the largest of the first two.
"""

import argparse
import gc
import json
import os
import resource
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _status():
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-hvp", type=int, default=100)
    args = ap.parse_args(argv)

    import datasets
    import numpy as np

    import fastcurv as fc

    P = datasets.dense_logistic()
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    p.value_and_grad(P.theta)
    vs = [P.v, -0.5 * P.v + 1.0]
    out = p.hvp(P.theta, vs[0])  # warm-up: compile / load kernels
    del out
    gc.collect()

    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss0 = _status().get("VmRSS")
    hwm_reset = _reset_hwm()
    tracemalloc.start()
    t0 = time.perf_counter()
    acc = np.zeros(p.n_params)
    for i in range(args.n_hvp):
        acc += p.hvp(P.theta, vs[i % 2])
    elapsed = time.perf_counter() - t0
    traced_cur, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    st = _status()
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    rss_extra = (st["VmHWM"] - rss0) if (hwm_reset and rss0 and "VmHWM" in st) else None
    peak = max(traced_peak, rss_extra or 0)
    method = "max(tracemalloc peak, VmHWM reset via /proc/self/clear_refs - VmRSS before)" \
        if rss_extra is not None else "tracemalloc peak"
    res = {
        "n_hvp": args.n_hvp,
        "x_nbytes": int(P.X.nbytes),
        "tracemalloc_peak_bytes": int(traced_peak),
        "tracemalloc_end_bytes": int(traced_cur),
        "rss_before_bytes": rss0,
        "peak_rss_extra_bytes": rss_extra,
        "ru_maxrss_before_bytes": int(maxrss0),
        "ru_maxrss_after_bytes": int(maxrss1),
        "ru_maxrss_growth_bytes": int(maxrss1 - maxrss0),
        "peak_extra_bytes": int(peak),
        "method": method,
        "ms_per_hvp": 1e3 * elapsed / args.n_hvp,
        "checksum": float(np.abs(acc).sum()),
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
