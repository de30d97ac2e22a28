"""Baselines for fastcurv's MLP products (``fc.MLP``): JAX (jit), torch.func, a numpy
reference and the numpy forward-GEMM floor.

Every implementation computes exactly the objective of /work/shared_spec/MLP_API.md::

    F(θ) = (1/Wsum) Σ_i w_i loss(y_i, η_i) + (l2/2) Σ_l ||W_l||_F²      (biases not penalized)

for the network ``h_0 = x``, ``z_l = h_{l-1} @ W_l + b_l``, ``h_l = act_l(z_l)`` on the hidden
layers and ``η = z_L`` (no output activation), with θ in fastcurv's layout: layer by layer the
augmented matrix ``[W_l; b_l]`` of shape ``(n_in + 1, n_out)`` flattened in C order.

Products (θ and v of length P):

* ``grad(θ)``: ∇F;
* ``hvp(θ, v)``: ∇²F v, forward-over-reverse: ``jax.jvp(jax.grad(F))`` /
  ``torch.func.jvp(torch.func.grad(F))``;
* ``ggn_vp(θ, v)``: ``J^T H_η J v + l2 · v_weights``: ``jvp`` of the network outputs
  (``J v``), the Hessian of the weighted loss in η applied to it (itself a jvp of the loss
  gradient in η), then ``vjp`` (``J^T u``);
* ``jvp(θ, v)`` -> (n, K) and ``vjp(θ, u)`` -> (P,) (no weights, no penalty), as in the spec.

Boundaries: the numpy-in / numpy-out methods (``grad``, ``hvp``, ...) convert on every call and
are for checking. For timing, convert once with ``.native(a)`` and call the ``*_n`` methods
(``grad_n``, ``hvp_n``, ``ggn_vp_n``), which take and return framework arrays; the JAX ones
call ``block_until_ready()`` (JAX dispatches asynchronously). The data X, y and the sample
coefficients ``w_i / Wsum`` are converted once at construction and passed to the jitted
functions as arguments (not closed over: JAX would embed them as constants in the program).

Imports are lazy (so the benchmark suite does not load torch or JAX unless the MLP benchmarks
run); when this module first imports JAX it enables 64-bit mode
(``jax.config.update("jax_enable_x64", True)``) so that float64 is really float64. float32
arrays stay float32 under x64 mode (every array is created with an explicit dtype).

Threads: torch is set to ``torch.set_num_threads(2)`` by :class:`TorchMLP` (its matrix
products run in MKL with torch's own OpenMP runtime). XLA's CPU backend runs its kernels in
its own Eigen thread pool whose size is the number of CPUs the process may use (2 on the
benchmark machine); there is no public setting for "2 threads" (only
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` for one), so on a larger machine restrict
the process with ``taskset -c 0,1`` to compare like with like.

``python bench/mlp_baselines.py`` runs :func:`selfcheck`: the numpy reference against finite
differences and JAX / torch against the numpy reference on tiny networks (every activation and
loss, with sample weights and an L2 penalty).
"""

import math

import numpy as np

ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus", "gelu", "identity")
LOSSES = ("mse", "sigmoid_cross_entropy", "poisson", "softmax_cross_entropy")
TORCH_THREADS = 2

_JAX = None
_TORCH = None


def _jax():
    """Import JAX (CPU), enabling float64 the first time."""
    global _JAX
    if _JAX is None:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        _JAX = (jax, jnp)
    return _JAX


def _torch():
    global _TORCH
    if _TORCH is None:
        import torch
        import torch.func

        _TORCH = torch
    return _TORCH


