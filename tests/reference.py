"""Slow, obviously correct references, written from the maths and not from the library.

Everything here is plain NumPy in float64 with explicit loops over samples, so that a reader
can check each line against DESIGN.md "Conventions":

* objective  F(θ) = (1/W) Σ_i w_i ℓ(y_i, η_i) + (λ/2)‖W‖²   (intercept not penalized)
* parameters θ = vec_C([W; b]) with W (d, K) and b (K,), so θ[j K + k] = W̃[j, k]
* per-sample gradient   g_i = x̃_i ⊗ ℓ'_i                    (x̃_i = [x_i, 1])
* per-sample Hessian    (x̃_i x̃_iᵀ) ⊗ ℓ''_i
* Jacobian of η_i       J_i = x̃_iᵀ ⊗ I_K   (K × P)

The per-family loss derivatives in η are written out directly (a softmax Hessian is
``diag(p) - outer(p, p)``); none of them comes from :mod:`fastcurv`.  Finite-difference helpers
and a high-precision (800-digit ``decimal``) loss evaluation are at the end.
"""

from decimal import Decimal, localcontext

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, logsumexp, softmax

FAMILIES = ("gaussian", "logistic", "poisson", "multinomial")


# --------------------------------------------------------------------------- helpers
def dense64(X):
    """``X`` as a dense float64 ndarray (a copy)."""
    if sp.issparse(X):
        return np.asarray(X.toarray(), dtype=np.float64)
    return np.array(X, dtype=np.float64)


def augment(X, fit_intercept):
    """``X̃ = [X, 1]`` (or ``X`` without an intercept), float64."""
    X = dense64(X)
    if fit_intercept:
        return np.hstack([X, np.ones((X.shape[0], 1))])
    return X


def penalty_mask(d, K, fit_intercept):
    """1 on the weight coordinates of θ, 0 on the intercepts."""
    mask = np.ones((d + int(fit_intercept), K))
    if fit_intercept:
        mask[d] = 0.0
    return mask.reshape(-1)


