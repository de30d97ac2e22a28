"""K-FAC: the Kronecker-factored block-diagonal approximation of the Fisher / GGN."""


import numpy as np

from .._validation import as_float_scalar, as_int, check_problem, make_rng
from . import _kfac_factors as kf
from ._kronecker import EigenKroneckerBlocks, KroneckerBlocks, pinv_entries, pinv_psd, psd_eigh


def check_options(problem, theta, fisher, damping, seed, mc_samples):
    """Validated ``(theta copy, damping, integer seed, mc_samples)``; the seed is drawn once
    so that every pass over the data sees the same sampled labels."""
    check_problem(problem, "problem")
    if not hasattr(problem, "_curvature_rows"):
        raise TypeError(
            f"K-FAC needs every row's layer inputs in one process, which a "
            f"{type(problem).__name__} does not have; use preconditioner='diag', or build "
            f"K-FAC on an in-memory sample (p.subset(rows))")
    if fisher not in kf.KINDS:
        raise ValueError(f"fisher must be one of {', '.join(map(repr, kf.KINDS))}, got {fisher!r}")
    mc_samples = as_int(mc_samples, "mc_samples")
    damping = as_float_scalar(damping, "damping", low=0.0)
    theta = problem._check_theta(theta).copy()
    kf.check_layout(problem)
    rng = make_rng(seed)  # checked for every kind: a bad seed is refused, not ignored
    root = int(rng.integers(2**63)) if fisher == "mc" else 0
    return theta, damping, root, int(mc_samples)


def init_factors(op, problem, theta, fisher, damping, seed, mc_samples):
    """The setup shared by K-FAC and EK-FAC: validate, keep ``problem``, ``theta`` and
    ``fisher`` on ``op``, accumulate ``op.factors``; returns ``(damping, root seed, mc)``."""
    theta, damping, root, mc = check_options(problem, theta, fisher, damping, seed, mc_samples)
    op.problem = problem
    op.theta = theta
    op.fisher = fisher
    op.factors = kf.factors(problem, theta, fisher, mc, root)
    return damping, root, mc


def layer_blocks(problem):
    """Per layer ``(offset, n_A, n_out)`` in ``θ``."""
    layers, offsets = problem._kfac_layout()
    return [(offsets[l], n_in + int(b), w) for l, (n_in, w, b) in enumerate(layers)]


