"""The ``fastcurv`` command.

``fastcurv newton`` fits a GLM by Newton-CG and prints one line per iteration and a summary.
Without ``--data`` it fits an embedded default problem (synthetic L2-logistic regression,
100,000 x 300, generated from a fixed seed).

``fastcurv influence`` fits a GLM, then prints the most helpful and harmful training points
for chosen test rows and the self-influence ranking, and writes everything to a folder.
Without ``--data`` it uses an embedded default (synthetic logistic regression, 20,000 x 50,
with 1% of the training labels flipped: the self-influence ranking should find them).

``fastcurv compare`` fits a small MLP, then benchmarks curvature approximations (diagonals,
Fisher, K-FAC, EK-FAC, block-diagonal GGN) against the exact GGN or Hessian and writes a
report (``report.md``, tables, figures).
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings

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


def _warm_rows(p):
    """Rows of a subset of ``p`` that runs the same compiled kernels as ``p``: a few rows (one
    row chunk: the kernels' serial twins) if ``p``'s partition has one chunk, else its first
    two chunks (which the subset's own partition splits again: the parallel versions)."""
    starts = p._design.starts
    return min(p.n_samples, max(64, int(starts[2]) if len(starts) > 2 else 0))


def _labels_for(family, y, note):
    """Map common label spellings to the family's convention, saying so."""
    if family == "logistic":
        u = np.unique(y)
        if np.all(np.isin(u, (-1.0, 1.0))) and u.size == 2:
            note("labels -1/+1 mapped to 0/1")
            return (y > 0).astype(np.float64)
        if u.size == 2 and not np.all(np.isin(u, (0.0, 1.0))):
            if u[0] >= 0.0 and u[1] <= 1.0:
                # targets in [0, 1] are probabilities (fc.GLM's logistic family takes them)
                note(f"targets {u[0]:g}/{u[1]:g} taken as probabilities of class 1")
                return y
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


def _check_options(args):
    """Refuse bad numeric options and an unusable --out before any data is read."""
    from fastcurv._validation import as_float_scalar

    for name in ("l2", "gtol", "damping"):
        if getattr(args, name, None) is not None:
            as_float_scalar(getattr(args, name), f"--{name}", low=0.0)
    if getattr(args, "format", None) and not getattr(args, "data", None):
        raise ValueError("--format applies to the file of --data: give --data FILE, or drop "
                         "--format to use the embedded default problem")
    if getattr(args, "max_iter", 0) < 0:
        raise ValueError(f"--max-iter must be >= 0, got {args.max_iter}")
    if (getattr(args, "method", None) == "trust-region"
            and getattr(args, "precond", None) in ("cholesky", "kfac")):
        raise ValueError(f"--precond {args.precond} works with --method line-search (the "
                         "trust-region method measures its region in a diagonal norm: use "
                         "--precond none, diag or auto)")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: exists and is not a folder; name a folder to "
                         "create or to write into")
    if args.out:
        try:  # created now, so that a path that cannot be a folder fails before the fit
            _makedirs(args.out)
        except OSError as e:
            raise ValueError(f"--out {args.out}: cannot create this folder "
                             f"({e.strerror or e})") from None
        try:  # and writable: a folder that is not failed only after the whole fit
            with tempfile.TemporaryFile(dir=args.out):
                pass
        except OSError as e:
            raise ValueError(f"--out {args.out}: cannot write into this folder "
                             f"({e.strerror or e}); name a folder you can write to") from None


def _newton(args):
    import fastcurv as fc
    from fastcurv.io import load

    _check_options(args)

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
        X = _float32(X, source)
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
    fc.newton_cg(p.subset(np.arange(_warm_rows(p))), max_iter=2, method=args.method,
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
    print(_in_command_words(res.message))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        parts = p.unflatten(res.x)[0]
        coef = parts[: p.n_features]
        np.save(os.path.join(args.out, "coef.npy"), coef)
        stale = os.path.join(args.out, "intercept.npy")
        if p.fit_intercept:
            np.save(stale, parts[p.n_features:][0])
        elif os.path.isfile(stale):
            # an earlier run's intercept would be read with this run's coefficients
            os.remove(stale)
            print(f"removed {stale} (this fit has no intercept)")
        summary = dict(
            data=source, family=family, n_samples=p.n_samples, n_features=p.n_features,
            n_params=p.n_params, sparse=p.is_sparse, dtype=np.dtype(p.dtype).name, l2=args.l2,
            method=args.method, preconditioner=args.precond, gtol=args.gtol,
            success=bool(res.success), message=res.message, fun=res.fun,
            grad_norm=res.grad_norm, n_iter=res.n_iter, n_cg=res.n_cg, n_hvp=res.n_hvp,
            fit_seconds=t_fit, read_seconds=t_read, history=res.history,
        )
        _write_json(os.path.join(args.out, "summary.json"), summary)
        files = ["coef.npy"] + (["intercept.npy"] if p.fit_intercept else []) + ["summary.json"]
        print(f"wrote {', '.join(f'{args.out}/{f}' for f in files)}")
    return 0 if res.success else 1


def _json_safe(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastcurv", description="Curvature kernels: fit models by Newton-CG, and "
                                     "influence functions."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastcurv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    nw = sub.add_parser(
        "newton", help="fit a GLM by Newton-CG",
        description="Fit a GLM by truncated Newton-CG. Without --data, fits an embedded default "
                    "problem (synthetic L2-logistic regression, 100,000 x 300).",
    )
    nw.add_argument("--data", help="data file: .npz (X, y), .csv (last column = target) or "
                                   "svmlight/libsvm text (.svm, .svmlight, .libsvm, .txt); "
                                   "the text formats also .gz or .bz2")
    nw.add_argument("--format", choices=("npz", "csv", "svmlight"),
                    help="file format, if the extension does not say")
    nw.add_argument("--family", choices=("logistic", "gaussian", "poisson", "multinomial"),
                    help="GLM family (default logistic)")
    nw.add_argument("--l2", type=float, default=1e-3, help="L2 penalty λ (default 1e-3)")
    nw.add_argument("--gtol", type=float, default=1e-8,
                    help="stop at max|gradient| <= gtol (default 1e-8)")
    nw.add_argument("--max-iter", type=int, default=100, help="Newton iterations (default 100)")
    nw.add_argument("--method", choices=("line-search", "trust-region"), default="line-search",
                    help="globalization of the Newton steps: line-search (default; CG then a "
                         "backtracking line search) or trust-region (Steihaug-Toint CG)")
    nw.add_argument("--precond", choices=("auto", "none", "diag", "cholesky", "kfac"),
                    default="auto",
                    help="CG preconditioner: auto (default: plain CG, switching to the "
                         "cholesky factor (up to 1024 parameters) or to kfac (multinomial "
                         "fits first; above 1024 parameters instead), once a Newton step "
                         "needs more than 8 CG iterations "
                         "and CG has spent half as long as building it would take; "
                         "--method line-search), diag (the exact "
                         "Hessian diagonal), cholesky (a dense factor kept across Newton steps; "
                         "for correlated features and up to 4096 parameters, with --method "
                         "line-search), kfac (the K-FAC inverse; helps multinomial fits with "
                         "correlated features) or none")
    nw.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                    help="precision of X and the parameters (default float64)")
    nw.add_argument("--no-intercept", action="store_true", help="fit without an intercept")
    nw.add_argument("--out", help="folder for coef.npy, intercept.npy and summary.json")
    nw.add_argument("--quiet", action="store_true", help="no per-iteration lines")
    nw.set_defaults(func=_newton, parser=nw)
    _influence_parser(sub)
    _compare_parser(sub)
    return parser


def compare_default(n=2_000, d=20, K=3, seed=0):
    """(X, y): a synthetic K-class problem (default 3) with nonlinear boundaries (two
    informative directions through tanh, correlated noise features; classes are the K
    quantile bands of a noisy score)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d))
    X = Z @ (np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d))
    s = np.tanh(2.0 * Z[:, 0]) + 0.5 * Z[:, 1] ** 2 - 0.5
    y = np.digitize(s + 0.3 * rng.standard_normal(n), np.quantile(s, np.arange(1, K) / K))
    return X, y.astype(np.float64)


def _compare(args):
    import fastcurv as fc
    from fastcurv.compare import APPROXIMATIONS, compare
    from fastcurv.compare_report import have_matplotlib, markdown_table, write_report

    # every option is checked, and the report folder made, before the data is read and fitted
    names = _compare_names(args.approx, APPROXIMATIONS)
    hidden = _hidden_widths(args.hidden)
    _check_options(args)  # --l2, --damping and an --out that is a file
    if args.fit_iter < 0:
        raise ValueError(f"--fit-iter must be >= 0, got {args.fit_iter}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    _make_out_folder(args.out)
    figures = have_matplotlib()
    if not figures:
        print("note: matplotlib is not installed, so the report gets its tables but no "
              "figures; pip install 'fastcurv[report]' for the figures", flush=True)
    if args.data is None:
        X, y = compare_default()
        source = "embedded default: synthetic 3-class problem, 2,000 x 20"
    else:
        from fastcurv.io import load

        X, y = load(args.data, fmt=args.format)
        X = X.toarray() if hasattr(X, "toarray") else X
        source = args.data
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        raise ValueError(f"{source}: no rows; compare needs classification data")
    if np.any(y != np.round(y)):
        raise ValueError(f"{source}: compare fits a classifier and needs class labels "
                         "(integers); these targets are not")
    y = _labels_for("multinomial", y, lambda m: print(f"note: {m}", flush=True))
    K = int(y.max()) + 1
    if K < 2:
        raise ValueError(f"{source}: y has a single class; compare needs classification data "
                         "with at least two classes")
    sizes = (X.shape[1], *hidden, K)
    p = fc.MLP(X, y, sizes=sizes, activation=args.activation, loss="softmax_cross_entropy",
               l2=args.l2)
    print(f"data: {source}")
    print(f"model: MLP {'-'.join(map(str, sizes))} {args.activation}, softmax cross-entropy, "
          f"{p.n_params:,} parameters, l2={args.l2:g}")
    # K-FAC preconditions the fit unless a layer's input factor would be too large (more
    # than MAX_FACTOR_ENTRIES: a first layer of over 8,191 features); then the diagonal
    from fastcurv.operators._kfac_factors import MAX_FACTOR_ENTRIES

    side = int(np.sqrt(MAX_FACTOR_ENTRIES))
    fits = all(n + 1 <= side for n in sizes[:-1]) and all(w <= side for w in sizes[1:])
    precond = "kfac" if fits else "diag"
    t0 = time.perf_counter()
    res = fc.newton_cg(p, p.init(args.seed), curvature="ggn", preconditioner=precond,
                       damping=1e-4, gtol=1e-6, max_iter=args.fit_iter)
    print(f"fit: {res.n_iter} Newton-CG (GGN, {'K-FAC' if precond == 'kfac' else 'diagonal'} "
          "preconditioned) iterations in "
          f"{time.perf_counter() - t0:.1f}s, loss {res.fun:.6g}, max|grad| {res.grad_norm:.1e}")
    t0 = time.perf_counter()
    recs = compare(p, res.x, names, reference=args.reference, damping=args.damping,
                   seed=args.seed, densities=True)
    print(f"compared {len(names)} approximations with the exact {args.reference} in "
          f"{time.perf_counter() - t0:.1f}s")
    print(markdown_table(recs))
    desc = (f"{source}; MLP {'-'.join(map(str, sizes))} {args.activation}, softmax "
            f"cross-entropy, l2={args.l2:g}, {p.n_params:,} parameters, at the parameters of "
            f"{res.n_iter} Newton-CG iterations (max|grad| {res.grad_norm:.1e}). Reference: "
            f"the exact {args.reference}; damping δ = {args.damping:g}.")
    files = write_report(recs, args.out, description=desc, figures=figures)
    print(f"wrote {', '.join(os.path.basename(f) for f in files)} to {args.out}/")
    return 0


def _compare_names(text, known):
    if text.strip() == "all":
        return known
    names = tuple(t.strip() for t in text.split(","))
    bad = [t for t in names if t not in known]
    twice = sorted({t for t in names if names.count(t) > 1})
    if twice:
        raise ValueError(f"--approx: {', '.join(map(repr, twice))} listed more than once")
    if bad or not names:
        raise ValueError(f"--approx: unknown name(s) {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(known)} (comma-separated) or 'all'")
    return names


def _hidden_widths(text):
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in parts) or not all(int(t) >= 1 for t in parts):
        raise ValueError(f"--hidden must be comma-separated positive widths such as 32,32, got "
                         f"{text!r}")
    return [int(t) for t in parts]


def _make_out_folder(path):
    """Create the report folder now, so that an unusable --out fails before the work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path}: exists and is not a folder")
    try:
        _makedirs(path)
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot create the folder ({exc.strerror or exc})"
                         ) from None


