"""Inverse-curvature products ``(C + δI)⁻¹ B`` for influence functions, one class per method.

Every solver takes a (P, m) float64 block ``B`` and returns ``(C + δI)⁻¹ B`` (float64),
where ``C`` is the Hessian of the objective (penalty included; ``curvature="ggn"`` for the
Gauss-Newton matrix) at the fitted ``θ``.

Exact null directions. A softmax model's curvature is singular along the common shift of its
K outputs: the output biases always, every weight row as well when ``l2 = 0`` (DESIGN.md,
"Null directions"). Per-sample gradients are orthogonal to those directions, so the solvers
return the pseudo-inverse solution there: ``direct`` adds ``s N Nᵀ`` (``N`` an orthonormal
basis of the known null space) before factorizing, which leaves every product with a vector
orthogonal to ``N`` unchanged and returns a solution orthogonal to ``N``; ``cg`` runs on the
projected system ``Π C Π x = Π b`` (``Π = I − N Nᵀ``); the others project ``N`` out of their
result. ``N`` is never formed for the projections: ``Π`` subtracts, in each of those rows of
the last layer's (n_in + 1, K) parameter block, the row's mean.
"""

import warnings

import numpy as np
import scipy.linalg as sla
from scipy.sparse.linalg import LinearOperator

from .._nullspace import null_gram as _null_gram
from .._nullspace import null_rows
from .._nullspace import project_out as _project_out
from .._validation import as_float_scalar, as_int, make_rng
from ..estimators.eigen import top_eigenvalues
from ..operators import GGNOperator, HessianOperator

#: largest parameter count for the dense methods (a P x P float64 matrix)
MAX_DENSE_PARAMS = 20_000
#: seed of the Lanczos start vector of LiSSA's scale and of Arnoldi's eigenpairs: fixed, as
#: neither is a random estimate (without it ARPACK drew a start vector from its own state,
#: and two identical calls differed in the last digits)
EIGEN_SEED = 0


def _int_option(options, name, default, low=1):
    return as_int(options.pop(name, default), name, low=low)


#: a CG residual this small relative to the right-hand side is at float64 rounding for
#: practical condition numbers: zero curvature met there is rounding, not indefiniteness
ROUNDING_RESIDUAL = 1e-10


def _float_option(options, name, default, low=0.0):
    """A real option (strings and bools refused: ``rtol=True`` was taken as 1.0)."""
    return as_float_scalar(options.pop(name, default), name, low=low)


def _dense_curvature(p, theta, curvature):
    P = p.n_params
    if P > MAX_DENSE_PARAMS:
        raise ValueError(
            f"this method forms the dense {P}x{P} curvature (limit {MAX_DENSE_PARAMS} "
            "parameters); use method='cg', 'lissa', 'arnoldi', 'nystrom' or 'kfac'"
        )
    dense = p.ggn if curvature == "ggn" and hasattr(p, "ggn") else p.hessian
    return np.asarray(dense(theta), dtype=np.float64)


def curvature_operator(p, theta, curvature, damping=0.0):
    Op = GGNOperator if curvature == "ggn" else HessianOperator
    return Op(p, theta, damping=damping)


class Solver:
    """Base: ``solve(B)`` for a (P, m) float64 block; ``info`` holds diagnostics."""

    def __init__(self, p, theta, damping, curvature):
        self.p, self.theta, self.damping, self.curvature = p, theta, damping, curvature
        self.null = null_rows(p)
        self.info = {}

    def solve(self, B):
        raise NotImplementedError


