"""Truncated Newton methods: line-search Newton-CG and trust-region Newton (Steihaug-Toint CG)."""

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg

from . import _blas
from ._nullspace import null_rows, project_out
from ._validation import as_flag, as_float_scalar, as_int, problem_theta
from .kernels.validate import all_finite
from .operators import GGNOperator, HessianOperator

#: CG stops at the latest when its residual norm is this fraction of gtol (a residual below
#: gtol is all the next gradient needs): on the multinomial benchmark fit the last Newton
#: system took 13 CG iterations to cut max|grad| from 1.7e-7 to 7e-11 where 1e-8 was asked
OVERSOLVE_GUARD = 0.5
#: plain CG stops as broken down along a direction whose Rayleigh quotient is at most this
#: fraction of the largest met in the same solve (64 float64 ulps: rounding, not curvature)
ZERO_CURVATURE = 64 * np.finfo(np.float64).eps
#: Armijo sufficient-decrease constant (Nocedal & Wright, eq. 3.4)
ARMIJO_C1 = 1e-4
#: at most this many step halvings in the backtracking line search
MAX_BACKTRACKS = 40
#: trust-region acceptance threshold and radius update thresholds (N&W Algorithm 4.1)
TR_ETA, TR_SHRINK_BELOW, TR_GROW_ABOVE = 1e-4, 0.25, 0.75
#: the line search stops as stalled after this many accepted steps in a row that change the
#: loss by at most NOISE_REL * eps * max(1, |F|) and do not lower the best max|grad| so far
#: (a float32 fit asked for gtol = 1e-12 cycled through four iterates at max|grad| ~1e-9 for
#: all 100 iterations). Not 5: a float32 Gauss-Newton fit of an MLP, converging linearly with
#: a max|grad| that does not fall at every step, stopped 100 times above its float32 limit
NOISE_STEPS = 20
NOISE_REL = 10.0
#: the trust region stops when a rejected step is shorter than TR_ROUNDING * eps * ‖θ‖ (a
#: step that changes θ by about that many units of its rounding)
TR_ROUNDING = 10.0


@dataclass
class NewtonResult:
    """Outcome of :func:`newton_cg`.

    Attributes
    ----------
    x : (P,) final parameters; fun : objective there; grad_norm : max |gradient| there
    n_iter : Newton iterations (accepted or rejected steps); n_hvp : curvature-vector products;
    n_cg : CG iterations in all; success : whether ``grad_norm <= gtol``; message : what
    happened, in words, and what to try when it failed; history : one dict per iteration
    (``iter, fun, grad_norm, n_cg, step, time``).
    """

    x: np.ndarray
    fun: float
    grad_norm: float
    n_iter: int
    n_hvp: int
    n_cg: int
    success: bool
    message: str
    history: list = field(default_factory=list, repr=False)

    def __repr__(self):
        return (f"NewtonResult(success={self.success}, fun={self.fun:.10g}, "
                f"grad_norm={self.grad_norm:.3g}, n_iter={self.n_iter}, n_cg={self.n_cg}, "
                f"n_hvp={self.n_hvp}, message={self.message!r})")


class _CGBreakdown(Exception):
    """CG produced a non-finite direction (its curvature ``dᵀAd`` was 0 or not finite)."""


class _Counted(LinearOperator):
    """Wraps an operator and counts the vectors it is applied to; a non-finite vector (CG
    divided by a zero or non-finite curvature) raises :class:`_CGBreakdown`.

    With ``zero_curvature=True`` (plain CG of the line search) a direction ``v`` whose
    curvature is rounding also raises it: ``|vᵀAv| <= ZERO_CURVATURE · ρ_max · vᵀv``, with
    ``ρ_max`` the largest Rayleigh quotient met in this solve. There CG would divide rounding
    noise by rounding noise: on a saturated logistic fit whose intercept has exactly zero
    curvature, one machine's BLAS left that direction's other entries at exactly 0 (so CG
    divided by 0), another's at 5e-17, and CG stepped 1e32 along the intercept."""

    def __init__(self, op, zero_curvature=False):
        self.op = op
        self.count = 0
        self._zero_curvature = zero_curvature
        self._rho_max = 0.0
        self.ratio = None  # set where a rounding-level curvature stopped CG
        super().__init__(dtype=op.dtype, shape=op.shape)

    def _matvec(self, v):
        if not all_finite(np.ravel(v)):
            raise _CGBreakdown
        self.count += 1
        Av = self.op.matvec(v)
        if self._zero_curvature:
            self._check_curvature(np.ravel(v), np.ravel(Av))
        return Av

    def _check_curvature(self, v, Av):
        with np.errstate(over="ignore", invalid="ignore"):
            vv = float(v @ v)
            rho = float(v @ Av) / vv if vv > 0 else np.nan
        if not np.isfinite(rho):
            return  # a zero or overflowing direction: the finiteness check above decides
        self._rho_max = max(self._rho_max, rho)
        if abs(rho) <= ZERO_CURVATURE * self._rho_max:
            # (none where every curvature met was exactly 0: the zero-curvature message)
            self.ratio = abs(rho) / self._rho_max if self._rho_max > 0 else None
            raise _CGBreakdown

    def _matmat(self, V):
        self.count += V.shape[1]
        return self.op.matmat(V)

    def _adjoint(self):
        return self


class _BlasThreads:
    """BLAS thread limits for the solver.

    SciPy's CG takes its dot products in BLAS; on long vectors (P > ~10,000) OpenBLAS runs
    them on all cores and its threads keep spinning afterwards, slowing the Numba parallel
    curvature products that follow by 1.2-1.7x (measured on the CSR benchmark). Those dot
    products are O(P) and gain nothing from threads, so the solver runs with one BLAS thread
    (:meth:`single`). The dense factor of ``preconditioner="cholesky"`` and the K-FAC factors
    are BLAS-3 work that does gain from threads: they are built under :meth:`full`, with the
    thread counts found on entry.

    NumPy's and SciPy's own OpenBLAS are switched through :mod:`fastcurv._blas`, counted with
    every other call that needs one thread (an MLP's products, another solver in another
    Python thread): the last to end restores the count, and :meth:`full` lifts the limit only
    where this solver is its only user. Any other BLAS is limited with threadpoolctl where it
    is installed.
    """

    def __init__(self):
        self._token = 0
        self._others = None  # threadpoolctl's controller of the BLAS libraries _blas leaves
        self._n_others = None
        self._active = False

    @contextlib.contextmanager
    def single(self):
        """One BLAS thread for the duration of the ``with`` block."""
        self._token = _blas.one_thread(_blas.SOLVER)
        self._active = True
        try:
            with self._limit_others():
                yield
        finally:
            self._active = False
            _blas.restore(self._token)
            self._token = 0

    def _limit_others(self):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: scikit-learn users have it
            return contextlib.nullcontext()
        ctl = ThreadpoolController().select(user_api="blas")
        known = _blas.controlled_paths()
        others = [lib.filepath for lib in ctl.lib_controllers if lib.filepath not in known]
        if not others:
            return contextlib.nullcontext()
        self._others = ctl.select(filepath=others)
        self._n_others = max(lib.num_threads for lib in self._others.lib_controllers)
        return self._others.limit(limits=1)

    @contextlib.contextmanager
    def full(self):
        """The thread counts found on entry of :meth:`single`, for BLAS-3 work."""
        with _blas.lifted(self._token):
            if self._active and self._others is not None and self._n_others:
                with self._others.limit(limits=self._n_others):
                    yield
            else:
                yield


