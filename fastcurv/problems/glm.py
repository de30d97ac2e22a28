"""Generalized linear models: the objective, its gradient and exact curvature products."""

import os

import numpy as np
import scipy.sparse as sp

from .. import _validation as val
from .._gram import gram_upper, mirror
from ..kernels import reduce
from ..kernels.glm_dense import CURV_DIAG, CURV_RANK1, CURV_SOFTMAX
from ..kernels.kfac import scaled_rows
from ..kernels.losses import LOGISTIC, MULTINOMIAL, loss_along
from . import families
from ._design import NO_TOP, make_design, softmax_top

#: dense Hessians above this many entries are refused (use the operators instead)
MAX_DENSE_ENTRIES = 2**28

#: a block product's row-chunk sums hold at most this many float64 values (128 MB), as the
#: MLP's (``OUT_ELEMENTS``); more directions run in groups, one pass over X each
BLOCK_SUM_ELEMENTS = 2**24


class _State:
    """Everything one fused pass computes at one ``theta``; reused by every product there."""

    __slots__ = ("theta", "loss", "gW", "gb", "eta", "r", "h", "finite", "_cache")

    def __init__(self, theta, loss, gW, gb, eta, r, h):
        self.theta = theta
        self.loss = loss
        self.gW = gW
        self.gb = gb
        self.eta = eta
        self.r = r
        self.h = h
        #: the loss and its gradient are finite (with finite X and θ, anything else is an
        #: overflow: of X θ itself, of exp(η), or of a sum over the rows)
        self.finite = bool(np.isfinite(loss) and np.isfinite(gW).all()
                           and np.isfinite(gb).all())
        self._cache = {}


def _half_sq_penalty(l2, W64):
    """``(λ/2)‖W‖²``: 0 when λ = 0 (never 0 · inf); scaled by ``max|W|`` so that only a
    penalty beyond float64 is +inf (``‖W‖²`` alone overflows from |W| ~ 1e154)."""
    if l2 == 0.0 or W64.size == 0:
        return 0.0
    m = float(np.max(np.abs(W64)))
    if m == 0.0:
        return 0.0
    with np.errstate(over="ignore"):
        return (0.5 * l2 * m) * m * float(np.sum((W64 / m) ** 2))


def _softmax_variance(p):
    """``p ⊙ (1 − p)`` per row, the diagonal of ``diag(p) − p pᵀ``: each row's most probable
    class gets ``1 − p_r`` summed from the other classes' probabilities (``1 − p_r`` itself
    loses every digit once ``p_r`` rounds to 1)."""
    rows = np.arange(p.shape[0])
    top = np.argmax(p, axis=1)
    comp = 1.0 - p
    others = p.copy()
    others[rows, top] = 0.0
    comp[rows, top] = others.sum(axis=1)
    return p * comp


def _penalty_along(l2, W64, D64):
    """``α ↦ (λ/2)‖W + α D‖²`` from three dot products: 0 when λ = 0, +inf on overflow."""
    m = max(float(np.max(np.abs(W64), initial=0.0)), float(np.max(np.abs(D64), initial=0.0)))
    if l2 == 0.0 or m == 0.0:
        return lambda alpha: 0.0
    Ws, Ds = W64 / m, D64 / m  # (as _half_sq_penalty: only a penalty beyond float64 is inf)
    ww, wd, dd = float(Ws @ Ws), float(Ws @ Ds), float(Ds @ Ds)

    def pen(alpha):
        with np.errstate(over="ignore", invalid="ignore"):
            f = (0.5 * l2 * m) * m * (ww + 2.0 * alpha * wd + alpha * alpha * dd)
        return val.inf_if_overflow(f)

    return pen


def _readonly(a):
    """A view of ``a`` that cannot be written through (``a`` itself stays writable)."""
    v = a.view()
    v.flags.writeable = False
    return v



def flatten_layer(parts, rows, K, dtype):
    """The parameter vector of a one-layer model from ``[W]``, ``W`` of shape (rows, K) (or
    flat): checked for count, shape, a real dtype and finite values (GLM and DaskGLM)."""
    if isinstance(parts, np.ndarray):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or len(parts) != 1:
        raise ValueError("a GLM has one layer: pass a list of one (d [+ 1], K) array, got "
                         f"{type(parts).__name__}")
    W = np.asarray(parts[0])
    if W.dtype.kind not in "biuf":
        raise TypeError(f"the layer must hold real numbers, got dtype {W.dtype}")
    if W.size != rows * K or W.shape not in ((rows, K), (rows * K,)):
        raise ValueError(f"the layer must have shape ({rows}, {K}), got {W.shape}")
    # a copy, as an MLP's flatten (which concatenates) returns: a view of the caller's
    # array would let writes into θ change the layer it came from
    return np.array(val.finite_as(W, dtype, "the layer").reshape(-1), copy=True)

