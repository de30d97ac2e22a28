"""Benchmark curvature approximations against the exact curvature: ``fc.compare``.

Each approximation is a symmetric (P, P) operator ``A`` of the same objective as the reference
``R`` (the GGN or the Hessian of ``F``, penalty included); approximations of the data term
alone (empirical Fisher, K-FAC, EK-FAC) get the exact penalty ``λ diag(mask)`` added. Measured
for each:

* ``rel_frobenius``: ``‖A − R‖_F / ‖R‖_F``, exact from dense matrices when ``P <=
  dense_limit``, else the randomized estimate ``‖(A − R) Z‖_F / ‖R Z‖_F`` with ``n_probes``
  Gaussian columns ``Z`` (unbiased for the squared norms),
* ``newton_cosine``: cosine between ``(A + δI)⁻¹ g`` and ``(R + δI)⁻¹ g`` for the gradient
  ``g`` (the Newton / natural-gradient direction each would take; for the diagonals ``A``
  is ``|d|``, as in their preconditioner; for K-FAC and EK-FAC with the penalty on the weights
  only, ``(A + δI)⁻¹ g`` is solved exactly, by CG preconditioned with their inverse of
  ``A + (λ + δ)I`` where the penalty is folded into the damping),
* ``top_eig_ratio`` and ``trace_ratio``: ``λ_max(A)/λ_max(R)`` (Lanczos) and
  ``tr(A)/tr(R)`` (exact for diagonals and Kronecker factors, Hutch++ otherwise),
* ``cg_iters``: CG iterations (None when CG does not reach ``rtol`` within ``maxiter``, as on
  an indefinite Hessian) on ``(R + δI) x = g`` to ``rtol`` with ``(A + δI)⁻¹`` as the
  preconditioner, next to ``cg_iters`` of the reference row (no preconditioner): with the
  approximation's own inverse where it has a cheap one, and on the dense path (below
  ``dense_limit``) also for the empirical Fisher and the block-diagonal GGN, from a Cholesky
  factor of the dense ``A + δI``, or its pseudo-inverse where that is numerically singular
  (above it those two have no count),
* ``build_s`` and ``build_grads``: the time to build the approximation, in seconds and in
  gradients (one build, with the compiled kernels already loaded; the gradient is the best
  of 5 at new points);
* ``apply_grads`` and ``solve_grads``: one product ``A v`` in the approximation's operator
  form, and one ``(A + δI)⁻¹ v`` where it has a cheap inverse, in gradients (best of 5).
"""

import time

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg

from ._validation import as_flag, as_float_scalar, as_int, check_problem, make_rng

APPROXIMATIONS = ("diag_hessian", "diag_ggn", "diag_ggn_mc", "empirical_fisher", "kfac",
                  "ekfac", "block_ggn")
_NAMES = {"diag_hessian": "diagonal Hessian", "diag_ggn": "diagonal GGN (exact)",
          "diag_ggn_mc": "diagonal GGN (MC, 1 sample)", "empirical_fisher": "empirical Fisher",
          "kfac": "K-FAC (type-2)", "ekfac": "EK-FAC (type-2)",
          "block_ggn": "block-diagonal GGN (exact)", "reference": "reference"}


def _mask(p):
    layers, offsets = p._kfac_layout()
    m = np.zeros(p.n_params)
    for l, (n_in, w, _b) in enumerate(layers):
        m[offsets[l]:offsets[l] + n_in * w] = 1.0
    return m


def _op(P, mm):
    return LinearOperator((P, P), matvec=lambda v: mm(np.reshape(v, (P, 1)))[:, 0],
                          matmat=mm, rmatvec=lambda v: mm(np.reshape(v, (P, 1)))[:, 0],
                          dtype=np.float64)


class _Approx:
    """An approximation: its operator, optional inverse of ``A + δI``, exact trace or None."""

    def __init__(self, name, op, inverse=None, trace=None, diag=None, build_s=0.0,
                 exact_inverse=True):
        self.name, self.op, self.inverse, self.trace = name, op, inverse, trace
        self.diag, self.build_s = diag, build_s
        # False where ``inverse`` only approximates (A + δI)⁻¹ (K-FAC with the penalty
        # folded into its damping): a preconditioner, not the approximation's Newton step
        self.exact_inverse = exact_inverse


def _diag_approx(name, d, damping, t):
    d = np.asarray(d, dtype=np.float64)
    P = d.size
    # a Hessian diagonal away from a minimum can be negative or zero: the preconditioner
    # uses |d| + δ, floored at 1e-12 of its mean
    a = np.abs(d) + damping
    inv = 1.0 / np.maximum(a, 1e-12 * (float(np.mean(a)) or 1.0))
    return _Approx(name, _op(P, lambda V: d[:, None] * V),
                   _op(P, lambda V: inv[:, None] * V), float(d.sum()), d, t)