#: folders this command created (``_makedirs``): removed again, if still empty, when the
#: command fails (a run that stopped at a missing data file left an empty ``--out``)
_CREATED = []


def _makedirs(path):
    """``os.makedirs(path, exist_ok=True)``, remembering the folders it creates."""
    new = []
    head = os.path.abspath(path)
    while head and not os.path.exists(head):
        new.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    _CREATED.extend(new)


def _remove_created():
    """Remove the folders of ``_CREATED`` that are still empty (deepest first)."""
    for d in _CREATED:  # recorded deepest first
        try:
            os.rmdir(d)
        except OSError:
            break  # not empty (or gone): so are its parents
    _CREATED.clear()


def _compare_parser(sub):
    cp = sub.add_parser(
        "compare", help="benchmark curvature approximations against the exact curvature",
        description="Fit a small MLP, then compare diagonal, Fisher, K-FAC, EK-FAC and "
                    "block-diagonal approximations with the exact GGN (or Hessian): errors, "
                    "spectra, CG iterations; writes report.md, table.csv/json and PNG "
                    "figures. Without --data: a synthetic 3-class problem, 2,000 x 20.",
    )
    cp.add_argument("--data", help="classification data (.npz, .csv or svmlight), dense")
    cp.add_argument("--format", choices=("npz", "csv", "svmlight"))
    cp.add_argument("--hidden", default="32,32", help="hidden widths (default 32,32)")
    cp.add_argument("--activation", default="tanh",
                    choices=("tanh", "relu", "sigmoid", "softplus", "gelu", "identity"),
                    help="hidden activation (default tanh)")
    cp.add_argument("--l2", type=float, default=1e-3, help="L2 penalty (default 1e-3)")
    cp.add_argument("--reference", choices=("ggn", "hessian"), default="ggn",
                    help="the exact curvature compared against (default ggn)")
    cp.add_argument("--damping", type=float, default=1e-3,
                    help="damping added to every curvature in the solves (default 1e-3)")
    cp.add_argument("--approx", default="all",
                    help="comma-separated subset of diag_hessian, diag_ggn, diag_ggn_mc, "
                         "empirical_fisher, kfac, ekfac, block_ggn (default all)")
    cp.add_argument("--fit-iter", type=int, default=30,
                    help="Newton iterations of the fit (default 30)")
    cp.add_argument("--seed", type=int, default=0,
                    help="seed of the initial weights and of the random probes (default 0)")
    cp.add_argument("--out", default="compare-report", help="report folder "
                                                            "(default compare-report)")
    cp.set_defaults(func=_compare, parser=cp)


