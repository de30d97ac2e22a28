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

Layout. A hidden layer's output is stored augmented, ``h̃ = [h, 1]``, so that the next layer
is one product with its parameter block ``W̃ = [W; b]`` (``z = h̃ W̃``, bias included) and its
gradient is one product ``h̃ᵀ δ`` written straight into the ``(n_in + 1, n_out)`` block of the
output. The Hessian's two weight terms are one product too: ``[h̃; R h̃]ᵀ [Rδ; δ]``, with ``h̃``
and ``R h̃`` (whose last column is 0) stacked by rows in one buffer ``H`` and ``Rδ``, ``δ``
stacked the same way in ``D`` (or two products where that is faster: :func:`_split_stacked`).
Only the first layer (the user's ``X``, dense or CSR, never copied) handles its bias
separately.

Buffers (C-contiguous, allocated once by the caller and reused across calls), for a block of
``nb <= B`` rows: ``Z``, ``DP``, ``RZ`` hold ``(nb, w_l)`` per layer from ``aoff[l] = B
Σ_{j<l} w_j`` (after the forward pass a tanh layer's ``Z`` holds ``1 − |a|``, not ``z``:
``activations.tanh_rows``); ``H`` holds ``(2 nb, w_l + 1)`` per hidden layer from ``hoff[l]``; ``D``
``(2 nb, w_l)`` per layer from ``2 aoff[l]``; ``T``, ``T2`` one ``(nb, max w)`` temporary,
``GT`` one layer's parameter block, ``HS`` (B, K) float64 the per-row loss curvature (``ℓ''``
or the softmax ``p``), ``ones`` (B,) ones. Parameters: layer ``l``'s ``W̃_l`` starts at
``poff[l]``.

Sums over rows: inside a block BLAS sums rows in its own fixed order; the first block writes
the output, later blocks are added in order. Larger problems split the rows into fixed chunks
(:func:`run`), each with its own share of the buffers (per-chunk offsets) and its own output,
added in chunk order. No result depends on the number of threads. Float32 data with several
blocks per chunk add the blocks' sums, the chunks' sums and the penalty in float64 (blocks of
float32 data hold at most ``F32_BLOCK_ROWS`` rows, see :class:`fastcurv.MLP`).
"""

import math

import numpy as np
from numba import prange

from . import activations as act
from ._jit import jit
from .losses import MULTINOMIAL, pointwise, softmax_hess_row, softmax_row, weighted
from .schedule import claim

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
def _rows(buf, off, l, nb, w):
    """Layer ``l``'s (nb, w) view of a flat buffer."""
    o = off[l]
    return buf[o:o + nb * w].reshape((nb, w))


@jit(inline=True)
def _stack(buf, off, l, nb, w):
    """Layer ``l``'s (2 nb, w) stacked view of a flat buffer (``off[l]`` counts 2B rows)."""
    o = off[l]
    return buf[o:o + 2 * nb * w].reshape((2 * nb, w))


@jit(inline=True)
def _block(theta, poff, sizes, l):
    """Layer ``l``'s parameter block ``W̃ = [W; b]`` (n_in + 1, n_out)."""
    return theta[poff[l]:poff[l + 1]].reshape((sizes[l] + 1, sizes[l + 1]))


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
def xt_times(X, xd, xi, xp, sparse, s, e, D, out):
    """``out = X[s:e]ᵀ @ D``."""
    if not sparse:
        np.dot(X[s:e].T, D, out)
        return
    w = D.shape[1]
    out[:, :] = 0.0
    for i in range(s, e):
        r = D[i - s]
        for k in range(xp[i], xp[i + 1]):
            v = xd[k]
            o = out[xi[k]]
            for j in range(w):
                o[j] += v * r[j]


@jit
def xsq_t_times(xd, xi, xp, s, e, cw, D, out):
    """``out = (X ⊙ X)[s:e]ᵀ @ D`` for CSR ``X``, rows of weight ``cw = 0`` left out (their
    squares may overflow; their ``D`` rows are 0). Dense squares come from
    :func:`square_inputs`."""
    w = D.shape[1]
    out[:, :] = 0.0
    for i in range(s, e):
        if cw[i] == 0.0:
            continue
        r = D[i - s]
        for k in range(xp[i], xp[i + 1]):
            v = xd[k] * xd[k]
            o = out[xi[k]]
            for j in range(w):
                o[j] += v * r[j]