def one_hot(labels, K):
    E = np.zeros((labels.shape[0], K))
    E[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1.0
    return E


# --------------------------------------------------------------------------- losses in η
def loss_eta(family, eta, y):
    """Per-sample losses ℓ(y_i, η_i), shape (n,). ``eta`` (n, K); ``y`` (n, K) or labels (n,)."""
    if family == "gaussian":
        return 0.5 * np.sum((y - eta) ** 2, axis=1)
    if family == "logistic":
        # log(1 + e^η) = logaddexp(0, η), exact for any η
        return np.sum(np.logaddexp(0.0, eta) - y * eta, axis=1)
    if family == "poisson":
        return np.sum(np.exp(eta) - y * eta, axis=1)
    if family == "multinomial":
        lab = y.astype(np.int64)
        return logsumexp(eta, axis=1) - eta[np.arange(eta.shape[0]), lab]
    raise ValueError(family)


def dloss_eta(family, eta, y):
    """ℓ'(η_i), shape (n, K)."""
    if family == "gaussian":
        return eta - y
    if family == "logistic":
        return expit(eta) - y
    if family == "poisson":
        return np.exp(eta) - y
    if family == "multinomial":
        return softmax(eta, axis=1) - one_hot(y, eta.shape[1])
    raise ValueError(family)


def d2loss_eta(family, eta, y):
    """ℓ''(η_i) as full K × K matrices, shape (n, K, K)."""
    n, K = eta.shape
    H = np.zeros((n, K, K))
    for i in range(n):
        if family == "gaussian":
            H[i] = np.eye(K)
        elif family == "logistic":
            s = expit(eta[i])
            H[i] = np.diag(s * (1.0 - s))
        elif family == "poisson":
            H[i] = np.diag(np.exp(eta[i]))
        elif family == "multinomial":
            p = softmax(eta[i])
            H[i] = np.diag(p) - np.outer(p, p)
        else:
            raise ValueError(family)
    return H


# --------------------------------------------------------------------------- the problem
class RefGLM:
    """Dense float64 reference of a GLM objective and its derivatives.

    Parameters mirror :class:`fastcurv.GLM`; ``K`` is the number of outputs (classes for the
    multinomial). ``y`` is (n,) or (n, K) for the single/multi-output families and integer
    labels (n,) for the multinomial.
    """

    def __init__(self, X, y, family, K, l2=0.0, fit_intercept=True, sample_weight=None):
        self.family = family
        self.Xt = augment(X, fit_intercept)
        self.n = self.Xt.shape[0]
        self.d = self.Xt.shape[1] - int(fit_intercept)
        self.K = K
        self.fit_intercept = fit_intercept
        self.l2 = float(l2)
        y = np.asarray(y, dtype=np.float64)
        if family == "multinomial":
            self.y = y.reshape(-1)
        else:
            self.y = y.reshape(self.n, -1)
            assert self.y.shape[1] == K
        self.w = (np.ones(self.n) if sample_weight is None
                  else np.asarray(sample_weight, dtype=np.float64))
        self.W = self.w.sum()
        self.P = (self.d + int(fit_intercept)) * K
        self.mask = penalty_mask(self.d, K, fit_intercept)

    # -- parameters
    def Wtilde(self, theta):
        """θ as the augmented (d + fi, K) matrix [W; b] (C order)."""
        return np.asarray(theta, dtype=np.float64).reshape(self.d + int(self.fit_intercept), self.K)

    def eta(self, theta):
        """Linear predictor η_i = x̃_i W̃, computed row by row, (n, K)."""
        Wt = self.Wtilde(theta)
        return np.array([self.Xt[i] @ Wt for i in range(self.n)])

    # -- objective
    def value(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        data = np.sum(self.w * loss_eta(self.family, self.eta(theta), self.y)) / self.W
        return data + 0.5 * self.l2 * np.sum(self.mask * theta ** 2)

    def per_sample_grads(self, theta):
        """g_i = x̃_i ⊗ ℓ'_i (unweighted, no penalty), (n, P)."""
        r = dloss_eta(self.family, self.eta(theta), self.y)
        return np.array([np.kron(self.Xt[i], r[i]) for i in range(self.n)])

    def grad(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        G = self.per_sample_grads(theta)
        return (self.w @ G) / self.W + self.l2 * self.mask * theta

    def hessian(self, theta):
        """(1/W) Σ_i w_i kron(x̃_i x̃_iᵀ, ℓ''_i) + λ diag(mask): explicit sum over samples."""
        Hl = d2loss_eta(self.family, self.eta(theta), self.y)
        H = np.zeros((self.P, self.P))
        for i in range(self.n):
            H += self.w[i] * np.kron(np.outer(self.Xt[i], self.Xt[i]), Hl[i])
        return H / self.W + self.l2 * np.diag(self.mask)

    def jacobian_rows(self):
        """Per-sample Jacobians of η_i in θ, J_i = x̃_iᵀ ⊗ I_K, as an (n, K, P) array.

        Built entry by entry from ∂η_ik/∂W̃[j, k'] = x̃_ij δ_kk'.
        """
        J = np.zeros((self.n, self.K, self.P))
        rows = self.d + int(self.fit_intercept)
        for i in range(self.n):
            for k in range(self.K):
                for j in range(rows):
                    J[i, k, j * self.K + k] = self.Xt[i, j]
        return J

    def ggn(self, theta):
        """(1/W) Σ w_i J_iᵀ ℓ''_i J_i + λ diag(mask), via explicit Jacobians (a second route)."""
        J = self.jacobian_rows()
        Hl = d2loss_eta(self.family, self.eta(theta), self.y)
        G = np.einsum("i,ikp,ikl,ilq->pq", self.w, J, Hl, J) / self.W
        return G + self.l2 * np.diag(self.mask)

    def fisher(self, theta):
        """Empirical Fisher (1/W) Σ w_i g_i g_iᵀ (no penalty)."""
        G = self.per_sample_grads(theta)
        return (G.T * self.w) @ G / self.W


# --------------------------------------------------------------------------- finite differences
def fd_gradient(f, theta, h=1e-3):
    """Fourth-order central differences of a scalar ``f`` (truncation O(h⁴))."""
    theta = np.asarray(theta, dtype=np.float64)
    g = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        g[j] = (-f(theta + 2 * e) + 8 * f(theta + e) - 8 * f(theta - e)
                + f(theta - 2 * e)) / (12 * h)
    return g


def fd_directional(g, theta, v, h=1e-3):
    """Fourth-order central difference of a vector function ``g`` along ``v``: ≈ ∇g(θ) v."""
    theta = np.asarray(theta, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return (-g(theta + 2 * h * v) + 8 * g(theta + h * v) - 8 * g(theta - h * v)
            + g(theta - 2 * h * v)) / (12 * h)


def fd_hessian(g, theta, h=1e-3):
    """Dense Hessian by differencing a gradient ``g`` along each coordinate, symmetrized."""
    theta = np.asarray(theta, dtype=np.float64)
    P = theta.size
    H = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = 1.0
        H[:, j] = fd_directional(g, theta, e, h)
    return 0.5 * (H + H.T)


# --------------------------------------------------------------------------- high precision
#: decimal digits: enough that 1 + e^-700 (and e^-1400 next to 1) keeps every digit, so no
#: form below can lose precision to cancellation
HP_DIGITS = 800


def hp_logistic(eta, y, prec=HP_DIGITS):
    """(ℓ, ℓ', ℓ'') of the logistic loss at floats ``eta``, ``y`` in ``prec``-digit decimals."""
    with localcontext() as ctx:
        ctx.prec = prec
        e = Decimal(float(eta))
        yy = Decimal(float(y))
        one = Decimal(1)
        loss = (one + e.exp()).ln() - yy * e
        sig = one / (one + (-e).exp())
        return float(loss), float(sig - yy), float(sig * (one - sig))


def hp_poisson(eta, y, prec=HP_DIGITS):
    with localcontext() as ctx:
        ctx.prec = prec
        e = Decimal(float(eta))
        mu = e.exp()
        return float(mu - Decimal(float(y)) * e), float(mu - Decimal(float(y))), float(mu)


def hp_softmax(eta, label, prec=HP_DIGITS):
    """(ℓ, ℓ' (K,)) of the softmax cross-entropy of one row in high precision."""
    with localcontext() as ctx:
        ctx.prec = prec
        e = [Decimal(float(t)) for t in eta]
        ex = [t.exp() for t in e]
        s = sum(ex)
        loss = s.ln() - e[int(label)]
        r = [x / s - (1 if k == int(label) else 0) for k, x in enumerate(ex)]
        return float(loss), np.array([float(t) for t in r])


def hp_value_grad(family, Xt, y, theta_mat, w):
    """F and ∇F (without penalty) with every loss term in high precision.

    ``Xt`` (n, p) augmented rows whose products with ``theta_mat`` (p, K) are exact in float64
    (the tests choose such data); weights ``w``. Sums are taken in ``Decimal`` as well.
    """
    n, p = Xt.shape
    K = theta_mat.shape[1]
    eta = Xt @ theta_mat
    with localcontext() as ctx:
        ctx.prec = HP_DIGITS
        W = sum(Decimal(float(t)) for t in w)
        total = Decimal(0)
        grad = [[Decimal(0)] * K for _ in range(p)]
        for i in range(n):
            wi = Decimal(float(w[i]))
            if family == "multinomial":
                loss, r = hp_softmax(eta[i], y[i])
                losses, rs = [loss], list(r)
            else:
                fn = hp_logistic if family == "logistic" else hp_poisson
                out = [fn(eta[i, k], np.reshape(y, (n, K))[i, k]) for k in range(K)]
                losses, rs = [o[0] for o in out], [o[1] for o in out]
            total += wi * sum(Decimal(t) for t in losses)
            for j in range(p):
                for k in range(K):
                    grad[j][k] += wi * Decimal(float(Xt[i, j])) * Decimal(rs[k])
        value = float(total / W)
        g = np.array([[float(grad[j][k] / W) for k in range(K)] for j in range(p)])
    return value, g.reshape(-1)