# ------------------------------------------------------------------------------ layout
class Spec:
    """Sizes, activations, loss, dtype and the parameter layout of one MLP problem.

    ``X`` is converted to ``dtype`` (default: X's float dtype, float64 for ints), ``y`` to the
    loss's target form: int64 labels (n,) for softmax_cross_entropy, else float (n, K), and
    the sample coefficients ``c_i = w_i / Wsum`` (float64, then the data dtype).
    """

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None,
                 dtype=None):
        X = np.asarray(X)
        if dtype is None:
            dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        self.dtype = np.dtype(dtype)
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        n, d = self.X.shape
        self.sizes = tuple(int(s) for s in sizes)
        if len(self.sizes) < 2 or self.sizes[0] != d:
            raise ValueError(f"sizes {self.sizes} do not match X with {d} columns")
        n_hidden = len(self.sizes) - 2
        if isinstance(activation, str):
            acts = (activation,) * n_hidden
        else:
            acts = tuple(activation)
        if len(acts) != n_hidden or any(a not in ACTIVATIONS for a in acts):
            raise ValueError(f"activation {activation!r} for {n_hidden} hidden layers")
        self.activations = acts
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}")
        self.loss = loss
        self.l2 = float(l2)
        K = self.sizes[-1]
        self.K = K
        if loss == "softmax_cross_entropy":
            self.y = np.ascontiguousarray(np.asarray(y).reshape(n), dtype=np.int64)
            if self.y.min() < 0 or self.y.max() >= K:
                raise ValueError("labels must lie in [0, K)")
        else:
            self.y = np.ascontiguousarray(np.asarray(y, dtype=self.dtype).reshape(n, K))
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.c = (w / w.sum()).astype(self.dtype)
        self.shapes = [(self.sizes[i] + 1, self.sizes[i + 1]) for i in range(len(self.sizes) - 1)]
        self.offsets = np.cumsum([0] + [a * b for a, b in self.shapes]).tolist()
        self.n_params = self.offsets[-1]
        mask = np.ones(self.n_params, dtype=self.dtype)  # 1 on weights, 0 on biases
        for (a, b), o in zip(self.shapes, self.offsets, strict=False):
            mask[o + (a - 1) * b: o + a * b] = 0
        self.weight_mask = mask
        self.n = n

    def unflatten(self, theta):
        """List of ``(n_in + 1, n_out)`` views of ``theta`` (numpy)."""
        return [theta[o: o + a * b].reshape(a, b)
                for (a, b), o in zip(self.shapes, self.offsets, strict=False)]

    def gemm_flops(self):
        """Floating-point operations of the forward matrix products ``h_{l-1} @ W_l``."""
        return 2 * self.n * sum((a - 1) * b for a, b in self.shapes)


def glorot_theta(sizes, seed=0, dtype=np.float64, bias_scale=0.1):
    """Glorot-uniform weights and small random biases (so bias paths are exercised)."""
    rng = np.random.default_rng(seed)
    parts = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False):
        lim = math.sqrt(6.0 / (n_in + n_out))
        W = rng.uniform(-lim, lim, size=(n_in, n_out))
        b = bias_scale * rng.standard_normal(n_out)
        parts.append(np.vstack([W, b[None, :]]).ravel())
    return np.concatenate(parts).astype(dtype)


# ----------------------------------------------------------------------- numpy reference
def _np_act(name, z):
    """(act(z), act'(z), act''(z)) in numpy."""
    from scipy.special import erf, expit

    if name == "tanh":
        t = np.tanh(z)
        return t, 1 - t * t, -2 * t * (1 - t * t)
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(z.dtype), np.zeros_like(z)
    if name == "sigmoid":
        s = expit(z)
        d1 = s * (1 - s)
        return s, d1, d1 * (1 - 2 * s)
    if name == "softplus":
        s = expit(z)
        return np.logaddexp(0, z), s, s * (1 - s)
    if name == "gelu":
        phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        Phi = 0.5 * (1 + erf(z / math.sqrt(2)))
        return z * Phi, Phi + z * phi, phi * (2 - z * z)
    if name == "identity":
        return z, np.ones_like(z), np.zeros_like(z)
    raise ValueError(name)


def _np_loss(spec, eta):
    """(per-sample loss (n,), dloss/deta (n, K), hess(u) callable: H_i u_i per row)."""
    from scipy.special import expit, logsumexp

    y = spec.y
    if spec.loss == "mse":
        r = eta - y
        return 0.5 * np.sum(r * r, axis=1), r, lambda u: u
    if spec.loss == "sigmoid_cross_entropy":
        s = expit(eta)
        return (np.sum(np.logaddexp(0, eta) - y * eta, axis=1), s - y,
                lambda u: s * (1 - s) * u)
    if spec.loss == "poisson":
        e = np.exp(eta)
        return np.sum(e - y * eta, axis=1), e - y, lambda u: e * u
    lse = logsumexp(eta, axis=1)
    p = np.exp(eta - lse[:, None])
    onehot = np.zeros_like(eta)
    onehot[np.arange(len(y)), y] = 1
    return (lse - eta[np.arange(len(y)), y], p - onehot,
            lambda u: p * u - p * np.sum(p * u, axis=1, keepdims=True))