# ----------------------------------------------------------------------------- gradient blocks
@jit
def grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Dl, Hl, GT, ones, out,
               first):
    """``out[layer l] (+)= h̃_{l−1}ᵀ Dl``, written into the (n_in + 1, w) block of ``out``.

    ``Hl`` is the layer input for l > 0 (``h̃``, or the stacked ``[h̃; R h̃]`` with a stacked
    ``Dl``); the first layer uses ``X`` and a row sum for the bias. ``first``: overwrite."""
    nb = e - s
    n_in = sizes[l]
    w = sizes[l + 1]
    o = poff[l]
    if l == 0:
        Gw = out[o:o + n_in * w].reshape((n_in, w))
        gb = out[o + n_in * w:o + (n_in + 1) * w]
        if first:
            xt_times(X, xd, xi, xp, sparse, s, e, Dl, Gw)
            np.dot(ones[:nb], Dl, gb)
        else:
            T = GT[:n_in * w].reshape((n_in, w))
            xt_times(X, xd, xi, xp, sparse, s, e, Dl, T)
            Gw += T
            tb = GT[:w]
            np.dot(ones[:nb], Dl, tb)
            gb += tb
        return
    G = out[o:o + (n_in + 1) * w].reshape((n_in + 1, w))
    if first:
        np.dot(Hl.T, Dl, G)
    else:
        T = GT[:(n_in + 1) * w].reshape((n_in + 1, w))
        np.dot(Hl.T, Dl, T)
        G += T


@jit(inline=True)
def _input(H, hoff, sizes, l, nb):
    """``h̃_{l−1}`` (nb, n_in + 1) for l > 0."""
    return _stack(H, hoff, l - 1, nb, sizes[l] + 1)[:nb]


