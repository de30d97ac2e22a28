"""Multilayer perceptron: forward, backward, R-forward and R-backward passes over row blocks.

Network (one block of rows at a time; ``L`` layers, hidden activations ``φ_l``)::

    h_0 = x,   z_l = h_{l−1} W_l + b_l,   h_l = φ_l(z_l)  (l < L),   η = z_L

Backward pass (``δ_L = c ⊙ ℓ'(η)``, ``c_i = w_i / W``)::

    ∇W_l = h_{l−1}ᵀ δ_l,   ∇b_l = Σ_rows δ_l,
    P_{l−1} = δ_l W_lᵀ,    δ_{l−1} = P_{l−1} ⊙ φ'(z_{l−1})

R-forward pass along ``V = (VW_l, Vb_l)`` (Pearlmutter's R-operator, ``R{·}`` = directional
derivative; ``R h_0 = 0``)::

    R z_l = R h_{l−1} W_l + h_{l−1} VW_l + Vb_l,   R h_l = φ'(z_l) ⊙ R z_l,   J V = R z_L

R-backward pass (exact Hessian: ``R δ_L = c ⊙ ∇²ℓ(η) R η``)::

    R∇W_l = h_{l−1}ᵀ Rδ_l + R h_{l−1}ᵀ δ_l,        R∇b_l = Σ_rows Rδ_l
    Rδ_{l−1} = (Rδ_l W_lᵀ + δ_l VW_lᵀ) ⊙ φ'(z_{l−1}) + P_{l−1} ⊙ φ''(z_{l−1}) ⊙ R z_{l−1}

The Gauss-Newton product drops the terms that carry ``δ`` (it backpropagates ``R δ_L`` like a
gradient). All matrix products go to BLAS through ``np.dot(a, b, out)``; the elementwise work
(activation, its derivatives, bias, loss) is fused into single loops over each block.

Buffers (all C-contiguous, allocated once by the caller and reused across calls): per layer
``l`` and block of ``nb`` rows, the views ``Z, A, D, DP, RZ, RA, RD`` of shape ``(nb, w_l)``
start at ``aoff[l]`` (``aoff[l] = B Σ_{j<l} w_j``) of flat arrays of size ``B Σ_l w_l``; ``T``
and ``T2`` hold ``B max_l w_l`` (and ``B d`` for the first layer), ``GT`` one layer's weight
matrix, ``HS`` (B, K) float64 the per-row loss curvature (``ℓ''`` or the softmax ``p``).
Parameters: layer ``l``'s ``[W_l; b_l]`` starts at ``poff[l]`` of ``theta``.

Sums over rows: inside a block BLAS sums rows in its own fixed order; blocks are added in
order into float64 accumulators. No result depends on the number of threads.
"""

import math

import numpy as np

from . import activations as act
from ._jit import jit
from .losses import MULTINOMIAL, pointwise, softmax_row

# modes of run()
VALUE = 0
VALUE_GRAD = 1
HVP = 2
GGN = 3
JVP = 4
VJP = 5
FISHER = 6
GGN_DIAG = 7


@jit(inline=True)
def _rows(buf, aoff, l, nb, w):
    o = aoff[l]
    return buf[o:o + nb * w].reshape((nb, w))


@jit(inline=True)
def _weights(theta, poff, sizes, l):
    n_in = sizes[l]
    w = sizes[l + 1]
    o = poff[l]
    return theta[o:o + n_in * w].reshape((n_in, w)), theta[o + n_in * w:o + (n_in + 1) * w]


# ----------------------------------------------------------------------------- first layer
@jit
def x_times(X, xd, xi, xp, sparse, s, e, M, out):
    """``out = X[s:e] @ M`` for dense or CSR ``X``."""
    if not sparse:
        np.dot(X[s:e], M, out)
        return
    w = M.shape[1]
    for i in range(s, e):
        r = out[i - s]
        for j in range(w):
            r[j] = 0.0
        for k in range(xp[i], xp[i + 1]):
            v = xd[k]
            row = M[xi[k]]
            for j in range(w):
                r[j] += v * row[j]


