"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ)."""

from typing import NamedTuple

import numpy as np
from scipy.linalg import eigh_tridiagonal

from .._validation import as_float_scalar, as_int, make_rng
from .trace_estimators import _apply, _as_operator, _rademacher

#: most float64 entries of Lanczos basis held at once (256 MB); more probes run in turn
_BASIS_FLOATS = 2**25


class SpectralDensity(NamedTuple):
    """``grid``: (n_grid,) points ``t``; ``density``: (n_grid,) smoothed spectral density
    ``φ_σ(t)`` there; ``nodes``, ``weights``: (n_probes, n_steps) Gauss quadrature nodes
    (Ritz values ``θ``) and weights ``τ`` of each probe, each row summing to 1 (rows cut short
    by a Lanczos breakdown are padded with weight 0 at a repeated node)."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray


def _row_norms(W):
    """Euclidean norm of each row of ``W``, without overflow or underflow: a sum of squares
    overflowed for ‖A‖ above ~1e154 and vanished below ~1e-162, and the Lanczos runs
    stopped after one step (one node per probe)."""
    top = np.max(np.abs(W), axis=1)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(np.sum(np.square(W / safe[:, None]), axis=1))


def _lanczos(lin, dtype, V1, n_steps, block):
    """Lanczos with full reorthogonalization for every column of ``V1`` (P, S) at once.

    Returns ``alpha`` (S, n_steps), ``beta`` (S, n_steps - 1) and ``k`` (S,): the number of
    steps each probe made before its Krylov space became invariant (``β_j`` at rounding
    level: the tridiagonal matrix of probe ``s`` is then ``alpha[s, :k], beta[s, :k-1]``).
    One ``matmat`` per step serves all probes still running.
    """
    P, S = V1.shape
    basis = np.zeros((S, n_steps, P))
    alpha = np.zeros((S, n_steps))
    beta = np.zeros((S, max(n_steps - 1, 0)))
    k = np.full(S, n_steps)
    basis[:, 0] = V1.T
    active = np.arange(S)
    # breakdown threshold: a residual this small relative to ‖A‖ is rounding in the products
    # (4 √P eps of the products' dtype). It must not be larger: a cluster of eigenvalues
    # below it would end the run and collapse onto one node (at √eps ‖A‖ = 1.5e-8 ‖A‖, 97
    # eigenvalues in [1e-12, 1e-9] below 3 near 1 put tr(log A)/P at -22.6 instead of
    # -23.5). Continuing past true rounding level is harmless: with full
    # reorthogonalization the extra nodes get weights of the order of (residual / ‖A‖)²
    rel_tol = 4.0 * np.sqrt(P) * np.finfo(dtype).eps
    anorm = np.zeros(S)
    for j in range(n_steps):
        Vj = basis[active, j]  # (a, P)
        Wt = _apply(lin, Vj.T, dtype, block).T  # rows: A v_j
        alpha[active, j] = np.einsum("ap,ap->a", Vj, Wt)
        anorm[active] = np.maximum(anorm[active], _row_norms(Wt))
        if j == n_steps - 1:
            break
        # full reorthogonalization against v_1..v_j, twice ("twice is enough": Parlett),
        # which also removes the α_j v_j and β_{j-1} v_{j-1} terms of the three-term recurrence
        Vs = basis[active, : j + 1]  # (a, j+1, P)
        for _ in range(2):
            Wt -= np.einsum("ajp,aj->ap", Vs, np.einsum("ajp,ap->aj", Vs, Wt))
        b = _row_norms(Wt)
        stop = (b <= rel_tol * anorm[active]) | (j + 1 >= P)
        beta[active, j] = np.where(stop, 0.0, b)
        k[active[stop]] = j + 1
        go = ~stop
        basis[active[go], j + 1] = Wt[go] / b[go, None]
        active = active[go]
        if active.size == 0:
            break
    return alpha, beta, k


def spectral_density(op, n_probes, n_steps, seed=None, grid=None, n_grid=512, sigma=None):
    r"""Smoothed eigenvalue density of a symmetric (P, P) operator by stochastic Lanczos
    quadrature.

    The spectral density ``φ(t) = (1/P) Σ_i δ(t − λ_i)`` satisfies
    ``∫ f(t) φ(t) dt = tr f(A) / P``. For a probe ``v = z/‖z‖`` (``z`` Rademacher),
    ``n_steps`` Lanczos steps from ``v`` give the tridiagonal ``T = U diag(θ) Uᵀ``, and
    Gauss quadrature on the spectral measure of ``v``

    .. math:: v^\top f(A)\, v \approx \sum_{j=1}^{n_\text{steps}} \tau_j f(\theta_j),
              \qquad \tau_j = U_{1j}^2,

    is exact for every polynomial ``f`` of degree ``< 2 n_steps`` (Golub & Meurant, *Matrices,
    Moments and Quadrature*, 2010). Since ``E[v vᵀ] = I/P``, averaging over probes estimates
    ``tr f(A) / P`` without bias for such ``f`` (Ubaru, Chen & Saad, *Fast estimation of
    tr(f(A)) via stochastic Lanczos quadrature*, SIMAX 2017). The density is the
    Gaussian-smoothed quadrature measure (Ghorbani, Krishnan & Xiao, *An investigation into
    neural net optimization via Hessian eigenvalue density*, ICML 2019):

    .. math:: \phi_\sigma(t) = \frac{1}{n_\text{probes}} \sum_{s=1}^{n_\text{probes}}
              \sum_{j=1}^{n_\text{steps}} \tau_{sj}\, \mathcal N(t;\ \theta_{sj}, \sigma^2),

    which integrates to 1 over the real line. The Lanczos vectors are fully reorthogonalized
    (twice) at every step, so the Ritz values carry no spurious copies; all probes run in
    lockstep, one ``matmat`` on the block of running probes per step (``n_steps`` data passes
    in all for fastcurv operators). Memory: ``n_probes × n_steps × P`` floats for the Lanczos
    bases, capped at 256 MB by running the probes in groups (more passes, same result).

    **Breakdown.** When the Krylov space of a probe becomes invariant after ``k < n_steps``
    steps (``A`` has few distinct eigenvalues, or ``n_steps > P``), the ``k`` Ritz values are
    exact eigenvalues and the quadrature is exact for *every* ``f``; that probe's row keeps
    ``k`` nodes and is padded with weight 0 at a copy of its last node (so ``Σ τ f(θ)`` stays
    finite for any ``f`` finite at the nodes).

    Parameters
    ----------
    op : scipy.sparse.linalg.LinearOperator, or anything with ``shape``, ``dtype`` and
        ``matmat`` (dense or sparse matrices are accepted too)
        Real symmetric (P, P). Products run in its dtype; the recurrence runs in float64.
    n_probes : int >= 1
    n_steps : int >= 1
        Lanczos steps per probe (quadrature nodes per probe); 30–100 is typical.
    seed : int or numpy.random.Generator, optional
    grid : 1-D array of finite values, optional
        Where to evaluate the density. Default: ``n_grid`` points spanning
        ``[min θ − 3σ, max θ + 3σ]`` over the nodes of positive weight.
    n_grid : int, default 512
    sigma : float > 0, optional
        Width of the Gaussian kernel. Default: 1% of ``max θ − min θ`` (or of ``max(|θ|, 1)``
        when all nodes coincide).

    Returns
    -------
    SpectralDensity(grid, density, nodes, weights), all float64.

    Notes
    -----
    Moments: ``weights * nodes**m`` summed over a row equals ``vᵀ A^m v`` of that probe
    (to rounding) for ``m < 2 n_steps``, so ``(weights * nodes**m).sum(1).mean()`` is an
    unbiased estimate of ``tr(A^m) / P``; likewise ``(weights * f(nodes)).sum(1).mean()``
    estimates ``tr f(A) / P`` for smooth ``f`` (``P ×`` that for ``tr f(A)``).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> A = aslinearoperator(np.diag(np.repeat([-1.0, 2.0, 5.0], 10)))
    >>> sd = spectral_density(A, 4, 8, seed=0)
    >>> np.round(np.unique(sd.nodes[sd.weights > 0]), 8)   # breakdown after 3 steps
    array([-1.,  2.,  5.])
    """
    n_probes = as_int(n_probes, "n_probes")
    n_steps = as_int(n_steps, "n_steps")
    n_grid = as_int(n_grid, "n_grid", low=2)
    if sigma is not None:
        sigma = as_float_scalar(sigma, "sigma", low=0.0, allow_equal=False)
    if grid is not None:
        g = np.asarray(grid)
        if g.dtype.kind not in "iuf":
            raise TypeError(f"grid must be a 1-D array of real numbers, got {g.dtype} values")
        grid = g.astype(np.float64)
        if grid.ndim != 1 or grid.size < 1 or not np.all(np.isfinite(grid)):
            raise ValueError("grid must be a non-empty 1-D array of finite values")
    lin, P, dtype = _as_operator(op, symmetric=True)
    rng = make_rng(seed)

    V1 = _rademacher(rng, P, n_probes) / np.sqrt(P)
    # probes run in lockstep, as many at a time as fit in _BASIS_FLOATS of Lanczos vectors
    per = max(1, min(n_probes, _BASIS_FLOATS // (n_steps * P)))
    alpha = np.zeros((n_probes, n_steps))
    beta = np.zeros((n_probes, max(n_steps - 1, 0)))
    k = np.zeros(n_probes, dtype=np.int64)
    for start in range(0, n_probes, per):
        rows = slice(start, min(start + per, n_probes))
        alpha[rows], beta[rows], k[rows] = _lanczos(lin, dtype, V1[:, rows], n_steps,
                                                    block=per)

    nodes = np.zeros((n_probes, n_steps))
    weights = np.zeros((n_probes, n_steps))
    for s in range(n_probes):
        ks = int(k[s])
        if ks == 1:
            theta, U = alpha[s, :1].copy(), np.ones((1, 1))
        else:
            theta, U = eigh_tridiagonal(alpha[s, :ks], beta[s, : ks - 1])
        nodes[s, :ks] = theta
        nodes[s, ks:] = theta[-1]
        weights[s, :ks] = U[0] ** 2
    weights /= weights.sum(axis=1, keepdims=True)  # exactly 1 per row (U orthogonal: ~1 anyway)

    live = nodes[weights > 0] if np.any(weights > 0) else nodes.ravel()
    lo, hi = float(live.min()), float(live.max())
    if sigma is None:
        span = hi - lo if hi > lo else max(abs(lo), abs(hi), 1.0)
        sigma = 0.01 * span
    with np.errstate(over="ignore", divide="ignore"):
        peak = (1.0 / sigma) / np.sqrt(2.0 * np.pi)
        ends = (lo - 3.0 * sigma, hi + 3.0 * sigma)
    if not np.isfinite(peak):
        # the density's peaks, 1/(σ√(2π)), are beyond float64: NaN and inf came back
        raise ValueError(f"sigma={sigma:g} is too small: the density's peaks 1/(sigma "
                         "sqrt(2 pi)) exceed float64; use a larger sigma")
    if grid is None:
        if not np.all(np.isfinite(ends)):
            raise ValueError(f"sigma={sigma:g} is too large for the default grid (the "
                             "nodes' range widened by 3 sigma overflows float64); use a "
                             "smaller sigma or pass grid")
        grid = np.linspace(ends[0], ends[1], n_grid)
    density = _gaussian_mixture(grid, nodes, weights, sigma) / n_probes
    return SpectralDensity(grid, density, nodes, weights)


def _gaussian_mixture(t, nodes, weights, sigma, chunk=64):
    """``Σ_{s,j} τ_sj N(t; θ_sj, σ²)`` at each ``t``, in chunks of ``t`` to bound memory."""
    th = nodes.ravel()
    w = weights.ravel()
    keep = w > 0
    th, w = th[keep], w[keep]
    out = np.empty(t.size)
    norm = (1.0 / sigma) / np.sqrt(2.0 * np.pi)  # (σ√2π overflows for σ near float64's top)
    for start in range(0, t.size, chunk):
        tt = t[start:start + chunk, None]
        with np.errstate(over="ignore"):  # a square beyond float64: exp(-inf) = 0, exact
            out[start:start + chunk] = np.exp(-0.5 * ((tt - th) / sigma) ** 2) @ w * norm
    return out