# ----------------------------------------------------------------------------- passes
@jit
def forward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H):
    """Pre-activations ``Z`` and augmented activations ``h̃`` of every layer for rows ``s:e``."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        Wt = _block(theta, poff, sizes, l)
        n_in = sizes[l]
        w = sizes[l + 1]
        Zl = _rows(Z, aoff, l, nb, w)
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, Wt[:n_in], Zl)
        else:
            np.dot(_input(H, hoff, sizes, l, nb), Wt, Zl)  # bias included (h̃ = [h, 1])
        # the first layer adds its bias here, fused with the activation
        if l < L - 1:
            act.bias_act(acts[l], Zl, Wt[n_in], _stack(H, hoff, l, nb, w + 1)[:nb], l == 0)
        elif l == 0:
            act.bias_act(-1, Zl, Wt[n_in], Zl, True)


@jit
def loss_block(lc, Z, aoff, sizes, Y, cw, s, e, HS, D, scaled):
    """Loss of rows ``s:e`` (weighted by ``c_i``); writes the output-layer residual
    ``δ = c_i ℓ'(η_i)`` (or ``ℓ'(η_i)`` if not ``scaled``) and the curvature state ``HS``."""
    nb = e - s
    L = sizes.shape[0] - 1
    K = sizes[L]
    eta = _rows(Z, aoff, L - 1, nb, K)
    U = _stack(D, 2 * aoff, L - 1, nb, K)[nb:]
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
                U[i, k] = weighted(f, r[k])
        else:
            li = 0.0
            for k in range(K):
                lk, g1, g2 = pointwise(lc, np.float64(eta[i, k]), Y[s + i, k])
                li += lk
                # a row of weight 0 has no curvature, also where its own ℓ'' overflows
                HS[i, k] = g2 if c != 0.0 or math.isfinite(g2) else 0.0
                U[i, k] = weighted(f, g1)
        total += weighted(c, li)
    return total


@jit
def loss_hess_apply(lc, HS, cw, s, R, out):
    """``out_i = c_i ∇²ℓ(η_i) R_i`` per row (softmax: :func:`.losses.softmax_hess_row`)."""
    nb, K = R.shape
    for i in range(nb):
        c = cw[s + i]
        if lc == MULTINOMIAL:
            softmax_hess_row(HS[i], R[i], c, out[i])
        else:
            for k in range(K):
                out[i, k] = weighted(c, HS[i, k] * R[i, k])


@jit
def backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H, D, DP,
             GT, ones, out, want_grad, first):
    """Backpropagate the output-layer ``δ`` (the lower half of layer L's ``D`` stack) to every
    layer (``δ_l``, and ``DP_l = δ_{l+1} W_{l+1}ᵀ`` before the activation derivative); write
    or add (``first``) the gradient into ``out`` if ``want_grad``."""
    nb = e - s
    L = sizes.shape[0] - 1
    doff = 2 * aoff
    for l in range(L - 1, -1, -1):
        w = sizes[l + 1]
        n_in = sizes[l]
        Dl = _stack(D, doff, l, nb, w)[nb:]
        if want_grad:
            Hl = _input(H, hoff, sizes, l, nb) if l > 0 else _stack(H, hoff, 0, 0, 1)
            grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Dl, Hl, GT, ones,
                       out, first)
        if l > 0:
            Wt = _block(theta, poff, sizes, l)
            DPp = _rows(DP, aoff, l - 1, nb, n_in)
            np.dot(Dl, Wt[:n_in].T, DPp)
            act.times_d1(acts[l - 1], _rows(Z, aoff, l - 1, nb, n_in),
                         _stack(H, hoff, l - 1, nb, n_in + 1), DPp,
                         _stack(D, doff, l - 1, nb, n_in)[nb:])


@jit
def r_forward(X, xd, xi, xp, sparse, s, e, theta, v, sizes, acts, poff, aoff, hoff, Z, H, RZ,
              T):
    """``R z_l`` of every layer and ``R h̃_l`` (lower half of the ``H`` stacks) along the
    direction ``v`` (P,); ``R z_L = J v``."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        Wt = _block(theta, poff, sizes, l)
        Vt = _block(v, poff, sizes, l)
        n_in = sizes[l]
        w = sizes[l + 1]
        RZl = _rows(RZ, aoff, l, nb, w)
        Tl = T[:nb * w].reshape((nb, w))
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, Vt[:n_in], RZl)
        else:
            S = _stack(H, hoff, l - 1, nb, n_in + 1)
            np.dot(S[nb:], Wt, RZl)  # R h̃ has a zero last column: no bias term
            np.dot(S[:nb], Vt, Tl)  # h̃ Ṽ = h VW + Vb
        # RZ += (Vb or h̃ Ṽ), fused with R h = φ'(z) ⊙ RZ for hidden layers
        if l < L - 1:
            S = _stack(H, hoff, l, nb, w + 1)
            act.r_act(acts[l], _rows(Z, aoff, l, nb, w), S[:nb], RZl, Tl, Vt[n_in], l > 0,
                      S[nb:])
        else:
            act.r_act(act.IDENTITY, RZl, RZl, RZl, Tl, Vt[n_in], l > 0, Tl)


#: OpenBLAS's AVX-512 builds multiply matrices of up to about 10⁶ multiply-adds with
#: "small-matrix" kernels that read the operands in place; above, the general kernel packs
#: them first (see :func:`_split_stacked`)
SMALL_GEMM_MACS = 10**6


@jit(inline=True)
def _split_stacked(nb, n_in, w):
    """Whether the Hessian's weight term ``[h̃; R h̃]ᵀ [Rδ; δ]`` ((n_in, 2 nb) x (2 nb, w))
    runs as its two halves ``h̃ᵀ Rδ + R h̃ᵀ δ`` instead of one product: where the stacked
    product just exceeds :data:`SMALL_GEMM_MACS` and each half does not. On the 20-64-64-1
    network's 128-row block (65 x 256 x 64) the halves took 20.9 µs against 32.8 in float32
    (55.0 against 67.6 in float64); elsewhere one product is as fast or faster (up to 1.9x on
    tiny blocks, where the second call's overhead counts). A choice of the shapes alone: the
    sums' order, so the bits, never depend on anything else."""
    macs = 2 * nb * n_in * w
    return SMALL_GEMM_MACS < macs <= 2 * SMALL_GEMM_MACS


