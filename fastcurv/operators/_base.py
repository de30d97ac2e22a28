"""Shared bookkeeping of the curvature operators: shapes, dtype, damping, blocks."""

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._validation import (
    add_damping,
    as_float_scalar,
    check_damping_fits,
    check_problem,
    plain_array,
    problem_theta,
)


class CurvatureOperator(LinearOperator):
    """A symmetric (P, P) operator ``v ↦ C(θ) v + δ v`` at fixed parameters ``θ``.

    Subclasses define ``_product(V)`` for a (P, m) block. ``matvec``, ``matmat`` (one pass
    over the data for the whole block), ``rmatvec`` and ``adjoint`` (the operator itself) come
    from here. The dtype is the problem's, so SciPy never probes the operator.
    """

    def __init__(self, problem, theta, damping=0.0):
        self.problem = check_problem(problem, "problem")
        self.theta = problem_theta(problem, theta).copy()
        self.damping = as_float_scalar(damping, "damping", low=0.0)
        check_damping_fits(self.damping, problem.dtype)
        P = problem.n_params
        super().__init__(dtype=np.dtype(problem.dtype), shape=(P, P))

    def _product(self, V):
        raise NotImplementedError

    def _matmat(self, V):
        V = plain_array(V, "v")
        out = self._product(V)
        if self.damping:
            out = add_damping(out, self.damping, V)
        return out

    def _matvec(self, v):
        v = plain_array(v, "v").reshape(-1)
        return self._matmat(v[:, None])[:, 0]

    def _rmatvec(self, v):
        return self._matvec(v)

    def _rmatmat(self, V):
        return self._matmat(V)

    def _adjoint(self):
        return self

    def __repr__(self):
        name = type(self).__name__
        return f"<{name} {self.shape[0]}x{self.shape[1]} {self.dtype}, damping={self.damping}>"