def _build(p, theta, name, damping, seed, hutch_probes):
    from .estimators.diagonal import hutchinson_diag
    from .operators import EKFACOperator, FisherOperator, HessianOperator, KFACOperator

    P = p.n_params
    lam = p.l2 * _mask(p)
    t0 = time.perf_counter()
    if name == "diag_hessian":
        try:
            d = p.hessian_diag(theta)
        except ValueError:  # large MLPs: Hutchinson's estimate
            d = hutchinson_diag(HessianOperator(p, theta), hutch_probes, seed=seed).diag
        return _diag_approx(name, d, damping, time.perf_counter() - t0)
    if name == "diag_ggn":
        return _diag_approx(name, p.ggn_diag(theta), damping, time.perf_counter() - t0)
    if name == "diag_ggn_mc":
        return _diag_approx(name, p.ggn_diag(theta, mc_samples=1, seed=seed), damping,
                            time.perf_counter() - t0)
    if name == "empirical_fisher":
        F = FisherOperator(p, theta)
        op = _op(P, lambda V: np.asarray(F.matmat(V.astype(F.dtype)), np.float64)
                 + lam[:, None] * V)
        d = np.asarray(p.fisher_diag(theta), np.float64) + lam
        return _Approx(name, op, None, float(d.sum()), d, time.perf_counter() - t0)
    if name in ("kfac", "ekfac"):
        Op = KFACOperator if name == "kfac" else EKFACOperator
        K = Op(p, theta, fisher="type2")
        # the inverse of A + δI, with the penalty folded into the damping
        K.damping = p.l2 + damping
        inv = K.inverse()
        K.damping = 0.0
        build = time.perf_counter() - t0
        op = _op(P, lambda V: np.asarray(K.matmat(V.astype(K.dtype)), np.float64)
                 + lam[:, None] * V)
        inv_op = _op(P, lambda V: np.asarray(inv.matmat(V.astype(inv.dtype)), np.float64))
        if name == "kfac":
            parts = [np.outer(np.diag(A), np.diag(G)).ravel() for A, G in K.factors]
        else:
            parts = [((qa * qa) @ S @ (qg * qg).T).ravel()
                     for (qa, qg), S in zip(K._bases, K.scalings, strict=True)]
        d = np.concatenate(parts) + lam
        # the penalty λ·mask is uniform (so folding it into the damping is exact) only
        # when λ = 0 or every parameter is penalized
        exact = bool(np.all(lam == lam[0])) if P else True
        return _Approx(name, op, inv_op, float(d.sum()), d, build, exact_inverse=exact)
    if name == "block_ggn":
        layers, offsets = p._kfac_layout()

        def mm(V):
            out = np.zeros_like(V, dtype=np.float64)
            for l in range(len(layers)):
                a, b = offsets[l], offsets[l + 1]
                W = np.zeros_like(V)
                W[a:b] = V[a:b]
                out[a:b] = np.asarray(p.ggn_vp(theta, W.astype(p.dtype)),
                                      np.float64).reshape(P, -1)[a:b]
            return out

        d = np.asarray(p.ggn_diag(theta), np.float64)
        return _Approx(name, _op(P, mm), None, float(d.sum()), d, time.perf_counter() - t0)
    raise ValueError(f"unknown approximation {name!r}; choose from {', '.join(APPROXIMATIONS)}")


def _reference(p, theta, reference):
    P = p.n_params
    f = p.ggn_vp if reference == "ggn" else p.hvp

    def mm(V):
        return np.asarray(f(theta, np.ascontiguousarray(V, dtype=p.dtype)),
                          np.float64).reshape(P, -1)

    return _op(P, mm)


def _dense(op, P):
    """The symmetrized dense matrix of ``op`` (P products, in blocks of 256 columns)."""
    M = np.empty((P, P))
    for a in range(0, P, 256):
        b = min(P, a + 256)
        E = np.zeros((P, b - a))
        E[np.arange(a, b), np.arange(b - a)] = 1.0
        M[:, a:b] = op.matmat(E)
    return 0.5 * (M + M.T)


def _block_diagonal(M, p):
    """``M`` with the cross-layer blocks zeroed."""
    _layers, offsets = p._kfac_layout()
    out = np.zeros_like(M)
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        out[a:b, a:b] = M[a:b, a:b]
    return out


