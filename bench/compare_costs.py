"""Cost of each curvature approximation in gradients, next to its error (fc.compare).

Two models, fitted by ``fastcurv compare``'s recipe (GGN Newton-CG with K-FAC, 30 iterations)
on its synthetic data generator (``fastcurv.cli.compare_default``):

* small: the ``fastcurv compare`` default, MLP 20-32-32-3 on 2,000 x 20 (P = 1,827): dense
  path, exact errors and spectra;
* medium: MLP 100-128-128-10 on 10,000 x 100 (P = 30,858): operator path (randomized
  Frobenius error with 16 probes, CG, Lanczos).

Every cost is a ratio to one gradient of the same model timed in the same process
(``build``: forming the approximation; ``A v``: one product in its operator form;
``(A + δI)⁻¹ v``: one inverse product, where cheap). Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \\
        OMP_NUM_THREADS=2 python bench/compare_costs.py bench/results/compare.json

(about 12 minutes, nearly all of it the CG solves of the medium model: 400 iterations for the
reference and each preconditioner, 1,000 for the approximations without an inverse) and it
prints the markdown tables of bench/README.md. ``--only small`` runs one model.
"""

import json
import os
import sys
import time

import fastcurv as fc
from fastcurv.cli import compare_default
from fastcurv.compare import compare
from fastcurv.compare_report import markdown_table

MODELS = {
    "small": dict(n=2_000, d=20, K=3, hidden=(32, 32)),
    "medium": dict(n=10_000, d=100, K=10, hidden=(128, 128)),
}


def run(name, n, d, K, hidden):
    X, y = compare_default(n=n, d=d, K=K)
    p = fc.MLP(X, y, sizes=(d, *hidden, K), activation="tanh",
               loss="softmax_cross_entropy", l2=1e-3)
    fc.warmup(mlp=True)
    res = fc.newton_cg(p, p.init(0), curvature="ggn", preconditioner="kfac", damping=1e-4,
                       gtol=1e-6, max_iter=30)
    t0 = time.perf_counter()
    recs = compare(p, res.x, reference="ggn", damping=1e-3, seed=0, densities=True)
    wall = time.perf_counter() - t0
    keep = ("name", "label", "rel_frobenius", "newton_cosine", "top_eig_ratio", "trace_ratio",
            "cg_iters", "build_grads", "apply_grads", "solve_grads")
    return dict(model=name, sizes=list(p.sizes), n=n, P=p.n_params, compare_s=wall,
                spectrum=recs[0].get("spectrum"),
                records=[{k: r.get(k) for k in keep} for r in recs])


def main(out=None, only=None):
    results = [run(name, **cfg) for name, cfg in MODELS.items() if only in (None, name)]
    for r in results:
        print(f"\n{r['model']}: MLP {'-'.join(map(str, r['sizes']))}, n = {r['n']:,}, "
              f"P = {r['P']:,}; fc.compare took {r['compare_s']:.1f} s "
              f"(spectra: {r['spectrum']})\n")
        print(markdown_table(r["records"]))
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        k = args.index("--only")
        only = args[k + 1]
        del args[k:k + 2]
    main(args[0] if args else None, only)
