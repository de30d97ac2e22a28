"""Slow, obviously correct reference of the multilayer perceptron of shared_spec/MLP_API.md,
written from the maths and not from the library.

Conventions (the spec):

* network   h_0 = x;  z_l = h_{l-1} W_l + b_l;  h_l = act_l(z_l) for the hidden layers;
            the output η = z_L has no activation, shape (n, K);
* parameters θ = concatenation over layers of vec_C([W_l; b_l]), [W_l; b_l] of shape
            (n_in + 1, n_out): the bias is the LAST row of each augmented block;
* objective F(θ) = (1/W) Σ_i w_i ℓ(y_i, η_i) + (λ/2) Σ_l ‖W_l‖_F²   (biases not penalized).

Two independent routes to every derivative, so the reference can check itself:

* complex step: every function here is complex-analytic in θ (no abs, no conj; relu is
  ``where(z.real > 0, z, 0)``), so ∂f/∂θ_j = Im f(θ + i h e_j) / h with h = 1e-30 is exact to
  rounding (no subtractive cancellation). Used for ∇F, the Jacobians J_i = ∂η_i/∂θ (K × P)
  and the Hessian (complex step of the backprop gradient below);
* a hand-written backprop gradient (reverse-mode chain rule with the activation derivatives
  written out), itself complex-safe so that it can be complex-stepped.

The per-sample loss derivatives in η are written out directly (softmax Hessian
``diag(p) - p pᵀ``). GGN = (1/W) Σ w_i J_iᵀ ℓ''_i J_i + λ diag(mask); empirical Fisher
(1/W) Σ w_i g_i g_iᵀ with g_i = J_iᵀ ℓ'_i. Everything is float64 (complex128 for the steps).
"""

import numpy as np
import scipy.sparse as sp
from reference import fd_gradient  # noqa: F401  (re-exported for the MLP tests)
from scipy.special import erf

ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus", "gelu", "identity")
LOSSES = ("mse", "sigmoid_cross_entropy", "poisson", "softmax_cross_entropy")
#: the GLM family with the same per-sample loss (a one-layer MLP is that GLM)
GLM_FAMILY = {"mse": "gaussian", "sigmoid_cross_entropy": "logistic", "poisson": "poisson",
              "softmax_cross_entropy": "multinomial"}

#: complex step size: far below any rounding of θ, far above underflow
H_CS = 1e-30
SQRT2 = np.sqrt(2.0)
SQRT2PI = np.sqrt(2.0 * np.pi)


# --------------------------------------------------------------------------- activations
def act(name, z):
    """act(z), complex-safe."""
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z.real > 0, z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "softplus":
        return np.log1p(np.exp(z))
    if name == "gelu":
        return 0.5 * z * (1.0 + erf(z / SQRT2))
    if name == "identity":
        return z
    raise ValueError(name)


def act_d1(name, z):
    """act'(z), written out (complex-safe); relu'(0) = 0."""
    if name == "tanh":
        t = np.tanh(z)
        return 1.0 - t * t
    if name == "relu":
        return np.where(z.real > 0, 1.0, 0.0) + 0.0 * z
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if name == "softplus":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "gelu":
        # d/dz z Φ(z) = Φ(z) + z φ(z)
        return 0.5 * (1.0 + erf(z / SQRT2)) + z * np.exp(-0.5 * z * z) / SQRT2PI
    if name == "identity":
        return np.ones_like(z)
    raise ValueError(name)