def _solve(op, g, damping, rtol, maxiter, M=None):
    P = op.shape[0]

    def broke_down(V):
        # SciPy's CG divides 0 by 0 once its recursive residual underflows, which a tolerance
        # far below rounding lets it reach (rtol=1e-320: a NaN "v" in the next product)
        if not np.all(np.isfinite(V)):
            raise FloatingPointError(
                f"CG broke down before reaching rtol={rtol:g}: its residual recurrence "
                "underflowed (float64 resolves relative residuals down to about 1e-16); pass "
                "a larger rtol")
        return V

    A = _op(P, lambda V: op.matmat(broke_down(V)) + damping * V)
    n = [0]
    x, info = cg(A, g, rtol=rtol, atol=0.0, maxiter=maxiter, M=M,
                 callback=lambda _x: n.__setitem__(0, n[0] + 1))
    broke_down(x)
    # an iteration count only when CG reached rtol (an indefinite Hessian, say, stalls it)
    return x, (n[0] if info == 0 else None)


def _dense_inverse(M, damping, eps):
    """``((M + δI)⁺, psd)``: an operator applying the inverse of ``M + δI`` (a Cholesky
    factor), or its pseudo-inverse where the factor fails or is numerically singular (pivot
    ratio below ``sqrt(P eps)``, as ``influence``'s direct method tests), from the
    eigendecomposition with eigenvalues below ``P eps`` of the largest dropped. ``eps`` is the
    machine epsilon of the problem's dtype: a float32 model's exact null directions (the
    softmax's common shift) come out at float32 rounding level, ~1e-9 of the largest
    eigenvalue, and with float64's ``eps`` they were inverted (float32 softmax, δ = 0: Newton
    cosines 0.45-0.77 where float64 gives 0.97-1.00). ``psd`` is
    False where ``M + δI`` is indefinite beyond rounding (then no preconditioner is built
    from it). A singular approximation (with δ = 0 the block-diagonal GGN along the common
    shift of the output biases) went through the Cholesky factor and gave a direction of
    norm ~60 times the pseudo-inverse one (a Newton cosine of 0.012 instead of 0.756)."""
    import scipy.linalg as sla

    P = M.shape[0]
    A = M + damping * np.eye(P)
    try:
        f = sla.cho_factor(A, lower=True, check_finite=False)
        d = np.abs(np.diag(f[0]))
        if d.min() > np.sqrt(P * eps) * d.max():
            return _op(P, lambda X: sla.cho_solve(f, X, check_finite=False)), True
    except np.linalg.LinAlgError:
        pass
    w, V = np.linalg.eigh(A)
    tol = P * eps * float(np.max(np.abs(w)))
    inv = np.divide(1.0, w, out=np.zeros_like(w), where=np.abs(w) > tol)
    return _op(P, lambda X: V @ (inv[:, None] * (V.T @ X))), bool(w.min() >= -tol)


def _cosine(x, y):
    """Cosine of the angle between ``x`` and ``y``, scaled first: the plain dot product
    underflows for vectors of norm 1e-300 (a damping of 1e300 gave NaN)."""
    x = x / np.max(np.abs(x))
    y = y / np.max(np.abs(y))
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _time_per_call(fn, v, repeats=5):
    """Best of ``repeats`` timed calls after one untimed call."""
    fn(v)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(v)
        best = min(best, time.perf_counter() - t0)
    return best


def _gradient_time(p, theta):
    """Best of 5 gradients, each at a new θ (no cached forward pass)."""
    p.grad(theta + 0.0)
    best = np.inf
    for k in range(5):
        t = theta * (1.0 + 1e-7 * (k + 1))
        t0 = time.perf_counter()
        p.grad(t)
        best = min(best, time.perf_counter() - t0)
    return best


def _warm_kernels(p, theta, names, damping, hutch_probes):
    """Build every approximation once on at most 8 rows, so that the timed builds do not
    include loading compiled kernels from Numba's cache (a one-off per process; on 8 rows or
    fewer, the problem itself is warmed: its build costs came out 20-100x too high)."""
    if not hasattr(p, "subset"):
        return
    from .influence.influence import _weights  # w_i / W of a problem's rows

    rows = np.flatnonzero(_weights(p, np.arange(p.n_samples)) > 0)[:8]
    tiny = p.subset(rows) if p.n_samples > 8 else p  # rows of positive weight: a subset
    # of weight 0 is refused
    for name in names:
        _build(tiny, theta, name, damping, np.random.default_rng(0), min(hutch_probes, 2))