def _in_noise(f, f_new, model_decrease, gmax, g_new, dtype):
    """True if a step's predicted decrease is below the rounding of ``F`` and the step does not
    raise ``F`` beyond that rounding but lowers max|grad|: near the optimum function values
    stop telling steps apart, so the gradient decides (as in Nocedal & Wright, section 3.5)."""
    noise = 64.0 * np.finfo(dtype).eps * max(1.0, abs(f))
    if not np.isfinite(f_new) or abs(model_decrease) > noise or f_new > f + noise:
        return False
    return float(np.max(np.abs(g_new))) < gmax


def _breakdown_message(it, theta, p, method, damping, ratio=None, preconditioned=True):
    """CG met zero or non-finite curvature: say where, and what fixes it for this fit (an
    L2 penalty only where there is none: it never reaches an intercept or output bias).

    ``ratio``: the breakdown was a finite curvature at rounding level, this fraction of the
    largest CG met (:class:`_Counted`). That is also what an ill-conditioned problem gives
    (a feature scaled by 1e8, an L2 penalty of 1e16 next to an unpenalized intercept: the
    message blamed large parameters and a missing penalty), so both causes are named."""
    fixes = []
    if method == "line-search":
        fixes.append("use method='trust-region', which steps through zero curvature")
    if ratio is not None and not preconditioned:
        fixes.append("use preconditioner='diag'")
    if ratio is not None:
        fixes.append("standardize the features")
    fixes.append("start from smaller parameters")
    if damping == 0:
        fixes.append("pass damping > 0")
    if getattr(p, "l2", None) == 0:
        fixes.append("add an L2 penalty")
    where = (f"at parameters as large as max|theta| = {np.max(np.abs(theta)):.3g}; an "
             "intercept or bias gets no curvature from the L2 penalty")
    if ratio is None:
        what = ("the curvature along its directions is zero or not finite (it underflows or "
                f"overflows {where})")
    else:
        what = (f"the curvature along one of its directions is {ratio:.1e} of the largest it "
                f"met, below what the products resolve: it vanishes there (saturated "
                f"predictions {where}), or the curvature is too ill-conditioned for CG "
                "(features on very different scales, or an L2 penalty far above the data's "
                "curvature)")
    return f"CG broke down at iteration {it}: {what}. {fixes[0][0].upper() + '; '.join(fixes)[1:]}."


def _no_decrease_message(it, gmax, slope, f, p, damping):
    """The line search backtracked to nothing: rounding, or what to try (the fixes the fit
    does not already use: an L2 penalty was suggested with one set)."""
    message = (f"The line search found no decrease along the Newton direction at iteration "
               f"{it} (max|grad| = {gmax:.3e}). ")
    if abs(slope) <= 100 * np.finfo(p.dtype).eps * max(1.0, abs(f)):
        return message + (f"The remaining decrease is below {np.dtype(p.dtype).name} rounding: "
                          "loosen gtol (about 1e-4 for float32) or use float64.")
    fixes = ["method='trust-region'"]
    if damping == 0:
        fixes.append("damping > 0")
    if getattr(p, "l2", None) == 0:
        fixes.append("an L2 penalty")
    said = fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + " or " + fixes[-1]
    return f"{message}Try {said}."


def _stalled_message(it, gmax, dtype):
    """The step was accepted but rounds to no change of θ: every later step would too."""
    name = np.dtype(dtype).name
    return (f"The Newton step no longer changes the parameters in {name} at iteration {it} "
            f"(max|grad| = {gmax:.3e}): the remaining decrease is below {name} rounding; "
            + ("loosen gtol (about 1e-4 for float32) or use float64." if name == "float32"
               else "loosen gtol."))


class _NoiseStall:
    """Counts accepted line-search steps lost in rounding (:data:`NOISE_STEPS`)."""

    def __init__(self, gmax, dtype):
        self.best = gmax
        self.eps = float(np.finfo(dtype).eps)
        self.name = np.dtype(dtype).name
        self.count = 0

    def after(self, f_old, f_new, gmax):
        """Whether the fit is stalled after a step from loss ``f_old`` to ``f_new``."""
        if gmax < self.best:
            self.best, self.count = gmax, 0
        elif abs(f_new - f_old) <= NOISE_REL * self.eps * max(1.0, abs(f_old)):
            self.count += 1
        else:
            self.count = 0
        return self.count >= NOISE_STEPS

    def message(self, it, gmax):
        return (f"No further decrease is measurable in {self.name} at iteration {it}: the last "
                f"{NOISE_STEPS} steps changed the loss by less than its rounding and none "
                f"lowered max|grad| below {self.best:.3e} (now {gmax:.3e}); loosen gtol"
                + (" or use float64 data." if self.name == "float32" else "."))


def _trial_value_and_grad(p, x):
    """``p.value_and_grad(x)`` at a trial point, or ``(inf, None)`` where the objective
    overflows there (a step too long: the line search backtracks, the trust region shrinks)."""
    try:
        return p.value_and_grad(x)
    except FloatingPointError:
        return np.inf, None


