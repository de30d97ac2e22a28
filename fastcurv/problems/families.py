"""GLM families: target validation, output count and label sampling.

The loss formulas themselves live in :mod:`fastcurv.kernels.losses`.
"""

import numpy as np

from .._validation import make_rng, plain_array
from ..kernels.losses import GAUSSIAN, LOGISTIC, MULTINOMIAL, POISSON

#: multinomial labels are class indices below this (exact in float64, and no plausible K)
MAX_LABEL = 2**31
#: without n_classes, a label set this large with fewer than half the classes present is
#: taken for IDs, not class indices, and refused
SPARSE_LABELS_ABOVE = 1000

CODES = {"gaussian": GAUSSIAN, "logistic": LOGISTIC, "poisson": POISSON, "multinomial": MULTINOMIAL}


def family_code(family):
    if not isinstance(family, str) or family not in CODES:
        raise ValueError(
            f"unknown family {family!r}; choose one of {', '.join(repr(f) for f in CODES)}"
        )
    return CODES[family]


def prepare_targets(family, y, n, n_classes=None, classes_from="n_classes"):
    """Validated targets as float64 ``(n, Ky)`` plus the number of model outputs K.

    * gaussian / logistic / poisson: y of shape (n,) (K = 1) or (n, K) (K independent outputs);
      logistic targets in [0, 1], poisson targets >= 0.
    * multinomial: integer labels in [0, K) of shape (n,), as ints or integer-valued floats;
      K is ``n_classes`` or, if None, ``max(y) + 1``; ``classes_from`` names the argument
      that sets K in error messages (an MLP's ``sizes[-1]``).
    """
    arr = plain_array(y, "y")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"y must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] != n or arr.ndim > 2:
        raise ValueError(f"y must have {n} rows to match X, got shape {arr.shape}")
    # a copy: the kernels index by these labels, and a later edit of the caller's array must
    # not reach them unchecked
    y64 = np.array(arr, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(y64)):
        i = int(np.flatnonzero((~np.isfinite(y64.reshape(n, -1))).any(axis=1))[0])
        raise ValueError(f"y contains a non-finite value in row {i}; remove or impute it")
    if family == "multinomial":
        if y64.ndim != 1:
            raise ValueError(
                f"multinomial y must be class labels of shape ({n},), got {arr.shape}; "
                "for one-hot targets pass y.argmax(axis=1)"
            )
        if np.any(y64 != np.round(y64)):
            i = int(np.flatnonzero(y64 != np.round(y64))[0])
            raise ValueError(f"multinomial labels must be integers, got {y64[i]} at position {i}")
        if np.any(y64 < 0):
            i = int(np.flatnonzero(y64 < 0)[0])
            raise ValueError(f"multinomial labels must be >= 0, got {y64[i]} at position {i}")
        if y64.max() >= MAX_LABEL:
            i = int(np.argmax(y64))
            raise ValueError(
                f"multinomial label {y64[i]:.0f} at position {i} is too large for a class index "
                f"(classes are 0 .. K-1, K < {MAX_LABEL}); relabel with "
                "np.unique(y, return_inverse=True)[1]")
        inferred = int(y64.max()) + 1
        if n_classes is None:
            K = max(inferred, 2)
            distinct = np.unique(y64).size if K > SPARSE_LABELS_ABOVE else K
            if 2 * distinct < K:
                raise ValueError(
                    f"the labels go up to {K - 1} but only {distinct} distinct values occur: "
                    f"most of the {K} classes this implies would be empty; relabel with "
                    "np.unique(y, return_inverse=True)[1], or pass n_classes")
        else:
            if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
                raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
            K = int(n_classes)
            if K < 2:
                raise ValueError(f"n_classes must be >= 2, got {K}")
            if inferred > K:
                i = int(np.flatnonzero(y64 >= K)[0])
                raise ValueError(
                    f"label {int(y64[i])} at position {i} is outside [0, {classes_from}={K}); "
                    f"pass a larger {classes_from} or relabel the data"
                )
        return y64.reshape(n, 1), K
    if n_classes is not None:
        raise ValueError("n_classes is only used by family='multinomial'")
    y2 = y64.reshape(n, 1) if y64.ndim == 1 else np.ascontiguousarray(y64)
    if y2.shape[1] < 1:
        raise ValueError("y has zero columns")
    if family == "logistic":
        bad = (y2 < 0) | (y2 > 1)
        if np.any(bad):
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise ValueError(
                f"logistic targets must lie in [0, 1] (labels 0/1 or probabilities), "
                f"got {y2[i].tolist() if y2.shape[1] > 1 else y2[i, 0]} in row {i}; "
                "for labels -1/+1 pass (y + 1) / 2"
            )
    if family == "poisson" and np.any(y2 < 0):
        i = int(np.flatnonzero((y2 < 0).any(axis=1))[0])
        raise ValueError(
            f"poisson targets are counts and must be >= 0, got a negative value in row {i}"
        )
    return y2, y2.shape[1]


