"""Symmetric Gram matrices ``α Mᵀ M`` by BLAS ``syrk`` (K-FAC factors, dense GLM curvature).

``syrk`` writes one triangle only, for half the flops of a general product; callers add up
upper triangles and mirror once at the end.
"""

import numpy as np
from scipy.linalg import blas


def gram_upper(M, alpha=1.0):
    """``alpha Mᵀ M`` for a C-contiguous (nb, w) block: upper triangle valid, lower zero, in
    ``M``'s dtype (float32 or float64)."""
    f = blas.ssyrk if M.dtype == np.float32 else blas.dsyrk
    return f(alpha, M.T, trans=0)  # M.T is Fortran-ordered (w, nb): no copy


def mirror(C):
    """The full symmetric matrix from its upper triangle."""
    U = np.triu(C)
    return U + np.triu(U, 1).T