def _densities(spectra, n_grid=600):
    """One grid and one kernel width for all: ``spectra`` maps a name to ``(nodes, weights)``
    ((S, m) each, rows summing to 1); returns ``{name: SpectralDensity}``."""
    from .estimators.density import SpectralDensity, _gaussian_mixture

    live = np.concatenate([nd[w > 0] for nd, w in spectra.values()])
    lo, hi = min(0.0, float(live.min())), float(live.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = span / 300
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, n_grid)
    return {name: SpectralDensity(grid, _gaussian_mixture(grid, nd, w, sigma) / nd.shape[0],
                                  nd, w)
            for name, (nd, w) in spectra.items()}


def compare(p, theta, approximations=APPROXIMATIONS, reference="ggn", *, damping=1e-3,
            seed=None, dense_limit=3000, n_probes=16, rtol=1e-6, maxiter=1000,
            hutch_probes=64, densities=False, density_probes=4, density_steps=40):
    """Compare curvature approximations with the exact curvature at ``θ``.

    Up to ``dense_limit`` parameters every operator is formed as a dense matrix once (P
    products) and everything else is exact linear algebra on it: the Frobenius errors, the
    Newton directions (dense solves), the top eigenvalues and traces, and the spectral
    densities (the exact eigenvalues, smoothed); CG counts run on the dense reference. Above
    it: the randomized Frobenius estimate, CG solves, Lanczos and stochastic Lanczos
    quadrature on the operators.

    Parameters
    ----------
    p : fastcurv.MLP or fastcurv.GLM
    theta : (P,) parameters
    approximations : sequence of names from :data:`APPROXIMATIONS`
    reference : {"ggn", "hessian"}
    damping : δ of the Newton systems and preconditioners
    seed : int or numpy.random.Generator (probes, MC diagonal, Lanczos starts)
    dense_limit : form dense matrices (exact errors and spectra) up to this many parameters
    n_probes : Gaussian probes of the randomized Frobenius estimate
    rtol, maxiter : CG on the reference system
    hutch_probes : Hutchinson probes for the Hessian diagonal of large MLPs
    densities : also compute spectral densities (the records then carry ``density``: the
        ``SpectralDensity`` of each operator, all on one grid with one kernel width)
    density_probes, density_steps : stochastic Lanczos quadrature above ``dense_limit``

    Returns
    -------
    list of dict, one record per approximation (and one ``"reference"`` record), with keys
    ``name``, ``label``, ``rel_frobenius``, ``newton_cosine``, ``top_eig_ratio``,
    ``trace_ratio``, ``cg_iters``, ``build_s``, ``build_grads``, ``apply_grads`` (one
    product ``A v`` in its operator form, in gradients), ``solve_grads`` (one ``(A + δI)⁻¹ v``
    where it is cheap, else None) and ``top_eig``, ``trace``; ``pandas.DataFrame(records)``
    turns it into a table. See the module docstring for the definitions.
    """
    from .estimators.density import spectral_density
    from .estimators.eigen import top_eigenvalues
    from .estimators.trace_estimators import trace as trace_est

    if reference not in ("ggn", "hessian"):
        raise ValueError(f"reference must be 'ggn' or 'hessian', got {reference!r}")
    if isinstance(approximations, str):
        raise TypeError(f"approximations must be a list of names, got the string "
                        f"{approximations!r}; pass [{approximations!r}]")
    try:
        approximations = list(approximations)
    except TypeError:
        raise TypeError(f"approximations must be a list of names, got "
                        f"{approximations!r}") from None
    densities = as_flag(densities, "densities")
    damping = as_float_scalar(damping, "damping", low=0.0)
    rtol = as_float_scalar(rtol, "rtol", low=0.0, allow_equal=False)
    dense_limit = as_int(dense_limit, "dense_limit", low=0)
    maxiter = as_int(maxiter, "maxiter")
    n_probes = as_int(n_probes, "n_probes")
    hutch_probes = as_int(hutch_probes, "hutch_probes")
    density_probes = as_int(density_probes, "density_probes")
    density_steps = as_int(density_steps, "density_steps")
    names = list(approximations)
    for n in names:
        if n not in APPROXIMATIONS:
            raise ValueError(f"unknown approximation {n!r}; choose from "
                             f"{', '.join(APPROXIMATIONS)}")
    theta = check_problem(p)._check_theta(theta).copy()
    rng = make_rng(seed)
    P = p.n_params
    _warm_kernels(p, theta, names, damping, hutch_probes)
    g = np.asarray(p.grad(theta), dtype=np.float64)
    t_grad = _gradient_time(p, theta)
    R_op = _reference(p, theta, reference)
    t_ref = _time_per_call(R_op.matvec, g) / t_grad
    dense = P <= dense_limit
    eps = float(np.finfo(p.dtype).eps)  # rounding level of the curvature (_dense_inverse)
    spectra = {}
    if dense:
        Rd = _dense(R_op, P)
        R = _op(P, lambda V: Rd @ V)
        eig = np.linalg.eigvalsh(Rd)
        spectra["reference"] = (eig[None, :], np.full((1, P), 1.0 / P))
        top_R, tr_R, d_R = float(eig[-1]), float(np.trace(Rd)), np.diag(Rd).copy()
        x_ref = _dense_inverse(Rd, damping, eps)[0].matvec(g)
        _, it_ref = _solve(R, g, damping, rtol, maxiter)
        Z = RZ = None
    else:
        R = R_op
        x_ref, it_ref = _solve(R, g, damping, rtol, maxiter)
        Z = rng.standard_normal((P, n_probes))
        RZ = R.matmat(Z)
        top_R = float(top_eigenvalues(R, 1, seed=rng, tol=1e-8)[0])
        d_R = None
        if reference == "ggn":
            d_R = np.asarray(p.ggn_diag(theta), np.float64)
            tr_R = float(d_R.sum())
        else:
            try:
                d_R = np.asarray(p.hessian_diag(theta), np.float64)
                tr_R = float(d_R.sum())
            except ValueError:
                tr_R = float(trace_est(R, 3 * hutch_probes, seed=rng).trace)
    records = [dict(name="reference", label=f"exact {reference.upper()}"
                    if reference == "ggn" else "exact Hessian", rel_frobenius=0.0,
                    newton_cosine=1.0, top_eig_ratio=1.0, trace_ratio=1.0, cg_iters=it_ref,
                    build_s=0.0, build_grads=0.0, apply_grads=t_ref, solve_grads=None,
                    top_eig=top_R, trace=tr_R, diag=d_R)]
    ops = {"reference": R}
    for name in names:
        ap = _build(p, theta, name, damping, rng, hutch_probes)
        apply_g = _time_per_call(ap.op.matvec, g) / t_grad
        solve_g = None if ap.inverse is None else \
            _time_per_call(ap.inverse.matvec, g) / t_grad
        if dense:
            if name == "block_ggn":  # the diagonal blocks of the dense GGN
                Gd = Rd if reference == "ggn" else _dense(_reference(p, theta, "ggn"), P)
                Ad = _block_diagonal(Gd, p)
            else:
                Ad = _dense(ap.op, P)
            err = float(np.linalg.norm(Ad - Rd) / np.linalg.norm(Rd))
            inv, psd = _dense_inverse(Ad, damping, eps)
            M = ap.inverse if ap.inverse is not None else (inv if psd else None)
            x = M.matvec(g) if M is not None and ap.exact_inverse else inv.matvec(g)
            eig = np.linalg.eigvalsh(Ad)
            spectra[name] = (eig[None, :], np.full((1, P), 1.0 / P))
            top = float(eig[-1])
            tr = ap.trace if ap.trace is not None else float(np.trace(Ad))
            del Ad, inv
        else:
            M = ap.inverse
            ops[name] = ap.op
            err = float(np.linalg.norm(ap.op.matmat(Z) - RZ) / np.linalg.norm(RZ))
            if ap.inverse is not None and ap.exact_inverse:
                x = ap.inverse.matvec(g)
            else:  # CG on A + δI (preconditioned by the approximate inverse where there is one)
                x, _ = _solve(ap.op, g, damping, rtol, maxiter, M=ap.inverse)
            top = float(top_eigenvalues(ap.op, 1, seed=rng, tol=1e-8)[0])
            tr = ap.trace if ap.trace is not None else \
                float(trace_est(ap.op, 3 * hutch_probes, seed=rng).trace)
        cos = _cosine(x, x_ref)
        it = None
        if M is not None:
            _, it = _solve(R, g, damping, rtol, maxiter, M=M)
        records.append(dict(name=name, label=_NAMES[name], rel_frobenius=err,
                            newton_cosine=cos, top_eig_ratio=top / top_R,
                            trace_ratio=tr / tr_R, cg_iters=it, build_s=ap.build_s,
                            build_grads=ap.build_s / t_grad, apply_grads=apply_g,
                            solve_grads=solve_g, top_eig=top, trace=tr, diag=ap.diag))
    if densities:
        if not dense:
            for rec in records:
                sd = spectral_density(ops[rec["name"]], density_probes, density_steps,
                                      seed=seed)
                spectra[rec["name"]] = (sd.nodes, sd.weights)
        dens = _densities(spectra)
        for rec in records:
            rec["density"] = dens[rec["name"]]
        records[0]["spectrum"] = ("exact eigenvalues" if dense
                                  else "stochastic Lanczos quadrature")
    return records