@jit
def xt_times(X, xd, xi, xp, sparse, s, e, D, out, square):
    """``out = X[s:e]ᵀ @ D`` (or ``(X ⊙ X)[s:e]ᵀ @ D`` if ``square``) for dense or CSR ``X``.

    Dense ``square`` products are not done here (the caller squares into a buffer)."""
    if not sparse:
        np.dot(X[s:e].T, D, out)
        return
    w = D.shape[1]
    out[:, :] = 0.0
    for i in range(s, e):
        r = D[i - s]
        for k in range(xp[i], xp[i + 1]):
            v = xd[k]
            if square:
                v = v * v
            o = out[xi[k]]
            for j in range(w):
                o[j] += v * r[j]


# ----------------------------------------------------------------------------- accumulation
@jit(inline=True)
def _acc(out, o, GT):
    """``out[o : o + GT.size] += GT`` (float64 accumulator)."""
    g = GT.ravel()
    for t in range(g.shape[0]):
        out[o + t] += g[t]


@jit(inline=True)
def _acc_colsum(out, o, D):
    nb, w = D.shape
    for i in range(nb):
        for j in range(w):
            out[o + j] += D[i, j]


@jit
def acc_layer(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, A, l, Dl, GT, out, bias):
    """``out[layer l] += [h_{l−1}ᵀ Dl; Σ_rows Dl]`` (the bias row only if ``bias``)."""
    nb = e - s
    n_in = sizes[l]
    w = sizes[l + 1]
    G = GT[:n_in * w].reshape((n_in, w))
    if l == 0:
        xt_times(X, xd, xi, xp, sparse, s, e, Dl, G, False)
    else:
        np.dot(_rows(A, aoff, l - 1, nb, n_in).T, Dl, G)
    _acc(out, poff[l], G)
    if bias:
        _acc_colsum(out, poff[l] + n_in * w, Dl)


# ----------------------------------------------------------------------------- passes
@jit
def forward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A):
    """Pre-activations ``Z`` and activations ``A`` of every layer for rows ``s:e``."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        W, b = _weights(theta, poff, sizes, l)
        w = sizes[l + 1]
        Zl = _rows(Z, aoff, l, nb, w)
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, W, Zl)
        else:
            np.dot(_rows(A, aoff, l - 1, nb, sizes[l]), W, Zl)
        if l < L - 1:
            act.bias_act(acts[l], Zl, b, _rows(A, aoff, l, nb, w))
        else:
            act.bias_act(-1, Zl, b, Zl)


@jit
def loss_block(lc, Z, aoff, sizes, Y, cw, s, e, HS, D, scaled):
    """Loss of rows ``s:e`` (weighted by ``c_i``); writes the output-layer residual
    ``D = c_i ℓ'(η_i)`` (or ``ℓ'(η_i)`` if not ``scaled``) and the curvature state ``HS``."""
    nb = e - s
    L = sizes.shape[0] - 1
    K = sizes[L]
    eta = _rows(Z, aoff, L - 1, nb, K)
    U = _rows(D, aoff, L - 1, nb, K)
    ev = np.empty(K)
    p = np.empty(K)
    r = np.empty(K)
    total = 0.0
    for i in range(nb):
        c = cw[s + i]
        f = c if scaled else 1.0
        if lc == MULTINOMIAL:
            for k in range(K):
                ev[k] = eta[i, k]
            li = softmax_row(ev, int(Y[s + i, 0]), p, r)
            for k in range(K):
                HS[i, k] = p[k]
                U[i, k] = f * r[k]
        else:
            li = 0.0
            for k in range(K):
                lk, g1, g2 = pointwise(lc, np.float64(eta[i, k]), Y[s + i, k])
                li += lk
                HS[i, k] = g2
                U[i, k] = f * g1
        total += c * li
    return total


@jit
def loss_hess_apply(lc, HS, cw, s, R, out):
    """``out_i = c_i ∇²ℓ(η_i) R_i`` per row (softmax: ``c (p ⊙ r − p (p·r))``)."""
    nb, K = R.shape
    for i in range(nb):
        c = cw[s + i]
        if lc == MULTINOMIAL:
            pr = 0.0
            for k in range(K):
                pr += HS[i, k] * R[i, k]
            for k in range(K):
                out[i, k] = c * HS[i, k] * (R[i, k] - pr)
        else:
            for k in range(K):
                out[i, k] = c * HS[i, k] * R[i, k]


@jit
def backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D, DP,
             GT, out, want_grad):
    """Backpropagate the output-layer ``D`` to every layer (``D_l``, and ``DP_l = D_{l+1}
    W_{l+1}ᵀ`` before the activation derivative); add the gradient to ``out`` if asked."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L - 1, -1, -1):
        w = sizes[l + 1]
        Dl = _rows(D, aoff, l, nb, w)
        if want_grad:
            acc_layer(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, A, l, Dl, GT, out, True)
        if l > 0:
            W, _ = _weights(theta, poff, sizes, l)
            n_in = sizes[l]
            DPp = _rows(DP, aoff, l - 1, nb, n_in)
            np.dot(Dl, W.T, DPp)
            act.times_d1(acts[l - 1], _rows(Z, aoff, l - 1, nb, n_in),
                         _rows(A, aoff, l - 1, nb, n_in), DPp, _rows(D, aoff, l - 1, nb, n_in))