INFLUENCE_N, INFLUENCE_D, FLIP_FRACTION = 20_000, 50, 0.01


def influence_default(n=INFLUENCE_N, d=INFLUENCE_D, seed=0):
    """(X, y, flipped): synthetic logistic data with a fraction of the labels flipped."""
    X, y = default_problem(n, d, seed)
    rng = np.random.default_rng(seed + 1)
    flipped = np.sort(rng.choice(n, int(FLIP_FRACTION * n), replace=False))
    y = y.copy()
    y[flipped] = 1.0 - y[flipped]
    return X, y, flipped


def _parse_rows(text, n):
    try:
        rows = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--test-rows must be comma-separated row numbers, got {text!r}") from None
    rows = [r + n if r < 0 else r for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= n or len(set(rows)) != len(rows):
        raise ValueError(f"--test-rows must be distinct rows in [0, {n}), got {text!r}")
    return np.array(rows)


def _influence(args):
    import fastcurv as fc
    from fastcurv.io import load

    _check_options(args)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")

    flipped = None
    if args.data is None:
        X, y, flipped = influence_default()
        source = (f"embedded default: synthetic logistic regression, {INFLUENCE_N} x "
                  f"{INFLUENCE_D}, {FLIP_FRACTION:.0%} of the labels flipped")
    else:
        X, y = load(args.data, fmt=args.format)
        source = args.data
    family = args.family or "logistic"
    y = _labels_for(family, np.asarray(y, dtype=np.float64),
                    lambda m: print(f"note: {m}", flush=True))
    n = X.shape[0]
    test = _parse_rows(args.test_rows, n)
    train = np.setdiff1d(np.arange(n), test)
    if train.size == 0:
        raise ValueError(f"--test-rows holds out all {n} rows: no training rows are left")
    # one problem on all rows first: its checks name rows of the file, and its classes are
    # those of all rows (a class seen only in the test rows is still a class)
    extra = {"n_classes": max(2, int(y.max()) + 1)} if family == "multinomial" else {}
    p_all = fc.GLM(X, y, family=family, l2=args.l2, **extra)
    p, tp = p_all.subset(train), p_all.subset(test)
    _check_training_classes(p, family, y, train, test)
    from fastcurv.influence.solvers import MAX_DENSE_PARAMS

    if args.method == "direct" and p.n_params > MAX_DENSE_PARAMS:
        raise ValueError(f"--method direct factors the dense {p.n_params}x{p.n_params} Hessian "
                         f"(limit {MAX_DENSE_PARAMS} parameters); use --method cg, arnoldi, "
                         "nystrom, lissa or kfac")
    print(f"data: {source}")
    print(f"model: {family} GLM, {p.n_samples:,} training rows x {p.n_features:,} features, "
          f"{p.n_params:,} parameters, l2={args.l2:g}; test rows {', '.join(map(str, test))}")
    t0 = time.perf_counter()
    res = fc.newton_cg(p, gtol=args.gtol, preconditioner="diag")
    print(f"fit: {'converged' if res.success else 'NOT converged'} in "
          f"{time.perf_counter() - t0:.2f}s, loss {res.fun:.10g}, max|grad| {res.grad_norm:.2e}")
    t0 = time.perf_counter()
    seeded = {"seed": args.seed} if args.method in _SEEDED_METHODS else {}
    inf = fc.Influence(p, res.x, method=args.method, damping=args.damping,
                       progress=args.progress, **seeded)
    S = inf.scores(tp)
    t_scores = time.perf_counter() - t0
    k = min(args.top, p.n_samples)
    print(f"influence ({args.method}, damping={args.damping:g}): scores of all "
          f"{p.n_samples:,} training rows for {len(test)} test rows in {t_scores:.2f}s")
    print("score(t, i) = g_t' (H + damping I)^-1 g_i; positive = helpful: removing row i "
          "raises test row t's loss by about (w_i/W) score")
    top = {}
    for j, t in enumerate(test):
        # ties go to the smaller row index in both lists, as Influence.top_k
        helpful = np.argsort(-S[j], kind="stable")[:k]
        harmful = np.argsort(S[j], kind="stable")[:k]
        top[int(t)] = dict(helpful=[[int(train[i]), float(S[j, i])] for i in helpful],
                           harmful=[[int(train[i]), float(S[j, i])] for i in harmful])
        print(f"test row {t} (label {y[t]:g}):")
        print("  most helpful  " + "  ".join(f"{train[i]}:{S[j, i]:+.3g}" for i in helpful))
        print("  most harmful  " + "  ".join(f"{train[i]}:{S[j, i]:+.3g}" for i in harmful))
    t0 = time.perf_counter()
    si = inf.self_influence()
    order = np.argsort(-si, kind="stable")
    print(f"self-influence of every training row in {time.perf_counter() - t0:.2f}s; "
          f"highest (likely mislabeled) first:")
    print("  " + "  ".join(f"{train[i]}:{si[i]:.3g}" for i in order[:k]))
    summary = dict(data=source, family=family, l2=args.l2, fit_converged=bool(res.success),
                   method=args.method,
                   damping=args.damping, test_rows=test.tolist(), top=top,
                   self_influence_top=[[int(train[i]), float(si[i])] for i in order[:k]])
    if flipped is not None:
        fl = np.isin(train[order[:len(flipped)]], flipped).mean()
        print(f"  {fl:.0%} of the top {len(flipped)} self-influence rows are flipped labels "
              f"(chance: {FLIP_FRACTION:.0%})")
        summary["flipped_found_fraction"] = float(fl)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        np.save(os.path.join(args.out, "scores.npy"), S)
        np.save(os.path.join(args.out, "self_influence.npy"), si)
        np.save(os.path.join(args.out, "train_rows.npy"), train)
        _write_json(os.path.join(args.out, "summary.json"), summary)
        print(f"wrote {args.out}/scores.npy (test x train), self_influence.npy, "
              "train_rows.npy and summary.json")
    return 0 if res.success else 1  # as 'newton': scores at an unconverged fit are suspect


#: influence methods that take a seed (the others are deterministic and refuse the option)
_SEEDED_METHODS = ("nystrom", "lissa", "kfac", "ekfac")


def _check_training_classes(p, family, y, train, test):
    """Refuse a fit without a finite minimizer before it runs (scores at it would be
    garbage): a multinomial class held out entirely in ``--test-rows`` gets its own message."""
    why = p._runaway_intercept_message()
    if why is None:
        return
    if family == "multinomial":
        missing = np.setdiff1d(np.unique(y[test]), np.unique(y[train]))
        if missing.size:
            raise ValueError(
                f"class {int(missing[0])} occurs only in the test rows (--test-rows), so the "
                "training rows have no sample of it and the fit has no finite minimizer (that "
                "class's intercept keeps falling); hold out rows of classes that also occur "
                "among the training rows")
    raise ValueError(why)


def _influence_parser(sub):
    ip = sub.add_parser(
        "influence", help="which training points drive chosen predictions",
        description="Fit a GLM, then score every training row's influence on chosen test "
                    "rows (held out of the fit) and rank rows by self-influence. Without "
                    "--data: synthetic logistic regression, 20,000 x 50, 1% of the labels "
                    "flipped.",
    )
    ip.add_argument("--data", help="data file (.npz, .csv or svmlight), as for 'newton'")
    ip.add_argument("--format", choices=("npz", "csv", "svmlight"))
    ip.add_argument("--family", choices=("logistic", "gaussian", "poisson", "multinomial"),
                    help="GLM family (default logistic)")
    ip.add_argument("--l2", type=float, default=1e-3, help="L2 penalty (default 1e-3)")
    ip.add_argument("--gtol", type=float, default=1e-10, help="fit tolerance (default 1e-10)")
    ip.add_argument("--test-rows", default="-1,-2,-3",
                    help="comma-separated data rows held out as test points, counted from 0 "
                         "(header and comment lines not counted), negative from the end; "
                         "write --test-rows=-1,-2 for a list starting with a minus sign "
                         "(default the last three)")
    ip.add_argument("--method", default="direct",
                    choices=("direct", "cg", "lissa", "arnoldi", "nystrom", "kfac", "ekfac"),
                    help="inverse-Hessian method (default direct)")
    ip.add_argument("--damping", type=float, default=0.0,
                    help="damping added to the Hessian in the solves (default 0)")
    ip.add_argument("--seed", type=int, default=0,
                    help="seed of the randomized methods (nystrom; lissa, kfac and ekfac "
                         "where they sample) (default 0): the same seed, the same scores")
    ip.add_argument("--top", type=int, default=5, help="rows to print per list (default 5)")
    ip.add_argument("--out", help="folder for scores.npy (test x training rows), "
                    "self_influence.npy, train_rows.npy (the data row of each score column) "
                    "and summary.json")
    ip.add_argument("--progress", action="store_true", help="progress bars on stderr")
    ip.set_defaults(func=_influence, parser=ip)


#: library argument names and the command-line options that set them
_OPTION_OF = {"method": "--method", "preconditioner": "--precond", "max_iter": "--max-iter",
              "fmt": "--format", "l2": "--l2", "gtol": "--gtol"}
_VALUE = r"""(?:'[\w.+-]+'|"[\w.+-]+"|None|\d+(?:\.\d*)?(?:e[+-]?\d+)?)"""
_ARG_VALUE = re.compile(
    rf"\b(method|preconditioner|max_iter|fmt|l2|gtol)=({_VALUE}(?:\s*(?:,|or)\s*{_VALUE})*)")
#: whole words of library messages with a command spelling of their own
_WORDS = {"fit_intercept=False": "--no-intercept", "increase max_iter": "increase --max-iter",
          "loosen gtol": "loosen --gtol", "after max_iter = ": "after --max-iter ",
          "> gtol = ": "> --gtol ", "use a smaller l2": "use a smaller --l2"}


def _float32(X, source):
    """``X`` (dense or sparse) in float32, refusing finite values beyond float32's range: the
    cast makes them inf, which the problem then reported as "NaN/inf entries" that the file
    does not hold."""
    vals = X.data if hasattr(X, "tocsr") else np.asarray(X)
    big = np.isfinite(vals) & (np.abs(vals) > np.finfo(np.float32).max)
    if np.any(big):
        top = float(np.abs(vals[big]).max())
        raise ValueError(f"{source}: X holds values up to {top:.3g}, beyond float32's range "
                         f"({float(np.finfo(np.float32).max):.3g}): use --dtype float64, or "
                         "rescale the features")
    return X.astype(np.float32)


def _in_command_words(message):
    """A library message in the command's spelling: ``method='cg' or 'direct'`` becomes
    ``--method cg or direct``, ``preconditioner=None`` ``--precond none`` (the messages are
    written for Python callers)."""
    def repl(m):
        values = re.sub(r"""['"]""", "", m.group(2)).replace("None", "none")
        return f"{_OPTION_OF[m.group(1)]} {values}"
    text = str(message)
    for words, option in _WORDS.items():
        text = text.replace(words, option)
    return _ARG_VALUE.sub(repl, text)


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"fastcurv: warning: {_in_command_words(message)}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own usage, not the top-level one
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    _CREATED.clear()
    rc = 2
    try:
        rc = _run(args)
        return rc
    finally:
        if rc != 0:
            _remove_created()
        _CREATED.clear()


def _run(args):
    """``args.func(args)``, its failures reported in one line (exit status 2)."""
    try:
        # failures are reported by the checks themselves, in one line: numpy's floating-point
        # warnings (overflow on absurdly scaled data, say) would only add lines before it
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.filterwarnings("once", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*encountered in",
                                    category=RuntimeWarning)
            warnings.showwarning = _warning_line  # fastcurv's own warnings (LiSSA stopped
            return args.func(args)                # short, theta not a minimizer): one line
    except BrokenPipeError:  # output piped into a command that stopped reading (head, less)
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, OSError, NotImplementedError, ImportError,
            ArithmeticError, RuntimeError) as exc:  # ArithmeticError: an overflow;
        # RuntimeError: an iterative solver that did not converge or diverged
        print(f"fastcurv: error: {_in_command_words(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"fastcurv: error: out of memory ({exc or 'allocation failed'}); the data is too "
              "large for this machine, or a feature index in the file is far beyond the real "
              "number of features", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastcurv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