class NumpyMLP:
    """Hand-written float64 reference: backprop for the gradient, Pearlmutter's R-operator for
    the exact HVP (forward R-pass, then the backward pass differentiated), the GGN product as
    ``J v`` (forward R-pass) followed by backprop of ``H_η J v``. Independent of autodiff."""

    name = "numpy"

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None):
        self.spec = Spec(X, y, sizes, activation, loss, l2, sample_weight, dtype=np.float64)

    def _forward(self, theta):
        s = self.spec
        parts = s.unflatten(np.asarray(theta, np.float64))
        hs, ds, d2s = [s.X], [], []
        h = s.X
        for i, A in enumerate(parts):
            z = h @ A[:-1] + A[-1]
            if i < len(parts) - 1:
                h, d1, d2 = _np_act(s.activations[i], z)
                ds.append(d1)
                d2s.append(d2)
                hs.append(h)
            else:
                h = z
        return parts, hs, ds, d2s, h

    def _rforward(self, parts, hs, ds, v):
        """R{z_l} for every layer (the last one is J v)."""
        vparts = self.spec.unflatten(np.asarray(v, np.float64))
        rh = np.zeros_like(hs[0])
        rzs = []
        for i, (A, V) in enumerate(zip(parts, vparts, strict=False)):
            rz = rh @ A[:-1] + hs[i] @ V[:-1] + V[-1]
            rzs.append(rz)
            if i < len(parts) - 1:
                rh = ds[i] * rz
        return vparts, rzs

    def _backprop(self, parts, hs, ds, delta):
        """Σ_i J_i^T delta_i in the flat layout (delta: (n, K) output cotangent)."""
        out = []
        for i in range(len(parts) - 1, -1, -1):
            out.append(np.vstack([hs[i].T @ delta, delta.sum(axis=0)[None, :]]))
            if i > 0:
                delta = (delta @ parts[i][:-1].T) * ds[i - 1]
        return np.concatenate([g.ravel() for g in reversed(out)])

    def value(self, theta):
        s = self.spec
        parts, _, _, _, eta = self._forward(theta)
        li, _, _ = _np_loss(s, eta)
        pen = sum(float(np.sum(A[:-1] ** 2)) for A in parts)
        return float(s.c.astype(np.float64) @ li) + 0.5 * s.l2 * pen

    def grad(self, theta):
        s = self.spec
        parts, hs, ds, _, eta = self._forward(theta)
        _, dl, _ = _np_loss(s, eta)
        g = self._backprop(parts, hs, ds, s.c[:, None] * dl)
        return g + s.l2 * s.weight_mask * np.asarray(theta, np.float64)

    def jvp(self, theta, v):
        parts, hs, ds, _, _ = self._forward(theta)
        return self._rforward(parts, hs, ds, v)[1][-1]

    def vjp(self, theta, u):
        parts, hs, ds, _, _ = self._forward(theta)
        return self._backprop(parts, hs, ds, np.asarray(u, np.float64))

    def ggn_vp(self, theta, v):
        s = self.spec
        parts, hs, ds, _, eta = self._forward(theta)
        _, _, hess = _np_loss(s, eta)
        jv = self._rforward(parts, hs, ds, v)[1][-1]
        out = self._backprop(parts, hs, ds, s.c[:, None] * hess(jv))
        return out + s.l2 * s.weight_mask * np.asarray(v, np.float64)

    def hvp(self, theta, v):
        s = self.spec
        parts, hs, ds, d2s, eta = self._forward(theta)
        _, dl, hess = _np_loss(s, eta)
        vparts, rzs = self._rforward(parts, hs, ds, v)
        L = len(parts)
        delta = s.c[:, None] * dl  # dF/dz_L
        rdelta = s.c[:, None] * hess(rzs[-1])  # R{dF/dz_L}
        rh = [None] + [ds[i] * rzs[i] for i in range(L - 1)]  # R{h_i}, i >= 1
        out = []
        for i in range(L - 1, -1, -1):
            rgW = hs[i].T @ rdelta + (rh[i].T @ delta if i > 0 else 0.0)
            out.append(np.vstack([rgW, rdelta.sum(axis=0)[None, :]]))
            if i > 0:
                W, VW = parts[i][:-1], vparts[i][:-1]
                gh = delta @ W.T  # dF/dh_{i}
                rgh = rdelta @ W.T + delta @ VW.T
                delta, rdelta = ds[i - 1] * gh, d2s[i - 1] * rzs[i - 1] * gh + ds[i - 1] * rgh
        hv = np.concatenate([g.ravel() for g in reversed(out)])
        return hv + s.l2 * s.weight_mask * np.asarray(v, np.float64)