class Direct(Solver):
    """Cholesky factor of the dense ``C + δI`` (+ ``s N Nᵀ`` on known null directions),
    computed once. A singular or indefinite matrix raises a ``ValueError`` naming the fix."""

    def __init__(self, p, theta, damping, curvature, options):
        super().__init__(p, theta, damping, curvature)
        C = _dense_curvature(p, theta, curvature)
        C[np.diag_indices_from(C)] += damping
        if self.null is not None:
            s = float(np.mean(np.abs(np.diag(C)))) or 1.0
            C += s * _null_gram(self.null, C.shape[0])
        try:
            self._factor = sla.cho_factor(C, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            low = float(sla.eigvalsh(C, subset_by_index=[0, 0], check_finite=False)[0])
            raise ValueError(
                f"the {'Gauss-Newton matrix' if curvature == 'ggn' else 'Hessian'} plus "
                f"damping={damping:g} is not positive definite at theta (singular, or "
                f"indefinite away from a minimum: its smallest eigenvalue is {low:.3g}), so "
                "method='direct' cannot factor it; pass a damping above "
                f"{max(damping - low, 0.0):.3g}, fit theta to a minimum first, or use "
                "curvature='ggn'"
            ) from None
        # a factor of a nearly singular matrix is useless: check its conditioning
        d = np.diag(self._factor[0])
        if d.min() <= np.sqrt(C.shape[0] * np.finfo(np.float64).eps) * d.max():
            raise ValueError(
                f"the curvature plus damping={damping:g} is numerically singular at theta "
                f"(Cholesky pivot ratio {d.min() / d.max():.1e}); pass damping > 0"
            )

    def solve(self, B):
        return _project_out(self.null, sla.cho_solve(self._factor, B, check_finite=False))


class BlockCG(Solver):
    """Conjugate gradients on ``C + δI`` for all right-hand sides at once: each column runs
    its own CG recurrence, and the curvature products of all unconverged columns are one
    ``matmat`` (one data pass per iteration for the whole block). Stops a column when
    ``‖r‖ ≤ rtol ‖b‖``. Options: ``rtol`` (1e-8), ``maxiter`` (10 P, at most 10,000),
    ``preconditioner`` (None, "diag", "kfac", "nystrom" (with ``rank``) or a LinearOperator
    applying ``M⁻¹``)."""

    def __init__(self, p, theta, damping, curvature, options):
        super().__init__(p, theta, damping, curvature)
        self.rtol = _float_option(options, "rtol", 1e-8)
        if self.rtol == 0.0:
            raise ValueError("rtol must be > 0: CG cannot reach a zero residual in floating "
                             "point (rtol=1e-12 is about the tightest float64 resolves)")
        self.maxiter = _int_option(options, "maxiter", min(10 * p.n_params, 10_000))
        self.A = curvature_operator(p, theta, curvature, damping)
        pc = options.pop("preconditioner", None)
        self.M = _preconditioner(pc, p, theta, damping, curvature, options)

    def solve(self, B):
        """CG on ``Π (C + δI) Π x = Π b`` (``Π`` projects out the known null directions;
        the identity without them): right-hand sides, preconditioned residuals and products
        are projected, so every iterate stays in the range. Unprojected, a float32 softmax
        model's gradients and products carry a null component at float32 rounding (1e-7 of
        their size), which CG cannot reduce: it met "zero or negative curvature" there."""
        B = _project_out(self.null, np.array(B, dtype=np.float64))
        P, m = B.shape
        X = np.zeros((P, m))
        R = B.copy()
        bnorm = np.linalg.norm(B, axis=0)
        Z = self._apply_m(R)
        D = Z.copy()
        rz = np.einsum("ij,ij->j", R, Z)
        active = np.flatnonzero(bnorm > 0)
        iters = np.zeros(m, dtype=np.int64)
        it = 0
        while active.size and it < self.maxiter:
            it += 1
            AD = _project_out(self.null, np.asarray(
                self.A.matmat(D[:, active].astype(self.A.dtype)), dtype=np.float64))
            dad = np.einsum("ij,ij->j", D[:, active], AD)
            if np.any(dad <= 0):
                raise ValueError(self._no_curvature_message(R, bnorm, active[dad <= 0]))
            alpha = rz[active] / dad
            X[:, active] += alpha * D[:, active]
            R[:, active] -= alpha * AD
            iters[active] += 1
            done = np.linalg.norm(R[:, active], axis=0) <= self.rtol * bnorm[active]
            active = active[~done]
            if not active.size:
                break
            Za = self._apply_m(R[:, active])
            rz_new = np.einsum("ij,ij->j", R[:, active], Za)
            beta = rz_new / rz[active]
            rz[active] = rz_new
            D[:, active] = Za + beta * D[:, active]
        self.info = dict(iterations=iters, converged=active.size == 0, n_matmat=it)
        if active.size:
            raise RuntimeError(
                f"CG did not reach rtol={self.rtol:g} in maxiter={self.maxiter} iterations for "
                f"{active.size} of {m} right-hand sides; raise maxiter, add damping or a "
                "preconditioner ('kfac', 'diag', 'nystrom')"
            )
        return _project_out(self.null, X)

    def _no_curvature_message(self, R, bnorm, cols):
        """Why ``dᵀ A d <= 0`` for the columns ``cols``: an indefinite curvature, or, once the
        residual is down to rounding, a direction lost in rounding (rtol too tight)."""
        rel = float(np.max(np.linalg.norm(R[:, cols], axis=0) / bnorm[cols]))
        if rel <= ROUNDING_RESIDUAL:
            return (f"CG lost its search direction to rounding at a relative residual of "
                    f"{rel:.1e}, before reaching rtol={self.rtol:g}: that is as far as float64 "
                    "resolves this system; pass a larger rtol (e.g. 1e-10)")
        return ("CG met zero or negative curvature: the curvature plus damping is not "
                "positive definite at theta; pass damping > 0, fit theta to a minimum "
                "first, or use curvature='ggn'")

    def _apply_m(self, R):
        """``Π M⁻¹ R`` (``R`` itself without a preconditioner). A preconditioner's complex or
        non-finite output is refused by name (it reached the curvature products as a NaN in
        "v", or, complex, as "negative curvature")."""
        if self.M is None:
            return R.copy()
        Z = np.asarray(self.M.matmat(R))
        if Z.dtype.kind not in "biuf":
            raise TypeError(f"the preconditioner must return real values, got {Z.dtype}")
        Z = np.array(Z, dtype=np.float64).reshape(R.shape)
        if not np.all(np.isfinite(Z)):
            raise FloatingPointError("the preconditioner returned NaN or inf")
        return _project_out(self.null, Z)


def _preconditioner(pc, p, theta, damping, curvature, options):
    if pc is None:
        return None
    if isinstance(pc, LinearOperator):
        return pc
    if pc == "diag":
        D = np.asarray(p.hessian_diag(theta) if curvature == "hessian" else p.ggn_diag(theta),
                       dtype=np.float64) + damping
        D = np.where(D > 1e-12 * np.mean(np.abs(D)), D, 1.0)
        inv = 1.0 / D
        P = p.n_params
        return LinearOperator((P, P), matvec=lambda v: inv * np.ravel(v),
                              matmat=lambda V: inv[:, None] * V, dtype=np.float64)
    if pc == "kfac":
        from ..operators import KFACOperator

        op = KFACOperator(p, theta, fisher="type2", damping=p.l2 + damping)
        if op.damping == 0:
            scale = max(float(la[-1] * lg[-1]) for la, _qa, lg, _qg in op.eigen())
            op.damping = 1e-8 * (scale or 1.0)
        return op.inverse()
    if pc == "nystrom":
        ny = Nystrom(p, theta, damping, curvature, options)
        return ny.preconditioner()
    raise ValueError(f"preconditioner must be None, 'diag', 'kfac', 'nystrom' or a "
                     f"LinearOperator, got {pc!r}")


class LiSSA(Solver):
    """The Neumann series ``(C + δI)⁻¹ b = (1/s) Σ_j (I − (C + δI)/s)^j b`` (Agarwal, Bullins &
    Hazan 2017), by the recursion ``x_{j+1} = b + x_j − (C + δI) x_j / s``, estimate
    ``x_J / s``. ``s`` (option ``scale``) defaults to 1.1 times the largest eigenvalue of
    ``C + δI`` (Lanczos). With ``batch_size`` the products use random row subsets (the
    stochastic LiSSA; ``repeats`` runs averaged, seeded by ``seed``; rows drawn in proportion
    to their sample weights where these differ, see :meth:`_op`); by default the full
    data. Stops when ``‖x_{j+1} − x_j‖ ≤ tol ‖x_j‖`` (``tol`` 1e-10 on float64 data, ten
    float32 epsilons, 1.2e-6, on float32 data, whose curvature products resolve no finer: with
    1e-10 every float32 series ran all ``depth`` steps and warned that its result may be far
    off, which was within 1.4e-7 of the direct solve; with 1.2e-6 a logistic and a
    multinomial series stopped after 23 and 16 steps, within 3e-7 and 8e-7) or after ``depth``
    steps (5,000; on the full data a RuntimeWarning then says the series has not converged,
    and ``info["converged"]`` is False), and raises with a message when the iterates grow
    without bound (a scale below the top eigenvalue, or an indefinite Hessian)."""

    def __init__(self, p, theta, damping, curvature, options):
        super().__init__(p, theta, damping, curvature)
        self.depth = _int_option(options, "depth", 5_000)
        self.tol = _float_option(options, "tol",
                                 max(1e-10, 10 * float(np.finfo(p.dtype).eps)))
        self.repeats = _int_option(options, "repeats", 1)
        bs = options.pop("batch_size", None)
        self.batch_size = None if bs is None else _int_option({"batch_size": bs},
                                                              "batch_size", 1)
        self.seed = options.pop("seed", None)
        make_rng(self.seed)  # refused here, naming the option, rather than in solve
        w = getattr(p, "_w", None)
        #: row probabilities of the batches where sample weights differ (see _op)
        self._draw_p = None
        if w is not None and not np.all(w == w[0]):
            r = w / w.max()  # weights of 1e300 would overflow their sum
            self._draw_p = r / r.sum()
        self.A = curvature_operator(p, theta, curvature, damping)
        scale = options.pop("scale", None)
        if scale is None:
            # Lanczos from a fixed start vector: the same scale (and scores) on every call
            top = float(top_eigenvalues(self.A, 1, "LA", tol=1e-3, seed=EIGEN_SEED)[0])
            scale = 1.1 * top
        self.scale = _float_option({"scale": scale}, "scale", 0.0)
        if self.scale <= 0:
            raise ValueError("LiSSA needs a positive scale; the curvature has no positive "
                             "eigenvalue at theta")

    def _op(self, rng):
        """The curvature of one random batch (or of all rows): an unbiased estimate of ``C``.

        Equal sample weights: ``batch_size`` distinct rows, uniformly. Unequal ones: rows
        drawn with replacement with probabilities ``w_i / Σ w``, each draw counted once
        with unit weight, so that the batch's mean curvature has expectation
        ``Σ w_i C_i / Σ w``. (Uniform draws weighted within the batch, ``Σ_S w_i C_i / Σ_S
        w_i``, are biased: 91% off with one row of weight 200 among 40, and a batch of
        weight-0 rows had no curvature at all.)"""
        n = self.p.n_samples
        if self.batch_size is None or self.batch_size >= n:
            return self.A
        if self._draw_p is None:
            rows = np.sort(rng.choice(n, self.batch_size, replace=False))
            batch = self.p.subset(rows)
        else:
            rows = np.sort(rng.choice(n, self.batch_size, replace=True, p=self._draw_p))
            batch = self.p._rows_problem(rows)
        return curvature_operator(batch, self.theta, self.curvature, self.damping)

    def solve(self, B):
        B = np.asarray(B, dtype=np.float64)
        rng = make_rng(self.seed)
        total = np.zeros_like(B)
        steps = 0
        converged = True
        last = 0.0
        for _ in range(self.repeats):
            X = B.copy()
            b0 = max(float(np.linalg.norm(B)), np.finfo(np.float64).tiny)
            for j in range(self.depth):
                A = self._op(rng)
                AX = np.asarray(A.matmat(X.astype(A.dtype)), dtype=np.float64)
                Xn = B + X - AX / self.scale
                steps += 1
                nx = float(np.linalg.norm(Xn))
                if not np.isfinite(nx) or nx > 1e12 * b0:
                    raise RuntimeError(
                        f"LiSSA diverged after {j + 1} steps (|x| = {nx:.3g}): the scale "
                        f"{self.scale:.4g} is below the largest eigenvalue of the curvature "
                        "plus damping (pass a larger scale=...), or the curvature plus "
                        "damping is indefinite at theta (fit theta to a minimum, use "
                        "curvature='ggn', or pass a damping above the magnitude of its most "
                        "negative eigenvalue)"
                    )
                change = float(np.linalg.norm(Xn - X))
                X = Xn
                if change <= self.tol * nx:
                    break
            else:
                converged = False
                last = max(last, change / nx if nx > 0 else 0.0)
            total += X / self.scale
        self.info = dict(steps=steps, scale=self.scale, converged=converged)
        if not converged and self.batch_size is None:
            # the full-data series is deterministic: a step change this large after ``depth``
            # steps means the sum is still far from (C + δI)⁻¹ b (the error is about the
            # change divided by 1 - ρ, ρ = 1 - λ_min / s the contraction factor)
            warnings.warn(
                f"LiSSA stopped after depth = {self.depth} steps without converging (last "
                f"relative change {last:.2e} > tol = {self.tol:g}): the result may be far "
                "from the inverse-curvature product (the series needs about "
                "scale / smallest eigenvalue steps). Raise depth, add damping, or use "
                "method='cg' or 'direct'.", RuntimeWarning, stacklevel=3)
        return _project_out(self.null, total / self.repeats)


def _pinv_diag(lam, damping, dtype):
    """``1 / (λ + δ)`` elementwise, with entries where ``|λ + δ| <= size · ε · max |λ + δ|``
    set to 0: the pseudo-inverse of ``diag(λ + δ)`` on numerically null directions.

    ``ε`` is the machine epsilon of ``dtype``, the curvature's: eigenvalues of a float32
    curvature are only float32-accurate, and its exact null directions come out at rounding
    level (about 1e-8 of the largest, of either sign), not 0. With float64's ``ε`` they were
    inverted, and the scores of a float32 MLP's singular Gauss-Newton matrix came out 1e5
    times too large."""
    d = lam + damping
    top = float(np.max(np.abs(d))) if d.size else 0.0
    keep = np.abs(d) > d.size * float(np.finfo(dtype).eps) * top
    out = np.zeros_like(d)
    out[keep] = 1.0 / d[keep]
    return out


class Arnoldi(Solver):
    """Low-rank eigen-approximation (Schioppa et al. 2022, with Lanczos for the symmetric
    curvature): the ``rank`` eigenpairs of largest magnitude ``C ≈ V Λ Vᵀ`` (scipy ``eigsh``),
    and ``(C + δI)⁻¹ ≈ V (Λ + δ)⁻¹ Vᵀ``: the inverse restricted to the top eigenspace
    (directions outside it contribute nothing). ``rank`` (default ``min(P, 100)``); at
    ``rank >= P − 1`` the dense eigendecomposition is used (exact). Negative eigenvalues
    (an indefinite Hessian away from a minimum) are inverted like the others, with a
    RuntimeWarning: the other methods refuse such a curvature."""

    def __init__(self, p, theta, damping, curvature, options):
        super().__init__(p, theta, damping, curvature)
        P = p.n_params
        self.rank = min(_int_option(options, "rank", min(P, 100)), P)
        tol = _float_option(options, "tol", 0.0)  # eigsh's; unused by the dense path
        if self.rank >= P - 1:
            lam, V = np.linalg.eigh(_dense_curvature(p, theta, curvature))
        else:
            A = curvature_operator(p, theta, curvature)
            lam, V = top_eigenvalues(A, self.rank, "LM", return_eigenvectors=True, tol=tol,
                                     seed=EIGEN_SEED)
            V = np.asarray(V, dtype=np.float64)
        self.eigenvalues, self.V = lam.astype(np.float64), V
        self._inv = _pinv_diag(self.eigenvalues, damping, p.dtype)
        neg = int(np.sum(self._inv < 0))
        if neg:
            warnings.warn(
                f"arnoldi: {neg} of the {lam.size} eigenvalues kept (plus damping={damping:g}) "
                f"are negative (the smallest {float(lam.min()) + damping:.3g}): the "
                f"{'Gauss-Newton matrix' if curvature == 'ggn' else 'Hessian'} is indefinite "
                "at theta, and the scores invert it on those directions too (the other "
                "methods refuse). Fit theta to a minimum, use curvature='ggn', or pass a "
                "damping above the magnitude of the most negative eigenvalue",
                RuntimeWarning, stacklevel=4)

    def solve(self, B):
        B = np.asarray(B, dtype=np.float64)
        return _project_out(self.null, self.V @ (self._inv[:, None] * (self.V.T @ B)))


class Nystrom(Solver):
    """Randomized Nyström approximation ``C ≈ U Λ̂ Uᵀ`` from the sketch ``Y = C Ω`` with a
    Gaussian ``Ω`` (P, rank) (Tropp et al. 2017; the stable shifted form of Frangella, Tropp
    & Udell 2023), and ``(Ĉ + δI)⁻¹ = U (Λ̂ + δ)⁻¹ Uᵀ + (I − UUᵀ)/δ`` (with ``δ = 0`` the
    second term is dropped: a pseudo-inverse). Needs a positive semidefinite curvature (a
    GLM Hessian, or ``curvature="ggn"``). ``rank`` (default ``min(P, 100)``), ``seed``. At
    ``rank = P`` it is exact. As a CG preconditioner (``preconditioner="nystrom"``) it applies
    ``(λ̂_r + δ) U (Λ̂ + δ)⁻¹ Uᵀ + (I − UUᵀ)``."""

    def __init__(self, p, theta, damping, curvature, options):
        super().__init__(p, theta, damping, curvature)
        P = p.n_params
        self.rank = min(_int_option(options, "rank", min(P, 100)), P)
        rng = make_rng(options.pop("seed", None))
        Omega, _ = np.linalg.qr(rng.standard_normal((P, self.rank)))
        A = curvature_operator(p, theta, curvature)
        self.dtype = A.dtype
        Y = np.asarray(A.matmat(Omega.astype(A.dtype)), dtype=np.float64)
        # the shift covers the rounding of Y, made in the curvature's dtype (float32's
        # epsilon for float32 data: float64's left the float32 sketch of a singular
        # curvature indefinite, refused as "not positive semidefinite")
        nu = np.sqrt(P) * np.finfo(A.dtype).eps * np.linalg.norm(Y)
        Yn = Y + nu * Omega
        M = Omega.T @ Yn
        try:
            Lc = np.linalg.cholesky(0.5 * (M + M.T))
        except np.linalg.LinAlgError:
            raise ValueError("the Nyström sketch needs a positive semidefinite curvature; "
                             "use curvature='ggn', or method='arnoldi' (which inverts the "
                             "negative eigenvalues too)") from None
        Bm = sla.solve_triangular(Lc, Yn.T, lower=True).T
        U, s, _ = np.linalg.svd(Bm, full_matrices=False)
        self.U = U
        self.eigenvalues = np.maximum(s * s - nu, 0.0)

    def solve(self, B):
        B = np.asarray(B, dtype=np.float64)
        UB = self.U.T @ B
        X = self.U @ (_pinv_diag(self.eigenvalues, self.damping, self.dtype)[:, None] * UB)
        if self.damping > 0:
            X += (B - self.U @ UB) / self.damping
        return _project_out(self.null, X)

    def preconditioner(self):
        """``M⁻¹ = (λ̂_r + δ) U (Λ̂ + δ)⁻¹ Uᵀ + (I − UUᵀ)``, with ``λ̂_r`` the smallest
        eigenvalue the pseudo-inverse keeps; numerically null ones (a rank above the
        curvature's, at ``δ = 0``) get weight 1, like the complement. (With ``λ̂_r = 0``
        itself the scale was 0: ``M⁻¹ = I − UUᵀ`` annihilated the curvature's range and CG
        did not converge.)"""
        U, lam, d = self.U, self.eigenvalues, self.damping
        inv = _pinv_diag(lam, d, self.dtype)
        kept = inv > 0
        top = float(np.min(lam[kept] + d)) if np.any(kept) else 1.0
        w = np.where(kept, top * inv, 1.0)
        P = U.shape[0]

        def mm(V):
            V = np.asarray(V, dtype=np.float64).reshape(P, -1)
            UV = U.T @ V
            return U @ (w[:, None] * UV) + V - U @ UV

        return LinearOperator((P, P), matvec=lambda v: mm(v)[:, 0], matmat=mm,
                              dtype=np.float64)


class KFAC(Solver):
    """The damped inverse of type-2 K-FAC (``method="kfac"``) or EK-FAC (``"ekfac"``) with
    the L2 penalty and ``δ`` as damping (:class:`fastcurv.KFACOperator`): a block-diagonal
    Kronecker approximation of the GGN, for MLPs and GLMs. Options: ``fisher`` ("type2" or
    "mc"), ``seed`` and ``mc_samples`` (for "mc"), as :class:`fastcurv.KFACOperator`."""

    def __init__(self, p, theta, damping, curvature, options, ekfac=False):
        super().__init__(p, theta, damping, curvature)
        from ..operators import EKFACOperator, KFACOperator

        fisher = options.pop("fisher", "type2")
        Op = EKFACOperator if ekfac else KFACOperator
        op = Op(p, theta, fisher=fisher, damping=p.l2 + damping, seed=options.pop("seed", None),
                mc_samples=options.pop("mc_samples", 1))
        self.operator = op
        self._inv = op.inverse()

    def solve(self, B):
        B = np.asarray(B, dtype=np.float64)
        out = np.asarray(self._inv.matmat(B.astype(self._inv.dtype)), dtype=np.float64)
        return _project_out(self.null, out)


METHODS = {"direct": Direct, "cg": BlockCG, "lissa": LiSSA, "arnoldi": Arnoldi,
           "nystrom": Nystrom, "kfac": KFAC,
           "ekfac": lambda *a: KFAC(*a, ekfac=True)}