@jit
def r_backward(X, xd, xi, xp, sparse, s, e, theta, v, sizes, acts, poff, aoff, hoff, Z, H, D,
               DP, RZ, T, GT, ones, out, first):
    """Exact Hessian product of rows ``s:e`` into ``out`` given ``Rδ_L`` (upper half of layer
    L's ``D`` stack): ``R∇W̃_l = [h̃; R h̃]ᵀ [Rδ; δ]`` in one product per hidden layer (two
    for some shapes, :func:`_split_stacked`)."""
    nb = e - s
    L = sizes.shape[0] - 1
    doff = 2 * aoff
    for l in range(L - 1, -1, -1):
        w = sizes[l + 1]
        n_in = sizes[l]
        Ds = _stack(D, doff, l, nb, w)
        if l == 0:
            grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, 0, Ds[:nb],
                       _stack(H, hoff, 0, 0, 1), GT, ones, out, first)
            continue
        Hs = _stack(H, hoff, l - 1, nb, n_in + 1)
        if _split_stacked(nb, n_in + 1, w):
            grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Ds[:nb], Hs[:nb],
                       GT, ones, out, first)
            grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Ds[nb:], Hs[nb:],
                       GT, ones, out, False)
        else:
            grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Ds, Hs, GT, ones,
                       out, first)
        Wt = _block(theta, poff, sizes, l)
        Vt = _block(v, poff, sizes, l)
        RDp = _stack(D, doff, l - 1, nb, n_in)[:nb]
        np.dot(Ds[:nb], Wt[:n_in].T, RDp)
        Tl = T[:nb * n_in].reshape((nb, n_in))
        np.dot(Ds[nb:], Vt[:n_in].T, Tl)
        act.r_backward_fuse(acts[l - 1], _rows(Z, aoff, l - 1, nb, n_in),
                            _stack(H, hoff, l - 1, nb, n_in + 1), RDp, Tl,
                            _rows(DP, aoff, l - 1, nb, n_in), _rows(RZ, aoff, l - 1, nb, n_in))


@jit
def fisher_block(X, xd, xi, xp, sparse, s, e, cw, v, sizes, poff, aoff, hoff, H, D, T, T2, GT,
                 ones, out, first):
    """Empirical Fisher on rows ``s:e``: ``out (+)= Σ_i c_i (g_i · v) g_i`` from the unscaled
    per-layer residuals ``δ`` (``g_i`` = per-sample gradient, ``h̃_{l−1,i} ⊗ δ_{l,i}``)."""
    nb = e - s
    L = sizes.shape[0] - 1
    doff = 2 * aoff
    sv = np.zeros(nb)
    for l in range(L):
        w = sizes[l + 1]
        n_in = sizes[l]
        Vt = _block(v, poff, sizes, l)
        Tl = T[:nb * w].reshape((nb, w))
        Dl = _stack(D, doff, l, nb, w)[nb:]
        if l == 0:
            x_times(X, xd, xi, xp, sparse, s, e, Vt[:n_in], Tl)
            vb = Vt[n_in]
            for i in range(nb):
                t = 0.0
                for j in range(w):
                    t += (Tl[i, j] + vb[j]) * Dl[i, j]
                sv[i] += t
        else:
            np.dot(_input(H, hoff, sizes, l, nb), Vt, Tl)
            for i in range(nb):
                t = 0.0
                for j in range(w):
                    t += Tl[i, j] * Dl[i, j]
                sv[i] += t
    for i in range(nb):
        sv[i] = weighted(cw[s + i], sv[i])  # rows of weight 0 add nothing (even if inf)
    for l in range(L):
        w = sizes[l + 1]
        Dl = _stack(D, doff, l, nb, w)[nb:]
        Sl = T2[:nb * w].reshape((nb, w))
        for i in range(nb):
            for j in range(w):
                Sl[i, j] = weighted(sv[i], Dl[i, j])
        Hl = _input(H, hoff, sizes, l, nb) if l > 0 else _stack(H, hoff, 0, 0, 1)
        grad_block(X, xd, xi, xp, sparse, s, e, sizes, poff, H, hoff, l, Sl, Hl, GT, ones, out,
                   first)


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
def square_inputs(X, sparse, s, e, cw, sizes, qoff, H, hoff, SQ):
    """``SQ_l = h̃_{l−1} ⊙ h̃_{l−1}`` for every layer (the first layer only for dense X); rows
    of weight ``cw = 0`` get 0 (a square that overflows must not make ``0 · inf`` in the
    products of :func:`diag_layers`)."""
    nb = e - s
    L = sizes.shape[0] - 1
    for l in range(L):
        if l == 0:
            if sparse:
                continue
            n_in = sizes[0]
            Q = _rows(SQ, qoff, 0, nb, n_in)
            for i in range(nb):
                keep = cw[s + i] != 0.0
                for j in range(n_in):
                    x = X[s + i, j]
                    Q[i, j] = x * x if keep else 0.0
        else:
            n_in = sizes[l] + 1
            Q = _rows(SQ, qoff, l, nb, n_in)
            Hl = _input(H, hoff, sizes, l, nb)
            for i in range(nb):
                keep = cw[s + i] != 0.0
                for j in range(n_in):
                    Q[i, j] = Hl[i, j] * Hl[i, j] if keep else 0.0