# ------------------------------------------------------------------------------ JAX
def _jax_act(name, z):
    jax, jnp = _jax()
    if name == "tanh":
        return jnp.tanh(z)
    if name == "relu":
        return jax.nn.relu(z)
    if name == "sigmoid":
        return jax.nn.sigmoid(z)
    if name == "softplus":
        return jax.nn.softplus(z)
    if name == "gelu":
        return jax.nn.gelu(z, approximate=False)
    return z


def _jax_loss(loss, eta, y):
    jax, jnp = _jax()
    if loss == "mse":
        r = eta - y
        return 0.5 * jnp.sum(r * r, axis=1)
    if loss == "sigmoid_cross_entropy":
        return jnp.sum(jax.nn.softplus(eta) - y * eta, axis=1)
    if loss == "poisson":
        return jnp.sum(jnp.exp(eta) - y * eta, axis=1)
    return (jax.nn.logsumexp(eta, axis=1)
            - jnp.take_along_axis(eta, y[:, None], axis=1)[:, 0])


class JaxMLP:
    """``jax.jit``-compiled value / gradient / HVP / GGN-vector product / jvp / vjp.

    The first call of each product compiles it (per dtype and shape); call once before timing.
    """

    name = "jax"

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None,
                 dtype=None):
        jax, jnp = _jax()
        s = self.spec = Spec(X, y, sizes, activation, loss, l2, sample_weight, dtype)
        self.data = (self.native(s.X), jnp.asarray(s.y), self.native(s.c))
        self.mask = self.native(s.weight_mask)
        acts, loss_name, l2 = s.activations, s.loss, s.l2
        shapes, offsets = list(s.shapes), list(s.offsets)

        def net(theta, X):
            h = X
            for i, ((a, b), o) in enumerate(zip(shapes, offsets, strict=False)):
                A = theta[o: o + a * b].reshape(a, b)
                h = h @ A[:-1] + A[-1]
                if i < len(shapes) - 1:
                    h = _jax_act(acts[i], h)
            return h

        def data_loss(eta, y, c):
            return jnp.sum(c * _jax_loss(loss_name, eta, y))

        def objective(theta, X, y, c, mask):
            eta = net(theta, X)
            return data_loss(eta, y, c) + 0.5 * l2 * jnp.sum(mask * theta * theta)

        grad_f = jax.grad(objective)

        def hvp(theta, v, X, y, c, mask):
            return jax.jvp(lambda t: grad_f(t, X, y, c, mask), (theta,), (v,))[1]

        def ggn_vp(theta, v, X, y, c, mask):
            def f(t):
                return net(t, X)

            eta, jv = jax.jvp(f, (theta,), (v,))
            hjv = jax.jvp(lambda e: jax.grad(data_loss)(e, y, c), (eta,), (jv,))[1]
            _, f_vjp = jax.vjp(f, theta)
            return f_vjp(hjv)[0] + l2 * mask * v

        def jvp(theta, v, X):
            return jax.jvp(lambda t: net(t, X), (theta,), (v,))[1]

        def vjp(theta, u, X):
            return jax.vjp(lambda t: net(t, X), theta)[1](u)[0]

        self._net, self._data_loss, self._grad_f = net, data_loss, grad_f
        self._value = jax.jit(objective)
        self._grad = jax.jit(grad_f)
        self._hvp = jax.jit(hvp)
        self._ggn = jax.jit(ggn_vp)
        self._jvp = jax.jit(jvp)
        self._vjp = jax.jit(vjp)

    def native(self, a):
        """numpy -> JAX array of this problem's dtype (a copy on the CPU device)."""
        jax, jnp = _jax()
        return jax.block_until_ready(jnp.asarray(np.asarray(a, dtype=self.spec.dtype)))

    # at a fixed θ: JAX's own reuse, the like-for-like baseline of a product at one θ
    def hvp_at(self, theta):
        """``v -> H(θ) v`` for JAX arrays ``v``: ``jax.linearize`` of the gradient at ``θ``
        (forward and backward pass and their residuals computed here, once), then the jitted
        linear map alone per call."""
        jax, _ = _jax()
        X, y, c = self.data
        _, lin = jax.linearize(lambda t: self._grad_f(t, X, y, c, self.mask), theta)
        return jax.jit(lin)

    def ggn_vp_at(self, theta):
        """``v -> G(θ) v``: the network's linearization and VJP and the loss Hessian's
        linearization at ``θ`` built once, then jvp -> loss Hessian -> vjp per call."""
        jax, _ = _jax()
        X, y, c = self.data
        mask, l2 = self.mask, self.spec.l2

        def f(t):
            return self._net(t, X)

        eta, lin_net = jax.linearize(f, theta)
        _, f_vjp = jax.vjp(f, theta)
        _, lin_loss = jax.linearize(lambda e: jax.grad(self._data_loss)(e, y, c), eta)
        return jax.jit(lambda v: f_vjp(lin_loss(lin_net(v)))[0] + l2 * mask * v)

    # framework arrays in and out (timed): block until the result is computed
    def value_n(self, theta):
        return self._value(theta, *self.data, self.mask).block_until_ready()

    def grad_n(self, theta):
        return self._grad(theta, *self.data, self.mask).block_until_ready()

    def hvp_n(self, theta, v):
        return self._hvp(theta, v, *self.data, self.mask).block_until_ready()

    def ggn_vp_n(self, theta, v):
        return self._ggn(theta, v, *self.data, self.mask).block_until_ready()

    # numpy in and out (checks)
    def value(self, theta):
        return float(self.value_n(self.native(theta)))

    def grad(self, theta):
        return np.asarray(self.grad_n(self.native(theta)))

    def hvp(self, theta, v):
        return np.asarray(self.hvp_n(self.native(theta), self.native(v)))

    def ggn_vp(self, theta, v):
        return np.asarray(self.ggn_vp_n(self.native(theta), self.native(v)))

    def jvp(self, theta, v):
        return np.asarray(self._jvp(self.native(theta), self.native(v), self.data[0]))

    def vjp(self, theta, u):
        return np.asarray(self._vjp(self.native(theta), self.native(u), self.data[0]))