@jit
def r_forward(X, xd, xi, xp, sparse, s, e, theta, v, sizes, acts, poff, aoff, Z, A, RZ, RA, T):
    """``RZ_l``, ``RA_l`` of every layer along the direction ``v`` (P,); ``RZ_L = J v``."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        W, _ = _weights(theta, poff, sizes, l)
        VW, Vb = _weights(v, poff, sizes, l)
        w = sizes[l + 1]
        RZl = _rows(RZ, aoff, l, nb, w)
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, VW, RZl)
            for i in range(nb):
                for j in range(w):
                    RZl[i, j] += Vb[j]
        else:
            n_in = sizes[l]
            np.dot(_rows(RA, aoff, l - 1, nb, n_in), W, RZl)
            Tl = T[:nb * w].reshape((nb, w))
            np.dot(_rows(A, aoff, l - 1, nb, n_in), VW, Tl)
            for i in range(nb):
                for j in range(w):
                    RZl[i, j] += Tl[i, j] + Vb[j]
        if l < L - 1:
            act.times_d1(acts[l], _rows(Z, aoff, l, nb, w), _rows(A, aoff, l, nb, w), RZl,
                         _rows(RA, aoff, l, nb, w))


@jit
def r_backward(X, xd, xi, xp, sparse, s, e, theta, v, sizes, acts, poff, aoff, Z, A, D, DP,
               RZ, RA, RD, T, GT, out):
    """Exact Hessian product: add ``R∇θ`` of rows ``s:e`` to ``out`` given ``RD_L``."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L - 1, -1, -1):
        w = sizes[l + 1]
        n_in = sizes[l]
        RDl = _rows(RD, aoff, l, nb, w)
        acc_layer(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, A, l, RDl, GT, out, True)
        if l > 0:
            Dl = _rows(D, aoff, l, nb, w)
            # R h_{l-1}ᵀ δ_l joins the weight part
            acc_layer(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, RA, l, Dl, GT, out, False)
            W, _ = _weights(theta, poff, sizes, l)
            VW, _ = _weights(v, poff, sizes, l)
            RDp = _rows(RD, aoff, l - 1, nb, n_in)
            np.dot(RDl, W.T, RDp)
            Tl = T[:nb * n_in].reshape((nb, n_in))
            np.dot(Dl, VW.T, Tl)
            act.r_backward_fuse(acts[l - 1], _rows(Z, aoff, l - 1, nb, n_in),
                                _rows(A, aoff, l - 1, nb, n_in), RDp, Tl,
                                _rows(DP, aoff, l - 1, nb, n_in), _rows(RZ, aoff, l - 1, nb, n_in))