@jit
def diag_layers(X, xd, xi, xp, sparse, s, e, cw, sizes, poff, aoff, qoff, D, SQ, T2, GT, ones,
                out):
    """``out += Σ_i c_i (h̃_{l−1,i} ⊙ h̃_{l−1,i}) ⊗ (δ_{l,i} ⊙ δ_{l,i})`` for every layer:
    the diagonal of ``Σ_i c_i g_i g_iᵀ`` for per-sample gradients ``g_i`` built from ``δ``.
    ``SQ`` holds the squared layer inputs (dense first layer included)."""
    nb = e - s
    L = sizes.shape[0] - 1
    doff = 2 * aoff
    for l in range(L):
        w = sizes[l + 1]
        n_in = sizes[l]
        Dl = _stack(D, doff, l, nb, w)[nb:]
        Sl = T2[:nb * w].reshape((nb, w))
        for i in range(nb):
            c = cw[s + i]
            for j in range(w):
                Sl[i, j] = weighted(c, Dl[i, j] * Dl[i, j])
        o = poff[l]
        if l == 0:
            G = GT[:n_in * w].reshape((n_in, w))
            if sparse:
                xsq_t_times(xd, xi, xp, s, e, cw, Sl, G)
            else:
                np.dot(_rows(SQ, qoff, 0, nb, n_in).T, Sl, G)
            _axpy(1.0, G.ravel(), out[o:o + n_in * w])
            tb = GT[:w]
            np.dot(ones[:nb], Sl, tb)
            for j in range(w):
                out[o + n_in * w + j] += tb[j]
        else:
            G = GT[:(n_in + 1) * w].reshape((n_in + 1, w))
            np.dot(_rows(SQ, qoff, l, nb, n_in + 1).T, Sl, G)
            _axpy(1.0, G.ravel(), out[o:o + (n_in + 1) * w])