# ------------------------------------------------------------------------------ torch
def _torch_act(name, z):
    torch = _torch()
    if name == "tanh":
        return torch.tanh(z)
    if name == "relu":
        return torch.relu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "softplus":
        return torch.logaddexp(z, torch.zeros((), dtype=z.dtype))  # exact, no threshold
    if name == "gelu":
        return torch.nn.functional.gelu(z)  # approximate="none": x Φ(x)
    return z


def _torch_loss(loss, eta, y):
    torch = _torch()
    if loss == "mse":
        r = eta - y
        return 0.5 * torch.sum(r * r, dim=1)
    if loss == "sigmoid_cross_entropy":
        return torch.sum(torch.logaddexp(eta, torch.zeros((), dtype=eta.dtype)) - y * eta,
                         dim=1)
    if loss == "poisson":
        return torch.sum(torch.exp(eta) - y * eta, dim=1)
    return torch.logsumexp(eta, dim=1) - torch.gather(eta, 1, y[:, None])[:, 0]


class TorchMLP:
    """torch.func (eager, CPU) value / gradient / HVP / GGN-vector product / jvp / vjp.

    Layers are ``torch.addmm(b, h, W)`` (what ``nn.Linear`` runs); parameters are views of
    the flat θ. Sets ``torch.set_num_threads(threads)``.
    """

    name = "torch"

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None,
                 dtype=None, threads=TORCH_THREADS):
        torch = _torch()
        tf = torch.func
        if threads:
            torch.set_num_threads(threads)
        s = self.spec = Spec(X, y, sizes, activation, loss, l2, sample_weight, dtype)
        Xt, ct = self.native(s.X), self.native(s.c)
        yt = torch.from_numpy(s.y.copy())
        mask = self.native(s.weight_mask)
        acts, loss_name, l2 = s.activations, s.loss, s.l2
        shapes, offsets = list(s.shapes), list(s.offsets)

        def net(theta):
            h = Xt
            for i, ((a, b), o) in enumerate(zip(shapes, offsets, strict=False)):
                A = theta[o: o + a * b].view(a, b)
                h = torch.addmm(A[-1], h, A[:-1])
                if i < len(shapes) - 1:
                    h = _torch_act(acts[i], h)
            return h

        def data_loss(eta):
            return torch.sum(ct * _torch_loss(loss_name, eta, yt))

        def objective(theta):
            return data_loss(net(theta)) + 0.5 * l2 * torch.sum(mask * theta * theta)

        grad_f = tf.grad(objective)
        grad_loss = tf.grad(data_loss)

        def hvp(theta, v):
            return tf.jvp(grad_f, (theta,), (v,))[1]

        def ggn_vp(theta, v):
            eta, jv = tf.jvp(net, (theta,), (v,))
            hjv = tf.jvp(grad_loss, (eta,), (jv,))[1]
            _, f_vjp = tf.vjp(net, theta)
            return f_vjp(hjv)[0] + l2 * mask * v

        self.net = net
        self._value = objective
        self._grad = grad_f
        self._hvp = hvp
        self._ggn = ggn_vp

    def native(self, a):
        """numpy -> torch tensor of this problem's dtype (its own copy)."""
        torch = _torch()
        return torch.from_numpy(np.array(a, dtype=self.spec.dtype, copy=True))

    def value_n(self, theta):
        return self._value(theta)

    def grad_n(self, theta):
        return self._grad(theta)

    def hvp_n(self, theta, v):
        return self._hvp(theta, v)

    def ggn_vp_n(self, theta, v):
        return self._ggn(theta, v)

    def value(self, theta):
        return float(self.value_n(self.native(theta)))

    def grad(self, theta):
        return self.grad_n(self.native(theta)).detach().numpy()

    def hvp(self, theta, v):
        return self.hvp_n(self.native(theta), self.native(v)).detach().numpy()

    def ggn_vp(self, theta, v):
        return self.ggn_vp_n(self.native(theta), self.native(v)).detach().numpy()

    def jvp(self, theta, v):
        tf = _torch().func
        return tf.jvp(self.net, (self.native(theta),), (self.native(v),))[1].detach().numpy()

    def vjp(self, theta, u):
        tf = _torch().func
        _, f_vjp = tf.vjp(self.net, self.native(theta))
        return f_vjp(self.native(u))[0].detach().numpy()


