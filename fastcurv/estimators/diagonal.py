"""Hutchinson's stochastic estimate of the diagonal of a symmetric operator."""

from typing import NamedTuple

import numpy as np

from .._validation import as_int, make_rng
from .trace_estimators import _as_operator, _rademacher

#: probes whose values are summarized together before merging into the running mean and
#: spread (fixed, so that the estimate's bits do not depend on ``block``)
MERGE_GROUP = 32


class DiagonalEstimate(NamedTuple):
    """``diag``: the estimate (P,); ``std_error``: its per-coordinate standard error (P,)
    (sample standard deviation of the probes over ``sqrt(n_probes)``; NaN for one probe);
    ``n_probes``: the number of probes used."""

    diag: np.ndarray
    std_error: np.ndarray
    n_probes: int


def hutchinson_diag(op, n_probes, seed=None, block=32):
    r"""Estimate ``diag(A)`` of a symmetric (P, P) operator from Rademacher probes.

    .. math::

        \widehat{\mathrm{diag}}(A) = \frac{1}{S}\sum_{s=1}^{S} z_s \odot (A z_s),
        \qquad z_s \in \{-1, +1\}^P \text{ uniform},

    which is unbiased; coordinate ``j`` has variance ``Σ_{k≠j} A_jk² / S``. Probes are applied
    ``block`` at a time through ``op.matmat`` (one data pass per block for fastcurv
    operators). The standard error is estimated from the spread of the per-probe values.

    Parameters
    ----------
    op : scipy.sparse.linalg.LinearOperator (or anything with ``shape`` and ``matmat``)
    n_probes : int >= 1
    seed : int or numpy.random.Generator, optional
    block : int, default 32
        Probes per ``matmat`` call: memory and speed only. The probes are drawn one after
        the other from ``seed`` whatever ``block`` is, so the estimate is the same (bitwise
        for operators whose products of one column do not depend on the block's width).

    Returns
    -------
    DiagonalEstimate(diag, std_error, n_probes), arrays in float64.
    """
    n_probes = as_int(n_probes, "n_probes")
    block = as_int(block, "block")
    op, P, dtype = _as_operator(op)  # also takes dense arrays and sparse matrices
    rng = make_rng(seed)
    # per coordinate: the mean and the sum of squared deviations M2 of its probe values, in
    # groups of MERGE_GROUP probes merged by Chan, Golub & LeVeque's update (never
    # Σx² − n mean², which cancels to 0 when |A_jj| is 1e8 times the spread); the values are
    # divided by a per-coordinate power of two (from the first group) so that squares neither
    # underflow nor overflow. The probes are drawn probe by probe and the groups do not
    # depend on ``block``: ``block`` changes how many probes one matmat takes, not the result
    mean = np.zeros(P)
    m2 = np.zeros(P)
    scale = None
    done = 0
    pending = np.empty((P, 0))
    drawn = 0
    while drawn < n_probes:
        m = min(int(block), n_probes - drawn)
        Z = _rademacher(rng, P, m).astype(dtype)
        AZ = np.asarray(op.matmat(Z), dtype=np.float64).reshape(P, m)
        pending = np.concatenate([pending, Z.astype(np.float64) * AZ], axis=1)
        drawn += m
        while pending.shape[1] >= MERGE_GROUP or (drawn == n_probes and pending.shape[1]):
            vals, pending = pending[:, :MERGE_GROUP], pending[:, MERGE_GROUP:]
            if scale is None:
                top = np.max(np.abs(vals), axis=1)
                scale = np.exp2(np.floor(np.log2(np.where(top > 0, top, 1.0))))
            vals = vals / scale[:, None]
            g = vals.shape[1]
            bmean = vals.mean(axis=1)
            bm2 = np.square(vals - bmean[:, None]).sum(axis=1)
            total = done + g
            delta = bmean - mean
            m2 += bm2 + delta * delta * (done * g / total)
            mean += delta * (g / total)
            done = total
    if n_probes > 1:
        se = scale * np.sqrt(m2 / (n_probes - 1) / n_probes)
    else:
        se = np.full(P, np.nan)
    return DiagonalEstimate(mean * scale, se, int(n_probes))
