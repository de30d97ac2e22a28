"""Multilayer perceptrons: the objective, its gradient and exact curvature products."""

import contextlib
import math
import numbers
import threading

import numpy as np
import scipy.sparse as sp

from .. import _blas
from .. import _validation as val
from ..kernels import activations as acts
from ..kernels import mlp as K_
from ..kernels.losses import GAUSSIAN, LOGISTIC, MULTINOMIAL, POISSON
from ..kernels.validate import all_finite, same_values
from . import families

ACTIVATIONS = {"identity": acts.IDENTITY, "tanh": acts.TANH, "relu": acts.RELU,
               "sigmoid": acts.SIGMOID, "softplus": acts.SOFTPLUS, "gelu": acts.GELU}
LOSSES = {"mse": GAUSSIAN, "sigmoid_cross_entropy": LOGISTIC, "poisson": POISSON,
          "softmax_cross_entropy": MULTINOMIAL}
_FAMILY = {"mse": "gaussian", "sigmoid_cross_entropy": "logistic", "poisson": "poisson",
           "softmax_cross_entropy": "multinomial"}
_HE = ("relu", "gelu")

#: networks with more parameters are refused (their offsets would not fit the int64 products
#: of the workspace sizes, and no machine holds them)
MAX_PARAMS = 2**40
#: dense Hessians above this many entries are refused (use the operators instead)
MAX_DENSE_ENTRIES = 2**28
#: the exact Hessian diagonal costs P Hessian-vector products: refused above this many params
MAX_EXACT_HESSIAN_DIAG = 20_000
#: target number of elements in each row-block buffer (the default ``batch_size``)
_BLOCK_ELEMENTS = 2**24
#: passes with at least PARALLEL_MIN_MACS multiply-adds split the rows into at most MAX_CHUNKS
#: fixed chunks of at least MIN_CHUNK_ROWS rows, run in parallel (see :func:`_n_chunks`)
PARALLEL_MIN_MACS = 2**24
MIN_CHUNK_ROWS = 512
MAX_CHUNKS = 8
#: bound on the chunks' separate outputs of a block product (C x m x P elements); more
#: directions run in groups
OUT_ELEMENTS = 2**24
#: float32 data: rows per block and chunk at most (BLAS sums a block's rows in float32; the
#: blocks' sums are added in float64). On a 4-8-1 tanh network and 300,000 rows, one float32
#: block of all rows put the gradient 26 eps of its scale (Σ|g_i|/n) away from the float64
#: one; 2,048-row blocks left a sum of 2,000 equal terms 157 eps off, 512-row blocks ~40
#: (a float32 sum's error grows with its length). No slower than 2,048 on 4-8-1, 20-64-64-1
#: and 50-64-64-5 networks over 300,000 rows; the 784-512-512-10 network on 1,024 rows still
#: runs as two chunks of one block each (their state is reused at the same θ)
F32_BLOCK_ROWS = 512
#: Hessian columns computed per call by :meth:`MLP.hessian`
_HESSIAN_BLOCK = 64


