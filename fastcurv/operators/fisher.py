"""The Fisher matrix (empirical, or Monte Carlo with sampled labels) as a LinearOperator."""



from .._validation import as_int, make_rng
from ._base import CurvatureOperator


class FisherOperator(CurvatureOperator):
    r"""``v ↦ (F(θ) + δ I) v`` with a Fisher matrix ``F = (1/S) Σ_i w_i g_i g_iᵀ``
    (``S = Σ_i w_i``).

    * ``kind="empirical"``: ``g_i`` are the per-sample loss gradients at the observed
      targets.
    * ``kind="mc"``: ``F = (1/M) Σ_s (1/S) Σ_i w_i g̃_is g̃_isᵀ`` with gradients at labels
      ``ỹ_is`` drawn from the model's own predictive distribution, ``M = mc_samples`` draws
      per row. The draws are made once (from ``seed``) and reused by every product, so the
      operator is one fixed symmetric positive semidefinite matrix; its expectation over
      the draws is the Gauss-Newton matrix without the penalty. Each product costs one
      forward pass and ``S`` backward passes (MLP) or ``S`` passes over ``X`` (GLM).

    The penalty is not included.

    Parameters
    ----------
    problem, theta, damping : see :class:`HessianOperator`
    kind : {"empirical", "mc"}
    mc_samples : int, default 1 (``kind="mc"``)
    seed : int or numpy.random.Generator, optional (``kind="mc"``)
    """

    def __init__(self, problem, theta, kind="empirical", mc_samples=1, seed=None, damping=0.0):
        if kind not in ("empirical", "mc"):
            raise ValueError(f"kind must be 'empirical' or 'mc', got {kind!r}")
        self.kind = kind
        self.mc_samples = as_int(mc_samples, "mc_samples")
        # drawn once: every product sees the same sampled labels
        rng = make_rng(seed)  # checked for every kind: a bad seed is refused, not ignored
        self._seed = int(rng.integers(2**63)) if kind == "mc" else 0
        super().__init__(problem, theta, damping)

    def _product(self, V):
        if self.kind == "mc":
            return self.problem._mc_fisher_vp(self.theta, V, self.mc_samples, self._seed)
        return self.problem.fisher_vp(self.theta, V)