# --------------------------------------------------------------------------- losses in η
def one_hot(labels, K):
    E = np.zeros((labels.shape[0], K))
    E[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1.0
    return E


def _logsumexp(eta):
    """Row-wise log Σ_k e^{η_k}, complex-safe (shift by the real row maximum)."""
    m = np.max(eta.real, axis=1, keepdims=True)
    return m[:, 0] + np.log(np.sum(np.exp(eta - m), axis=1))


def loss_eta(loss, eta, y):
    """Per-sample losses ℓ(y_i, η_i), shape (n,). ``y`` (n, K) or labels (n,) (softmax)."""
    if loss == "mse":
        return 0.5 * np.sum((y - eta) ** 2, axis=1)
    if loss == "sigmoid_cross_entropy":
        return np.sum(np.log1p(np.exp(eta)) - y * eta, axis=1)
    if loss == "poisson":
        return np.sum(np.exp(eta) - y * eta, axis=1)
    if loss == "softmax_cross_entropy":
        lab = y.astype(np.int64)
        return _logsumexp(eta) - eta[np.arange(eta.shape[0]), lab]
    raise ValueError(loss)


def dloss_eta(loss, eta, y):
    """ℓ'(η_i), shape (n, K), complex-safe."""
    if loss == "mse":
        return eta - y
    if loss == "sigmoid_cross_entropy":
        return 1.0 / (1.0 + np.exp(-eta)) - y
    if loss == "poisson":
        return np.exp(eta) - y
    if loss == "softmax_cross_entropy":
        p = np.exp(eta - _logsumexp(eta)[:, None])
        return p - one_hot(y, eta.shape[1])
    raise ValueError(loss)


def d2loss_eta(loss, eta, y):
    """ℓ''(η_i) as full K × K matrices, shape (n, K, K) (real η)."""
    n, K = eta.shape
    H = np.zeros((n, K, K))
    for i in range(n):
        if loss == "mse":
            H[i] = np.eye(K)
        elif loss == "sigmoid_cross_entropy":
            s = 1.0 / (1.0 + np.exp(-eta[i]))
            H[i] = np.diag(s * (1.0 - s))
        elif loss == "poisson":
            H[i] = np.diag(np.exp(eta[i]))
        elif loss == "softmax_cross_entropy":
            p = np.exp(eta[i] - np.max(eta[i]))
            p /= p.sum()
            H[i] = np.diag(p) - np.outer(p, p)
        else:
            raise ValueError(loss)
    return H


# --------------------------------------------------------------------------- the problem
class RefMLP:
    """Dense float64 reference of :class:`fastcurv.MLP` (same arguments, no batch_size).

    ``y``: labels (n,) for the softmax loss; otherwise (n,) (K = 1) or (n, K).
    """

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None):
        self.X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
        self.n, d = self.X.shape
        self.sizes = tuple(int(s) for s in sizes)
        assert self.sizes[0] == d and len(self.sizes) >= 2
        self.L = len(self.sizes) - 1
        if isinstance(activation, str):
            activation = (activation,) * (self.L - 1)
        self.acts = tuple(activation)
        assert len(self.acts) == self.L - 1
        self.loss = loss
        self.K = self.sizes[-1]
        y = np.asarray(y)
        if loss == "softmax_cross_entropy":
            self.y = y.astype(np.int64).reshape(-1)
        else:
            self.y = y.astype(np.float64).reshape(self.n, self.K)
        self.l2 = float(l2)
        self.w = (np.ones(self.n) if sample_weight is None
                  else np.asarray(sample_weight, dtype=np.float64))
        self.W = self.w.sum()
        self.shapes = [(a + 1, b) for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True)]
        self.P = sum(r * c for r, c in self.shapes)
        # 1 on weight coordinates, 0 on the bias row (the last row) of every layer
        parts = []
        for r, c in self.shapes:
            m = np.ones((r, c))
            m[-1] = 0.0
            parts.append(m.reshape(-1))
        self.mask = np.concatenate(parts)

    # -- parameters
    def layers(self, theta):
        """[(W_l, b_l)] views of θ (real or complex)."""
        out, start = [], 0
        for r, c in self.shapes:
            A = theta[start:start + r * c].reshape(r, c)
            out.append((A[:-1], A[-1]))
            start += r * c
        assert start == theta.size
        return out

    # -- forward
    def forward_all(self, theta):
        """Pre-activations [z_1, ..., z_L] and inputs [h_0, ..., h_{L-1}] of every layer."""
        h, zs, hs = self.X, [], []
        for l, (Wl, bl) in enumerate(self.layers(theta)):
            hs.append(h)
            z = h @ Wl + bl
            zs.append(z)
            if l < self.L - 1:
                h = act(self.acts[l], z)
        return zs, hs

    def eta(self, theta):
        """Network outputs η, (n, K)."""
        return self.forward_all(theta)[0][-1]

    # -- objective
    def value(self, theta):
        """F(θ); complex-safe (θ² not |θ|²)."""
        data = np.sum(self.w * loss_eta(self.loss, self.eta(theta), self.y)) / self.W
        return data + 0.5 * self.l2 * np.sum(self.mask * theta * theta)

    def grad_bp(self, theta):
        """∇F by reverse-mode chain rule, complex-safe."""
        zs, hs = self.forward_all(theta)
        lay = self.layers(theta)
        delta = (self.w / self.W)[:, None] * dloss_eta(self.loss, zs[-1], self.y)
        grads = [None] * self.L
        for l in range(self.L - 1, -1, -1):
            Wl, _ = lay[l]
            gW = hs[l].T @ delta + self.l2 * Wl
            gb = delta.sum(axis=0)
            grads[l] = np.vstack([gW, gb[None, :]]).reshape(-1)
            if l > 0:
                delta = (delta @ Wl.T) * act_d1(self.acts[l - 1], zs[l - 1])
        return np.concatenate(grads)

    def grad_cs(self, theta):
        """∇F by complex step of :meth:`value`."""
        theta = np.asarray(theta, dtype=np.float64)
        g = np.empty(self.P)
        for j in range(self.P):
            t = theta.astype(np.complex128)
            t[j] += 1j * H_CS
            g[j] = self.value(t).imag / H_CS
        return g

    grad = grad_cs

    def hessian_raw(self, theta):
        """Column j = Im ∇F_bp(θ + i h e_j) / h (not symmetrized)."""
        theta = np.asarray(theta, dtype=np.float64)
        H = np.empty((self.P, self.P))
        for j in range(self.P):
            t = theta.astype(np.complex128)
            t[j] += 1j * H_CS
            H[:, j] = self.grad_bp(t).imag / H_CS
        return H

    def hessian(self, theta):
        H = self.hessian_raw(theta)
        return 0.5 * (H + H.T)

    # -- Jacobians and Gauss-Newton
    def jacobians(self, theta):
        """J_i = ∂η_i/∂θ for every sample, (n, K, P), by complex step of the outputs."""
        theta = np.asarray(theta, dtype=np.float64)
        J = np.empty((self.n, self.K, self.P))
        for j in range(self.P):
            t = theta.astype(np.complex128)
            t[j] += 1j * H_CS
            J[:, :, j] = self.eta(t).imag / H_CS
        return J

    def loss_derivs(self, theta):
        """(ℓ'_i (n, K), ℓ''_i (n, K, K)) at the network outputs."""
        eta = self.eta(np.asarray(theta, dtype=np.float64))
        return dloss_eta(self.loss, eta, self.y), d2loss_eta(self.loss, eta, self.y)

    def per_sample_grads(self, theta):
        """g_i = J_iᵀ ℓ'_i (unweighted, no penalty), (n, P)."""
        r, _ = self.loss_derivs(theta)
        return np.einsum("ikp,ik->ip", self.jacobians(theta), r)

    def ggn(self, theta):
        """(1/W) Σ_i w_i J_iᵀ ℓ''_i J_i + λ diag(mask)."""
        J = self.jacobians(theta)
        _, Hl = self.loss_derivs(theta)
        G = np.einsum("i,ikp,ikl,ilq->pq", self.w, J, Hl, J) / self.W
        return G + self.l2 * np.diag(self.mask)

    def fisher(self, theta):
        """Empirical Fisher (1/W) Σ_i w_i g_i g_iᵀ (no penalty)."""
        G = self.per_sample_grads(theta)
        return (G.T * self.w) @ G / self.W