class GLM:
    r"""A generalized linear model with a canonical link, L2 penalty and sample weights.

    Objective (DESIGN.md conventions)

    .. math::

        F(\theta) = \frac{1}{S}\sum_i w_i\,\ell(y_i, \eta_i) + \frac{\lambda}{2}\|W\|_F^2,
        \qquad \eta_i = x_i W + b,\quad S = \sum_i w_i,

    with per-sample losses ``gaussian`` ½‖y − η‖², ``logistic`` log(1 + e^η) − yη,
    ``poisson`` e^η − yη and ``multinomial`` logsumexp(η) − η_y. The intercept ``b`` is not
    penalized. Parameters are the augmented matrix ``[W; b]`` of shape (d + 1, K) flattened in
    C order (without an intercept the last row is absent), so ``theta = [coef, intercept]`` for
    a single output and ``[coef (d, K) C-order, intercept (K)]`` for K outputs.

    With these canonical links the Gauss-Newton matrix equals the Hessian:

    .. math::

        H = \frac{1}{W}\sum_i w_i\,(\tilde x_i \tilde x_i^T) \otimes \ell''_i + \lambda\,
        \mathrm{diag}(1_{\text{weights}}),

    where ``ℓ''`` is ``1``, ``σ(1 − σ)``, ``e^η`` or ``diag(p) − ppᵀ``. Every product is one
    pass over ``X``; the per-sample curvature is computed once per ``theta`` (in the same pass
    as the value and gradient) and reused by every product at that ``theta``.

    Parameters
    ----------
    X : array_like (n, d) or scipy.sparse matrix/array
        Dense data may be C- or F-ordered, read-only or a ``numpy.memmap`` and is never copied
        (unless its dtype is not float32/float64). Sparse data are converted to CSR once; a CSR
        input is used as it is and must have sorted, unique, in-range column indices.
        The dtype of ``X`` (float32 or float64) is the dtype of every result. Since ``X`` is
        not copied, it is validated once, here: do not modify it while the problem is in use
        (build a new problem, or use :meth:`with_data`, for new data). ``y`` and the weights
        are copied.
    y : array_like
        ``(n,)`` targets, or ``(n, K)`` for K independent outputs (gaussian, logistic,
        poisson). Multinomial targets are integer class labels in ``[0, K)``.
    family : {"gaussian", "logistic", "poisson", "multinomial"}
    l2 : float, default 0
        Ridge strength λ on the weights (not the intercept).
    fit_intercept : bool, default True
    sample_weight : array_like (n,), optional
        Non-negative weights, not all zero. Integer weights are equivalent to repeated rows.
    n_classes : int, optional
        Number of classes K of a multinomial model; inferred as ``max(y) + 1`` if omitted.

    Attributes
    ----------
    fuse_diag : bool, default False
        If True, every value-and-gradient pass of a single-output model also computes the
        exact Hessian diagonal (no extra pass for :meth:`hessian_diag` at that ``θ``).
        :func:`fastcurv.newton_cg` sets it while it uses ``preconditioner="diag"``.
    """

    def __new__(cls, X=None, *args, **kwargs):
        # data chunked over Dask workers: the distributed problem (fastcurv[dask])
        if cls is GLM and type(X).__module__.startswith("dask."):
            from ..distributed import DaskGLM

            return DaskGLM(X, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, X, y, family="logistic", l2=0.0, fit_intercept=True, sample_weight=None,
                 *, n_classes=None):
        self.family = family
        self._fam = families.family_code(family)
        Xv = val.check_csr_X(X) if sp.issparse(X) else val.check_dense_X(X)
        self._design = make_design(Xv)
        n = self._design.n
        self._y2, self._K = families.prepare_targets(family, y, n, n_classes)
        self._w = val.check_sample_weight(sample_weight, n)
        # a_i = w_i / W, scaled by max(w) first so that W cannot overflow
        scaled = self._w / self._w.max()
        self._a = scaled / scaled.sum()
        self._l2 = val.as_float_scalar(l2, "l2", low=0.0)
        self.fit_intercept = val.as_flag(fit_intercept, "fit_intercept")
        self._check_memory()
        self._states = []  # the two most recent _State, newest first
        #: compute the Hessian diagonal in every value-and-gradient pass (single output only);
        #: newton_cg turns this on while it uses the diagonal preconditioner
        self.fuse_diag = False

    def _check_memory(self):
        """MemoryError before anything of the parameters' size is allocated, where the passes'
        per-chunk float64 buffers plus a few parameter vectors would not fit in this machine's
        memory (a CSR matrix whose columns run far beyond its real features: one feature index
        of 2^31 in an svmlight file made a 2-billion-parameter model that the kernel killed)."""
        P = self.n_params
        need = (self._design.n_chunks + 8) * P * 8
        try:
            phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not on this platform
            return
        if need <= phys:
            return
        msg = (f"a GLM with {P:,} parameters needs at least {need / 1e9:,.1f} GB (a float64 "
               f"buffer of {P * 8 / 1e9:,.1f} GB per row chunk, {self._design.n_chunks} "
               f"chunks, and a few parameter vectors); this machine has {phys / 1e9:,.1f} GB")
        if self._design.is_sparse:
            msg += (f". X has {self._design.d:,} columns but {self._design.X.nnz:,} stored "
                    "values: if a column index in the data is far beyond the real number of "
                    "features, fix the data or give the number of features")
        raise MemoryError(msg)

    # ------------------------------------------------------------------ attributes
    @property
    def X(self):
        """The data as used by the kernels (a validated ndarray or CSR matrix)."""
        return self._design.X

    @property
    def y(self):
        """Targets as float64: (n,) for one output and class labels, else (n, K) (a read-only
        view: the problem's own copy)."""
        return _readonly(self._y2[:, 0] if self._y2.shape[1] == 1 else self._y2)

    @property
    def l2(self):
        """The L2 penalty strength λ ≥ 0 (may be reassigned; checked as in the constructor).
        A call reads it once: a call made while another thread reassigns it gives the old or
        the new λ, never a mix."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = val.as_float_scalar(value, "l2", low=0.0)

    @property
    def sample_weight(self):
        """The sample weights (n,) as given (a read-only view of the problem's copy)."""
        return _readonly(self._w)

    @property
    def n_samples(self):
        return self._design.n

    @property
    def n_features(self):
        return self._design.d

    @property
    def n_outputs(self):
        """K: 1 for single-output families, the number of classes for the multinomial."""
        return self._K

    @property
    def n_params(self):
        return (self._design.d + int(self.fit_intercept)) * self._K

    @property
    def dtype(self):
        return self._design.dtype

    @property
    def is_sparse(self):
        return self._design.is_sparse

    def __repr__(self):
        kind = "CSR" if self.is_sparse else "dense"
        return (f"GLM(family={self.family!r}, n_samples={self.n_samples}, "
                f"n_features={self.n_features}, n_outputs={self.n_outputs}, l2={self.l2}, "
                f"fit_intercept={self.fit_intercept}, {kind} {self.dtype})")

    # ------------------------------------------------------------------ parameters
    def init(self, seed=0):
        """Starting parameters: zeros of length ``n_params`` (``seed`` is accepted for the API,
        and checked as every seed is)."""
        val.make_rng(seed)
        return np.zeros(self.n_params, dtype=self.dtype)

    def unflatten(self, theta):
        """``[W~]``: a one-element list holding the (d + 1, K) augmented weights (a view)."""
        theta = self._check_theta(theta)
        rows = self._design.d + int(self.fit_intercept)
        return [theta.reshape(rows, self._K)]

    def flatten(self, parts):
        """Inverse of :meth:`unflatten`."""
        return flatten_layer(parts, self._design.d + int(self.fit_intercept), self._K,
                             self.dtype)

    def _check_theta(self, theta):
        return val.check_vector(theta, self.n_params, self.dtype, "theta")

    def _split(self, theta):
        """Weights (d, K) and intercept (K,) views of a flat parameter vector."""
        d, K = self._design.d, self._K
        Wmat = theta[: d * K].reshape(d, K)
        b = theta[d * K:] if self.fit_intercept else np.zeros(K, dtype=self.dtype)
        return Wmat, b

    def _split_block(self, V):
        """(P, m) block -> weights (d, K m) and intercepts (K m,) with column k m + mm."""
        d, K = self._design.d, self._K
        m = V.shape[1]
        Vw = V[: d * K].reshape(d, K * m)
        if self.fit_intercept:
            vb = np.ascontiguousarray(V[d * K:].reshape(K * m))
        else:
            vb = np.zeros(K * m, dtype=self.dtype)
        return Vw, vb

    def _join_block(self, gW, gb, m):
        """(d, K m) and (K m,) float64 -> (P, m) in the data dtype."""
        d, K = self._design.d, self._K
        parts = [gW.reshape(d * K, m)]
        if self.fit_intercept:
            parts.append(gb.reshape(K, m))
        with np.errstate(over="ignore"):  # a float32 overflow is raised by the caller
            return np.concatenate(parts, axis=0).astype(self.dtype, copy=False)

    # ------------------------------------------------------------------ state
    def _cached_state(self, theta):
        for st in self._states:
            if np.array_equal(st.theta, theta):
                return st
        return None

    def _state_at(self, theta, strict=True):
        """The fused-pass results at ``theta``: cached for the two most recent points (a
        Newton iterate and its trial step), computed in one pass over ``X`` otherwise.

        ``strict``: raise FloatingPointError if the loss or gradient overflows there (every
        derivative then is inf or NaN); only the objective's value takes such a state (+inf).
        """
        st = self._cached_state(theta)
        if st is None:
            Wmat, b = self._split(theta)
            loss, gW, gb, eta, r, h, diag = self._design.value_grad(
                Wmat, np.ascontiguousarray(b), self._y2, self._a, self._fam, self.fuse_diag
            )
            st = _State(theta.copy(), loss, gW, gb, eta, r, h)
            if diag is not None:
                st._cache["hess_diag_data"] = diag
        self._states = [st] + [s for s in self._states if s is not st][:1]
        if strict and not st.finite:
            raise self._overflow_error(st)
        return st

    def _overflow_error(self, st, what="loss or its gradient"):
        """FloatingPointError saying that the objective overflows at ``st.theta`` and why."""
        with np.errstate(invalid="ignore"):
            big = float(np.nanmax(np.abs(st.eta))) if st.eta.size else 0.0
        dt = np.dtype(self.dtype).name
        why = (f"the largest |X theta| is {big:.3g}" if np.isfinite(big)
               else f"X theta itself overflows {dt}")
        if self.family == "poisson" and np.isfinite(big):
            why += " (the poisson mean exp(eta) overflows float64 above eta = 709.8)"
        if self._fam not in (LOGISTIC, MULTINOMIAL):
            why += f", the largest |y| is {float(np.max(np.abs(self._y2))):.3g}"
        if self.dtype == np.float32:
            why += " (float32 results overflow above 3.4e38)"
        return FloatingPointError(
            f"At these parameters the {self.family} {what} overflows: {why}. Start from "
            "smaller parameters (p.init()) or standardize the features (and the targets of a "
            "gaussian or poisson model)" + (", or add an L2 penalty" if self.l2 == 0.0 else "")
            + ".")

    def _penalty_mask(self):
        d, K = self._design.d, self._K
        mask = np.zeros(self.n_params)
        mask[: d * K] = 1.0
        return mask

    # ------------------------------------------------------------------ objective
    def value(self, theta):
        """``F(θ)``, a Python float: ``+inf`` where the objective overflows float64 (never
        NaN)."""
        theta = self._check_theta(theta)
        return self._value(self._state_at(theta, strict=False), theta)

    def _value(self, st, theta):
        Wmat, _ = self._split(theta)
        value = st.loss + _half_sq_penalty(self.l2, Wmat.astype(np.float64))
        return val.inf_if_overflow(value)

    def grad(self, theta):
        """``∇F(θ)``, shape (P,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta):
        """``(F(θ), ∇F(θ))`` from one pass over ``X``.

        Raises FloatingPointError where the objective or its gradient overflows (the gradient
        has no finite value to return); :meth:`value` returns ``+inf`` there.
        """
        theta = self._check_theta(theta)
        st = self._state_at(theta)
        Wmat, _ = self._split(theta)
        W64 = Wmat.astype(np.float64)
        lam = self.l2  # read once: a thread may reassign it meanwhile (one λ per call)
        pen = _half_sq_penalty(lam, W64)
        value = st.loss + pen
        with np.errstate(over="ignore"):
            gW = st.gW + lam * W64
        g = self._join_block(gW.reshape(-1, 1), st.gb.reshape(-1, 1), 1)[:, 0]
        if not (np.isfinite(value) and np.isfinite(g).all()):
            fault = val.penalty_overflow(lam, W64)
            if fault:
                raise FloatingPointError(
                    f"At these parameters the {self.family} objective overflows: {fault}.")
            raise self._overflow_error(st, "objective (with its L2 penalty) or its gradient")
        return value, g

    # ------------------------------------------------------------------ curvature
    def _rows_of(self, st, name):
        """``st.r`` or ``st.h`` for curvature: rows of weight 0 whose own values overflowed
        (their loss did; they add nothing to any sum) are zeroed, so that no ``0 · inf``
        enters a product. Without such rows, the array itself."""
        key = ("clean", name)
        if key not in st._cache:
            M = getattr(st, name)
            bad = (self._w == 0) & ~np.isfinite(M).all(axis=1)
            if bad.any():
                M = M.copy()
                M[bad] = 0.0
            st._cache[key] = M
        return st._cache[key]

    def _hess_weights(self, st, m):
        key = ("hess", m)
        if key in st._cache:
            return st._cache[key]
        a = self._a
        h = self._rows_of(st, "h")
        if self._fam == MULTINOMIAL:
            w = ("gen", a[:, None] * h, h, -a, softmax_top(h), CURV_SOFTMAX, m)
        elif self._K == 1 and m == 1:
            w = ("k1", a * h[:, 0])
        else:
            w = ("gen", a[:, None] * h, h, a, NO_TOP, CURV_DIAG, m)
        st._cache[key] = w
        return w

    def _fisher_weights(self, st, m):
        key = ("fisher", m)
        if key in st._cache:
            return st._cache[key]
        a = self._a
        r = self._rows_of(st, "r")
        if self._K == 1 and m == 1:
            # (a r) r: a row of weight 0 gives 0 also where r² overflows
            w = ("k1", a * r[:, 0] * r[:, 0])
        else:
            w = ("gen", np.zeros_like(r), r, a, NO_TOP, CURV_RANK1, m)
        st._cache[key] = w
        return w

    def _curv_product(self, theta, v, which, penalty):
        theta = self._check_theta(theta)
        v = val.check_vector(v, self.n_params, self.dtype, "v", allow_block=True)
        V = v.reshape(self.n_params, -1)
        m = V.shape[1]
        g = self._directions_per_pass(m)
        if g < m:
            # each row chunk sums its own (K m, d) block: run the directions in groups whose
            # chunk sums stay within BLOCK_SUM_ELEMENTS (64 directions of a K = 10, d = 2,000
            # multinomial held 32 x 640 x 2,000 float64, 330 MB, for a 9.8 MB result)
            out = np.empty((self.n_params, m))
            for j in range(0, m, g):
                out[:, j:j + g] = self._curv_product(theta, V[:, j:j + g], which, penalty)
            return out[:, 0] if v.ndim == 1 else out
        st = self._state_at(theta)
        weights = self._hess_weights(st, m) if which == "hess" else self._fisher_weights(st, m)
        Vw, vb = self._split_block(V)
        oW, ob = self._design.curv_vec(Vw, vb, weights)
        lam = self.l2  # read once (one λ per call, whatever other threads assign)
        if penalty and lam != 0.0:
            with np.errstate(over="ignore"):
                oW = oW + lam * Vw.astype(np.float64)
        out = self._join_block(oW, ob, m)
        if penalty and not np.isfinite(out).all():
            fault = val.penalty_overflow(lam, None, v=Vw)
            if fault:
                raise FloatingPointError(f"the product overflows: {fault}.")
        # at a state whose derivatives are finite, only v or the data can overflow here
        val.finite_result(out, "the product", advice=(
            ": v, or the data and curvature it meets, is too large; if it is v, scale it "
            "down (products are linear in it) and the result up"))
        return out[:, 0] if v.ndim == 1 else out

    def _directions_per_pass(self, m):
        """Directions of a block product per pass over ``X`` (see :meth:`_curv_product`)."""
        per = self._design.n_chunks * self._K * max(1, self._design.d)
        return max(1, min(m, BLOCK_SUM_ELEMENTS // per))

    def hvp(self, theta, v):
        """Hessian-vector product ``∇²F(θ) v`` for v of shape (P,) or a block (P, m).

        One pass over ``X`` for the whole block; the per-sample curvature at ``θ`` is cached.
        """
        return self._curv_product(theta, v, "hess", True)

    def ggn_vp(self, theta, v):
        """Gauss-Newton-vector product; equal to :meth:`hvp` for these canonical-link GLMs."""
        return self._curv_product(theta, v, "hess", True)

    def fisher_vp(self, theta, v):
        """Empirical Fisher product ``(1/S) Σ w_i g_i g_iᵀ v`` with per-sample loss gradients
        ``g_i = x̃_i ⊗ ℓ'_i`` (no penalty). v of shape (P,) or (P, m)."""
        return self._curv_product(theta, v, "fisher", False)

    def _mc_fisher_vp(self, theta, v, mc_samples, seed):
        """Monte Carlo Fisher product ``(1/M) Σ_s (1/S) Σ_i w_i g̃_is (g̃_isᵀ v)``
        (``M = mc_samples``) with per-sample gradients ``g̃_is = x̃_i ⊗ ℓ'(η_i, ỹ_is)`` at
        labels drawn from the model (draw ``s`` from its own stream of ``seed``, as
        :meth:`_curvature_rows`); one pass over ``X`` per draw. Its expectation is the GGN
        without the penalty."""
        theta = self._check_theta(theta)
        v = val.check_vector(v, self.n_params, self.dtype, "v", allow_block=True)
        st = self._state_at(theta)
        V = v.reshape(self.n_params, -1)
        m = V.shape[1]
        Vw, vb = self._split_block(V)
        streams = [families.LabelStreams(g)
                   for g in val.make_rng(seed).spawn(mc_samples)]
        accW = accb = 0.0
        for j in range(mc_samples):
            r = np.ascontiguousarray(
                families.sample_residuals(self.family, st.eta, st.h, streams[j]))
            oW, ob = self._design.curv_vec(Vw, vb, ("gen", np.zeros_like(r), r, self._a,
                                                    NO_TOP, CURV_RANK1, m))
            accW = accW + oW
            accb = accb + ob
        out = self._join_block(accW / mc_samples, accb / mc_samples, m)
        val.finite_result(out, "the Monte Carlo Fisher product")
        return out[:, 0] if v.ndim == 1 else out

    def _curv_matrices(self, st, which):
        """Per-row (Dw, Q, qa) so that the per-sample curvature is diag(Dw) + qa Q Qᵀ."""
        a = self._a
        if which == "fisher":
            r = self._rows_of(st, "r")
            return np.zeros_like(r), r, a
        h = self._rows_of(st, "h")
        if self._fam == MULTINOMIAL:
            return a[:, None] * h, h, -a
        return a[:, None] * h, None, None

    def _curv_row_diag(self, st, which):
        """Per row, the diagonal (n, K) of the curvature ``diag(Dw) + qa Q Qᵀ``; for the
        multinomial Hessian ``a p (1 − p)`` without cancellation (``_softmax_variance``)."""
        Dw, Q, qa = self._curv_matrices(st, which)
        if Q is None:
            return Dw
        if which != "fisher" and self._fam == MULTINOMIAL:
            return self._a[:, None] * _softmax_variance(self._rows_of(st, "h"))
        return Dw + qa[:, None] * Q * Q

    def _diag(self, st, which, cw=None):
        fused = st._cache.get("hess_diag_data") if (which == "hess" and cw is None) else None
        if cw is None:
            cw = self._curv_row_diag(st, which)
        if fused is not None:
            dW = fused  # computed in the value-and-gradient pass at this theta
        else:
            dW = self._design.sq_colsum(np.ascontiguousarray(cw))
        db = cw.sum(axis=0)
        lam = self.l2  # read once
        if which != "fisher" and lam != 0.0:
            dW = dW + lam
        return val.finite_result(self._join_block(dW, db, 1)[:, 0], "the curvature diagonal")

    def hessian_diag(self, theta):
        """Exact diagonal of the Hessian in one pass: ``(1/S) Σ_i w_i x̃_ij² ℓ''_i[k, k] + λ m_j``
        (``S = Σ w_i``; ``m_j`` is 1 on coefficients, 0 on intercepts)."""
        theta = self._check_theta(theta)
        return self._diag(self._state_at(theta), "hess")

    def ggn_diag(self, theta, mc_samples=None, seed=None):
        """Diagonal of the Gauss-Newton matrix (= :meth:`hessian_diag` for GLMs).

        With ``mc_samples=M`` it is the Monte Carlo estimate ``(1/S) Σ_i w_i (1/M) Σ_s
        (x̃_ij r̃_{s,ik})² + λ m_j`` (as :meth:`hessian_diag`) with residuals ``r̃ = ℓ'(η, ỹ)``
        at labels ``ỹ`` sampled from the model (an unbiased estimate of the exact diagonal),
        seeded by ``seed``.
        """
        theta = self._check_theta(theta)
        val.make_rng(seed)  # checked also where unused (mc_samples=None)
        mc_samples = val.as_int(mc_samples, "mc_samples", none_ok=True)
        st = self._state_at(theta)
        if mc_samples is None:
            return self._diag(st, "hess")
        streams = families.LabelStreams(seed)
        acc = np.zeros_like(st.r)
        for _ in range(int(mc_samples)):
            rs = families.sample_residuals(self.family, st.eta, st.h, streams)
            acc += rs * rs
        cw = np.zeros_like(acc)  # rows of weight 0 add nothing, whatever their draws
        np.multiply(self._a[:, None], acc / int(mc_samples), out=cw,
                    where=(self._a > 0)[:, None])
        return self._diag(st, "hess", cw=cw)

    def fisher_diag(self, theta):
        """Diagonal of the empirical Fisher ``(1/S) Σ_i w_i g_i ⊙ g_i`` (no penalty) in one
        pass: ``(1/S) Σ_i w_i x̃_ij² r_ik²`` with the residuals ``r = ℓ'(η, y)``."""
        theta = self._check_theta(theta)
        return self._diag(self._state_at(theta), "fisher")

    def hessian(self, theta):
        """The dense (P, P) Hessian, built from row blocks: ``(1/S) Σ_i w_i (x̃_i x̃_iᵀ) ⊗ ℓ''_i
        + λ I_weights``. Meant for small problems and checks; products never need it."""
        theta = self._check_theta(theta)
        H = self._dense_curvature(self._state_at(theta), "hess")
        with np.errstate(over="ignore"):
            return val.finite_result(H.astype(self.dtype), "the dense Hessian")

    def _dense_curvature_macs(self, curvature="hessian"):
        """Multiply-adds of :meth:`_dense_curvature` (the syrk calls): ``n (d+1)² K / 2`` for the
        diagonal blocks, plus ``n P² / 2`` for the rank-one part of the multinomial Hessian."""
        n, K, dt = self.n_samples, self._K, self._design.d + int(self.fit_intercept)
        macs = n * dt * (dt + 1) / 2 * K
        if self._fam == MULTINOMIAL:
            P = self.n_params
            macs += n * P * (P + 1) / 2
        return macs

    #: multiply-adds of a symmetric eigendecomposition of an m x m matrix, in units of m³ at
    #: the BLAS syrk rate (numpy's eigh measured 7-12 for m = 301, 1001, 2049)
    _EIGH_MACS_PER_CUBE = 10.0

    def _kfac_build_macs(self, max_inputs):
        """Multiply-adds of the first K-FAC preconditioner built on this problem, or None when
        ``d + 1 > max_inputs``: the input Gram matrix ``A`` (``n (d+1)² / 2``; for CSR, the
        rows' products ``Σ_i nnz_i² / 2`` and the dense ``(d+1)²`` result) and its
        eigendecomposition (``~10 (d+1)³``; both cached on the problem, so 0 once built),
        plus the output factor ``G`` (``n K²``, at every iterate)."""
        n, K = self.n_samples, self._K
        m = self._design.d + int(self.fit_intercept)
        if m > max_inputs:
            return None
        macs = float(n) * K * K
        if getattr(self, "_kfac_A0", None) is None:
            X = self._design.X
            if sp.issparse(X):
                nnz = np.diff(X.indptr).astype(np.float64)
                macs += float(nnz @ nnz) / 2 + float(m) * m
            else:
                macs += float(n) * m * (m + 1) / 2
        if getattr(self, "_kfac_A0_eig", None) is None:
            macs += self._EIGH_MACS_PER_CUBE * float(m) ** 3
        return macs

    def _dense_curvature(self, st, which):
        """``(1/S) Σ_i w_i (x̃_i x̃_iᵀ) ⊗ H̃_i`` with ``H̃_i = diag(Dw_i) + qa_i Q_i Q_iᵀ``.

        Each term is a Gram matrix of rows scaled by the square roots of non-negative weights
        (``Dw ≥ 0``; ``qa`` has one sign per curvature: ``+a`` for the Fisher, ``-a`` for the
        multinomial Hessian), so it goes to BLAS ``syrk``: the upper triangle only, half the
        flops of a general product. The lower triangle is mirrored at the end.
        """
        P, K, d = self.n_params, self._K, self._design.d
        if P * P > MAX_DENSE_ENTRIES:
            raise ValueError(
                f"the dense curvature would have {P}x{P} entries; use hvp or "
                "fastcurv.HessianOperator for a problem this size"
            )
        Dw, Q, qa = self._curv_matrices(st, which)
        # the multinomial Hessian diag(p) − p pᵀ: its (k, k) blocks take p_k (1 − p_k) with the
        # top class's 1 − p summed from the others, and the rank-one Gram only the blocks k ≠ l
        # (subtracting p_k² from p_k loses every digit once p_k rounds to 1)
        softmax = which != "fisher" and self._fam == MULTINOMIAL
        if softmax:
            Dw = self._curv_row_diag(st, which)
        fi = int(self.fit_intercept)
        dt = d + fi
        H = np.zeros((P, P))
        Hv = H.reshape(dt, K, dt, K)
        block = max(1, min(self.n_samples, 2**22 // max(1, dt * K)))
        B = np.empty((block, dt))
        for lo in range(0, self.n_samples, block):
            hi = min(self.n_samples, lo + block)
            Xb = self._design.dense_rows(lo, hi)
            Bb = B[: hi - lo]
            if which != "fisher":  # the Fisher's diagonal part is zero
                for k in range(K):
                    scaled_rows(Xb, np.ascontiguousarray(Dw[lo:hi, k]), 0, bool(fi), Bb)
                    Hv[:, k, :, k] += gram_upper(Bb)
            if Q is not None:
                sign = 1.0 if np.all(qa >= 0) else -1.0
                s = np.sqrt(sign * qa[lo:hi])
                C = np.empty((hi - lo, dt, K))
                C[:, :d, :] = Xb[:, :, None] * (s[:, None] * Q[lo:hi])[:, None, :]
                if fi:
                    C[:, d, :] = s[:, None] * Q[lo:hi]
                G = gram_upper(C.reshape(hi - lo, P), sign)
                if softmax:  # G may be Fortran-ordered: strided slices, not a reshape
                    for k in range(K):
                        G[k::K, k::K] = 0.0
                H += G
        H = mirror(H)
        lam = self.l2  # read once
        if which != "fisher" and lam != 0.0:
            H[np.diag_indices(P)] += lam * self._penalty_mask()
        return H

    # ------------------------------------------------------------------ Jacobians
    def jvp(self, theta, v):
        """Jacobian of the outputs ``η`` times ``v``: ``η̇_i = x_i V + v_b``, shape (n, K)
        (or (n, K, m) for a block v of shape (P, m))."""
        self._check_theta(theta)
        v = val.check_vector(v, self.n_params, self.dtype, "v", allow_block=True)
        V = v.reshape(self.n_params, -1)
        m = V.shape[1]
        Vw, vb = self._split_block(V)
        with np.errstate(over="ignore"):
            out = self._design.forward(Vw, vb).astype(self.dtype, copy=False)
        out = val.finite_result(out.reshape(self.n_samples, self._K, m), "the product J v")
        return out[:, :, 0] if v.ndim == 1 else out

    def vjp(self, theta, u):
        """Transposed Jacobian times ``u``: ``Σ_i x̃_i ⊗ u_i``, shape (P,).

        ``u`` has shape (n, K) ((n,) is accepted when K = 1), or (n, K, m) for m vectors.
        Unweighted and unnormalized, the adjoint of :meth:`jvp`.
        """
        self._check_theta(theta)
        n, K = self.n_samples, self._K
        U = val.plain_array(u, "u")
        if U.dtype.kind not in "biuf":
            raise TypeError(f"u must be a real array, got dtype {U.dtype}")
        if U.ndim == 1 and K == 1:
            U = U.reshape(n if U.shape[0] == n else -1, 1)
        ok = U.ndim in (2, 3) and U.shape[0] == n and U.shape[1] == K
        if not ok:
            raise ValueError(f"u must have shape ({n}, {K}) or ({n}, {K}, m), got {np.shape(u)}")
        block = U.ndim == 3
        m = U.shape[2] if block else 1
        U = val.finite_as(U.reshape(n, K * m), self.dtype, "u")
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            oW = self._design.rmatmul(U)
            ob = U.sum(axis=0, dtype=np.float64)
        out = self._join_block(np.asarray(oW, dtype=np.float64), ob, m)
        val.finite_result(out, "the product Jᵀ u")
        return out if block else out[:, 0]

    def value_along(self, theta, direction):
        """``α ↦ F(θ + α d)`` evaluated in O(n K) per call, for line searches.

        Every trial reuses ``X θ`` (kept from the value-and-gradient pass at ``θ``) and ``X d``.
        ``X d`` costs one pass over ``X``, unless the point ``θ + d`` was evaluated last (as
        a line search's first trial is) and ``d`` is not tiny next to ``θ``: then it is
        ``X(θ + d) - X θ`` and costs no pass.
        """
        theta = self._check_theta(theta)
        d = val.check_vector(direction, self.n_params, self.dtype, "direction")
        st = self._state_at(theta, strict=False)
        Dw, db = self._split_block(d.reshape(-1, 1))
        end = self._cached_state(theta + d)
        # X(θ + d) − Xθ carries the rounding of both η, up to about m eps |x||θ| for m
        # inputs per row (a dot product's error bound): used only when that is below 1e-4
        # of |Xd|, i.e. |d| ≥ 1e4 m eps |θ| (float64, 300 inputs: 7e-10 |θ|; float32 with
        # more than a handful of inputs: practically never), else one pass computes Xd
        # itself (float32 small steps were off by 4e-3 with 1 input, by 2e-3 with 4,000)
        eps = float(np.finfo(self.dtype).eps)
        m = self._design.d + int(self.fit_intercept)
        close = end is not None and 1e-4 * float(np.max(np.abs(d))) >= m * eps * float(
            np.max(np.abs(theta)))
        U = end.eta - st.eta if close else None
        if U is None or not np.isfinite(U).all():  # (X(θ + d) may have overflowed)
            U = self._design.forward(Dw, db)
        Wmat, _ = self._split(theta)
        pen = _penalty_along(self.l2, Wmat.astype(np.float64).reshape(-1),
                             Dw.astype(np.float64).reshape(-1))
        starts = reduce.row_partition(self.n_samples)
        lbuf = np.zeros(len(starts) - 1)
        y2, a, fam = self._y2, self._a, self._fam

        def phi(alpha):
            alpha = float(alpha)
            loss_along(fam, st.eta, U, alpha, y2, a, starts, lbuf)
            f = float(lbuf.sum()) + pen(alpha)
            return val.inf_if_overflow(f)  # as value() says

        return phi

    def _target_support(self):
        """:func:`families.target_support` of this problem's rows of positive weight (computed
        once: the targets and weights are private copies)."""
        if getattr(self, "_support", None) is None:
            self._support = families.target_support(self._fam, self._y2, self._K, self._w > 0)
        return self._support

    def _runaway_intercept_message(self):
        """Why the unpenalized intercept has no finite optimum (targets on one side of their
        range only, or a class without samples), or None; always None without an intercept."""
        if not self.fit_intercept:
            return None
        return families.runaway_intercept_message(self._fam, *self._target_support())

    def _diverging_message(self, theta):
        """A message when the objective has no finite minimizer that θ is running towards.

        With an intercept, whatever ``l2``: when no row of positive weight has a target on one
        side of an output's range (logistic: all 0 or all 1; poisson: all 0; multinomial: a
        class without samples), the unpenalized intercept runs off to ±∞
        (:meth:`_runaway_intercept_message`); a data fact, so a fit stops before its first step.

        With ``l2 = 0`` and 0/1 labels, if θ classifies every weighted sample correctly
        (logistic: ``η_i > 0`` exactly when ``y_i = 1``; multinomial: ``argmax η_i = y_i``),
        then scaling θ up lowers every loss: the data are separable and the infimum is only
        approached as ``||θ|| → ∞``.
        """
        runaway = self._runaway_intercept_message()
        if runaway is not None:
            return runaway
        if self.l2 != 0.0 or self._fam not in (LOGISTIC, MULTINOMIAL):
            return None
        st = self._state_at(self._check_theta(theta), strict=False)
        return families.separable_message(self._fam, self._y2, st.eta, self._w > 0,
                                          "||theta|| grows")

    def per_sample_grads(self, theta, rows=None):
        """Per-sample loss gradients ``g_i = x̃_i ⊗ ℓ'_i`` (no weight, no penalty), (m, P).

        Rows follow ``rows`` (default all). CSR data give a CSR result with the sparsity of
        the rows (times K, plus the K intercept columns).
        """
        theta = self._check_theta(theta)
        idx = val.check_rows(rows, self.n_samples)
        st = self._state_at(theta)
        # ℓ' stays float64 and each product x_ij ℓ'_i is rounded once to the data dtype: a
        # float32 ℓ' would first lose its digits below float32's range (1e-50 · 1e30 is 0)
        R = st.r[idx]
        K, d, fi = self._K, self._design.d, int(self.fit_intercept)
        Xr = self._design.take(idx)
        m = idx.shape[0]
        if not self.is_sparse:
            G = np.empty((m, d + fi, K), dtype=self.dtype)
            np.multiply(Xr[:, :, None], R[:, None, :], out=G[:, :d, :], casting="unsafe")
            if fi:
                G[:, d, :] = R
            return val.finite_result(G.reshape(m, self.n_params), "the per-sample gradients")
        Xr = sp.csr_matrix(Xr)
        nnz_row = np.diff(Xr.indptr)
        counts = nnz_row * K + fi * K
        indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        data = np.empty(indptr[-1], dtype=self.dtype)
        indices = np.empty(indptr[-1], dtype=np.int64)
        row_of = np.repeat(np.arange(m), nnz_row)
        # position of each stored entry inside its row
        pos = np.arange(Xr.nnz) - np.repeat(Xr.indptr[:-1], nnz_row)
        base = indptr[:-1][row_of] + pos * K
        for k in range(K):
            data[base + k] = Xr.data * R[row_of, k]
            indices[base + k] = Xr.indices.astype(np.int64) * K + k
        if fi:
            ib = indptr[1:][:, None] - K + np.arange(K)[None, :]
            data[ib.ravel()] = R.ravel()
            indices[ib.ravel()] = np.tile(d * K + np.arange(K), m)
        return val.finite_result(sp.csr_matrix((data, indices, indptr), shape=(m, self.n_params)),
                                 "the per-sample gradients")

    # ------------------------------------------------------------------ curvature rows
    #: rows per block of :meth:`_curvature_rows` (times d + 1 columns: about 32 MB in float64)
    _ROWS_ELEMENTS = 2**22

    def _kfac_layout(self):
        """One layer: ``(n_in, n_out, has_bias_row)`` and its parameter offsets."""
        return [(self._design.d, self._K, self.fit_intercept)], [0, self.n_params]

    def _kfac_type2_output_gram(self, theta):
        """K-FAC's type-2 output factor ``G = Σ_i c_i ∇²ℓ_i`` (float64, (K, K)) in closed
        form: ``diag(Σ c_i p_i) - Σ c_i p_i p_iᵀ`` for the softmax, ``diag(Σ c_i ℓ''_i)``
        otherwise (one output, or several with independent losses). It equals the sum over
        the ``K`` square-root columns that :meth:`_curvature_rows` yields
        (``Σ_j p_j (e_j - p)(e_j - p)ᵀ = diag(p) - p pᵀ``), without the K passes over row
        blocks."""
        st = self._state_at(theta)
        c = self._a
        h = np.asarray(self._rows_of(st, "h"), dtype=np.float64)
        h = h.reshape(self.n_samples, -1)
        G = np.diag(c @ h)  # (K, K): outputs with independent losses have diagonal ∇²ℓ
        if self._fam == MULTINOMIAL:
            S = np.sqrt(c)[:, None] * h
            G -= S.T @ S
        return G

    def _curvature_rows(self, theta, kind, mc_samples=1, seed=None):
        """Output-side gradients of the one layer, block by block (see
        :meth:`fastcurv.MLP._curvature_rows`): the residuals ``ℓ'(η, y)`` (``"empirical"``),
        residuals at labels sampled from the model (``"mc"``, one stream per draw) or the
        ``K`` columns of a square root of ``∇²ℓ`` (``"type2"``; ``diag(√ℓ'')``, or
        ``√p_c (e_c − p)`` for the softmax)."""
        st = self._state_at(theta)
        n, K = self.n_samples, self._K
        block = max(1, self._ROWS_ELEMENTS // (self._design.d + 1))
        if kind == "mc":
            root = val.make_rng(seed)
            streams = [families.LabelStreams(g) for g in root.spawn(mc_samples)]
        cols = {"type2": K, "mc": mc_samples, "empirical": 1}[kind]
        for s in range(0, n, block):
            e = min(n, s + block)
            for j in range(cols):
                if kind == "empirical":
                    delta = self._rows_of(st, "r")[s:e]
                elif kind == "mc":
                    delta = families.sample_residuals(self.family, st.eta[s:e], st.h[s:e],
                                                      streams[j])
                    # a row of weight 0 adds nothing, also where its own mean overflows
                    # (EK-FAC's second moments multiply these rows by √c_i = 0 only later)
                    delta[self._a[s:e] == 0.0] = 0.0
                elif self._fam == MULTINOMIAL:
                    pj = self._rows_of(st, "h")[s:e]
                    sq = np.sqrt(pj[:, j])
                    delta = -sq[:, None] * pj
                    delta[:, j] += sq
                else:
                    delta = np.zeros((e - s, K))
                    delta[:, j] = np.sqrt(self._rows_of(st, "h")[s:e, j])
                yield s, e, j, [np.ascontiguousarray(delta, dtype=self.dtype)]

    def _grad_dots(self, theta, S, lo, hi):
        """``S @ g_iᵀ`` for the rows ``lo:hi``: (m, hi - lo) float64 dot products of the rows
        of ``S`` (m, P) with the per-sample gradients ``g_i = x̃_i ⊗ ℓ'_i``, without forming
        them: ``Σ_k ℓ'_ik (x̃_iᵀ S_t[:, k])``, one product of the rows with all of ``S``."""
        st = self._state_at(theta)
        d, K, fi = self._design.d, self._K, int(self.fit_intercept)
        m = S.shape[0]
        Sw = np.ascontiguousarray(S[:, :d * K].reshape(m, d, K).transpose(1, 0, 2)
                                  .reshape(d, m * K))
        Xb = self._design.X[lo:hi]
        U = np.asarray(Xb @ Sw, dtype=np.float64).reshape(hi - lo, m, K)
        if fi:
            U += S[:, d * K:][None, :, :]
        return np.einsum("imk,ik->mi", U, st.r[lo:hi])

    def _layer_input(self, l, s, e):
        """The rows ``X[s:e]`` (dense view or CSR slice), without the ones column."""
        return self._design.X[s:e]

    # ------------------------------------------------------------------ new problems
    def subset(self, rows):
        """The same model and penalty on the rows ``rows`` (a copy of those rows)."""
        idx = val.check_rows(rows, self.n_samples)
        if idx.size == 0:
            raise ValueError("subset needs at least one row")
        val.check_subset_weights(self._w, idx)
        return self._take(idx, self._w[idx])

    def _rows_problem(self, rows):
        """The rows ``rows`` with unit weights: the per-sample gradients of the training rows
        (Influence scores them), whatever their sample weights."""
        return self._take(val.check_rows(rows, self.n_samples), None)

    def _take(self, idx, sample_weight):
        y = self._y2[idx]
        y = y[:, 0] if self._y2.shape[1] == 1 else y
        return self._like(self._design.take(idx), y, sample_weight)

    def with_data(self, X, y, sample_weight=None):
        """The same model and penalty on other data (the class count is kept)."""
        val.check_n_features(X, self._design.d, "the model's feature count")
        return self._like(X, y, sample_weight)

    def _like(self, X, y, sample_weight):
        extra = {"n_classes": self._K} if self._fam == MULTINOMIAL else {}
        return GLM(X, y, family=self.family, l2=self.l2, fit_intercept=self.fit_intercept,
                   sample_weight=sample_weight, **extra)