# ------------------------------------------------------------------ forward-GEMM floor
class GemmFloor:
    """The forward pass's matrix products alone: ``X @ W_1``, ``h_1 @ W_2``, ... in numpy (BLAS)
    into preallocated buffers; no bias, no activation, no loss. Any product needs at least this
    much arithmetic (a gradient does ~3x, an HVP ~5-7x)."""

    name = "numpy_gemm_floor"

    def __init__(self, X, theta, sizes):
        X = np.ascontiguousarray(X)
        self.X = X
        parts = [np.ascontiguousarray(A[:-1]) for A in
                 Spec(X, np.zeros((X.shape[0], sizes[-1])), sizes, "identity", "mse",
                      dtype=X.dtype).unflatten(np.asarray(theta, X.dtype))]
        self.W = parts
        self.out = [np.empty((X.shape[0], W.shape[1]), dtype=X.dtype) for W in parts]
        self.flops = 2 * X.shape[0] * sum(W.shape[0] * W.shape[1] for W in parts)

    def __call__(self):
        h = self.X
        for W, o in zip(self.W, self.out, strict=False):
            np.matmul(h, W, out=o)
            h = o
        return h

    def reference(self, rows=64):
        """The same products on the first ``rows`` rows by einsum (no BLAS), float64."""
        h = self.X[:rows].astype(np.float64)
        for W in self.W:
            h = np.einsum("ij,jk->ik", h, W.astype(np.float64))
        return h