def target_support(fam, y2, K, live):
    """Which sides of each output's target range the rows of positive weight reach.

    Returns ``(above, below)``, boolean arrays of length K: ``above[k]`` is whether some live
    row's target of output k lies above the bottom of the range (logistic and poisson
    ``y > 0``; multinomial: some live row has label k), ``below[k]`` whether some lies below
    the top (logistic ``y < 1``; poisson and multinomial have no top, always True). A GLM's
    unpenalized intercept has a finite optimum only where both hold
    (:func:`runaway_intercept_message`). Gaussian targets are unbounded: all True.
    ``live`` is the (n,) mask of rows of positive weight; per-chunk results combine by ``|``.
    """
    yl = y2[live]
    if fam == MULTINOMIAL:
        present = np.bincount(yl[:, 0].astype(np.int64), minlength=K)[:K] > 0
        return present, np.ones(K, dtype=bool)
    if fam == GAUSSIAN:
        return np.ones(K, dtype=bool), np.ones(K, dtype=bool)
    above = (yl > 0).any(axis=0)
    below = (yl < 1).any(axis=0) if fam == LOGISTIC else np.ones(K, dtype=bool)
    return above, below


def separable_message(fam, y2, eta, live, model):
    """Why the loss has no finite minimizer when ``l2 = 0`` and the outputs ``eta`` (n, K)
    classify every sample of positive weight (``live``) correctly, or None.

    Correct: logistic (sigmoid cross-entropy) ``η_ik > 0`` exactly when ``y_ik = 1`` (labels
    0/1 only; a soft label means no claim); multinomial (softmax) ``argmax η_i = y_i`` with a
    strict margin. Then scaling the outputs up (θ for a GLM, the last layer for a network,
    whose outputs are linear in it) lowers every loss: the infimum is approached only as the
    parameters grow without bound.
    """
    if fam == LOGISTIC:
        if np.any((y2[live] != 0) & (y2[live] != 1)):  # rows of weight 0 play no part
            return None
        correct = np.where(y2 == 1, eta > 0, eta < 0).all(axis=1)
    elif fam == MULTINOMIAL:
        top = eta.argmax(axis=1)
        margin = np.take_along_axis(eta, top[:, None], 1)[:, 0]
        second = np.partition(eta, -2, axis=1)[:, -2]
        correct = (top == y2[:, 0].astype(np.int64)) & (margin > second)
    else:
        return None
    if not np.all(correct[live]):
        return None
    return (f"The data are separable: the current parameters classify every sample "
            f"correctly, so with l2 = 0 the loss keeps decreasing as {model} and has no "
            "finite minimizer. Set l2 > 0 (for example l2=1e-4).")