@jit
def fisher_block(X, xd, xi, xp, sparse, s, e, cw, v, sizes, poff, aoff, A, D, T, T2, GT, out):
    """Empirical Fisher on rows ``s:e``: ``out += Σ_i c_i (g_i · v) g_i`` from the unscaled
    per-layer residuals ``D`` (``g_i`` = per-sample gradient, ``h_{l−1,i} ⊗ δ_{l,i}``)."""
    nb = e - s
    L = sizes.shape[0] - 1
    sv = np.zeros(nb)
    for l in range(L):
        w = sizes[l + 1]
        VW, Vb = _weights(v, poff, sizes, l)
        Tl = T[:nb * w].reshape((nb, w))
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, VW, Tl)
        else:
            np.dot(_rows(A, aoff, l - 1, nb, sizes[l]), VW, Tl)
        Dl = _rows(D, aoff, l, nb, w)
        for i in range(nb):
            t = 0.0
            for j in range(w):
                t += (Tl[i, j] + Vb[j]) * Dl[i, j]
            sv[i] += t
    for i in range(nb):
        sv[i] *= cw[s + i]
    for l in range(L):
        w = sizes[l + 1]
        Dl = _rows(D, aoff, l, nb, w)
        Sl = T2[:nb * w].reshape((nb, w))
        for i in range(nb):
            for j in range(w):
                Sl[i, j] = sv[i] * Dl[i, j]
        acc_layer(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, A, l, Sl, GT, out, True)


@jit
def sqrt_hess_column(lc, HS, c, out):
    """Column ``c`` of a square root ``S`` of the loss Hessian (``S Sᵀ = ∇²ℓ``) per row.

    Softmax: ``S = diag(√p) − p √pᵀ``, column ``c`` is ``√p_c (e_c − p)``; otherwise
    ``S = diag(√ℓ'')``."""
    nb, K = out.shape
    for i in range(nb):
        if lc == MULTINOMIAL:
            sp = math.sqrt(HS[i, c])
            for k in range(K):
                out[i, k] = -sp * HS[i, k]
            out[i, c] += sp
        else:
            for k in range(K):
                out[i, k] = 0.0
            out[i, c] = math.sqrt(HS[i, c])


@jit
def diag_layers(X, xd, xi, xp, sparse, s, e, cw, sizes, poff, aoff, aoff_in, D, SQ, T2, GT,
                out):
    """``out += Σ_i c_i (h̃_{l−1,i} ⊙ h̃_{l−1,i}) ⊗ (δ_{l,i} ⊙ δ_{l,i})`` for every layer:
    the diagonal of ``Σ_i c_i g_i g_iᵀ`` for per-sample gradients ``g_i`` built from ``D``.
    ``SQ`` holds the squared layer inputs (dense first layer included)."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        w = sizes[l + 1]
        n_in = sizes[l]
        Dl = _rows(D, aoff, l, nb, w)
        Sl = T2[:nb * w].reshape((nb, w))
        for i in range(nb):
            c = cw[s + i]
            for j in range(w):
                Sl[i, j] = c * Dl[i, j] * Dl[i, j]
        G = GT[:n_in * w].reshape((n_in, w))
        if l == 0 and sparse:
            xt_times(X, xd, xi, xp, sparse, s, e, Sl, G, True)
        else:
            np.dot(_rows(SQ, aoff_in, l, nb, n_in).T, Sl, G)
        _acc(out, poff[l], G)
        _acc_colsum(out, poff[l] + n_in * w, Sl)


@jit
def square_inputs(X, sparse, s, e, sizes, aoff_in, A, aoff, SQ):
    """``SQ_l = h_{l−1} ⊙ h_{l−1}`` for every layer (the first layer only for dense X)."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        n_in = sizes[l]
        if l == 0 and sparse:
            continue
        Q = _rows(SQ, aoff_in, l, nb, n_in)
        if l == 0:
            for i in range(nb):
                for j in range(n_in):
                    x = X[s + i, j]
                    Q[i, j] = x * x
        else:
            H = _rows(A, aoff, l - 1, nb, n_in)
            for i in range(nb):
                for j in range(n_in):
                    Q[i, j] = H[i, j] * H[i, j]