def _diag_preconditioner(p, theta, curvature, damping, mix):
    """``M⁻¹ = 1 / ((1 - mix) mean|D| + mix |D|)`` from the exact curvature diagonal ``D``.

    ``|D|``: an indefinite Hessian (an MLP's away from a minimum) has negative diagonal
    entries. Clamped to a tiny floor, they let the trust region's M-norm leave those
    coordinates almost unbounded: Steihaug's steps reached 1e6-1e7 and were rejected a dozen
    times in a row (max|grad| 0.41 after 60 iterations where no preconditioner reached 7e-3).
    For a positive semidefinite curvature (GLMs, every GGN) nothing changes.

    Entries below ``1e-12 mean`` are raised to it. A saturated unit's unpenalized bias has a
    curvature ~1e-26 of the mean: without the floor (tried) the line search's Jacobi step
    threw such biases to 1e31, killing the units, and the fit ended 1.6% above the optimum
    (a review). The floor also means column scales spread beyond ~1e6 are not undone (a
    logistic fit on columns scaled 1e-6 ... 1e6 ran out of iterations): standardize the
    features."""
    D = np.abs(np.asarray(p.hessian_diag(theta) if curvature == "hessian"
                          else p.ggn_diag(theta), dtype=np.float64) + damping)
    mean = float(np.mean(D)) or 1.0
    Dm = (1.0 - mix) * mean + mix * D
    return np.where(Dm > 1e-12 * mean, Dm, 1e-12 * mean)


def _make_preconditioner(preconditioner, p, theta, curvature, damping, mix):
    """(diagonal vector or None, LinearOperator or None) for the chosen preconditioner."""
    if preconditioner is None:
        return None, None
    if isinstance(preconditioner, str):
        if preconditioner == "diag":
            Dm = _diag_preconditioner(p, theta, curvature, damping, mix)
            inv = (1.0 / Dm).astype(p.dtype)
            P = p.n_params
            op = LinearOperator((P, P), matvec=lambda v: inv * np.ravel(v),
                                matmat=lambda V: inv[:, None] * V, dtype=p.dtype)
            return Dm, op
        if preconditioner == "kfac":
            return None, _kfac_preconditioner(p, theta, damping)
        raise ValueError("preconditioner must be None, 'auto', 'diag', 'cholesky' or 'kfac', "
                         f"got {preconditioner!r}")
    if isinstance(preconditioner, LinearOperator) or hasattr(preconditioner, "matvec"):
        return None, preconditioner
    raise TypeError("preconditioner must be None, 'auto', 'diag', 'cholesky', 'kfac' or a "
                    "LinearOperator applying the inverse preconditioner")


#: relative floor of the K-FAC preconditioner's damping (a positive definite M for CG)
KFAC_FLOOR = 1e-8


def _kfac_preconditioner(p, theta, damping):
    """``M⁻¹ = (⊕ A ⊗ G + (λ + δ + ε) I)⁻¹``: the exactly damped inverse of type-2 K-FAC
    (:class:`fastcurv.KFACOperator`), with the L2 penalty ``λ`` and the damping ``δ`` added
    to every coordinate and ``ε = f max_l(‖A_l‖ ‖G_l‖)`` so that ``M`` stays positive
    definite where the factors are singular: ``f = max(1e-8, 2 s ε_dtype)`` with ``s`` the
    largest factor size, above the level below which the inverse drops directions as
    rounding (:meth:`KFACOperator.inverse`). (With 1e-8 alone, a float32 problem's inverse
    dropped 145 of 151 directions of a correlated logistic fit: M⁻¹ was singular and the
    fit stopped 1.8e-2 above the optimum.) Rebuilt at every Newton iterate (one streaming
    pass with ``K`` backward passes; the first layer's ``A`` is cached)."""
    from .operators.kfac import KFACOperator

    op = KFACOperator(p, theta, fisher="type2")
    eig = op.eigen()
    scale = max(float(la[-1] * lg[-1]) for la, _qa, lg, _qg in eig)
    size = max(max(la.size, lg.size) for la, _qa, lg, _qg in eig)
    floor = max(KFAC_FLOOR, 2.0 * size * float(np.finfo(p.dtype).eps))
    op.damping = float(getattr(p, "l2", 0.0)) + damping + floor * (scale or 1.0)
    return op.inverse()


#: largest parameter count for preconditioner="cholesky" (a dense P x P factor)
MAX_CHOLESKY_PARAMS = 4096
#: rebuild the Cholesky preconditioner when a Newton step needed more CG iterations than this
CHOLESKY_REFRESH_CG = 8


def _cholesky_preconditioner(p, theta, curvature, damping):
    """``M⁻¹ = (C(θ) + δI + εI)⁻¹`` from the Cholesky factor of the dense curvature at ``θ``.

    Built at one iterate and kept while CG converges fast with it (the curvature changes
    slowly along a Newton path), so its cost (one pass over X with BLAS-3 work, n P² flops,
    plus P³/3) is paid once or a few times per fit. ``ε = max(1e-10, 16 eps) mean|diag|``
    (``eps`` of the problem's dtype: a float32 problem's dense curvature comes rounded to
    float32) keeps it positive definite on exact null directions (multinomial intercepts,
    collinear columns); steps may then move along such a direction, which leaves the
    objective and every prediction unchanged. An indefinite curvature (an MLP's Hessian away
    from a minimum) raises ``numpy.linalg.LinAlgError`` saying so.
    """
    from scipy.linalg import cho_factor, cho_solve

    P = p.n_params
    if P > MAX_CHOLESKY_PARAMS:
        raise ValueError(f"preconditioner='cholesky' factors a dense {P}x{P} matrix; it is meant "
                         f"for up to {MAX_CHOLESKY_PARAMS} parameters: use 'diag' here")
    # a dense GGN is the problem's ``ggn`` where it has one; for GLMs it equals the Hessian
    dense = p.ggn if curvature == "ggn" and hasattr(p, "ggn") else p.hessian
    # positive semidefinite by construction (a GGN, or a GLM's Hessian): a failed factor is
    # rounding (a float32 MLP's dense GGN had an eigenvalue of -8.9e-8 along the softmax's
    # null direction against a shift of 6.8e-8), so the shift grows tenfold, up to 1000x
    psd = curvature == "ggn" or not hasattr(p, "ggn")
    rel = max(1e-10, 16.0 * float(np.finfo(p.dtype).eps))
    factor = None
    for grow in (1.0, 10.0, 100.0, 1000.0) if psd else (1.0,):
        H = np.asarray(dense(theta), dtype=np.float64)
        eps = grow * rel * float(np.mean(np.abs(np.diag(H)))) or 1e-12
        H[np.diag_indices(P)] += damping + eps
        try:
            factor = cho_factor(H, lower=True, overwrite_a=True, check_finite=False)
            break
        except np.linalg.LinAlgError:
            pass
    if factor is None:
        raise np.linalg.LinAlgError(
            f"preconditioner='cholesky': the dense {curvature} at this iterate is not positive "
            "definite (an indefinite Hessian, as an MLP's away from a minimum, or a singular "
            "one beyond rounding); use curvature='ggn', damping > 0, an L2 penalty, or "
            "preconditioner=None or 'diag'")
    dtype = p.dtype
    # a softmax model's exact null directions (the common shift of the K outputs): εI alone
    # makes M⁻¹ 1/ε times larger there than elsewhere, so truncated CG stepped far along them.
    # That leaves F unchanged in exact arithmetic but not in float32: output biases shifted
    # by thousands round every logit (a float32 MLP fit crawled at step sizes of 1e-4 and
    # stopped with max|grad| 7e-4; 2e-5 without the preconditioner). M⁻¹ = Π (C + εI)⁻¹ Π
    # instead: the gradient has no part along them, so CG stays off them.
    null = null_rows(p)

    def solve(V):
        V = np.asarray(V, np.float64)
        out = cho_solve(factor, V.reshape(P, -1))
        return project_out(null, out).reshape(V.shape).astype(dtype)

    return LinearOperator((P, P), dtype=dtype, matvec=solve, matmat=solve)