# --------------------------------------------------------------------------- finite differences
def fd_jacobian(g, theta, h=1e-3):
    """Fourth-order central differences of a vector function ``g``: column j ≈ ∂g/∂θ_j."""
    theta = np.asarray(theta, dtype=np.float64)
    cols = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        cols.append((-g(theta + 2 * e) + 8 * g(theta + e) - 8 * g(theta - e)
                     + g(theta - 2 * e)) / (12 * h))
    return np.stack(cols, axis=-1)


# --------------------------------------------------------------------------- test data
#: default number of outputs per loss in the catalogue (softmax: classes)
DEFAULT_K = {"mse": 2, "sigmoid_cross_entropy": 2, "poisson": 2, "softmax_cross_entropy": 3}


def f32_exact(a):
    """``a`` rounded to float32 and back: numbers that float32 and float64 problems share."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def make_data(loss, K, n, d, seed=0, weighted=True):
    """(X (n, d), y, w) with every number exactly representable in float32.

    y: softmax labels (n,) with every class present; otherwise (n, K), or (n,) when K = 1
    (real targets for mse, probabilities with a few exact 0/1 for the sigmoid loss, counts for
    Poisson). w: multiples of 1/16 in [0, 2] with three zeros, or None.
    """
    rng = np.random.default_rng(seed)
    X = f32_exact(rng.normal(0.0, 0.8, (n, d)))
    if loss == "mse":
        y = f32_exact(rng.normal(0.3, 1.0, (n, K)))
    elif loss == "sigmoid_cross_entropy":
        y = np.round(rng.random((n, K)) * 64.0) / 64.0
        y[:4] = rng.integers(0, 2, (4, K))
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, K)).astype(np.float64)
    elif loss == "softmax_cross_entropy":
        y = rng.integers(0, K, n).astype(np.int64)
        y[:K] = np.arange(K)
    else:
        raise ValueError(loss)
    if loss != "softmax_cross_entropy" and K == 1:
        y = y[:, 0]
    w = None
    if weighted:
        w = np.round(rng.uniform(0.0, 2.0, n) * 16.0) / 16.0
        w[[i for i in (1, 6, 11) if i < n]] = 0.0
    return X, y, w


def n_params(sizes):
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def random_theta(sizes, seed=1, scale=0.5):
    """A generic point (not an optimum), nonzero biases, float32-representable."""
    rng = np.random.default_rng(1000 + seed)
    return f32_exact(rng.normal(0.0, scale, n_params(sizes)))


def random_vectors(P, m=None, seed=2):
    rng = np.random.default_rng(2000 + seed)
    return f32_exact(rng.standard_normal((P,) if m is None else (P, m)))


# --------------------------------------------------------------------------- Monte Carlo GGN
def mc_ggn_diag_std(ref, theta, S):
    """Exact standard deviation of the Monte Carlo GGN diagonal with S label draws per row.

    Estimator (labels sampled from the model, r_is = ℓ'(η_i; ỹ_is)):
        D_j = Σ_i a_i (1/S) Σ_s q_isj²,   q_isj = (J_iᵀ r_is)_j = a_ijᵀ r_is,  a_i = w_i / W,
    with E[r rᵀ] = ℓ''_i, so E D_j = GGN_jj (minus the penalty) and
        Var D_j = (1/S) Σ_i a_i² (E q⁴ − (E q²)²).
    E q⁴ from the central moments of r: Gaussian (m2 = 1, m4 = 3), Bernoulli(s)
    (m2 = s(1−s), m4 = s(1−s)(1 − 3s + 3s²)), Poisson(λ) (m2 = λ, m4 = λ + 3λ²), independent
    over the K outputs; the softmax case enumerates the K classes (r = p − e_c w.p. p_c).
    """
    J = ref.jacobians(theta)  # (n, K, P)
    eta = ref.eta(np.asarray(theta, dtype=np.float64))
    a = ref.w / ref.W
    var = np.zeros(ref.P)
    for i in range(ref.n):
        A = J[i]  # (K, P): column j is a_ij
        if ref.loss == "softmax_cross_entropy":
            p = np.exp(eta[i] - eta[i].max())
            p /= p.sum()
            q = (p @ A)[None, :] - A  # (K classes, P): q when class c is drawn
            Eq2 = p @ q ** 2
            Eq4 = p @ q ** 4
        else:
            if ref.loss == "mse":
                m2, m4 = np.ones(ref.K), 3.0 * np.ones(ref.K)
            elif ref.loss == "sigmoid_cross_entropy":
                s = 1.0 / (1.0 + np.exp(-eta[i]))
                m2 = s * (1.0 - s)
                m4 = m2 * (1.0 - 3.0 * s + 3.0 * s * s)
            else:
                lam = np.exp(eta[i])
                m2, m4 = lam, lam + 3.0 * lam ** 2
            A2 = A ** 2
            Eq2 = m2 @ A2
            Eq4 = m4 @ A ** 4 + 3.0 * (Eq2 ** 2 - (m2 ** 2) @ A ** 4)
        var += a[i] ** 2 * (Eq4 - Eq2 ** 2)
    return np.sqrt(var / S)