# ----------------------------------------------------------------------------- driver
@jit(parallel=True)
def run(mode, X, xd, xi, xp, sparse, lc, Y, cw, l2, theta, sizes, acts, poff, aoffs, hoffs,
        qoffs, starts, block, V, U, outs, acc64, accs, J, Z, H, D, DP, RZ, Ts, T2s, GTs, HSs, SQ,
        ones, losses, skip):
    """One call for a whole product over all rows; ``outs[0]`` is written. Returns ``(data
    loss Σ c_i ℓ_i, penalty)``.

    The rows are split into the fixed chunks ``starts`` (C + 1 boundaries, chosen from the
    problem's shape only). Chunk ``c`` runs :func:`run_rows` on its rows in blocks of at most
    ``block`` rows, in its own part of the row-block buffers (offsets ``aoffs[c]``,
    ``hoffs[c]``, ``qoffs[c]``; temporaries ``Ts[c]``, ``T2s[c]``, ``GTs[c]``, ``HSs[c]``),
    into its own output ``outs[c]`` and loss ``losses[c]``. The chunks run in parallel (with
    BLAS on one thread inside each) and are then added in the order ``0, 1, ..., C − 1``: the
    result does not depend on the number of threads. ``outs`` (C, m, P) must be zero on entry
    for ``GGN_DIAG``.

    * ``VALUE``: returns ``F = Σ c_i ℓ_i + (λ/2)‖W‖²``;  ``VALUE_GRAD``: also ``out[0] = ∇F``.
    * ``HVP`` / ``GGN``: ``out[j] = C V[j] + λ V[j]_weights`` for each direction ``V[j]`` (P,);
      ``FISHER``: ``out[j] = F_emp V[j]`` (no penalty).
    * ``JVP``: ``J[j, rows] = (J_θ V[j])`` (n, K);  ``VJP``: ``out[j] = Σ_i J_iᵀ U[j, i]``.
    * ``GGN_DIAG``: ``out[0] = diag(Σ_i c_i J_iᵀ ∇²ℓ_i J_i)`` (K backward passes per block).

    ``skip``: see :func:`run_rows`.

    ``acc64`` (float32 data whose chunks have several row blocks): each block's sums (BLAS,
    float32) are added into the float64 ``accs[c]`` (C, m, P), zero on entry, and the chunks'
    sums and the penalty are added in float64 before one rounding into ``outs[0]``; as the
    GLM kernels do, so that float32 rounding does not grow with the number of rows.
    Otherwise ``accs`` is unused.
    """
    C = starts.shape[0] - 1
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(C):
        while True:
            c = claim(counter)
            if c >= C:
                break
            ca = c * acc64  # accs is a (1, 1, 1) placeholder without acc64
            losses[c] = run_rows(mode, X, xd, xi, xp, sparse, lc, Y, cw, theta, sizes, acts, poff,
                                 aoffs[c], hoffs[c], qoffs[c], starts[c], starts[c + 1], block, V,
                                 U, outs[c], acc64, accs[ca], J, Z, H, D, DP, RZ, Ts[c], T2s[c],
                                 GTs[c], HSs[c], SQ, ones, skip)
    out = outs[0]
    total = losses[0]
    sums = mode != VALUE and mode != JVP
    for c in range(1, C):
        total += losses[c]
        if sums and not acc64:
            out += outs[c]
    penalized = l2 != 0.0 and mode != JVP and mode != VJP and mode != FISHER
    pen = 0.0
    if not acc64:
        if penalized:
            pen = add_penalty(mode, l2, theta, V, sizes, poff, out)
        return total, pen
    acc = accs[0]
    for c in range(1, C):
        acc += accs[c]
    if penalized:
        pen = add_penalty(mode, l2, theta, V, sizes, poff, acc)
    if sums:
        for j in range(acc.shape[0]):
            for t in range(acc.shape[1]):
                out[j, t] = acc[j, t]
    return total, pen


@jit
def _add64(acc, out):
    """``acc += out`` ((m, P), float64 += data dtype)."""
    for j in range(out.shape[0]):
        for t in range(out.shape[1]):
            acc[j, t] += out[j, t]