def runaway_intercept_message(fam, above, below, bias="intercept"):
    """Why the loss has no finite minimizer when an unpenalized intercept has targets on one
    side of its range only (from :func:`target_support`), or None when every output has both.

    The intercept's own gradient, ``sum_i w_i (mu_ik - y_ik)`` (multinomial: ``sum_i w_i
    p_ik`` for a class no live row has), then keeps one sign for every finite parameter
    vector, whatever the L2 penalty on the weights: the intercept runs to ±inf and any fit
    only stops where the gradient tolerance lets it. ``bias`` names the parameter in the
    message: ``"intercept"`` (a GLM, which can drop it) or ``"output bias"`` (an MLP).
    """
    K = above.shape[0]
    out = (lambda k: f" (output {k})") if K > 1 else (lambda k: "")
    fix = (" The L2 penalty does not bound it (it applies to the coefficients, not the "
           "intercept); fit_intercept=False removes the intercept." if bias == "intercept" else
           " The L2 penalty does not bound it (it applies to the weights, not the biases).")
    head = f"the {bias} of that class" if fam == MULTINOMIAL else f"the {bias}"
    if fam == MULTINOMIAL:
        empty = np.flatnonzero(~above)
        if empty.size == 0:
            return None
        names = ", ".join(str(int(k)) for k in empty[:5]) + (", ..." if empty.size > 5 else "")
        return (f"No sample of positive weight has class {names} (of K = {K} classes): {head} "
                "keeps falling and the loss has no finite minimizer. Relabel the classes present "
                "to 0 .. K'-1 (np.unique(y, return_inverse=True)[1]) and set the class count to "
                "match." + fix)
    for k in range(K):
        if not above[k]:
            what = ("every sample of positive weight has y = 0" if fam == LOGISTIC
                    else "every target of positive weight is 0")
            need = "both labels" if fam == LOGISTIC else "a positive count"
            return (f"The data leave {head} no finite optimum: {what}{out(k)}, so it keeps "
                    f"falling and the loss has no finite minimizer; the data must hold {need}."
                    + fix)
        if not below[k]:
            return (f"The data leave {head} no finite optimum: every sample of positive weight "
                    f"has y = 1{out(k)}, so it keeps growing and the loss has no finite "
                    "minimizer; the data must hold both labels." + fix)
    return None


class LabelStreams:
    """Independent random streams for sampled labels (uniform, normal and Poisson draws),
    spawned from ``seed``. Each stream is consumed row by row, so a sample does not depend on
    how the rows are split into blocks."""

    def __init__(self, seed):
        rng = make_rng(seed)
        self.uniform, self.normal, self.poisson = rng.spawn(3)


def sample_residuals(family, eta, h, streams):
    """Residuals ``l'(eta, y~)`` at labels ``y~`` drawn from the model's own distribution.

    ``eta`` and ``h`` are the (n, K) linear predictor and curvature state (for the
    multinomial, h holds the probabilities); ``streams`` a :class:`LabelStreams`. Their second
    moment has expectation ``l''``.
    """
    if family == "gaussian":
        return -streams.normal.standard_normal(eta.shape)
    if family == "logistic":
        z = np.exp(-np.abs(eta))
        mu = np.where(eta >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
        return mu - (streams.uniform.random(eta.shape) < mu)
    if family == "poisson":
        # counts beyond 1e7 are drawn from the normal approximation N(mu, mu), whose residual
        # has the same second moment (numpy's Poisson sampler stops near 9e18)
        with np.errstate(over="ignore"):  # an overflow is reported by the caller's check
            mu = np.exp(eta)
        big = mu > 1e7
        counts = streams.poisson.poisson(np.where(big, 0.0, mu))
        normal = streams.normal.standard_normal(mu.shape)
        return np.where(big, -np.sqrt(mu) * normal, mu - counts)
    # multinomial: r = p - e_{y~}
    p = h
    u = streams.uniform.random((p.shape[0], 1))
    cdf = np.cumsum(p, axis=1)
    labels = np.minimum((cdf < u).sum(axis=1), p.shape[1] - 1)
    r = p.copy()
    r[np.arange(p.shape[0]), labels] -= 1.0
    return r
