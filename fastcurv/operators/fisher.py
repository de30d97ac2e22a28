"""The empirical Fisher matrix as a LinearOperator."""

from ._base import CurvatureOperator


class FisherOperator(CurvatureOperator):
    r"""``v ↦ (F_emp(θ) + δ I) v`` with the empirical Fisher ``(1/W) Σ_i w_i g_i g_iᵀ``.

    ``g_i`` are the per-sample loss gradients at the observed targets; the penalty is not
    included. ``kind="mc"`` (labels sampled from the model) is reserved for a later release and
    raises ``NotImplementedError`` for now.

    Parameters
    ----------
    problem, theta, damping : see :class:`HessianOperator`
    kind : {"empirical"}
    mc_samples, seed : used by ``kind="mc"``
    """

    def __init__(self, problem, theta, kind="empirical", mc_samples=1, seed=None, damping=0.0):
        if kind == "mc":
            raise NotImplementedError(
                "FisherOperator(kind='mc') is not available yet; use kind='empirical' or "
                "GGNOperator (the exact expectation of the MC Fisher)"
            )
        if kind != "empirical":
            raise ValueError(f"kind must be 'empirical' or 'mc', got {kind!r}")
        self.kind = kind
        super().__init__(problem, theta, damping)

    def _product(self, V):
        return self.problem.fisher_vp(self.theta, V)