@jit
def run_rows(mode, X, xd, xi, xp, sparse, lc, Y, cw, theta, sizes, acts, poff, aoff, hoff, qoff,
             r0, r1, block, V, U, out, acc64, acc, J, Z, H, D, DP, RZ, T, T2, GT, HS, SQ, ones,
             skip):
    """The rows ``r0:r1`` of :func:`run`, block by block, into ``out`` (written, not added:
    the first block writes, later blocks add in order); returns their ``Σ c_i ℓ_i`` (no
    penalty). With ``acc64`` every block writes ``out`` and is added into the float64 ``acc``.

    ``skip`` (only with a single row block, whose state the buffers still hold from a call at
    the same θ): 1 reuses the forward pass (``Z``, ``h̃``), 2 (HVP) also the loss state and
    the backward pass (every ``δ_l`` and ``DP_l``; the returned loss is then 0). CG calls the
    HVP many times at one θ: only the R-passes remain.
    """
    L = sizes.shape[0] - 1
    K = sizes[L]
    m = V.shape[0]
    doff = 2 * aoff
    total = 0.0
    pending = False  # with acc64: out holds a block's sums not yet added into acc
    for s in range(r0, r1, block):
        if pending:
            _add64(acc, out)
            pending = False
        e = min(r1, s + block)
        nb = e - s
        first = s == r0 or acc64
        if acc64 and mode == GGN_DIAG:
            out[0][:] = 0.0  # diag_layers adds into it
        pending = acc64 and mode != VALUE and mode != JVP
        if skip == 0:
            forward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H)
        if mode == JVP:
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          hoff, Z, H, RZ, T)
                RZo = _rows(RZ, aoff, L - 1, nb, K)
                for i in range(nb):
                    for k in range(K):
                        J[j, s + i, k] = RZo[i, k]
            continue
        Dout = _stack(D, doff, L - 1, nb, K)
        if mode == VJP:
            for j in range(U.shape[0]):
                for i in range(nb):
                    for k in range(K):
                        Dout[nb + i, k] = U[j, s + i, k]
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z,
                         H, D, DP, GT, ones, out[j], True, first)
            continue
        scaled = mode != FISHER and mode != GGN_DIAG
        if skip < 2:
            total += loss_block(lc, Z, aoff, sizes, Y, cw, s, e, HS, D, scaled)
        if mode == VALUE:
            continue
        if mode == VALUE_GRAD:
            backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H, D,
                     DP, GT, ones, out[0], True, first)
        elif mode == HVP:
            if skip < 2:
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H,
                         D, DP, GT, ones, out[0], False, first)
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          hoff, Z, H, RZ, T)
                loss_hess_apply(lc, HS, cw, s, _rows(RZ, aoff, L - 1, nb, K), Dout[:nb])
                r_backward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                           hoff, Z, H, D, DP, RZ, T, GT, ones, out[j], first)
        elif mode == GGN:
            for j in range(m):
                r_forward(X, xd, xi, xp, sparse, s, e, theta, V[j], sizes, acts, poff, aoff,
                          hoff, Z, H, RZ, T)
                # the GGN backpropagates c ∇²ℓ J v like a residual (δ itself is not needed)
                loss_hess_apply(lc, HS, cw, s, _rows(RZ, aoff, L - 1, nb, K), Dout[nb:])
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z,
                         H, D, DP, GT, ones, out[j], True, first)
        elif mode == FISHER:
            backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z, H, D,
                     DP, GT, ones, out[0], False, first)
            for j in range(m):
                fisher_block(X, xd, xi, xp, sparse, s, e, cw, V[j], sizes, poff, aoff, hoff, H,
                             D, T, T2, GT, ones, out[j], first)
        elif mode == GGN_DIAG:
            square_inputs(X, sparse, s, e, cw, sizes, qoff, H, hoff, SQ)
            for c in range(K):
                sqrt_hess_column(lc, HS, c, Dout[nb:])
                backward(X, xd, xi, xp, sparse, s, e, theta, sizes, acts, poff, aoff, hoff, Z,
                         H, D, DP, GT, ones, out[0], False, first)
                diag_layers(X, xd, xi, xp, sparse, s, e, cw, sizes, poff, aoff, qoff, D, SQ, T2,
                            GT, ones, out[0])
    if pending:
        _add64(acc, out)
    return total


#: a sum of squares in [SQ_LOW, inf) cannot have lost a square to underflow that matters: below
#: it (every |x| < 1e-145) :func:`_half_sq_scaled` sums the squares of ``x / max|x|`` instead
SQ_LOW = 1e-290


@jit
def _sum_sq(w):
    """``Σ_t w[t]²`` in float64, in the vectorized order (reassociation allowed: partial sums
    per vector lane, added at the end; the order is fixed by the compiled code, so the result
    is the same on every call)."""
    acc = 0.0
    for t in range(w.shape[0]):
        x = np.float64(w[t])
        acc += x * x
    return acc


