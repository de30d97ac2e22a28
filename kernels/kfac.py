"""Elementwise work of the Kronecker-factored curvature (K-FAC, EK-FAC).

A layer's K-FAC block is ``A ⊗ G`` on its augmented weights ``W̃`` (n_in + 1, n_out), with

    A = Σ_i c_i ã_i ã_iᵀ,        G = Σ_i c_i Σ_j g_ij g_ijᵀ,       c_i = w_i / W,

``ã_i = [a_i; 1]`` the layer's augmented input and ``g_ij`` its output-side gradients (one
per backpropagated column ``j``). Both factors are Gram matrices of row-scaled copies,
``A = Ãᵀ Ã`` with ``Ã_i = √c_i ã_i``, which BLAS forms with ``syrk`` (half the flops of a
general product and symmetric by construction). The kernels here build those scaled copies
and the squared rotated coordinates of EK-FAC's second moments in single loops.
"""

import math

from ._jit import jit


@jit
def scaled_rows(src, c, s, bias, out):
    """``out[i] = √c[s + i] · [src[i], 1]`` (the ``1`` only if ``bias``) for every row of
    ``src``; ``out`` has ``src.shape[1] + bias`` columns."""
    nb, n = src.shape
    for i in range(nb):
        r = math.sqrt(c[s + i])
        o = out[i]
        x = src[i]
        if r == 0.0:  # a row of weight 0 adds nothing, also where its values overflowed
            for j in range(n):
                o[j] = 0.0
        else:
            for j in range(n):
                o[j] = r * x[j]
        if bias:
            o[n] = r


@jit
def add_squares(src, out, first):
    """``out = src ⊙ src`` (``first``) or ``out += src ⊙ src``, elementwise on (nb, w)."""
    nb, w = src.shape
    for i in range(nb):
        x = src[i]
        o = out[i]
        if first:
            for j in range(w):
                o[j] = x[j] * x[j]
        else:
            for j in range(w):
                o[j] += x[j] * x[j]


@jit
def square_inplace(M):
    """``M = M ⊙ M`` elementwise on a 2-D array."""
    nb, w = M.shape
    for i in range(nb):
        r = M[i]
        for j in range(w):
            r[j] = r[j] * r[j]
