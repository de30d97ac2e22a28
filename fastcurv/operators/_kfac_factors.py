"""Kronecker factors of the layer-wise curvature, accumulated over row blocks.

For a layer with augmented inputs ``ã_i = [a_i; 1]`` (n_in + 1) and output-side gradients
``g_ij = ∂ℓ_i/∂z`` (n_out; one per backpropagated column ``j``), the curvature block on the
layer's weights ``W̃`` (C-order flattening) is

    C = Σ_i c_i Σ_j (ã_i ã_iᵀ) ⊗ (g_ij g_ijᵀ),        c_i = w_i / W,

and K-FAC replaces it by ``A ⊗ G`` with ``A = Σ_i c_i ã_i ã_iᵀ`` and ``G = Σ_i c_i Σ_j g_ij
g_ijᵀ`` (Martens & Grosse 2015). Both are Gram matrices ``Mᵀ M`` of row-scaled copies
(``M_i = √c_i ã_i``), formed with BLAS ``syrk`` per row block in float64 (float32 rows are
converted: each product of two float32 numbers is exact in float64; a float32 ``syrk`` over
a block of 10⁶ rows left the input factor 1.75e-5 relative off), summed over blocks in a
fixed order, and mirrored from the upper triangle: symmetric positive semidefinite by
construction (up to rounding in the last bits of the eigenvalues).

EK-FAC (George et al. 2018) keeps the eigenbases ``Q_A``, ``Q_G`` and replaces the
eigenvalue products by the exact second moments in that basis,

    S_kl = Σ_i c_i Σ_j ((Q_Aᵀ ã_i)_k)² ((Q_Gᵀ g_ij)_l)² = Σ_i c_i u_ik t_il,

``u_i = (Q_Aᵀ ã_i)²`` and ``t_i = Σ_j (Q_Gᵀ g_ij)²``: one more pass, one product ``Uᵀ T`` per
block (in float64, as the factors). ``S`` is the diagonal of ``C`` in the Kronecker eigenbasis.

The problem supplies the rows through ``_curvature_rows`` (output-side gradients per block
and column) and ``_layer_input`` (the inputs of the current block); ``_kfac_layout`` gives
the layers. The first layer's ``A`` depends only on the data: it is computed once per
problem and cached.
"""

import numpy as np
import scipy.sparse as sp

from .. import _validation as val
from .._gram import gram_upper as _gram
from .._gram import mirror as _mirror
from ..kernels import kfac as K_

#: factors with more entries than this are refused (dense (n, n) float64 matrices)
MAX_FACTOR_ENTRIES = 2**26
#: rows per block for the first-layer products (times its width)
_BLOCK_ELEMENTS = 2**22

KINDS = ("mc", "empirical", "type2")


def check_layout(problem):
    layers, offsets = problem._kfac_layout()
    for l, (n_in, w, bias) in enumerate(layers):
        na = n_in + int(bias)
        for name, size in (("A", na), ("G", w)):
            if size * size > MAX_FACTOR_ENTRIES:
                hint = (" (the first layer's input: use fewer features, or a diagonal "
                        "preconditioner)" if name == "A" and l == 0 else "")
                raise ValueError(
                    f"layer {l}'s K-FAC factor {name} would be a dense {size}x{size} matrix, "
                    f"more than {MAX_FACTOR_ENTRIES} entries{hint}"
                )
    return layers, offsets


def _scaled(src, c, s, bias, buf):
    """``√c_i [src_i, 1]`` (the ones column only if ``bias``) in ``buf`` (dense src)."""
    nb, n = src.shape
    out = buf[:nb * (n + int(bias))].reshape(nb, n + int(bias))
    K_.scaled_rows(src, c, s, bias, out)
    return out


