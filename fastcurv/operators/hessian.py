"""The exact Hessian of the objective as a LinearOperator."""

from ._base import CurvatureOperator


class HessianOperator(CurvatureOperator):
    r"""``v ↦ (∇²F(θ) + δ I) v``: the exact Hessian of the objective, penalty included.

    Parameters
    ----------
    problem : fastcurv.GLM or any object with the problem API (``hvp``, ``n_params``, ...)
    theta : (P,) parameters at which the Hessian is taken (copied)
    damping : float, default 0
        δ ≥ 0 added to every coordinate.

    Works unchanged with ``scipy.sparse.linalg.cg``, ``minres``, ``eigsh`` and ``lsmr``; a
    block ``matmat`` costs one pass over the data.
    """

    def _product(self, V):
        return self.problem.hvp(self.theta, V)
