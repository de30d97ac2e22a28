"""The ``fastcurv`` command.

``fastcurv newton`` fits a GLM by Newton-CG and prints one line per iteration and a summary.
Without ``--data`` it fits an embedded default problem (synthetic L2-logistic regression,
100,000 x 300, generated from a fixed seed).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_N, DEFAULT_D = 100_000, 300


def default_problem(n=DEFAULT_N, d=DEFAULT_D, seed=0):
    """Synthetic binary classification: Gaussian features, 30 informative, label noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = np.zeros(d)
    w[:30] = rng.standard_normal(30)
    logits = X @ w + 0.5
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float64)
    return X, y


def _labels_for(family, y, note):
    """Map common label spellings to the family's convention, saying so."""
    if family == "logistic":
        u = np.unique(y)
        if np.all(np.isin(u, (-1.0, 1.0))) and u.size == 2:
            note("labels -1/+1 mapped to 0/1")
            return (y > 0).astype(np.float64)
        if u.size == 2 and not np.all(np.isin(u, (0.0, 1.0))):
            note(f"labels {u[0]:g}/{u[1]:g} mapped to 0/1")
            return (y == u[1]).astype(np.float64)
    if family == "multinomial":
        u = np.unique(y)
        if np.any(u != np.round(u)):
            raise ValueError("multinomial labels must be integers")
        if not np.array_equal(u, np.arange(u.size)):
            note(f"{u.size} class labels {u[0]:g}..{u[-1]:g} mapped to 0..{u.size - 1}")
            return np.searchsorted(u, y).astype(np.float64)
    return y


def _newton(args):
    import fastcurv as fc
    from fastcurv.io import load

    def note(msg):
        print(f"note: {msg}", flush=True)

    t_start = time.perf_counter()
    if args.data is None:
        X, y = default_problem()
        source = f"embedded default: synthetic logistic regression, {DEFAULT_N} x {DEFAULT_D}"
        family = args.family or "logistic"
    else:
        X, y = load(args.data, fmt=args.format)
        source = args.data
        family = args.family or "logistic"
    t_read = time.perf_counter() - t_start
    if args.dtype == "float32":
        X = X.astype(np.float32)
    y = _labels_for(family, np.asarray(y, dtype=np.float64), note)
    p = fc.GLM(X, y, family=family, l2=args.l2, fit_intercept=not args.no_intercept)
    kind = "CSR" if p.is_sparse else "dense"
    nnz = f", {p.X.nnz:,} nonzeros" if p.is_sparse else ""
    print(f"data: {source} ({t_read:.2f}s to read)")
    print(f"model: {family} GLM, {p.n_samples:,} samples x {p.n_features:,} features{nnz} "
          f"({kind} {np.dtype(p.dtype).name}), {p.n_params:,} parameters, l2={args.l2:g}")
    precond = None if args.precond == "none" else args.precond
    # compile (or load from Numba's cache) exactly the kernels this fit uses, on a few rows
    t0 = time.perf_counter()
    fc.newton_cg(p.subset(np.arange(min(p.n_samples, 64))), max_iter=2, method=args.method,
                 preconditioner=precond)
    print(f"kernels ready in {time.perf_counter() - t0:.2f}s (compiled once, then cached)")
    t0 = time.perf_counter()
    res = fc.newton_cg(p, gtol=args.gtol, max_iter=args.max_iter, method=args.method,
                       preconditioner=precond, progress=not args.quiet)
    t_fit = time.perf_counter() - t0
    status = "converged" if res.success else "NOT converged"
    print(f"{status} in {t_fit:.2f}s: {res.n_iter} Newton iterations, {res.n_cg} CG iterations, "
          f"{res.n_hvp} Hessian-vector products")
    print(f"loss {res.fun:.15g}, max|grad| {res.grad_norm:.3e}")
    print(res.message)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        parts = p.unflatten(res.x)[0]
        coef = parts[: p.n_features]
        np.save(os.path.join(args.out, "coef.npy"), coef)
        if p.fit_intercept:
            np.save(os.path.join(args.out, "intercept.npy"), parts[p.n_features:][0])
        summary = dict(
            data=source, family=family, n_samples=p.n_samples, n_features=p.n_features,
            n_params=p.n_params, sparse=p.is_sparse, dtype=np.dtype(p.dtype).name, l2=args.l2,
            method=args.method, preconditioner=args.precond, gtol=args.gtol,
            success=bool(res.success), message=res.message, fun=res.fun,
            grad_norm=res.grad_norm, n_iter=res.n_iter, n_cg=res.n_cg, n_hvp=res.n_hvp,
            fit_seconds=t_fit, read_seconds=t_read, history=res.history,
        )
        with open(os.path.join(args.out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"wrote {args.out}/coef.npy and {args.out}/summary.json")
    return 0 if res.success else 1


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastcurv", description="Curvature kernels: fit models by Newton-CG."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    nw = sub.add_parser(
        "newton", help="fit a GLM by Newton-CG",
        description="Fit a GLM by truncated Newton-CG. Without --data, fits an embedded default "
                    "problem (synthetic L2-logistic regression, 100,000 x 300).",
    )
    nw.add_argument("--data", help="data file: .npz (X, y), .csv (last column = target) or "
                                   "svmlight/libsvm text (.svm, .svmlight, .libsvm, .txt)")
    nw.add_argument("--format", choices=("npz", "csv", "svmlight"),
                    help="file format, if the extension does not say")
    nw.add_argument("--family", choices=("logistic", "gaussian", "poisson", "multinomial"),
                    help="GLM family (default logistic)")
    nw.add_argument("--l2", type=float, default=1e-3, help="L2 penalty λ (default 1e-3)")
    nw.add_argument("--gtol", type=float, default=1e-8,
                    help="stop at max|gradient| <= gtol (default 1e-8)")
    nw.add_argument("--max-iter", type=int, default=100, help="Newton iterations (default 100)")
    nw.add_argument("--method", choices=("line-search", "trust-region"), default="line-search")
    nw.add_argument("--precond", choices=("none", "diag", "cholesky"), default="diag",
                    help="CG preconditioner: diag (default), cholesky (a dense factor kept "
                         "across Newton steps; for correlated features and up to 4096 "
                         "parameters, with --method line-search) or none")
    nw.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    nw.add_argument("--no-intercept", action="store_true", help="fit without an intercept")
    nw.add_argument("--out", help="folder for coef.npy, intercept.npy and summary.json")
    nw.add_argument("--quiet", action="store_true", help="no per-iteration lines")
    nw.set_defaults(func=_newton)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into a command that stopped reading (head, less)
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        print(f"fastcurv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastcurv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