#: preconditioner="auto": largest parameter count it considers for the Cholesky switch, and
#: the factor from the flop count of a preconditioner's build (at the BLAS syrk rate measured
#: on this machine) to the seconds the build takes: the build also scales the rows and
#: mirrors the triangle (measured: a 100,000 x 300 logistic build predicted at 0.15-0.16 s by
#: multiply-adds and rate alone took 0.22-0.23 s)
AUTO_MAX_PARAMS = 1024
AUTO_BUILD_OVERHEAD = 1.5
#: switch once the CG time reaches this fraction of the estimated build time (0.5: after a
#: step that needed more than CHOLESKY_REFRESH_CG iterations the following solves are
#: tighter, the forcing term shrinking with the gradient, so the CG still to come costs at
#: least what has been spent; on the correlated 100,000 x 300 problem the late steps took
#: 15, 20, 28, 30, 37 iterations)
AUTO_BUY_FRACTION = 0.5
#: preconditioner="auto" considers K-FAC for problems whose first-layer input factor has at
#: most this many rows (GLMs: d + 1): its eigendecomposition costs ~10 (d+1)³ multiply-adds at
#: the syrk rate (measured 7-12 for d + 1 = 301, 1001, 2049; 2049 took 11 s)
AUTO_MAX_KFAC_INPUTS = 4096
#: K-FAC comes before the Cholesky factor in "auto"'s ladder only when it is at least this
#: many times cheaper to build (multinomial GLMs: ~K² times; for one output the two cost the
#: same Gram pass, and the Cholesky factor of the weighted Hessian is the better one)
AUTO_KFAC_DISCOUNT = 4.0

_SYRK_RATE = None


def _syrk_rate():
    """Multiply-adds per second of BLAS ``dsyrk`` here (best of three on a 2048 x 256 block,
    measured once per process, with the BLAS threads in force)."""
    global _SYRK_RATE
    if _SYRK_RATE is None:
        from scipy.linalg.blas import dsyrk

        A = np.asfortranarray(np.random.default_rng(0).standard_normal((256, 2048)))
        dsyrk(1.0, A)
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            dsyrk(1.0, A)
            best = min(best, time.perf_counter() - t)
        _SYRK_RATE = 2048 * 256 * 257 / 2 / max(best, 1e-9)
    return _SYRK_RATE


def _build_macs(p, curvature, kind):
    """Multiply-adds of building preconditioner ``kind`` on ``p`` (GLMs), or None where ``p``
    has no such count or ``kind`` is not offered for a problem of its size."""
    if kind == "cholesky":
        if p.n_params > AUTO_MAX_PARAMS or not hasattr(p, "_dense_curvature_macs"):
            return None
        P = float(p.n_params)
        return float(p._dense_curvature_macs(curvature)) + P ** 3 / 6.0  # Gram + Cholesky
    if not hasattr(p, "_kfac_build_macs"):
        return None
    return p._kfac_build_macs(AUTO_MAX_KFAC_INPUTS)


class _Auto:
    """``preconditioner="auto"``: plain CG, then better preconditioners bought in turn by a
    ski-rental rule (rent until the rent paid reaches the price, then buy).

    The ladder holds at most two rungs, in order: ``"kfac"`` (GLMs with at most
    ``AUTO_MAX_KFAC_INPUTS`` features, when it is ``AUTO_KFAC_DISCOUNT`` times cheaper than
    the Cholesky factor, as for the multinomial family, or that one is not offered: more than
    ``AUTO_MAX_PARAMS`` parameters), then ``"cholesky"`` (GLMs with at most
    ``AUTO_MAX_PARAMS`` parameters). A rung is armed by the
    first Newton step since the last purchase that needs more than ``CHOLESKY_REFRESH_CG`` CG
    iterations, and bought once the CG time spent since then reaches ``AUTO_BUY_FRACTION`` of
    its estimated build time: the rung's multiply-adds (``_build_macs``) at the measured BLAS
    rate, times ``AUTO_BUILD_OVERHEAD``. Whatever the remaining CG work turns out to be, each
    purchase costs the fit a small multiple of what the better of "keep" and "buy" would have
    (at most 2 when buying at the full price, 3 at half of it). A fit whose steps all
    converge in few iterations never estimates or builds anything. Timing samples of the real
    build was tried first: to be accurate within 2x on a noisy machine they cost as much as
    the build. Problems without these counts (MLPs) get plain CG; if a build fails (an
    indefinite Hessian), the fit keeps the preconditioner it had and buys nothing more.
    """

    def __init__(self, p, curvature, blas):
        self.p, self.curvature, self.blas = p, curvature, blas
        self.current = None  # the preconditioner in use
        self.previous = None
        chol = _build_macs(p, curvature, "cholesky")
        kfac = _build_macs(p, curvature, "kfac")
        self.ladder = []
        if kfac is not None and (chol is None or AUTO_KFAC_DISCOUNT * kfac <= chol):
            self.ladder.append("kfac")
        if chol is not None:
            self.ladder.append("cholesky")
        self._reset()

    def _reset(self):
        self.t_cg = 0.0
        self.hard = False
        self.t_build = None

    @property
    def eligible(self):
        """Whether anything is left to buy."""
        return bool(self.ladder)

    def _estimate(self):
        macs = _build_macs(self.p, self.curvature, self.ladder[0])
        self.t_build = AUTO_BUILD_OVERHEAD * macs / _syrk_rate()

    def after_step(self, seconds, cg_iters):
        """Add one step's CG time; buy the next rung when it reaches ``AUTO_BUY_FRACTION`` of
        the rung's estimated build time. A rung is only estimated (and bought) once a step
        needed more than ``CHOLESKY_REFRESH_CG`` CG iterations: on well-conditioned problems
        CG is cheap."""
        if not self.ladder:
            return
        self.t_cg += seconds
        self.hard = self.hard or cg_iters > CHOLESKY_REFRESH_CG
        if not self.hard:
            return
        if self.t_build is None:
            with self.blas.full():
                self._estimate()
        if self.t_cg >= AUTO_BUY_FRACTION * self.t_build:
            self.previous, self.current = self.current, self.ladder.pop(0)
            self._reset()

    def give_up(self):
        """The current rung could not be built: back to the previous one, buy nothing more."""
        self.current = self.previous
        self.ladder = []