# ------------------------------------------------------------------------- self-check
def rel_err(got, want):
    """max|got − want| / max|want| (max-norm, as bench/harness.py's assert_agree)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def tiny_problem(loss, activation, seed=0, n=9, sizes=(4, 5, 3, 2), weights=True):
    """Small random data for checks: (X, y, sizes, sample_weight, theta, v)."""
    rng = np.random.default_rng(seed)
    sizes = tuple(sizes)
    K = sizes[-1]
    X = rng.standard_normal((n, sizes[0]))
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, K, n)
    elif loss == "sigmoid_cross_entropy":
        y = rng.uniform(0, 1, (n, K))
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, K)).astype(float)
    else:
        y = rng.standard_normal((n, K))
    w = rng.uniform(0.5, 2.0, n) if weights else None
    theta = glorot_theta(sizes, seed + 1, bias_scale=0.3)
    v = rng.standard_normal(theta.size)
    return X, y, sizes, w, theta, v


def selfcheck(verbose=True):
    """numpy reference vs central finite differences, JAX and torch vs the reference.

    Returns the worst relative errors per comparison. Raises AssertionError on disagreement.
    """
    worst = {}

    def note(k, e, tol):
        worst[k] = max(worst.get(k, 0.0), e)
        assert e <= tol, f"{k}: rel err {e:.2e} > {tol:g}"

    try:
        _jax()
        have_jax = True
    except ImportError:
        have_jax = False
    try:
        _torch()
        have_torch = True
    except ImportError:
        have_torch = False
    for loss in LOSSES:
        for act in ACTIVATIONS:
            sizes = (4, 5, 3, 3 if loss == "softmax_cross_entropy" else 2)
            X, y, sizes, w, theta, v = tiny_problem(loss, act, sizes=sizes)
            kw = dict(activation=act, loss=loss, l2=0.3, sample_weight=w)
            ref = NumpyMLP(X, y, sizes, **kw)
            P = theta.size
            eye = np.eye(P)
            h = 1e-6
            # gradient: central differences of F
            fd_g = np.array([(ref.value(theta + h * e) - ref.value(theta - h * e)) / (2 * h)
                             for e in eye])
            g = ref.grad(theta)
            note("numpy grad vs FD", rel_err(g, fd_g), 1e-6)
            # HVP: central differences of the (FD-checked) gradient
            hv = ref.hvp(theta, v)
            fd_hv = (ref.grad(theta + h * v) - ref.grad(theta - h * v)) / (2 * h)
            note("numpy hvp vs FD", rel_err(hv, fd_hv), 1e-6)
            # GGN: J by central differences of the network, H_η in closed form
            jv = ref.jvp(theta, v)
            fd_jv = (ref._forward(theta + h * v)[-1] - ref._forward(theta - h * v)[-1]) / (2 * h)
            note("numpy jvp vs FD", rel_err(jv, fd_jv), 1e-6)
            J = np.stack([(ref._forward(theta + h * e)[-1] - ref._forward(theta - h * e)[-1])
                          / (2 * h) for e in eye], axis=-1)  # (n, K, P)
            _, _, hess = _np_loss(ref.spec, ref._forward(theta)[-1])
            u = ref.spec.c[:, None] * hess(np.einsum("nkp,p->nk", J, v))
            fd_ggn = np.einsum("nkp,nk->p", J, u) + 0.3 * ref.spec.weight_mask * v
            note("numpy ggn vs FD", rel_err(ref.ggn_vp(theta, v), fd_ggn), 1e-6)
            uu = np.random.default_rng(5).standard_normal(jv.shape)
            note("numpy vjp vs FD", rel_err(ref.vjp(theta, uu), np.einsum("nkp,nk->p", J, uu)),
                 1e-6)
            # GGN = Hessian for identity activations and mse (a linear model, quadratic loss)
            impls = []
            if have_jax:
                impls += [JaxMLP(X, y, sizes, dtype=dt, **kw) for dt in (np.float64, np.float32)]
            if have_torch:
                impls += [TorchMLP(X, y, sizes, dtype=dt, **kw)
                          for dt in (np.float64, np.float32)]
            for m in impls:
                tol = 1e-11 if m.spec.dtype == np.float64 else 2e-5
                tag = f"{m.name} {m.spec.dtype}"
                note(f"{tag} value", abs(m.value(theta) - ref.value(theta))
                     / abs(ref.value(theta)), tol)
                note(f"{tag} grad", rel_err(m.grad(theta), g), tol)
                note(f"{tag} hvp", rel_err(m.hvp(theta, v), hv), tol)
                note(f"{tag} ggn", rel_err(m.ggn_vp(theta, v), ref.ggn_vp(theta, v)), tol)
                note(f"{tag} jvp", rel_err(m.jvp(theta, v), jv), tol)
                note(f"{tag} vjp", rel_err(m.vjp(theta, uu), ref.vjp(theta, uu)), tol)
    if verbose:
        for k, e in worst.items():
            print(f"{k:34s} worst rel err {e:.1e}")
    return worst


if __name__ == "__main__":
    selfcheck()