# ----------------------------------------------------------------------------- driver
@jit
def run(mode, X, xd, xi, xp, sparse, lc, Y, cw, theta, sizes, acts, poff, aoff, aoff_in,
        block, V, U, out, J, Z, A, D, DP, RZ, RA, RD, T, T2, GT, HS, SQ):
    """One call for a whole product over all rows, block by block.

    * ``VALUE``: returns the loss ``Σ c_i ℓ_i``;  ``VALUE_GRAD``: also ``out[0] += ∇``.
    * ``HVP`` / ``GGN`` / ``FISHER``: ``out[j] += C V[j]`` for each direction ``V[j]`` (P,)
      (data term only: the caller adds the penalty).
    * ``JVP``: ``J[j, rows] = (J_θ V[j])`` (n, K);  ``VJP``: ``out[j] += Σ_i J_iᵀ U[j, i]``.
    * ``GGN_DIAG``: ``out[0] += diag(Σ_i c_i J_iᵀ ∇²ℓ_i J_i)`` (K backward passes per block).
    """
    n = cw.shape[0]
    L = sizes.shape[0] - 1
    K = sizes[L]
    m = V.shape[0]
    total = 0.0
    for s in range(0, n, block):
        e = min(n, s + block)
        nb = e - s
        forward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A)
        if mode == JVP:
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          Z, A, RZ, RA, T)
                RZo = _rows(RZ, aoff, L - 1, nb, K)
                for i in range(nb):
                    for k in range(K):
                        J[j, s + i, k] = RZo[i, k]
            continue
        if mode == VJP:
            Do = _rows(D, aoff, L - 1, nb, K)
            for j in range(U.shape[0]):
                for i in range(nb):
                    for k in range(K):
                        Do[i, k] = U[j, s + i, k]
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D,
                         DP, GT, out[j], True)
            continue
        scaled = mode != FISHER and mode != GGN_DIAG
        total += loss_block(lc, Z, aoff, sizes, Y, cw, s, e, HS, D, scaled)
        if mode == VALUE:
            continue
        if mode == VALUE_GRAD:
            backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D, DP,
                     GT, out[0], True)
        elif mode == HVP:
            backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D, DP,
                     GT, out[0], False)
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          Z, A, RZ, RA, T)
                loss_hess_apply(lc, HS, cw, s, _rows(RZ, aoff, L - 1, nb, K),
                                _rows(RD, aoff, L - 1, nb, K))
                r_backward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                           Z, A, D, DP, RZ, RA, RD, T, GT, out[j])
        elif mode == GGN:
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          Z, A, RZ, RA, T)
                loss_hess_apply(lc, HS, cw, s, _rows(RZ, aoff, L - 1, nb, K),
                                _rows(RD, aoff, L - 1, nb, K))
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, RD,
                         DP, GT, out[j], True)
        elif mode == FISHER:
            backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D, DP,
                     GT, out[0], False)
            for j in range(m):
                fisher_block(X, xd, xi, xp, sparse, s, e, cw, V[j], sizes, poff, aoff, A, D, T,
                             T2, GT, out[j])
        elif mode == GGN_DIAG:
            square_inputs(X, sparse, s, e, sizes, aoff_in, A, aoff, SQ)
            for c in range(K):
                sqrt_hess_column(lc, HS, c, _rows(D, aoff, L - 1, nb, K))
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, Z, A, D,
                         DP, GT, out[0], False)
                diag_layers(X, xd, xi, xp, sparse, s, e, cw, sizes, poff, aoff, aoff_in, D, SQ,
                            T2, GT, out[0])
    return total


@jit
def per_sample_block(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, A, D, G):
    """Rows ``s:e`` of the per-sample gradients ``G[i] = [h̃_{l−1,i} ⊗ δ_{l,i}]_l`` (dense)."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        n_in = sizes[l]
        w = sizes[l + 1]
        o = poff[l]
        Dl = _rows(D, aoff, l, nb, w)
        for i in range(nb):
            g = G[s + i]
            if l == 0 and sparse:
                for t in range(n_in * w):
                    g[o + t] = 0.0
                for k in range(xp[s + i], xp[s + i + 1]):
                    v = xd[k]
                    base = o + xi[k] * w
                    for j in range(w):
                        g[base + j] = v * Dl[i, j]
            else:
                for a in range(n_in):
                    x = X[s + i, a] if l == 0 else A[aoff[l - 1] + i * n_in + a]
                    for j in range(w):
                        g[o + a * w + j] = x * Dl[i, j]
            for j in range(w):
                g[o + n_in * w + j] = Dl[i, j]