def _steihaug(A, g, radius, rtol, maxiter, Dm):
    """Steihaug-Toint truncated CG for ``min g's + s'As/2`` s.t. ``||s||_M <= radius``.

    Nocedal & Wright, Algorithm 7.2, preconditioned with ``M = diag(Dm)`` (the trust region is
    measured in the M-norm, Conn, Gould & Toint 2000, Alg. 7.5.1). Returns the step, ``A s``,
    the number of CG iterations and how it stopped ('converged', 'boundary', 'negative
    curvature', 'max iterations').
    """
    Mw = np.ones_like(g) if Dm is None else Dm
    s = np.zeros_like(g)
    As = np.zeros_like(g)
    r = g.copy()
    y = r / Mw
    d = -y
    ry = float(r @ y)
    gnorm = float(np.linalg.norm(g))
    if gnorm == 0.0:
        return s, As, 0, "converged"

    def to_boundary(s, d):
        """``τ >= 0`` with ``‖s + τ d‖_M = radius``, in units where ``s``, ``d`` and the
        radius are O(1): ``τ = (radius / ‖d‖_M) t`` with ``t² + 2 b t + c = 0``, ``b =
        ⟨s, d⟩_M / (radius ‖d‖_M)``, ``c = ‖s‖²_M / radius² − 1 <= 0`` (the products
        themselves overflowed from gradients of ~1e77 on: an infinite step)."""
        dn = d / float(np.max(np.abs(d)))
        sn = s / radius
        na = float(np.sqrt(dn @ (Mw * dn)))
        b = float(sn @ (Mw * dn)) / na
        c = float(sn @ (Mw * sn)) - 1.0
        root = np.sqrt(max(b * b - c, 0.0))
        t = -c / (b + root) if b > 0.0 else root - b  # the positive root, without cancellation
        return radius * t / (na * float(np.max(np.abs(d))))

    for it in range(1, maxiter + 1):
        Ad = np.asarray(A.matvec(d), dtype=np.float64)
        dAd = float(d @ Ad)
        # negative, zero or rounding-level curvature: ``dᵀAd <= 1e-14 min(‖d‖²_M,
        # ‖d‖_M ‖Ad‖_{M⁻¹})``. The first bound alone is absolute in the curvature's units (A =
        # 5e-15 I counted as negative curvature); the second is relative (Cauchy-Schwarz:
        # ``|dᵀAd| <= ‖d‖_M ‖Ad‖_{M⁻¹}``) and only lowers it where A acts weakly on d.
        # ‖Ad‖_{M⁻¹} from Ad / max|Ad|: squared directly, an Ad below 1e-154 gave 0 and a
        # subnormal dᵀAd through. (Tried and dropped, see CHANGELOG: the first bound times
        # max(1, rᵀM⁻¹r); a bound relative to the largest curvature met.)
        dMd = float(d @ (Mw * d))
        big = float(np.max(np.abs(Ad)))
        u = Ad / big if big > 0.0 else Ad
        adn = big * math.sqrt(float(u @ (u / Mw)))
        if dAd <= 1e-14 * min(dMd, math.sqrt(dMd) * adn):
            tau = to_boundary(s, d)
            return s + tau * d, As + tau * Ad, it, "negative curvature"
        alpha = ry / dAd
        s_new = s + alpha * d
        if not math.isfinite(alpha) or float(s_new @ (Mw * s_new)) >= radius * radius:
            tau = to_boundary(s, d)
            return s + tau * d, As + tau * Ad, it, "boundary"
        s = s_new
        As = As + alpha * Ad
        r = r + alpha * Ad
        if float(np.linalg.norm(r)) <= rtol * gnorm:
            return s, As, it, "converged"
        y = r / Mw
        ry_new = float(r @ y)
        d = -y + (ry_new / ry) * d
        ry = ry_new
    return s, As, maxiter, "max iterations"