def _n_chunks(n, params, macs):
    """Number of fixed row chunks for ``n`` rows of a network with ``params`` parameters whose
    forward pass over all rows takes ``macs`` multiply-adds (``n · params`` on dense data, less
    on CSR). It depends on the problem only, never on the thread count, so results do not
    either.

    The chunks run in parallel, each with BLAS on one thread. Against BLAS's own threads on
    one block of all rows, that ran the 784-512-512-10 network on 1,024 rows 5-10% faster in 2
    chunks of 512 rows (elementwise work in parallel too, fewer thread handoffs), and the
    100-128-128-10 network on 10,000 rows 1.2-1.4x faster in 8 chunks; 8 chunks of 128 rows
    were 3-10% slower on the 784 network (each chunk repacks the weights and writes and sums
    its own gradient), hence ``MIN_CHUNK_ROWS``. A pass below ``PARALLEL_MIN_MACS`` runs as one
    chunk without a parallel region: handing work to a sleeping thread can cost 0.5 ms on a
    virtual machine (measured here: the 20-64-64-1 network on 128 rows took 0.75 ms per
    gradient in two chunks, 0.24 ms in one).

    At most ``macs / (4 params)`` chunks: each chunk zeroes, fills and sums outputs of
    ``params`` entries, which on wide CSR input cost more than the pass they split. A
    200,000-feature CSR input (30 nonzeros per row) into 64 units and 10 classes, 50,000
    rows: gradient 942 ms in 8 chunks, 581 in 4, 510 in 2, 590 in 1; HVP 930, 635, 641,
    791."""
    if macs < PARALLEL_MIN_MACS:
        return 1
    return int(min(MAX_CHUNKS, max(1, n // MIN_CHUNK_ROWS), max(1, macs // (4 * params))))


def _ordered(x):
    """A set or a mapping has no order a network's layers could follow."""
    return not isinstance(x, (set, frozenset, dict, type({}.keys())))


def _check_sizes(sizes, d):
    if (isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__")
            or not _ordered(sizes)):
        raise TypeError(f"sizes must be a sequence of layer widths (d, h1, ..., K), got {sizes!r}")
    out = []
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
            raise TypeError(f"sizes must hold integers, got {s!r} in {tuple(sizes)!r}")
        if s < 1:
            raise ValueError(f"every layer width must be >= 1, got {tuple(sizes)!r}")
        out.append(int(s))
    if len(out) < 2:
        raise ValueError(f"sizes needs at least (d, K), got {tuple(sizes)!r}")
    if out[0] != d:
        raise ValueError(
            f"sizes[0] = {out[0]} does not match X, which has {d} features; pass sizes=({d}, ...)"
        )
    P = sum((a + 1) * b for a, b in zip(out[:-1], out[1:], strict=True))  # Python ints
    if P > MAX_PARAMS:
        raise ValueError(
            f"sizes={tuple(out)!r} gives {P:,} parameters, beyond {MAX_PARAMS:,} (2^40); "
            "choose smaller layer widths"
        )
    return tuple(out)


def _check_activations(activation, n_hidden):
    if isinstance(activation, bytes) or not isinstance(activation, str) and not (
            hasattr(activation, "__len__") and hasattr(activation, "__iter__")
            and _ordered(activation)):
        raise TypeError(
            f"activation must be a name such as 'tanh' or a sequence of names (one per hidden "
            f"layer; a list or tuple: sets have no order), got {activation!r}"
        )
    names = [activation] * max(n_hidden, 1) if isinstance(activation, str) else list(activation)
    if not isinstance(activation, str) and len(names) != n_hidden:
        raise ValueError(
            f"activation lists {len(names)} names but the network has {n_hidden} hidden "
            "layers; give one name for all or one per hidden layer"
        )
    for a in names:
        if not isinstance(a, str) or a not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {a!r}; choose one of {', '.join(map(repr, ACTIVATIONS))}"
            )
    # a name given for a network without hidden layers is checked above, then unused
    return tuple(names[:n_hidden])


class _Buffers:
    """One thread's row-block buffers of an :class:`MLP` and the pass they hold."""

    __slots__ = ("ws", "wsargs", "state", "state_theta", "prev_level", "gen", "pinned")

    def __init__(self, n_params, dtype, gen):
        self.ws = None  # the named buffers (MLP._workspace)
        self.wsargs = None  # the buffers packed as K_.run's arguments
        self.state = None  # what the buffers hold at state_theta (MLP._LEAVES), or None
        self.state_theta = np.empty(n_params, dtype=dtype)
        self.prev_level = 0
        self.gen = gen
        self.pinned = None  # packed arguments held for a multi-call method (MLP._pinned)


class MLP:
    r"""A multilayer perceptron with a loss, an L2 penalty and sample weights.

    Network and objective (DESIGN.md conventions)

    .. math::

        h_0 = x,\quad z_l = h_{l-1} W_l + b_l,\quad h_l = \varphi_l(z_l)\ (l < L),
        \quad \eta = z_L,

        F(\theta) = \frac{1}{S}\sum_i w_i\,\ell(y_i, \eta_i)
        + \frac{\lambda}{2}\sum_l \|W_l\|_F^2, \qquad S = \sum_i w_i .

    ``η`` is the pre-link output (no activation on the last layer). Biases are not penalized.
    Parameters: layer by layer the augmented matrix ``[W_l; b_l]`` of shape
    ``(n_in + 1, n_out)`` flattened in C order, concatenated into ``θ`` of length ``P``.

    Products (one compiled call each; all row blocks, all layers):

    * ``hvp``: exact Hessian by Pearlmutter's R-operator (forward-over-reverse, derived by
      hand in :mod:`fastcurv.kernels.mlp`): one forward, one backward, one R-forward and one
      R-backward pass.
    * ``ggn_vp``: ``(1/S) Σ w_i J_iᵀ ∇²ℓ_i J_i v + λ v_weights`` (forward, R-forward, backward).
    * ``fisher_vp``: empirical Fisher ``(1/S) Σ w_i g_i g_iᵀ v`` (no penalty).
    * ``jvp`` / ``vjp``: the Jacobian of ``η`` (unweighted) and its transpose.

    Matrix products run in BLAS; activations, their derivatives and the loss are fused loops.
    Rows are processed in blocks of ``batch_size``: nothing of size ``n × width`` is kept
    beyond one block's buffers, and sums over rows are taken block by block in a fixed order,
    so results do not depend on the thread count.

    Above 2²⁴ multiply-adds per pass, the rows are split into up to 8 fixed chunks of at least
    512 rows (chosen from ``n`` and the network, never from the thread count) that run in
    parallel, each with BLAS on one thread and its share of the block buffers, and their sums
    are added in chunk order. Smaller problems run as one chunk, without a parallel region.

    When every chunk fits in one block, the buffers still hold the forward (and backward) pass
    of the last call, and a later call at the same ``θ`` (compared by value) reuses them:
    inside CG an HVP costs only its R-forward and R-backward passes. Results are bitwise the
    same as without the reuse. For small blocks (fewer than 2²² multiply-adds per pass) and
    for chunked runs SciPy's OpenBLAS is switched to one thread during the call
    (``FASTCURV_NO_BLAS_THREAD_CONTROL=1`` turns that off). Python threads may share a
    problem: each computes in row-block buffers of its own (allocated at its first call)
    and gets the bits of a call made alone.

    Parameters
    ----------
    X : array_like (n, d) or scipy.sparse matrix
        Dense data (float32 or float64; a non-C-contiguous array is copied once to C order),
        or sparse data, used as CSR by the first layer. The dtype of ``X`` is the dtype of
        every result. A C-ordered float array is used in place, not copied: do not modify
        it afterwards (cached passes would not see the change; use :meth:`with_data`).
    y : array_like
        ``(n,)`` targets for one output or class labels in ``[0, K)`` (softmax), ``(n, K)``
        for K outputs (mse, sigmoid cross-entropy, poisson).
    sizes : sequence of int
        Layer widths ``(d, h1, ..., K)``; ``sizes[0]`` must be ``d``. ``(d, K)`` is a GLM.
    activation : str or sequence of str, default "tanh"
        ``"tanh" | "relu" | "sigmoid" | "softplus" | "gelu" | "identity"`` for all hidden
        layers, or one name per hidden layer.
    loss : {"mse", "sigmoid_cross_entropy", "softmax_cross_entropy", "poisson"}
    l2 : float, default 0
        λ on the weights (not the biases).
    sample_weight : array_like (n,), optional
        Non-negative weights, not all zero.
    batch_size : int, optional
        Rows per block (memory bound). Default: about 2²⁴ buffer elements per block. With C
        row chunks, each chunk works in blocks of ``ceil(batch_size / C)`` rows, so the
        buffers stay the same size. Float32 data cap ``batch_size`` at 512 rows per chunk
        and add the blocks' sums over rows in float64 (BLAS sums a block's rows in float32),
        so the rounding error of a sum over rows does not grow with the number of rows.
    """

    def __init__(self, X, y, sizes, activation="tanh", loss="mse", l2=0.0, sample_weight=None,
                 *, batch_size=None):
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(map(repr, LOSSES))}")
        self.loss = loss
        self._lc = LOSSES[loss]
        if sp.issparse(X):
            Xv = val.check_csr_X(X)
            self._sparse = True
        else:
            Xv = np.ascontiguousarray(val.check_dense_X(X))
            self._sparse = False
        self._X = Xv
        n, d = Xv.shape
        self.sizes = _check_sizes(sizes, d)
        self.activations = _check_activations(activation, len(self.sizes) - 2)
        K = self.sizes[-1]
        if loss == "softmax_cross_entropy" and K < 2:
            raise ValueError("softmax_cross_entropy needs sizes[-1] = K >= 2 outputs")
        n_classes = K if loss == "softmax_cross_entropy" else None
        y2, Ky = families.prepare_targets(_FAMILY[loss], y, n, n_classes, "sizes[-1]")
        if Ky != K:
            raise ValueError(
                f"y has {Ky} column(s) but the network has sizes[-1] = {K} outputs; "
                f"pass y of shape ({n},) for one output or ({n}, {K})"
            )
        self._y2 = y2
        self._w = val.check_sample_weight(sample_weight, n)
        scaled = self._w / self._w.max()
        self._cw = scaled / scaled.sum()
        self._l2 = val.as_float_scalar(l2, "l2", low=0.0)
        self._batch_size_arg = batch_size  # as given: with_data passes it on
        if batch_size is None:
            per_row = 7 * sum(self.sizes[1:]) + 2 * max(self.sizes[1:])
            batch_size = max(256, _BLOCK_ELEMENTS // per_row)
        else:
            batch_size = val.as_int(batch_size, "batch_size")
        self.batch_size = int(min(batch_size, n))
        L = len(self.sizes) - 1
        self._sizes = np.array(self.sizes, dtype=np.int64)
        self._acts = np.array([ACTIVATIONS[a] for a in self.activations] + [acts.IDENTITY],
                              dtype=np.int64)
        self._poff = np.zeros(L + 1, dtype=np.int64)
        self._poff[1:] = np.cumsum([(self.sizes[l] + 1) * self.sizes[l + 1] for l in range(L)])
        P = int(self._poff[-1])
        first = self.sizes[0] * self.sizes[1]  # the first layer's weights (no bias)
        macs = n * P if not self._sparse else int(self._X.nnz) * self.sizes[1] + n * (P - first)
        C = _n_chunks(n, P, macs)
        if self.dtype == np.float32:
            # every pass over row blocks (chunked or not) uses blocks of at most batch_size
            self.batch_size = min(self.batch_size, C * F32_BLOCK_ROWS)
        # each chunk gets ceil(B / C) rows of the row-block buffers (B rounded up to C parts)
        Bc = -(-self.batch_size // C)
        self._starts = np.linspace(0, n, C + 1).round().astype(np.int64)
        self._chunk_block = Bc
        self._one_block = bool(np.diff(self._starts).max() <= Bc)
        #: float32 with several blocks per chunk: block sums added in float64 (see K_.run)
        self._acc64 = self.dtype == np.float32 and not self._one_block
        B = self._capacity = C * Bc
        self._aoff = np.zeros(L + 1, dtype=np.int64)
        self._aoff[1:] = B * np.cumsum(self.sizes[1:])
        # augmented hidden outputs [h, 1] and their R-images, stacked: 2B rows of w + 1
        self._hoff = np.zeros(max(L, 1), dtype=np.int64)
        self._hoff[1:] = 2 * B * np.cumsum([w + 1 for w in self.sizes[1:L]])
        # squared layer inputs (ggn_diag): d columns for a dense first layer (none for CSR,
        # which squares its stored values), n_in + 1 for the others
        ins = [0 if self._sparse else self.sizes[0]] + [w + 1 for w in self.sizes[1:L]]
        self._qoff = np.zeros(L + 1, dtype=np.int64)
        self._qoff[1:] = B * np.cumsum(ins)
        # chunk c's part of each layer's region: c Bc rows in
        widths = np.array(self.sizes[1:], dtype=np.int64)
        cs = np.arange(C, dtype=np.int64)[:, None] * Bc
        self._aoffs = self._aoff[None, :].repeat(C, 0)
        self._aoffs[:, :L] += cs * widths
        self._hoffs = self._hoff[None, :].repeat(C, 0)
        if L > 1:
            self._hoffs[:, :L - 1] += cs * 2 * (widths[:L - 1] + 1)
        self._qoffs = self._qoff[None, :].repeat(C, 0)
        self._qoffs[:, :L] += cs * np.array(ins, dtype=np.int64)
        mask = np.zeros(self.n_params)
        for l in range(L):
            mask[self._poff[l]:self._poff[l] + self.sizes[l] * self.sizes[l + 1]] = 1.0
        self._wmask = mask
        self._dargs = None
        self._pack = None  # the kernels' packed problem arguments (see _packed)
        self._tls = threading.local()  # each thread's row-block buffers (_Buffers)
        self._gen = 0  # raised when the problem changes (l2): every thread's state is stale

    # ------------------------------------------------------------------ attributes
    @property
    def X(self):
        """The data as used by the kernels (a C-ordered ndarray or a CSR matrix)."""
        return self._X

    @property
    def n_samples(self):
        return self._X.shape[0]

    @property
    def n_features(self):
        return self.sizes[0]

    @property
    def n_outputs(self):
        return self.sizes[-1]

    @property
    def n_params(self):
        return int(self._poff[-1])

    @property
    def dtype(self):
        return self._X.dtype

    @property
    def is_sparse(self):
        return self._sparse

    def __copy__(self):
        """A shallow copy (the same data) with buffers and cached state of its own: sharing
        them, each problem took the other's pass for its own at a θ it had recorded."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._tls = threading.local()
        return new

    def __getstate__(self):
        """Pickling and ``copy.deepcopy``: the problem without its per-thread buffers and
        packed kernel arguments, which are rebuilt on first use (a ``threading.local`` cannot
        be pickled)."""
        state = dict(self.__dict__)
        del state["_tls"]
        state["_pack"] = None
        state["_dargs"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tls = threading.local()

    @property
    def _b(self):
        """This thread's :class:`_Buffers`: threads sharing one problem each compute in their
        own buffers (sharing them, one thread's pass overwrote another's mid-call)."""
        b = getattr(self._tls, "b", None)
        if b is None:
            b = self._tls.b = _Buffers(self.n_params, self.dtype, self._gen)
        elif b.gen != self._gen:
            b.state, b.prev_level, b.gen = None, 0, self._gen
        return b

    def __repr__(self):
        kind = "CSR" if self._sparse else "dense"
        return (f"MLP(sizes={self.sizes}, activations={self.activations}, loss={self.loss!r}, "
                f"n_samples={self.n_samples}, l2={self.l2}, {kind} {self.dtype})")

    # ------------------------------------------------------------------ parameters
    def init(self, seed=0):
        """Random starting weights (zero biases): Glorot-uniform ``U(±√(6/(n_in + n_out)))``
        for tanh, sigmoid, softplus and identity layers, He-normal ``N(0, 2/n_in)`` for the
        layers feeding relu or gelu; the output layer is Glorot."""
        rng = val.make_rng(seed)
        parts = []
        L = len(self.sizes) - 1
        for l in range(L):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            Wt = np.zeros((n_in + 1, n_out))
            if l < L - 1 and self.activations[l] in _HE:
                Wt[:n_in] = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
            else:
                lim = np.sqrt(6.0 / (n_in + n_out))
                Wt[:n_in] = rng.uniform(-lim, lim, (n_in, n_out))
            parts.append(Wt)
        return self.flatten(parts)

    def unflatten(self, theta):
        """Per-layer augmented weights ``[W_l; b_l]``, shapes ``(n_in + 1, n_out)`` (views)."""
        theta = self._check_theta(theta)
        L = len(self.sizes) - 1
        return [theta[self._poff[l]:self._poff[l + 1]].reshape(self.sizes[l] + 1,
                                                                self.sizes[l + 1])
                for l in range(L)]

    def flatten(self, parts):
        """Inverse of :meth:`unflatten`."""
        L = len(self.sizes) - 1
        if isinstance(parts, np.ndarray) or not hasattr(parts, "__len__") or len(parts) != L:
            raise ValueError(f"this MLP has {L} layers: pass a list of {L} arrays, got "
                             f"{type(parts).__name__}")
        out = []
        for l, Wt in enumerate(parts):
            shape = (self.sizes[l] + 1, self.sizes[l + 1])
            Wt = np.asarray(Wt)
            if Wt.dtype.kind not in "biuf":
                raise TypeError(f"layer {l} must hold real numbers, got dtype {Wt.dtype}")
            if Wt.shape != shape:
                raise ValueError(f"layer {l} must have shape {shape}, got {Wt.shape}")
            out.append(val.finite_as(Wt, self.dtype, f"layer {l}").reshape(-1))
        return np.concatenate(out)

    def _check_theta(self, theta):
        # fast path for the common case (a few microseconds matter on small models)
        if (type(theta) is np.ndarray and theta.dtype == self.dtype and theta.ndim == 1
                and theta.shape[0] == self.n_params and theta.flags.c_contiguous
                and all_finite(theta)):
            return theta
        return val.check_vector(theta, self.n_params, self.dtype, "theta")

    # ------------------------------------------------------------------ kernel calls
    def _workspace(self, want_sq=False, b=None):
        """This thread's row-block buffers (``b``: its :class:`_Buffers`, if known), allocated
        once and reused by its every call."""
        if b is None:
            b = self._b
        if b.ws is None:
            B, dt = self._capacity, self.dtype
            C = len(self._starts) - 1
            S = int(self._aoff[-1])
            wmax = max(self.sizes[1:])
            L = len(self.sizes) - 1
            gt = max((self.sizes[l] + 1) * self.sizes[l + 1] for l in range(L))
            b.ws = {name: np.empty(S, dtype=dt) for name in ("Z", "DP", "RZ")}
            b.ws["D"] = np.empty(2 * S, dtype=dt)
            b.ws["H"] = np.zeros(max(2 * B * sum(w + 1 for w in self.sizes[1:L]), 1),
                                 dtype=dt)
            b.ws["ones"] = np.ones(B, dtype=dt)
            b.ws["T"] = np.empty(B * wmax, dtype=dt)
            b.ws["T2"] = np.empty(B * wmax, dtype=dt)
            b.ws["GTs"] = np.empty((C, gt), dtype=dt)
            b.ws["GT"] = b.ws["GTs"][0]
            b.ws["HS"] = np.empty((B, self.n_outputs))
            b.ws["SQ"] = np.empty(1, dtype=dt)
            b.ws["V0"] = np.zeros((1, self.n_params), dtype=dt)
            b.ws["U0"] = np.zeros((1, 1, self.n_outputs), dtype=dt)
            b.ws["outs1"] = np.zeros((C, 1, self.n_params), dtype=dt)
            b.ws["accs1"] = np.zeros((C, 1, self.n_params) if self._acc64 else (1, 1, 1))
            b.ws["out1"] = b.ws["outs1"][0]
            b.ws["losses"] = np.zeros(C)
        if want_sq and b.ws["SQ"].shape[0] < max(int(self._qoff[-1]), 1):
            b.ws["SQ"] = np.empty(int(self._qoff[-1]), dtype=self.dtype)
            b.wsargs = None
        if b.wsargs is None:
            # argument groups of K_.run, packed once (each call of a small model counts)
            ws = b.ws
            C = len(self._starts) - 1
            b.wsargs = (ws["Z"], ws["H"], ws["D"], ws["DP"], ws["RZ"],
                            ws["T"].reshape(C, -1), ws["T2"].reshape(C, -1), ws["GTs"],
                            ws["HS"].reshape(C, -1, self.n_outputs), ws["SQ"], ws["ones"],
                            ws["losses"])
        return b.ws

    def _packed(self):
        """The kernels' packed problem arguments ``(head, mid)``, packed once per value of
        ``l2`` (each call of a small model counts). A call takes them once: a thread that
        reassigns ``l2`` meanwhile gives that call the old or the new λ, never a mix, and the
        pack is tagged with the generation it was read at (the setter assigns λ before it
        raises ``_gen``), so a pack of the old λ is never kept for the new."""
        pack = self._pack
        if pack is None or pack[0] != self._gen:
            gen = self._gen
            pack = (gen, (*self._data_args(), self._lc, self._y2, self._cw, self.l2),
                    (self._sizes, self._acts, self._poff, self._aoffs, self._hoffs,
                     self._qoffs, self._starts, self._chunk_block))
            self._pack = pack
        return pack[1], pack[2]

    def _data_args(self):
        if getattr(self, "_dargs", None) is not None:
            return self._dargs
        self._dargs = self._make_data_args()
        return self._dargs

    def _make_data_args(self):
        if self._sparse:
            X = self._X
            return (np.zeros((1, 1), dtype=self.dtype), X.data, X.indices, X.indptr, True)
        z = np.zeros(1, dtype=self.dtype)
        return (self._X, z, np.zeros(1, dtype=np.int32), np.zeros(2, dtype=np.int32), False)

    def _run(self, mode, theta, V=None, U=None, m_out=1, J=None):
        P = self.n_params
        C = len(self._starts) - 1
        if m_out > 1 and C > 1 and C * m_out * P > OUT_ELEMENTS:
            # each chunk sums its own (m, P) output: run the directions in groups so that the
            # chunks' outputs stay within OUT_ELEMENTS (the forward and backward passes are
            # reused between groups when every chunk is one row block)
            g = max(1, OUT_ELEMENTS // (C * P))
            out = np.empty((m_out, P), dtype=self.dtype)
            for j in range(0, m_out, g):
                k = min(m_out, j + g)
                total, out[j:k] = self._run(mode, theta, None if V is None else V[j:k],
                                            None if U is None else U[j:k], k - j, J)
            return total, out
        b = self._b
        ws = self._workspace(mode == K_.GGN_DIAG, b)
        V = ws["V0"] if V is None else V
        U = ws["U0"] if U is None else U
        J = ws["U0"] if J is None else J
        if m_out == 1:
            outs = ws["outs1"]  # reused: callers copy what they keep
        else:
            outs = np.empty((len(self._starts) - 1, m_out, P), dtype=self.dtype)
        if mode == K_.GGN_DIAG:
            outs.fill(0.0)
        if not self._acc64:
            accs = ws["accs1"]  # unused
        elif m_out == 1:
            accs = ws["accs1"]
            accs.fill(0.0)
        else:
            accs = np.zeros((C, m_out, P))
        skip = self._reusable(b, theta, mode)
        b.state = None  # invalid while the buffers are being rewritten
        # BLAS on one thread always: a threaded GEMM splits the row sums (h̃ᵀδ) by thread
        # count, which changed the last bits of a gradient with the thread count
        head, mid = b.pinned or self._packed()
        before = _blas.one_thread()
        try:
            loss, pen = K_.run(mode, *head, theta, *mid, V, U, outs, self._acc64, accs, J,
                               *b.wsargs, skip)
        finally:
            _blas.restore(before)
        self._remember(b, mode, theta, skip)
        total = loss + pen
        if mode != K_.VALUE:
            res = J if mode == K_.JVP else outs[0]
            if not (math.isfinite(total) and all_finite(res.reshape(-1))):
                raise self._overflow_error(mode, theta, V)
        return total, outs[0]

    def _weights_of(self, A):
        """The penalized (weight, not bias) entries of the rows of ``A`` (m, P), flattened."""
        L = len(self.sizes) - 1
        return np.concatenate([
            A[:, self._poff[l]:self._poff[l] + self.sizes[l] * self.sizes[l + 1]].ravel()
            for l in range(L)])

    def _overflow_error(self, mode, theta, V):
        """FloatingPointError for a result that overflowed (finite θ, data and vectors): the
        L2 term where it alone overflows, else the data or parameters."""
        what = {K_.VALUE_GRAD: "the network's loss or its gradient"}.get(mode, "this product")
        if mode == K_.VALUE_GRAD:
            fault = val.penalty_overflow(self.l2, self._weights_of(theta[None]))
        elif mode in (K_.HVP, K_.GGN):
            fault = val.penalty_overflow(self.l2, None, v=self._weights_of(V))
        else:
            fault = ""
        if fault:
            return FloatingPointError(f"At these parameters {what} overflows: {fault}.")
        return FloatingPointError(
            f"At these parameters {what} overflows "
            f"{np.dtype(self.dtype).name}. Start from smaller parameters (p.init()) or "
            "standardize the inputs (and the targets of an mse or poisson loss)"
            + (", or add an L2 penalty" if self.l2 == 0.0 else "")
            + "; for a product, a smaller v (products are linear in it) may be enough.")

    # State of the row-block buffers. With all rows in one block, the buffers still hold the
    # forward pass (level 1: Z, h̃) and possibly the loss state and backward pass (level 2:
    # HS, every scaled δ_l and DP_l) of the last call: a later call at the same θ reuses them
    # (CG calls the HVP many times at one θ).
    _LEAVES = {K_.VALUE: 1, K_.VALUE_GRAD: 2, K_.HVP: 2, K_.GGN: 1, K_.JVP: 1, K_.VJP: 1,
               K_.FISHER: 1, K_.GGN_DIAG: 1}

    def _reusable(self, b, theta, mode):
        st = b.state
        if st is None or not self._one_block:
            return 0
        if not same_values(theta, b.state_theta):
            return 0
        return 2 if mode == K_.HVP and st >= 2 else 1

    def _remember(self, b, mode, theta, skip):
        if not self._one_block:
            return
        prev = b.prev_level if skip else 0
        if mode in (K_.VALUE, K_.JVP):
            level = max(1, prev)  # the backward state, if any, is untouched (or rewritten equal)
        else:
            level = self._LEAVES[mode]
        if not skip:
            b.state_theta[:] = theta
        b.state = level
        b.prev_level = level

    @property
    def l2(self):
        """The L2 penalty strength λ (may be reassigned: the next call uses the new value)."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = val.as_float_scalar(value, "l2", low=0.0)
        self._gen += 1  # the packed arguments hold λ (see _packed); no thread reuses a pass

    def _forget(self):
        """This thread's buffers rewritten outside :meth:`_run`: nothing in them can be
        reused."""
        b = self._b
        b.state = None
        b.prev_level = 0

    def _block(self, v, name="v"):
        """``v`` (P,) or (P, m) as a C-contiguous (m, P) array of the problem dtype."""
        # fast path for one contiguous vector (CG's case: microseconds count on small models)
        if (type(v) is np.ndarray and v.dtype == self.dtype and v.ndim == 1
                and v.shape[0] == self.n_params and v.flags.c_contiguous and all_finite(v)):
            return v, v.reshape(1, -1)
        v = val.check_vector(v, self.n_params, self.dtype, name, allow_block=True)
        return v, np.ascontiguousarray(v.reshape(self.n_params, -1).T)

    # ------------------------------------------------------------------ objective
    def value(self, theta):
        """``F(θ)``, a Python float: ``+inf`` where the objective overflows (never NaN)."""
        theta = self._check_theta(theta)
        total, _ = self._run(K_.VALUE, theta)
        total = float(total)
        return val.inf_if_overflow(total)

    def grad(self, theta):
        """``∇F(θ)``, shape (P,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta):
        """``(F(θ), ∇F(θ))`` in one forward and one backward pass.

        Raises FloatingPointError where the loss or its gradient overflows (products too);
        :meth:`value` returns ``+inf`` there.
        """
        theta = self._check_theta(theta)
        total, out = self._run(K_.VALUE_GRAD, theta)
        return float(total), out[0].copy()

    # ------------------------------------------------------------------ curvature products
    def _product(self, mode, theta, v):
        theta = self._check_theta(theta)
        v, Vt = self._block(v)
        _, out = self._run(mode, theta, V=Vt, m_out=Vt.shape[0])
        # always a copy: with one direction ``out`` is the reused workspace buffer (and its
        # (P, 1) transpose is already contiguous, so ascontiguousarray would not copy it)
        return out[0].copy() if v.ndim == 1 else out.T.copy()

    def hvp(self, theta, v):
        """Exact Hessian of ``F`` (penalty included) times ``v`` (P,) or a block (P, m)."""
        return self._product(K_.HVP, theta, v)

    def ggn_vp(self, theta, v):
        """Generalized Gauss-Newton ``(1/S) Σ w_i J_iᵀ ∇²ℓ_i J_i v + λ v_weights``."""
        return self._product(K_.GGN, theta, v)

    def fisher_vp(self, theta, v):
        """Empirical Fisher ``(1/S) Σ w_i g_i (g_iᵀ v)`` (per-sample loss gradients, no
        penalty)."""
        return self._product(K_.FISHER, theta, v)

    def jvp(self, theta, v):
        """Jacobian of the outputs ``η`` times ``v``: shape (n, K), or (n, K, m) for (P, m)."""
        theta = self._check_theta(theta)
        v, Vt = self._block(v)
        m = Vt.shape[0]
        J = np.empty((m, self.n_samples, self.n_outputs), dtype=self.dtype)
        self._run(K_.JVP, theta, V=Vt, J=J)
        return J[0] if v.ndim == 1 else np.ascontiguousarray(J.transpose(1, 2, 0))

    def vjp(self, theta, u):
        """``Σ_i J_iᵀ u_i`` for ``u`` of shape (n, K) ((n,) when K = 1), or (n, K, m).

        Unweighted and unnormalized: the adjoint of :meth:`jvp`."""
        theta = self._check_theta(theta)
        n, K = self.n_samples, self.n_outputs
        U = val.plain_array(u, "u")
        if U.dtype.kind not in "biuf":
            raise TypeError(f"u must be a real array, got dtype {U.dtype}")
        if U.ndim == 1 and K == 1 and U.shape[0] == n:
            U = U.reshape(n, 1)
        if not (U.ndim in (2, 3) and U.shape[0] == n and U.shape[1] == K):
            raise ValueError(f"u must have shape ({n}, {K}) or ({n}, {K}, m), got {np.shape(u)}")
        block = U.ndim == 3
        U = val.finite_as(U, self.dtype, "u")
        Ut = np.ascontiguousarray((U if block else U[:, :, None]).transpose(2, 0, 1))
        _, out = self._run(K_.VJP, theta, U=Ut, m_out=Ut.shape[0])
        return out.T.copy() if block else out[0].copy()  # a copy of the reused buffer

    # ------------------------------------------------------------------ dense and diagonal
    def _dense(self, theta, product):
        P = self.n_params
        if P * P > MAX_DENSE_ENTRIES:
            raise ValueError(
                f"a dense ({P}, {P}) matrix is too large; use fc.HessianOperator(p, theta) "
                "or fc.GGNOperator with scipy.sparse.linalg instead"
            )
        theta = self._check_theta(theta)
        H = np.empty((P, P), dtype=self.dtype)
        with self._pinned():
            for a in range(0, P, _HESSIAN_BLOCK):
                b = min(P, a + _HESSIAN_BLOCK)
                E = np.zeros((P, b - a), dtype=self.dtype)
                E[np.arange(a, b), np.arange(b - a)] = 1.0
                H[:, a:b] = product(theta, E)
        return 0.5 * (H + H.T)

    @contextlib.contextmanager
    def _pinned(self):
        """Every call of this thread inside uses the packed arguments (λ among them) read on
        entry: a method made of several calls (the dense Hessian's column blocks) gives the
        old or the new λ of a reassignment by another thread, never a mix of the two."""
        b = self._b
        outer = b.pinned
        b.pinned = outer or self._packed()
        try:
            yield
        finally:
            b.pinned = outer

    def hessian(self, theta):
        """The dense exact Hessian (P, P) of ``F``, built from P Hessian-vector products in
        blocks of 64 and symmetrized (``(H + Hᵀ)/2``)."""
        return self._dense(theta, self.hvp)

    def ggn(self, theta):
        """The dense Gauss-Newton matrix (P, P) (penalty included), from GGN products."""
        return self._dense(theta, self.ggn_vp)

    def hessian_diag(self, theta):
        """Exact diagonal of the Hessian of ``F`` (P HVPs: small models only)."""
        P = self.n_params
        if P > MAX_EXACT_HESSIAN_DIAG:
            raise ValueError(
                f"the exact Hessian diagonal of an MLP costs one HVP per parameter ({P} here, "
                f"limit {MAX_EXACT_HESSIAN_DIAG}); estimate it with "
                "fc.hutchinson_diag(fc.HessianOperator(p, theta), n_probes), or use "
                "p.ggn_diag(theta) (exact, K backward passes)"
            )
        theta = self._check_theta(theta)
        out = np.empty(P, dtype=self.dtype)
        with self._pinned():
            for a in range(0, P, _HESSIAN_BLOCK):
                b = min(P, a + _HESSIAN_BLOCK)
                E = np.zeros((P, b - a), dtype=self.dtype)
                E[np.arange(a, b), np.arange(b - a)] = 1.0
                out[a:b] = self.hvp(theta, E)[np.arange(a, b), np.arange(b - a)]
        return out

    def ggn_diag(self, theta, mc_samples=None, seed=None):
        """Diagonal of the Gauss-Newton matrix (penalty included).

        Exact (``mc_samples=None``): with ``∇²ℓ_i = S_i S_iᵀ`` (``S = diag(√ℓ'')``, or
        ``diag(√p) − p√pᵀ`` for the softmax), ``diag = (1/S) Σ_i w_i Σ_c (J_iᵀ S_i e_c)²``:
        K backward passes per row block, each followed by the squared-input products.
        Monte Carlo (``mc_samples=s``): the mean over ``s`` draws of ``(1/S) Σ_i w_i (J_iᵀ
        ℓ'(η_i, ỹ_i))²`` with labels ``ỹ_i`` sampled from the model (seeded); one backward
        pass per draw. Its expectation is the exact diagonal.
        """
        theta = self._check_theta(theta)
        val.make_rng(seed)  # checked also where unused (mc_samples=None)
        if mc_samples is None:
            _, out = self._run(K_.GGN_DIAG, theta)
            return out[0].copy()
        else:
            d = self._mc_diag(theta, val.as_int(mc_samples, "mc_samples"), seed)
        return (d + self.l2 * self._wmask).astype(self.dtype)

    @staticmethod
    def _one_blas_thread(kernel, *args):
        """``kernel(*args)`` with SciPy's BLAS on one thread, as :meth:`_run` runs its row
        chunks: OpenBLAS sums a product's terms in an order that depends on its thread count,
        and the curvature passes below must not (the Monte Carlo GGN diagonal and the K-FAC
        deltas changed in the last bits between OPENBLAS_NUM_THREADS=1 and 2)."""
        before = _blas.one_thread()
        try:
            return kernel(*args)
        finally:
            _blas.restore(before)

    def _mc_diag(self, theta, mc, seed):
        """Draw by draw, block by block: the label streams are consumed row by row in the same
        order whatever ``batch_size`` is (one forward pass per block and draw, unless all rows
        fit in one block)."""
        self._forget()
        ws = self._workspace(want_sq=True)
        Xa = self._data_args()
        L, K = len(self.sizes) - 1, self.n_outputs
        out = np.zeros(self.n_params)  # float64: the blocks' sums are added in float64
        fam = _FAMILY[self.loss]
        streams = families.LabelStreams(seed)
        n, B = self.n_samples, self.batch_size
        o = 2 * self._aoff[L - 1]
        for j in range(mc):
            for s in range(0, n, B):
                e = min(n, s + B)
                nb = e - s
                if j == 0 or n > B:
                    self._one_blas_thread(K_.forward, *Xa, s, e, theta, self._sizes,
                                          self._acts, self._poff, self._aoff, self._hoff,
                                          ws["Z"], ws["H"])
                    K_.loss_block(self._lc, ws["Z"], self._aoff, self._sizes, self._y2,
                                  self._cw, s, e, ws["HS"], ws["D"], False)
                    K_.square_inputs(Xa[0], Xa[4], s, e, self._cw, self._sizes, self._qoff,
                                     ws["H"], self._hoff, ws["SQ"])
                oz = self._aoff[L - 1]
                eta = ws["Z"][oz:oz + nb * K].reshape(nb, K).astype(np.float64)
                Dout = ws["D"][o + nb * K:o + 2 * nb * K].reshape(nb, K)  # the δ half
                Dout[:] = families.sample_residuals(fam, eta, ws["HS"][:nb], streams)
                self._one_blas_thread(K_.backward, *Xa, s, e, theta, self._sizes, self._acts,
                                      self._poff, self._aoff, self._hoff, ws["Z"], ws["H"],
                                      ws["D"], ws["DP"], ws["GT"], ws["ones"], ws["out1"][0],
                                      False, False)
                self._one_blas_thread(K_.diag_layers, *Xa, s, e, self._cw, self._sizes,
                                      self._poff, self._aoff, self._qoff, ws["D"], ws["SQ"],
                                      ws["T2"], ws["GT"], ws["ones"], out)
        return val.finite_result((out / mc).astype(self.dtype),
                                 "the Monte Carlo GGN diagonal")

    def fisher_diag(self, theta):
        """Diagonal of the empirical Fisher ``(1/S) Σ_i w_i g_i ⊙ g_i`` (per-sample loss
        gradients at the observed targets, no penalty), in one forward and one backward pass
        per row block: ``Σ_i c_i (h̃_{l−1,i} ⊙ h̃_{l−1,i}) ⊗ (δ_{l,i} ⊙ δ_{l,i})`` layer by
        layer, without forming the per-sample gradients."""
        theta = self._check_theta(theta)
        out = np.zeros(self.n_params)  # float64: the blocks' sums are added in float64
        ws = self._workspace(want_sq=True)
        Xa = self._data_args()
        for s, e, _j, _deltas in self._curvature_rows(theta, "empirical"):
            K_.square_inputs(Xa[0], Xa[4], s, e, self._cw, self._sizes, self._qoff, ws["H"],
                             self._hoff, ws["SQ"])
            self._one_blas_thread(K_.diag_layers, *Xa, s, e, self._cw, self._sizes, self._poff,
                                  self._aoff, self._qoff, ws["D"], ws["SQ"], ws["T2"], ws["GT"],
                                  ws["ones"], out)
        return val.finite_result(out.astype(self.dtype), "the empirical Fisher diagonal")

    def _mc_fisher_vp(self, theta, v, mc_samples, seed):
        """Monte Carlo Fisher product ``(1/M) Σ_s (1/S) Σ_i w_i g̃_is (g̃_isᵀ v)`` (``M =
        mc_samples``, ``S = Σ w_i``) with per-sample gradients at labels drawn from the model
        (draw ``s`` from its own stream of ``seed``, see :meth:`_curvature_rows`): one
        forward pass per row block and one backward pass per draw. Its expectation is the GGN
        without the penalty."""
        theta = self._check_theta(theta)
        v, Vt = self._block(v)
        m, P = Vt.shape[0], self.n_params
        ws = self._workspace()
        Xa = self._data_args()
        out = np.zeros((m, P))  # float64: the blocks' sums are added in float64
        tmp = np.empty(P, dtype=self.dtype)
        for s, e, _j, _deltas in self._curvature_rows(theta, "mc", mc_samples, seed):
            for k in range(m):
                self._one_blas_thread(K_.fisher_block, *Xa, s, e, self._cw, Vt[k],
                                      self._sizes, self._poff, self._aoff, self._hoff, ws["H"],
                                      ws["D"], ws["T"], ws["T2"], ws["GT"], ws["ones"], tmp,
                                      True)
                out[k] += tmp
        out = val.finite_result((out / mc_samples).astype(self.dtype),
                                "the Monte Carlo Fisher product")
        return out[0] if v.ndim == 1 else np.ascontiguousarray(out.T)

    # ------------------------------------------------------------------ curvature rows
    def _curvature_rows(self, theta, kind, mc_samples=1, seed=None):
        """The per-row pieces that curvature factors are made of, block by block.

        For each row block ``[s, e)`` and each backpropagated column ``j``, yields
        ``(s, e, j, deltas)`` with ``deltas[l]`` the (nb, w_l) output-side gradients
        ``∂ℓ_i/∂z_l`` (unweighted) of the column, backpropagated from

        * ``"type2"``: the ``K`` columns of a square root of the loss Hessian (``j < K``),
        * ``"mc"``: residuals ``ℓ'(η_i, ỹ_i)`` at labels sampled from the model (``j <
          mc_samples``; draw ``j`` has its own random stream from ``seed``, consumed row by
          row, so samples do not depend on ``batch_size``),
        * ``"empirical"``: the residuals ``ℓ'(η_i, y_i)`` at the observed labels (``j = 0``).

        While a block is current, :meth:`_layer_input` gives the layers' inputs. The yielded
        arrays are views of the row-block buffers: use them before advancing.
        """
        self._forget()
        ws = self._workspace()
        Xa = self._data_args()
        L, K = len(self.sizes) - 1, self.n_outputs
        n, B = self.n_samples, self.batch_size
        fam = _FAMILY[self.loss]
        if kind == "mc":
            root = val.make_rng(seed)
            streams = [families.LabelStreams(g) for g in root.spawn(mc_samples)]
        od = 2 * self._aoff[L - 1]
        oz = self._aoff[L - 1]
        for s in range(0, n, B):
            e = min(n, s + B)
            nb = e - s
            self._one_blas_thread(K_.forward, *Xa, s, e, theta, self._sizes, self._acts,
                                  self._poff, self._aoff, self._hoff, ws["Z"], ws["H"])
            K_.loss_block(self._lc, ws["Z"], self._aoff, self._sizes, self._y2, self._cw, s, e,
                          ws["HS"], ws["D"], False)
            Dout = ws["D"][od + nb * K:od + 2 * nb * K].reshape(nb, K)  # the δ half
            deltas = [ws["D"][2 * self._aoff[l] + nb * w:2 * self._aoff[l] + 2 * nb * w]
                      .reshape(nb, w) for l, w in enumerate(self.sizes[1:])]
            cols = {"type2": K, "mc": mc_samples, "empirical": 1}[kind]
            if kind == "mc":
                eta = ws["Z"][oz:oz + nb * K].reshape(nb, K).astype(np.float64)
                HS = ws["HS"][:nb].copy()
            for j in range(cols):
                if kind == "type2":
                    K_.sqrt_hess_column(self._lc, ws["HS"][:nb], j, Dout)
                elif kind == "mc":
                    Dout[:] = families.sample_residuals(fam, eta, HS, streams[j])
                self._one_blas_thread(K_.backward, *Xa, s, e, theta, self._sizes, self._acts,
                                      self._poff, self._aoff, self._hoff, ws["Z"], ws["H"],
                                      ws["D"], ws["DP"], ws["GT"], ws["ones"], ws["out1"][0],
                                      False, False)
                yield s, e, j, deltas

    def _grad_dots(self, theta, S, lo, hi):
        """``S @ g_iᵀ`` for the rows ``lo:hi``: (m, hi - lo) float64 dot products of the rows
        of ``S`` (m, P) with the per-sample gradients, without forming them:
        ``g_iᵀ s = ℓ'_iᵀ (J_i s)``, one forward pass per row block and one R-forward pass
        (a Jacobian-vector product) per row of ``S``."""
        self._forget()
        ws = self._workspace()
        Xa = self._data_args()
        L, K, B = len(self.sizes) - 1, self.n_outputs, self.batch_size
        S = np.ascontiguousarray(S, dtype=self.dtype)
        m = S.shape[0]
        out = np.empty((m, hi - lo))
        od, oz = 2 * self._aoff[L - 1], self._aoff[L - 1]
        for s in range(lo, hi, B):
            e = min(hi, s + B)
            nb = e - s
            K_.forward(*Xa, s, e, theta, self._sizes, self._acts, self._poff, self._aoff,
                       self._hoff, ws["Z"], ws["H"])
            K_.loss_block(self._lc, ws["Z"], self._aoff, self._sizes, self._y2, self._cw, s, e,
                          ws["HS"], ws["D"], False)
            r = ws["D"][od + nb * K:od + 2 * nb * K].reshape(nb, K).astype(np.float64)
            for j in range(m):
                K_.r_forward(*Xa, s, e, theta, S[j], self._sizes, self._acts, self._poff,
                             self._aoff, self._hoff, ws["Z"], ws["H"], ws["RZ"], ws["T"])
                Jv = ws["RZ"][oz:oz + nb * K].reshape(nb, K)
                out[j, s - lo:e - lo] = np.einsum("ik,ik->i", Jv, r)
        return out

    def _kfac_layout(self):
        """Per layer ``(n_in, n_out, has_bias_row)``, and the parameter offsets."""
        L = len(self.sizes) - 1
        return ([(self.sizes[l], self.sizes[l + 1], True) for l in range(L)],
                [int(o) for o in self._poff])

    def _layer_input(self, l, s, e):
        """Layer ``l``'s input for the current block of :meth:`_curvature_rows`: the augmented
        ``h̃_{l−1}`` (nb, n_in + 1) for ``l > 0``; for ``l = 0`` the rows ``X[s:e]`` (dense
        view or CSR slice), without the ones column."""
        if l == 0:
            return self._X[s:e]
        nb, w = e - s, self.sizes[l] + 1
        o = self._hoff[l - 1]
        return self._b.ws["H"][o:o + 2 * nb * w].reshape(2 * nb, w)[:nb]

    def _diverging_message(self, theta):
        """Why the loss has no finite minimizer, or None (asked by ``newton_cg`` before each
        step). The output biases are not penalized, so when no row of positive weight has a
        target on one side of an output's range (sigmoid cross-entropy: all 0 or all 1;
        poisson: all 0; softmax: a class without samples) that bias runs off to ±∞
        (:func:`families.runaway_intercept_message`). A data fact, computed once.

        With ``l2 = 0`` and a classification loss, when θ classifies every sample of positive
        weight correctly, scaling the last layer (the outputs are linear in it) lowers every
        loss: no finite minimizer (:func:`families.separable_message`; one forward pass).
        """
        if getattr(self, "_runaway", None) is None:
            support = families.target_support(self._lc, self._y2, self.n_outputs, self._w > 0)
            self._runaway = families.runaway_intercept_message(
                self._lc, *support, bias="output bias") or ""
        if self._runaway:
            return self._runaway
        if self.l2 != 0.0 or self._lc not in (LOGISTIC, MULTINOMIAL):
            return None
        theta = self._check_theta(theta)
        try:
            eta = self._outputs(theta)
        except FloatingPointError:
            return None  # outputs beyond the dtype: the fit's own checks report it
        return families.separable_message(self._lc, self._y2, eta, self._w > 0,
                                          "the last layer grows")

    def _outputs(self, theta):
        """The network outputs ``η`` (n, K) at θ: the JVP along θ's last layer, in which the
        outputs are linear and homogeneous (``η = h̃_{L−1} [W_L; b_L]``)."""
        layers, offsets = self._kfac_layout()
        n_in, K, bias = layers[-1]
        o = offsets[len(layers) - 1]
        v = np.zeros_like(theta)
        v[o:o + (n_in + bias) * K] = theta[o:o + (n_in + bias) * K]
        return self.jvp(theta, v)

    # ------------------------------------------------------------------ per-sample
    def per_sample_grads(self, theta, rows=None):
        """Per-sample loss gradients ``g_i = ∇_θ ℓ(y_i, η_i)`` (no weight, no penalty), as a
        dense (m, P) array for the rows ``rows`` (default all)."""
        theta = self._check_theta(theta)
        idx = val.check_rows(rows, self.n_samples)
        if idx.size == 0:
            return np.empty((0, self.n_params), dtype=self.dtype)
        p = self if rows is None else self._take(idx, weighted=False)
        p._forget()
        ws = p._workspace()
        Xa = p._data_args()
        G = np.empty((p.n_samples, p.n_params), dtype=p.dtype)
        for s in range(0, p.n_samples, p.batch_size):
            e = min(p.n_samples, s + p.batch_size)
            K_.forward(*Xa, s, e, theta, p._sizes, p._acts, p._poff, p._aoff, p._hoff, ws["Z"],
                       ws["H"])
            K_.loss_block(p._lc, ws["Z"], p._aoff, p._sizes, p._y2, p._cw, s, e, ws["HS"],
                          ws["D"], False)
            K_.backward(*Xa, s, e, theta, p._sizes, p._acts, p._poff, p._aoff, p._hoff, ws["Z"],
                        ws["H"], ws["D"], ws["DP"], ws["GT"], ws["ones"], ws["out1"][0], False,
                        False)
            K_.per_sample_block(*Xa, s, e, p._sizes, p._poff, p._aoff, p._hoff, ws["H"],
                                ws["D"], G)
        return val.finite_result(G, "the per-sample gradients")

    # ------------------------------------------------------------------ new problems
    def _take(self, idx, weighted=True):
        """The rows ``idx`` as a new problem; ``weighted=False`` gives them unit weights (for
        per-sample quantities, which do not depend on the weights, even on rows of weight 0)."""
        X = self._X[idx]
        y = self._y2[idx]
        y = y[:, 0] if self._y2.shape[1] == 1 else y
        w = self._w[idx] if weighted else None
        return self._like(X, y, w, self.batch_size)

    def _rows_problem(self, rows):
        """The rows ``rows`` with unit weights: the per-sample gradients of the training rows
        (Influence scores them), whatever their sample weights."""
        return self._take(val.check_rows(rows, self.n_samples), weighted=False)

    def subset(self, rows):
        """The same model and penalty on the rows ``rows`` (a copy of those rows)."""
        idx = val.check_rows(rows, self.n_samples)
        if idx.size == 0:
            raise ValueError("subset needs at least one row")
        val.check_subset_weights(self._w, idx)
        return self._take(idx)

    def with_data(self, X, y, sample_weight=None):
        """The same model, penalty and ``batch_size`` (as given to the constructor; the
        default when none was) on other data."""
        val.check_n_features(X, self.sizes[0], "the network's input width sizes[0]")
        return self._like(X, y, sample_weight, self._batch_size_arg)

    def _like(self, X, y, sample_weight, batch_size):
        return MLP(X, y, sizes=self.sizes, activation=list(self.activations) or "tanh",
                   loss=self.loss, l2=self.l2, sample_weight=sample_weight,
                   batch_size=batch_size)
