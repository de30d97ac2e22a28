"""The Jacobian of the model outputs as a LinearOperator."""

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._validation import check_problem, plain_array, problem_theta


class JacobianOperator(LinearOperator):
    r"""``J`` of shape (n K, P): ``J v`` stacks the output changes ``η̇_i = J_i v`` row by row
    (sample-major, output ``k`` of sample ``i`` at ``i K + k``); ``Jᵀ u = Σ_i J_iᵀ u_i``.

    Unweighted and unnormalized (the Jacobian of ``η``, not of the loss). ``matvec`` is the
    problem's ``jvp``, ``rmatvec`` its ``vjp``; blocks go through in one call.
    """

    def __init__(self, problem, theta):
        self.problem = check_problem(problem, "problem", needs=("jvp", "vjp"))
        self.theta = problem_theta(problem, theta).copy()
        n, K, P = problem.n_samples, problem.n_outputs, problem.n_params
        super().__init__(dtype=np.dtype(problem.dtype), shape=(n * K, P))

    def _matmat(self, V):
        out = self.problem.jvp(self.theta, plain_array(V, "v"))
        return out.reshape(self.shape[0], -1)

    def _matvec(self, v):
        return self._matmat(plain_array(v, "v").reshape(-1, 1))[:, 0]

    def _rmatmat(self, U):
        U = plain_array(U, "u")
        n, K = self.problem.n_samples, self.problem.n_outputs
        return self.problem.vjp(self.theta, U.reshape(n, K, U.shape[1]))

    def _rmatvec(self, u):
        return self._rmatmat(plain_array(u, "u").reshape(-1, 1))[:, 0]