def newton_cg(p, theta0=None, *, gtol=1e-8, max_iter=100, method="line-search",
              curvature="hessian", preconditioner=None, damping=0.0, callback=None,
              progress=False, cg_max_iter=None, precond_mix=1.0):
    r"""Minimize a problem's objective by truncated (inexact) Newton with conjugate gradients.

    ``method="line-search"``: Newton-CG with a backtracking Armijo line search (Nocedal &
    Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.1 with Algorithm 3.1). The Newton
    system ``(H + δI) d = -g`` is solved by SciPy's ``scipy.sparse.linalg.cg`` on a
    :class:`~fastcurv.HessianOperator` (or :class:`~fastcurv.GGNOperator`) with the forcing
    sequence ``rtol = min(0.5, sqrt(||g||))`` (N&W eq. 7.3, superlinear convergence), but no
    tighter than ``||r|| <= gtol / 2`` (the next gradient is the CG residual plus a term
    quadratic in the step, so a smaller residual is wasted on the last step). It needs
    positive definite curvature (any GLM with ``l2 > 0`` or a damped GGN). On problems that
    provide ``value_along`` (GLMs) a line-search trial costs O(n), not a pass over ``X``.

    ``method="trust-region"``: trust-region Newton with Steihaug-Toint CG (N&W Algorithm 7.2
    inside Algorithm 4.1), which stops CG at the trust-region boundary or at a direction of
    zero or negative curvature, so it also works with indefinite Hessians. Its first radius
    is ``max(‖g‖, 1e-3)`` and a radius at most doubles per iteration: where the Newton step
    is many orders of magnitude longer than the gradient it needs many iterations (least
    squares on features scaled by 1e-7: 51, the line search 5), and where a step of the
    first radius lowers the loss by less than its rounding (features scaled by 1e-9, a loss
    of 1e18) it stops ("the trust region shrank"): standardize the features, or use
    ``preconditioner="diag"`` or the line search.

    Parameters
    ----------
    p : problem (fastcurv.GLM or any object with the problem API)
    theta0 : (P,) starting point (warm start); default ``p.init()``
    gtol : stop when ``max |∇F(θ)| <= gtol``, the gradient as computed in the problem's
        dtype. In float32 it carries a rounding error of a few float32 eps (1.2e-7) times
        the size of its terms (``(1/W) Σ_i w_i |ℓ'_i x_ij|``), so a gtol below that is met by
        chance (a review: features of size 1e4, gtol 3e-5, reported 1.85e-5 where the float64
        gradient at the result was 4.1e-5); about 1e-4 suits float32 fits on standardized
        features, float64 data anything above ~1e-12 of the terms
    max_iter : maximum number of Newton iterations
    method : {"line-search", "trust-region"}
    curvature : {"hessian", "ggn"}
    preconditioner : None, "auto", "diag", "cholesky", "kfac" or a LinearOperator applying ``M⁻¹``
        ``"auto"`` (line search) runs plain CG and, once a Newton step has needed more than 8
        CG iterations, buys a better preconditioner when the time spent in CG reaches half the
        estimated cost of building it (a ski-rental rule: a small multiple of the cost of the
        better fixed choice, whatever the conditioning): ``"cholesky"`` for GLMs with up to
        1,024 parameters; ``"kfac"`` (GLMs with up to 4,095 features) where the Cholesky
        factor is not offered (more parameters) or costs 4 times more to build (multinomial:
        about K² times), then ``"cholesky"`` if steps stay slow and it is offered. On well-
        conditioned problems it never switches; MLPs and the trust-region method get plain
        CG. (Measured: correlated 10-class 100,000 x 300, 221 CG iterations plain, 29 with
        K-FAC; binary 20,000 x 1,500, 563 and 19.)
        ``"cholesky"`` (line search, up to 4096 parameters) factors the dense curvature at one
        iterate and keeps it as the preconditioner while CG converges in at most 8 iterations
        per step, refreshing it otherwise: on ill-conditioned data (correlated features) it
        cuts CG iterations several-fold for the price of a few ``n P²`` BLAS passes.
        ``"diag"`` uses the exact curvature diagonal ``D`` at each iterate, mixed as
        ``(1 - precond_mix) mean|D| + precond_mix |D|`` (``|D|``: an indefinite Hessian's
        negative entries count by their size; ``precond_mix=1`` is Jacobi, the
        default: on logistic, Poisson and multinomial problems with badly scaled or sparse
        binary columns, mixes 0.5 / 0.9 / 0.99 / 1 took 645 / 293 / 133 / 17, 160 / 48 / 21 / 17
        and 899 / 439 / 325 / 267 CG iterations, so pure Jacobi won; on uncentered features
        every diagonal preconditioner lost to none, 185 vs 23 CG iterations).
        ``"kfac"`` applies the exactly damped inverse of type-2 K-FAC
        (:class:`fastcurv.KFACOperator`) with ``λ + δ`` (and a 1e-8 relative floor) as its
        damping, rebuilt at every iterate; it captures the correlations between a layer's
        inputs (``A``) and between its outputs (``G``), which a diagonal cannot.
    damping : δ ≥ 0 added to the curvature
    callback : called as ``callback(theta, info)`` once at the start (iteration 0) and after
        each iteration (info: the history row)
    progress : print one line per iteration (iteration, loss, max|grad|, CG iterations, step,
        elapsed time)
    cg_max_iter : CG iterations per Newton step (default ``min(P, 250)``)

    Returns
    -------
    NewtonResult

    Notes
    -----
    These problems without a finite minimizer stop with ``success=False`` and a message
    saying why, instead of running until ``gtol`` happens to stop a parameter that is running
    off: an unpenalized intercept (GLM) or output bias (MLP) whose targets lie on one side of
    their range only (logistic all 0 or all 1, poisson all 0, a multinomial class without
    samples; stopped before the first step), and separable classes with ``l2 = 0`` (stopped
    once the iterate classifies every sample correctly: for an MLP, scaling its last layer
    then lowers every loss; checked with one forward pass per iteration). Others are not
    detected and end where the gradient falls below ``gtol``, reported as converged:
    quasi-separable classes with ``l2 = 0`` (the infimum is approached along a direction that
    also misclassifies a few tied samples; different runs stop at objective values 1e-6
    apart) and Poisson counts all 0 without an intercept (the weights run off until
    ``e^{x·θ}`` is below ``gtol``). An L2 penalty gives every problem a finite minimizer.

    BLAS runs single-threaded during the solve (CG's O(P) dot products gain nothing from
    threads, and spinning BLAS threads slow the parallel curvature kernels that follow):
    NumPy's and SciPy's OpenBLAS always, any other BLAS where threadpoolctl is installed. The
    thread counts come back when the solve ends, also when solves and other calls overlap in
    several Python threads.
    """
    _check_preconditioner(preconditioner, method)
    _check_problem(p, curvature, preconditioner)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(theta, info) or None, "
                        f"got {callback!r}")
    fuse = (isinstance(preconditioner, str) and preconditioner == "diag"
            and curvature == "hessian" and hasattr(p, "fuse_diag"))
    before = p.fuse_diag if fuse else None
    try:
        if fuse:  # the diagonal comes with every value-and-gradient pass: no extra pass
            p.fuse_diag = True
        blas = _BlasThreads()
        with blas.single():
            return _newton_cg(p, theta0, gtol, max_iter, method, curvature, preconditioner,
                              damping, callback, progress, cg_max_iter, precond_mix, blas)
    finally:
        if fuse:
            p.fuse_diag = before


_STRING_PRECONDITIONERS = ("auto", "diag", "cholesky", "kfac")
_PROBLEM_API = ("n_params", "dtype", "init", "value", "value_and_grad", "hvp")


def _check_problem(p, curvature, preconditioner):
    """Refuse a problem without the methods this fit will call."""
    pc = preconditioner if isinstance(preconditioner, str) else None
    need = list(_PROBLEM_API)
    if curvature == "ggn":
        need.append("ggn_vp")
    if pc == "diag":
        need.append("hessian_diag" if curvature == "hessian" else "ggn_diag")
    if pc == "cholesky":
        need.append("hessian")  # also for curvature="ggn" without p.ggn (GLMs: equal)
    missing = [a for a in need if not hasattr(p, a)]
    if missing:
        raise TypeError(f"p must be a problem such as fastcurv.GLM or fastcurv.MLP; a "
                        f"{type(p).__name__} has no {', '.join(missing)}")
    if pc == "kfac" and not hasattr(p, "_kfac_layout"):
        raise TypeError("preconditioner='kfac' needs a fastcurv.GLM or fastcurv.MLP, got a "
                        f"{type(p).__name__}")
    if preconditioner is not None and pc is None:
        P = int(p.n_params)
        shape = tuple(getattr(preconditioner, "shape", ()))
        if shape != (P, P):
            raise ValueError(f"the preconditioner operator must be ({P}, {P}) for this problem's "
                             f"{P} parameters, got shape {shape if shape else 'none'}")
        kind = np.dtype(getattr(preconditioner, "dtype", None) or np.float64).kind
        if kind not in "fiub":
            raise TypeError(f"the preconditioner operator must be real, got dtype "
                            f"{preconditioner.dtype}; CG on a real problem needs a real M^-1")