@jit(strict=True)  # no reassociation: (λ/2 · m) · m · Σ(x/m)² must not become λ/2 · m² · ...
def _half_sq_scaled(l2, w):
    """``(λ/2) Σ_t w[t]²`` scaled by ``m = max|w|``: only a result beyond float64 is inf
    (``x²`` alone overflows from |x| ~ 1e154 and underflows below 1e-154). Two serial passes
    with a division per element: the fallback of :func:`add_penalty`, not its common path."""
    m = 0.0
    for t in range(w.shape[0]):
        m = max(m, abs(np.float64(w[t])))
    if m == 0.0:
        return 0.0
    acc = 0.0
    for t in range(w.shape[0]):
        x = np.float64(w[t]) / m
        acc += x * x
    return (0.5 * l2 * m) * m * acc


@jit(strict=True)
def _axpy(a, x, y):
    """``y += a x`` (1-D views: an index ``o + t`` into the whole vector would carry Numba's
    negative-index wraparound into every element and keep LLVM from vectorizing the loop)."""
    for t in range(y.shape[0]):
        y[t] += a * x[t]


@jit(strict=True)
def add_penalty(mode, l2, theta, V, sizes, poff, out):
    """The L2 term on the weight rows of every layer (not the bias rows): returns
    ``(λ/2)‖W‖²`` (VALUE, VALUE_GRAD) and adds ``λ θ_W`` (VALUE_GRAD), ``λ V[j]_W`` (HVP, GGN)
    or ``λ`` (GGN_DIAG) to ``out``.

    ``‖W_l‖²`` is one vectorized pass (:func:`_sum_sq`); only where that sum overflows or may
    have lost squares to underflow (below ``SQ_LOW``) is it summed again scaled by
    ``max|W_l|`` (:func:`_half_sq_scaled`). The scaled sum as the only route, serial and with a
    division per weight, and loops indexed ``o + t``, took 2.3 ms of a 19 ms float32 gradient
    of a 784-512-512-10 network and 15 of 130 µs on 20-64-64-1."""
    L = sizes.shape[0] - 1
    total = 0.0
    for l in range(L):
        o = poff[l]
        e = o + sizes[l] * sizes[l + 1]
        w = theta[o:e]
        if mode == VALUE or mode == VALUE_GRAD:
            ss = _sum_sq(w)
            if SQ_LOW <= ss < math.inf:
                total += 0.5 * l2 * ss
            else:
                total += _half_sq_scaled(l2, w)
            if mode == VALUE_GRAD:
                _axpy(l2, w, out[0][o:e])
        elif mode == GGN_DIAG:
            g = out[0][o:e]
            for t in range(g.shape[0]):
                g[t] += l2
        else:
            for j in range(V.shape[0]):
                _axpy(l2, V[j][o:e], out[j][o:e])
    return total


@jit(strict=True)
def _scaled(a, x, y):
    """``y = a x`` (1-D views, see :func:`_axpy`)."""
    for t in range(y.shape[0]):
        y[t] = a * x[t]


@jit
def per_sample_block(X, xd, xi, xp, sparse, s, e, sizes, poff, aoff, hoff, H, D, G):
    """Rows ``s:e`` of the per-sample gradients ``G[i] = [h̃_{l−1,i} ⊗ δ_{l,i}]_l`` (dense).

    Each ``(n_in + 1, w)`` block is written row by row through 1-D views: indexed ``o + a w +
    j`` into ``G[i]``, the loops carried Numba's negative-index wraparound and did not
    vectorize."""
    nb = e - s
    L = sizes.shape[0] - 1
    doff = 2 * aoff
    for l in range(L):
        n_in = sizes[l]
        w = sizes[l + 1]
        o = poff[l]
        Dl = _stack(D, doff, l, nb, w)[nb:]
        for i in range(nb):
            g = G[s + i][o:o + (n_in + 1) * w].reshape((n_in + 1, w))
            d = Dl[i]
            if l == 0:
                if sparse:
                    g[:n_in] = 0.0
                    for k in range(xp[s + i], xp[s + i + 1]):
                        _scaled(xd[k], d, g[xi[k]])
                else:
                    for a in range(n_in):
                        _scaled(X[s + i, a], d, g[a])
                g[n_in] = d
            else:
                Hl = _input(H, hoff, sizes, l, nb)
                for a in range(n_in + 1):
                    _scaled(Hl[i, a], d, g[a])