def _first_layer_rows(X, c, bias):
    """Yield ``(s, e, M, r)`` with ``M = √c [X, 1]`` for dense ``X`` (``r`` None), or for CSR
    ``X`` the sparse ``M = √c X`` and the column ``r = √c``, both in float64: products
    ``Mᵀ M`` sum the block's rows in the matrix dtype (float32 data were 3e-5 to 6e-5 relative
    off on 200,000 CSR rows, 1.75e-5 on 10⁶ dense ones), while each float32 product is exact
    in float64."""
    n, d = X.shape
    block = max(1, _BLOCK_ELEMENTS // (d + 1))
    if sp.issparse(X):
        for s in range(0, n, block):
            e = min(n, s + block)
            r = np.sqrt(np.asarray(c[s:e], dtype=np.float64))
            yield s, e, (sp.diags(r) @ X[s:e].astype(np.float64)).tocsr(), r
        return
    buf = np.empty(min(n, block) * (d + 1))
    for s in range(0, n, block):
        e = min(n, s + block)
        yield s, e, _scaled(X[s:e], c, s, bias, buf), None


def input_gram_eigen(problem):
    """``psd_eigh(A_0)`` of the first layer's input Gram matrix, cached on the problem like
    ``A_0`` itself (it depends only on the data; a Newton-CG fit preconditioned by K-FAC
    would otherwise decompose the same matrix at every step)."""
    from ._kronecker import psd_eigh

    eig = getattr(problem, "_kfac_A0_eig", None)
    if eig is None:
        eig = psd_eigh(input_gram(problem))
        problem._kfac_A0_eig = eig
    return eig


def input_gram(problem):
    """``A_0 = Σ_i c_i ã_i ã_iᵀ`` of the first layer (float64), cached on the problem."""
    A = getattr(problem, "_kfac_A0", None)
    if A is not None:
        return A
    d, _w, bias = problem._kfac_layout()[0][0]
    X = problem._layer_input(0, 0, problem.n_samples)
    c = _weights(problem)
    na = d + int(bias)
    A = np.zeros((na, na))
    for _s, _e, M, r in _first_layer_rows(X, c, bias):
        if r is None:
            A += _gram(M)
        else:
            XtX = (M.T @ M).toarray()
            A[:d, :d] += np.triu(XtX)
            if bias:
                A[:d, d] += np.asarray(M.T @ r, dtype=np.float64).ravel()
                A[d, d] += float(np.dot(r.astype(np.float64), r))
    A = _mirror(A)
    problem._kfac_A0 = A
    return A


def _weights(problem):
    return problem._cw if hasattr(problem, "_cw") else problem._a


def factors(problem, theta, kind, mc_samples=1, seed=None):
    """Per layer ``(A, G)`` in float64 (see the module docstring). ``"mc"`` averages ``G``
    over ``mc_samples`` draws."""
    layers, _ = check_layout(problem)
    L = len(layers)
    if kind == "type2" and hasattr(problem, "_kfac_type2_output_gram"):
        # one-layer problems (GLMs): G = Σ_i c_i ∇²ℓ_i in closed form, no row blocks
        return [(val.finite_result(input_gram(problem), "the K-FAC input factor A"),
                 val.finite_result(problem._kfac_type2_output_gram(theta),
                                   "the K-FAC output factor G"))]
    c = _weights(problem)
    As = [input_gram(problem)] + [np.zeros((n_in + 1, n_in + 1)) for n_in, _, _ in layers[1:]]
    Gs = [np.zeros((w, w)) for _, w, _ in layers]
    width = max(max(n_in + 1 for n_in, _, _ in layers[1:]) if L > 1 else 1,
                max(w for _, w, _ in layers))
    buf = None
    for s, e, j, deltas in problem._curvature_rows(theta, kind, mc_samples, seed):
        nb = e - s
        if buf is None or buf.shape[0] < nb * width:
            buf = np.empty(nb * width)  # float64: see the module docstring
        if j == 0:
            for l in range(1, L):
                As[l] += _gram(_scaled(problem._layer_input(l, s, e), c, s, False, buf))
        for l in range(L):
            Gs[l] += _gram(_scaled(deltas[l], c, s, False, buf))
    out = []
    for l in range(L):
        A = As[l] if l == 0 else _mirror(As[l])
        G = _mirror(Gs[l])
        if kind == "mc":
            G /= mc_samples
        out.append((val.finite_result(A, f"the K-FAC input factor A of layer {l}"),
                    val.finite_result(G, f"the K-FAC output factor G of layer {l}")))
    return out


def second_moments(problem, theta, kind, mc_samples, seed, bases):
    """EK-FAC's ``S_l = Σ_i c_i Σ_j (Q_Aᵀ ã_i)² (Q_Gᵀ g_ij)²ᵀ`` (float64, (n_A, n_out)) per
    layer, given ``bases[l] = (Q_A, Q_G)`` in the problem's dtype. One more pass over the
    rows; ``"mc"`` must see the same draws as :func:`factors` (same integer seed)."""
    layers, _ = check_layout(problem)
    L = len(layers)
    c = _weights(problem)
    # the products in float64, as the factors' (module docstring)
    bases = [(QA.astype(np.float64), QG.astype(np.float64)) for QA, QG in bases]
    S = [np.zeros((n_in + int(b), w)) for n_in, w, b in layers]
    cols = {"type2": problem.n_outputs, "mc": mc_samples, "empirical": 1}[kind]
    U = [None] * L
    T = [None] * L
    buf = None
    for s, e, j, deltas in problem._curvature_rows(theta, kind, mc_samples, seed):
        if j == 0:
            for l in range(L):
                QA = bases[l][0]
                if l == 0:
                    U[0] = _rotated_first_layer(problem, s, e, c, layers[0][2], QA)
                else:
                    Hl = problem._layer_input(l, s, e)
                    if buf is None or buf.shape[0] < Hl.size:
                        buf = np.empty(Hl.size)
                    U[l] = _scaled(Hl, c, s, False, buf) @ QA
                    K_.square_inplace(U[l])
        for l in range(L):
            R = deltas[l].astype(np.float64) @ bases[l][1]
            if j == 0:
                T[l] = np.empty_like(R)
            K_.add_squares(R, T[l], j == 0)
        if j == cols - 1:
            for l in range(L):
                S[l] += U[l].T @ T[l]
    if kind == "mc":
        S = [x / mc_samples for x in S]
    return [val.finite_result(x, "the EK-FAC second moments") for x in S]


def _rotated_first_layer(problem, s, e, c, bias, QA):
    """``(√c_i Q_Aᵀ ã_i)²`` for the rows ``s:e`` of the first layer, (nb, n_A)."""
    X = problem._layer_input(0, s, e)
    if sp.issparse(X):
        r = np.sqrt(np.asarray(c[s:e], dtype=np.float64))
        d = X.shape[1]
        U = np.asarray((sp.diags(r) @ X) @ QA[:d], dtype=np.float64)
        if bias:
            U += r[:, None] * QA[d][None, :]
    else:
        nb, d = X.shape
        buf = np.empty(nb * (d + int(bias)))
        U = _scaled(X, c, s, bias, buf) @ QA
    U = np.ascontiguousarray(U)
    K_.square_inplace(U)
    return U