def _check_preconditioner(preconditioner, method):
    """Refuse a bad preconditioner at once (not only when CG first needs it)."""
    if preconditioner is None:
        return
    if isinstance(preconditioner, str):
        if preconditioner not in _STRING_PRECONDITIONERS:
            raise ValueError("preconditioner must be None, 'auto', 'diag', 'cholesky' or "
                             f"'kfac', got {preconditioner!r}")
        if preconditioner in ("cholesky", "kfac") and method != "line-search":
            raise ValueError(f"preconditioner={preconditioner!r} works with "
                             "method='line-search' (the trust-region method measures its "
                             "region in a diagonal norm: use preconditioner=None, 'diag' or "
                             "'auto')")
        return
    if not (isinstance(preconditioner, LinearOperator) or hasattr(preconditioner, "matvec")):
        raise TypeError("preconditioner must be None, 'auto', 'diag', 'cholesky', 'kfac' or a "
                        "LinearOperator applying the inverse preconditioner, got "
                        f"{type(preconditioner).__name__}")
    if method != "line-search":
        raise ValueError("a LinearOperator preconditioner works with method='line-search' (the "
                         "trust-region method measures its region in a diagonal norm: use "
                         "None, 'diag' or 'auto')")


def _newton_cg(p, theta0, gtol, max_iter, method, curvature, preconditioner, damping,
               callback, progress, cg_max_iter, precond_mix, blas):
    if method not in ("line-search", "trust-region"):
        raise ValueError(f"method must be 'line-search' or 'trust-region', got {method!r}")
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    gtol = as_float_scalar(gtol, "gtol", low=0.0)
    damping = as_float_scalar(damping, "damping", low=0.0)
    mix = as_float_scalar(precond_mix, "precond_mix", low=0.0)
    if mix > 1.0:
        raise ValueError(f"precond_mix must lie in [0, 1], got {mix}")
    max_iter = as_int(max_iter, "max_iter", low=0)
    progress = as_flag(progress, "progress")
    P = p.n_params
    if cg_max_iter is None:
        cg_max = int(min(P, 250))
    else:
        cg_max = as_int(cg_max_iter, "cg_max_iter")
    if theta0 is None:
        theta = p.init()
    else:
        theta = problem_theta(p, theta0, "theta0").copy()
    Op = HessianOperator if curvature == "hessian" else GGNOperator

    t0 = time.perf_counter()
    history = []
    n_hvp = 0
    n_cg = 0
    try:
        f, g = p.value_and_grad(theta)
    except FloatingPointError as exc:
        return NewtonResult(x=theta, fun=float(p.value(theta)), grad_norm=np.inf, n_iter=0,
                            n_hvp=0, n_cg=0, success=False,
                            message=f"The starting point is unusable: {exc}")
    gmax = float(np.max(np.abs(g)))
    radius = None
    chol = None  # the Cholesky preconditioner, kept across Newton steps
    auto = None
    if preconditioner == "auto":
        # trust-region Newton (a diagonal M only) has no K-FAC or Cholesky path: plain CG
        auto = _Auto(p, curvature, blas) if method == "line-search" else None
        if auto is None:
            preconditioner = None
    last_cg = 0
    message = None
    success = False

    def log(it, f, gmax, cg_it, step):
        row = dict(iter=it, fun=float(f), grad_norm=gmax, n_cg=cg_it, step=float(step),
                   time=time.perf_counter() - t0)
        history.append(row)
        if progress:
            if it == 0:
                print(f"{'iter':>4} {'loss':>22} {'max|grad|':>10} {'cg':>4} {'step':>9} "
                      f"{'time':>8}", flush=True)
            print(f"{it:4d} {f:22.15g} {gmax:10.3e} {cg_it:4d} {step:9.3g} "
                  f"{row['time']:7.2f}s", flush=True)
        if callback is not None:
            callback(theta.copy(), row)  # a copy: the callback cannot change the iterate

    log(0, f, gmax, 0, 0.0)
    noise = _NoiseStall(gmax, p.dtype)
    it = 0
    while True:
        if not np.isfinite(f) or not np.all(np.isfinite(g)):
            message = (f"The objective or gradient became non-finite at iteration {it}; "
                       "check the data scale, or add damping or an L2 penalty.")
            break
        if gmax <= gtol:
            success = True
            message = f"Converged: max|grad| = {gmax:.3e} <= gtol = {gtol:.1e}."
            break
        diverging = getattr(p, "_diverging_message", None)
        msg = diverging(theta) if diverging is not None else None
        if msg:
            message = msg
            break
        if it >= max_iter:
            message = (f"Stopped after max_iter = {max_iter} Newton iterations with max|grad| = "
                       f"{gmax:.3e} > gtol = {gtol:.1e}; increase max_iter, loosen gtol"
                       + (", or try preconditioner='diag'." if preconditioner is None
                          else "."))
            break
        with np.errstate(over="ignore"):
            g_overflows = not np.isfinite(np.linalg.norm(g))
        if g_overflows:
            # finite entries whose squared norm overflows: CG's inner products would be inf
            message = (f"The gradient is too large to solve with (max|grad| = {gmax:.3e}, its "
                       f"norm overflows float64) at iteration {it}; rescale the data "
                       "(standardize the features, and the targets of a gaussian or poisson "
                       "model).")
            break
        it += 1
        op = _Counted(Op(p, theta, damping=damping), zero_curvature=method == "line-search")
        use = preconditioner if auto is None else auto.current
        if use == "cholesky":  # line search only (_check_preconditioner)
            if chol is None or last_cg > CHOLESKY_REFRESH_CG:
                try:
                    with blas.full():
                        chol = _cholesky_preconditioner(p, theta, curvature, damping)
                except np.linalg.LinAlgError:
                    if auto is None:
                        raise
                    auto.give_up()  # indefinite: keep the previous preconditioner
                    use = auto.current
                    chol = None
        if use == "cholesky":
            Dm, M = None, chol
        else:
            # K-FAC's factors are BLAS-3 work (the first layer's input Gram matrix): all threads
            try:
                with blas.full() if use == "kfac" else contextlib.nullcontext():
                    Dm, M = _make_preconditioner(use, p, theta, curvature, damping, mix)
            except (np.linalg.LinAlgError, FloatingPointError):
                if auto is None:
                    raise
                auto.give_up()  # K-FAC failed where auto bought it: back to plain CG
                Dm, M = None, None
        gnorm = float(np.linalg.norm(g))
        # forcing term (N&W eq. 7.3), but never asking CG for a residual below what reaching
        # gtol needs: the next gradient is the CG residual plus O(|d|^2), so |r| <= gtol/2
        # is enough, and the last Newton system need not be solved any tighter
        rtol = min(0.5, max(np.sqrt(gnorm), OVERSOLVE_GUARD * gtol / gnorm))
        g64 = np.asarray(g, dtype=np.float64)

        if method == "line-search":
            count = [0]
            t_solve = time.perf_counter()
            try:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    d, _info = cg(op, -g, rtol=rtol, atol=0.0, maxiter=cg_max, M=M,
                                  callback=lambda xk, c=count: c.__setitem__(0, c[0] + 1))
            except _CGBreakdown:
                d = None
            if d is None or not np.isfinite(d).all():
                n_hvp += op.count
                n_cg += count[0]
                message = _breakdown_message(it, theta, p, method, damping, op.ratio, M is not None)
                break
            if auto is not None:
                auto.after_step(time.perf_counter() - t_solve, count[0])
            d = np.asarray(d, dtype=p.dtype)
            n_cg += count[0]
            n_hvp += op.count
            slope = float(g64 @ d)
            if not slope < 0.0:
                d = -g.copy()
                slope = -float(g64 @ g64)
            # first trial: the full step, evaluated with its gradient (kept if accepted)
            trial = theta + d
            f_new, g_new = _trial_value_and_grad(p, trial)
            alpha = 1.0
            backtracks = 0
            if not (f_new <= f + ARMIJO_C1 * slope
                    or (g_new is not None
                        and _in_noise(f, f_new, slope, gmax, g_new, p.dtype))):
                # backtracking: on GLMs each trial is O(n) (X theta and X d are known)
                phi = p.value_along(theta, d) if hasattr(p, "value_along") else (
                    lambda a, th=theta, d=d: p.value(th + np.asarray(a, p.dtype) * d))
                # the trials are compared with phi(0), not f: the two sum the same losses in
                # another order, and near convergence ulps would decide the Armijo test
                f_ref = phi(0.0)
                while not (f_new <= f_ref + ARMIJO_C1 * alpha * slope):
                    backtracks += 1
                    if backtracks > MAX_BACKTRACKS:
                        break
                    alpha *= 0.5
                    f_new = phi(alpha)
                if backtracks > MAX_BACKTRACKS:
                    message = _no_decrease_message(it, gmax, slope, f, p, damping)
                    break
                trial = theta + np.asarray(alpha, p.dtype) * d
                f_new, g_new = _trial_value_and_grad(p, trial)
                if g_new is None:  # a finite value along d, but its gradient overflows
                    message = (f"The gradient overflows at the step the line search accepted "
                               f"at iteration {it}; rescale the data or add an L2 penalty.")
                    break
            stalled = np.array_equal(trial, theta)
            f_old = f
            theta, f, g = trial, f_new, g_new
            gmax = float(np.max(np.abs(g)))
            last_cg = count[0]
            log(it, f, gmax, count[0], alpha)
            if stalled and gmax > gtol:
                message = _stalled_message(it, gmax, p.dtype)
                break
            if noise.after(f_old, f, gmax) and gmax > gtol:
                message = noise.message(it, gmax)
                break
        else:
            if radius is None:
                radius = max(gnorm, 1e-3)
            try:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    s, As, cg_it, _how = _steihaug(op, g64, radius, rtol, cg_max, Dm)
            except _CGBreakdown:
                n_hvp += op.count
                message = _breakdown_message(it, theta, p, method, damping)
                break
            n_cg += cg_it
            n_hvp += op.count
            pred = -(float(g64 @ s) + 0.5 * float(s @ As))
            s_norm = float(np.sqrt(s @ ((Dm if Dm is not None else 1.0) * s)))
            trial = theta + s.astype(p.dtype)
            f_new, g_new = _trial_value_and_grad(p, trial)
            rho = (f - f_new) / pred if pred > 0 else -np.inf
            if g_new is not None and _in_noise(f, f_new, -pred, gmax, g_new, p.dtype):
                rho = 1.0  # the decrease is below rounding: judge the step by its gradient
            if not np.isfinite(f_new) or rho < TR_SHRINK_BELOW:
                radius = 0.25 * min(radius, s_norm if s_norm > 0 else radius)
            elif rho > TR_GROW_ABOVE and s_norm >= 0.99 * radius:
                radius = 2.0 * radius
            accepted = np.isfinite(f_new) and rho > TR_ETA
            stalled = accepted and np.array_equal(trial, theta)
            if accepted:
                theta, f, g = trial, f_new, g_new
                gmax = float(np.max(np.abs(g)))
            log(it, f, gmax, cg_it, s_norm if accepted else 0.0)
            if stalled and gmax > gtol:
                message = _stalled_message(it, gmax, p.dtype)
                break
            # a rejected step whose Euclidean length is below the rounding of θ: shrinking
            # further cannot give a measurable decrease. (Tested on every iteration and on
            # the radius, in the preconditioner's norm, this stopped accepted fits whose
            # first radius, ‖g‖, was small: a float32 warm start 1e-3 from a solution of
            # norm 123 ended with max|grad| 100 times gtol.)
            with np.errstate(over="ignore"):  # |theta| beyond 1e154: inf, the test holds
                scale = max(1.0, float(np.linalg.norm(theta)))
                step = float(np.linalg.norm(s))
            if not accepted and step < TR_ROUNDING * np.finfo(p.dtype).eps * scale:
                message = (f"The trust region shrank to {radius:.2e} at iteration {it} "
                           f"(max|grad| = {gmax:.3e}): no further decrease is measurable in "
                           f"{np.dtype(p.dtype).name}; loosen gtol"
                           + (" or use float64 data." if p.dtype == np.float32 else "."))
                break

    return NewtonResult(x=theta, fun=float(f), grad_norm=gmax, n_iter=it, n_hvp=n_hvp,
                        n_cg=n_cg, success=success, message=message, history=history)