class KFACOperator(KroneckerBlocks):
    r"""K-FAC: ``v ↦ (⊕_l A_l ⊗ G_l + δ I) v``, block diagonal over layers.

    For layer ``l`` with augmented inputs ``ã_i = [a_i; 1]`` and output-side gradients
    ``g_i = ∂ℓ_i/∂z_l``, normalized like the objective (``c_i = w_i / W``):

    .. math::

        A_l = \sum_i c_i\, \tilde a_i \tilde a_i^\top,\qquad
        G_l = \sum_i c_i \sum_j g_{ij} g_{ij}^\top,

    and on the layer's augmented weights ``V`` (n_in + 1, n_out) the block acts as
    ``V ↦ A V G``. ``fisher`` chooses the gradients ``g_ij``:

    * ``"type2"``: backpropagated columns of a square root of the loss Hessian (``K``
      backward passes per row block; ``Σ_j g_ij g_ijᵀ`` is then exact and ``A ⊗ G``
      approximates the GGN block),
    * ``"mc"``: gradients at labels sampled from the model (``mc_samples`` backward passes;
      an unbiased estimate of the type-2 ``G``), seeded by ``seed``,
    * ``"empirical"``: gradients at the observed labels (approximates the empirical Fisher).

    The L2 penalty is not part of ``A ⊗ G`` (like :meth:`fisher_vp`); to approximate the
    penalized GGN, pass it as damping: ``damping = p.l2 + δ`` (it then also damps the bias
    rows). ``A ⊗ G`` is exact when every sample has the same layer inputs (a single data
    point, or identical rows) and for one linear layer with the mse loss (``G = I``).

    Factors are accumulated in one streaming pass over the row blocks (``syrk`` per block,
    summed in float64 in a fixed order); the first layer's ``A`` depends only on the data and
    is cached on the problem. A product costs two matrix products per layer.

    Parameters
    ----------
    problem : fastcurv.MLP or fastcurv.GLM
    theta : array (P,)
    fisher : {"mc", "empirical", "type2"}, default "mc"
    damping : float >= 0
    seed : int or numpy.random.Generator, optional (``"mc"`` only)
    mc_samples : int, default 1
        Label draws per row for ``"mc"``.

    Attributes
    ----------
    factors : list of (A, G) float64 arrays, one pair per layer.
    """

    def __init__(self, problem, theta, fisher="mc", damping=0.0, seed=None, *, mc_samples=1):
        damping, _, _ = init_factors(self, problem, theta, fisher, damping, seed, mc_samples)
        self._eig = None
        super().__init__(layer_blocks(problem), problem.n_params, problem.dtype,
                         [a for a, _ in self.factors], [g for _, g in self.factors], damping)

    def eigen(self):
        """Per layer ``(λ_A, Q_A, λ_G, Q_G)`` (float64, computed once)."""
        if self._eig is None:
            A0 = getattr(self.problem, "_kfac_A0", None)
            self._eig = [(kf.input_gram_eigen(self.problem) if A is A0 else psd_eigh(A))
                         + psd_eigh(G) for A, G in self.factors]
        return self._eig

    def inverse(self, kind="exact"):
        r"""The damped inverse as a symmetric ``LinearOperator``.

        * ``kind="exact"``: ``(A ⊗ G + δ I)⁻¹`` exactly, from the eigendecompositions
          ``A = Q_A Λ_A Q_Aᵀ``, ``G = Q_G Λ_G Q_Gᵀ`` (float64):
          ``V ↦ Q_A [(Q_Aᵀ V Q_G) / (λ_A λ_Gᵀ + δ)] Q_Gᵀ`` (four matrix products per layer).
        * ``kind="factored"``: Martens & Grosse's factored Tikhonov damping
          ``(A + π √δ I)⁻¹ ⊗ (G + √δ/π I)⁻¹`` with ``π = √((tr A / n_A) / (tr G / n_out))``:
          the inverse of a different matrix (it adds ``δ I`` plus the cross terms
          ``π√δ I ⊗ G + √δ/π A ⊗ I``), two matrix products per layer.

        Where ``λ_A λ_G + δ`` (or a damped factor eigenvalue) is at or below
        ``max(n_A, n_out) · ε · max`` (only possible with ``δ`` near 0 and singular factors)
        the direction is dropped: a pseudo-inverse, never inf or NaN. ``ε`` is the machine
        epsilon of the operator's dtype: a float32 problem's factors are only float32-accurate,
        and their rounding-level null eigenvalues must not be inverted.
        """
        if kind not in ("exact", "factored"):
            raise ValueError(f"kind must be 'exact' or 'factored', got {kind!r}")
        delta = self.damping
        P, dt = self.shape[0], self.dtype
        if kind == "exact":
            bases, diags = [], []
            for la, qa, lg, qg in self.eigen():
                size = max(la.size, lg.size)
                diags.append(pinv_entries(np.outer(la, lg) + delta, size, dt))
                bases.append((qa, qg))
            return EigenKroneckerBlocks(self._layers, P, dt, bases, diags)
        left, right = [], []
        for (A, G), (la, qa, lg, qg) in zip(self.factors, self.eigen(), strict=True):
            ta, tg = np.trace(A) / A.shape[0], np.trace(G) / G.shape[0]
            pi = np.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            r = np.sqrt(delta)
            left.append(pinv_psd(la, qa, pi * r, la.size, dt))
            right.append(pinv_psd(lg, qg, r / pi, lg.size, dt))
        return KroneckerBlocks(self._layers, P, dt, left, right)

    def __repr__(self):
        return (f"<KFACOperator {self.shape[0]}x{self.shape[1]} {self.dtype}, "
                f"fisher={self.fisher!r}, {len(self.factors)} layers, damping={self.damping}>")
