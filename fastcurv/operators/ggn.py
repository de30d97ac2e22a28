"""The generalized Gauss-Newton matrix as a LinearOperator."""

from ._base import CurvatureOperator


class GGNOperator(CurvatureOperator):
    r"""``v ↦ (G(θ) + δ I) v`` with ``G = (1/S) Σ_i w_i J_iᵀ ∇²ℓ_i J_i + λ I_weights``
    (``S = Σ_i w_i``).

    Positive semidefinite by construction; for GLMs with canonical links it equals the Hessian.
    See :class:`HessianOperator` for the parameters.
    """

    def _product(self, V):
        return self.problem.ggn_vp(self.theta, V)
