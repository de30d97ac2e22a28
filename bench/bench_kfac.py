"""K-FAC, EK-FAC and the curvature diagonals of ``fc.MLP``: costs in gradients, and CG.

Problem (the 784 network of bench_mlp.py; random data, fixed seed): ``fc.MLP`` 784-512-512-10,
tanh, ``softmax_cross_entropy``, 1,024 rows, X ~ N(0, 1), labels random in [0, 10), l2 = 1e-3,
float32 and float64 (P = 669,706). θ = ``p.init(0)`` (Glorot weights) with small random
biases (0.1 · N(0, 1), so the bias rows matter); v ~ N(0, 1).

Measured, all in one session, every cost as a multiple of the gradient timed in the same run
(``p.grad`` on a new θ every call, harness.FreshTheta, as in bench_mlp.py):

1. K-FAC factors: constructing ``fc.KFACOperator(p, θ_k, fisher=...)`` on a new θ every call
   for ``fisher`` = type2, mc, empirical. The first layer's ``A`` depends only on the data
   and is cached on the problem after the first construction, so these rows are the steady
   state of an optimizer; ``empirical_cold`` drops that cache before every call (the cost of
   the first construction on a problem). The eigendecompositions are timed separately: the
   first ``op.inverse()`` of an operator (``op.eigen()`` + building the inverse; the
   operator's eigen cache is reset before every call), and so is ``fc.EKFACOperator``
   construction (two passes + the eigendecompositions), for type2 and mc.
2. Products with a fixed operator (type2 factors, damping l2 + 1e-3; the cost does not
   depend on the kind or the damping): ``op @ v``, ``op.inverse("exact") @ v``,
   ``op.inverse("factored") @ v``, EK-FAC ``@ v`` and ``ek.inverse() @ v``.
3. ``p.ggn_diag(θ)`` (exact GGN diagonal, K = 10 backward passes) on a new θ every call and
   at a fixed θ after ``p.value_and_grad(θ)`` (its forward pass is then reused, as in a
   Newton step), ``p.fisher_diag(θ)`` (empirical Fisher, one pass), and ``p.ggn_vp(θ, v)``
   at a fixed θ (the product CG repeats).
4. CG (``scipy.sparse.linalg.cg``, rtol 1e-4, maxiter 500, x0 = 0) on the damped GGN system
   ``fc.GGNOperator(p, θ, damping=δ) x = g``, ``g = p.grad(θ)``, float64, for δ in
   ``CG_DELTAS``, with no preconditioner, Jacobi (``1 / (p.ggn_diag(θ) + δ)``), K-FAC type2
   (exact and factored inverse), K-FAC mc (exact inverse) and EK-FAC type2, all built with
   ``damping = p.l2 + δ`` (the K-FAC operators leave the L2 penalty out). One round = build
   the preconditioner (after ``p.value_and_grad(θ)``, as in a Newton step) + the CG solve;
   iterations are counted by the callback and are deterministic, so each variant runs once
   (after an untimed warm-up build). Recorded: iterations, convergence, the true relative
   residual ``‖A x − g‖ / ‖g‖``, setup / solve / total seconds, milliseconds per iteration.
   Two diagnostic rows repeat the last δ's "none" and K-FAC type2 runs with numpy's OpenBLAS
   (the one scipy's CG and the K-FAC products use) limited to one thread: the GGN product
   runs its matrix products in scipy's OpenBLAS from Numba, and the two libraries' idle
   threads spin ~100 ms after each call and then compete for the 2 cores.

Checks before timing (a disagreement fails the benchmark), against an independent float64
numpy reference on the case's (float32-rounded) inputs (``Reference``: forward pass, softmax,
backpropagation of the output-side gradients through the network; type2 uses a *different*
square root of the loss Hessian (per-row ``Q √Λ``) than fastcurv (``diag(√p) − p √pᵀ``),
which the factors do not depend on): the gradient; every factor ``A_l``, ``G_l`` (type2,
empirical; for mc the ``A_l`` exactly and ``G_l`` only within 50% of type2's in Frobenius
norm, since the sampled labels cannot be reproduced); the K-FAC product from the reference
factors; the exact inverse against a float64 eigen-solve of the operator's own factors; the
factored inverse against ``np.linalg.solve`` on the damped factors; EK-FAC's scalings against
the reference second moments in the eigenbases of the operator's factors, and its product
and inverse from those; the GGN and empirical-Fisher diagonals. Tolerances in ``RTOL``
(max-norm relative); the measured errors are kept in extra_info (``rel_err_vs_ref``).

Timing: bench/harness.py's ``measure`` (quiet gate and 0.12 s idle gap before every round,
foreign load per round, medians over clean rounds in the report). Rounds: about ``ROUND_S``
seconds of calls, clamped to ``[MIN_ROUNDS, MAX_ROUNDS]`` (fewer than the harness default:
the suite times ~40 operations). ``gflop`` in extra_info is a flop model of the operation
(dense matrix products only, see ``Flops``); ``eigen`` rows have none.

At the end of the session the K-FAC tables are printed and stored in the JSON
(``fastcurv.results.kfac``); ``python bench/bench_kfac.py OUT.json [--markdown]`` prints them
again from a JSON file. Run with bench/run_kfac.sh (kept out of bench/run.sh: ~5 minutes).
Environment: ``FASTCURV_BENCH_KFAC_DELTAS`` (default ``1e-2,1e-1``),
``FASTCURV_BENCH_KFAC_CG_DTYPES`` (default ``f64``; ``f32,f64`` adds float32 CG runs).
"""

import gc
import os
import sys
import time

import harness
import mlp_baselines as mb
import numpy as np
import pytest
import report
from harness import FreshTheta, RoundGate, assert_agree, measure, wait_quiet

#: FASTCURV_BENCH_KFAC_SIZES="50,32,32,10" FASTCURV_BENCH_SCALE=0.25: a quick smoke run
SIZES = tuple(int(x) for x in
              os.environ.get("FASTCURV_BENCH_KFAC_SIZES", "784,512,512,10").split(","))
N_ROWS = max(64, int(1024 * float(os.environ.get("FASTCURV_BENCH_SCALE", "1"))))
L2 = 1e-3
SEED = 0
ACTIVATION = "tanh"
LOSS = "softmax_cross_entropy"
CASES = {"kfac784f32": np.float32, "kfac784f64": np.float64}
#: damping of the operators whose products are timed (cost does not depend on it)
OP_DAMPING = L2 + 1e-3
CG_DELTAS = tuple(float(x) for x in
                  os.environ.get("FASTCURV_BENCH_KFAC_DELTAS", "1e-2,1e-1").split(","))
CG_DTYPES = tuple(os.environ.get("FASTCURV_BENCH_KFAC_CG_DTYPES", "f64").split(","))
CG_RTOL = 1e-4
CG_MAXITER = 500
#: rounds per timed operation: about ROUND_S seconds of calls, clamped
ROUND_S = float(os.environ.get("FASTCURV_BENCH_KFAC_ROUND_S", "1.0"))
MIN_ROUNDS = 9
MAX_ROUNDS = 15
#: a CG run (seconds long) is clean when other processes used at most this share of the CPUs
CG_CLEAN_SHARE = 0.10

# max-norm relative agreement with the float64 reference. float32: the factors are Gram
# matrices of float32 rows summed in float64, the products run in float32 (measured 1e-7 to
# 1.1e-6 for every float32 row, inverses included; float64 rows 0 to 1.5e-14)
RTOL = {
    np.dtype(np.float64): dict(grad=1e-10, factor=1e-10, mc_g=0.5, product=1e-10,
                               inverse=1e-8, diag=1e-10),
    np.dtype(np.float32): dict(grad=5e-5, factor=5e-5, mc_g=0.5, product=5e-5,
                               inverse=5e-5, diag=5e-5),
}


def _dt_name(dt):
    return "f32" if np.dtype(dt) == np.float32 else "f64"


def case_title(case):
    return (f"MLP {'-'.join(map(str, SIZES))} {ACTIVATION} softmax CE n={N_ROWS} "
            f"{_dt_name(CASES[case])}")


# ----------------------------------------------------------------------------- flop model
class Flops:
    """Floating-point operations of the dense matrix products of each operation (2 per
    multiply-add; ``syrk`` counts half; elementwise work, the loss and LAPACK not counted)."""

    def __init__(self, sizes=SIZES, n=N_ROWS):
        self.n = n
        self.K = sizes[-1]
        self.layers = [(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        n, L = self.n, self.layers
        self.fwd = 2 * n * sum(a * w for a, w in L)
        self.wgrad = 2 * n * sum((a + 1) * w for a, w in L)
        self.dprop = 2 * n * sum(a * w for a, w in L[1:])  # δ_l W_lᵀ, l >= 1
        self.syrk_a = n * sum((a + 1) ** 2 for a, _ in L[1:])  # first layer's A cached
        self.syrk_a0 = n * (L[0][0] + 1) ** 2
        self.syrk_g = n * sum(w * w for _, w in L)  # per backpropagated column
        self.kron = 2 * sum((a + 1) ** 2 * w + (a + 1) * w * w for a, w in L)

    def grad(self):
        return self.fwd + self.wgrad + self.dprop

    def factors(self, cols, cold=False):
        return (self.fwd + cols * (self.dprop + self.syrk_g) + self.syrk_a
                + (self.syrk_a0 if cold else 0))

    def ekfac(self, cols):
        n, L = self.n, self.layers
        second = (self.fwd + cols * (self.dprop + 2 * n * sum(w * w for _, w in L))
                  + 2 * n * sum((a + 1) ** 2 for a, _ in L) + 2 * n * sum((a + 1) * w
                                                                         for a, w in L))
        return self.factors(cols) + second

    def ggn_diag(self, fixed=False):
        return (0 if fixed else self.fwd) + self.K * (self.dprop + self.wgrad)

    def fisher_diag(self):
        return self.fwd + self.dprop + self.wgrad

    def ggn_vp_fixed(self):
        # R-forward (h V for every layer, R h W for l >= 1), then a backward with gradient
        n, L = self.n, self.layers
        rfwd = 2 * n * sum(a * w for a, w in L) + 2 * n * sum(a * w for a, w in L[1:])
        return rfwd + self.wgrad + self.dprop


FLOPS = Flops()
COLS = {"type2": SIZES[-1], "mc": 1, "empirical": 1}


# ----------------------------------------------------------------------------- reference
class Reference:
    """Independent float64 numpy quantities at θ: factors, diagonals, EK-FAC moments.

    Layer ``l`` has augmented inputs ``Ã_l = [h_{l−1}, 1]`` (n, n_in + 1) and output-side
    gradients ``D_l`` (n, w) = ``∂ℓ_i/∂z_l`` backpropagated from an output cotangent ``U``
    (n, K): ``D_{L−1} = U``, ``D_{l−1} = (D_l W_lᵀ) ⊙ φ'(z_{l−1})``. type2 backpropagates the
    K columns of a per-row square root ``S_i = Q_i √Λ_i`` of ``∇²ℓ_i = diag(p_i) − p_i p_iᵀ``
    (eigh), empirical ``U = p − onehot(y)``. With ``c_i = 1/n``:
    ``A_l = Ã_lᵀ Ã_l / n``, ``G_l = Σ_j D_ljᵀ D_lj / n``,
    ``diag_l = (Ã_l ⊙ Ã_l)ᵀ Σ_j (D_lj ⊙ D_lj) / n`` (+ l2 on the weights for the GGN).
    """

    def __init__(self, X, y, theta):
        m = mb.NumpyMLP(np.asarray(X, np.float64), y, SIZES, ACTIVATION, LOSS, L2)
        self.spec = s = m.spec
        th = np.asarray(theta, np.float64)
        self.grad = m.grad(th)
        parts, hs, ds, _, eta = m._forward(th)
        n, K = eta.shape
        self.n = n
        self.Atil = [np.hstack([h, np.ones((n, 1))]) for h in hs]
        z = eta - eta.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        H = p[:, :, None] * np.eye(K)[None] - p[:, :, None] * p[:, None, :]
        lam, Q = np.linalg.eigh(H)
        Ssq = Q * np.sqrt(np.maximum(lam, 0.0))[:, None, :]  # (n, K, K): S_i S_iᵀ = H_i
        U_t2 = np.ascontiguousarray(Ssq.transpose(2, 0, 1)).reshape(K * n, K)  # column-major
        onehot = np.zeros_like(p)
        onehot[np.arange(n), s.y] = 1.0
        self.D_t2 = [d.reshape(K, n, -1) for d in self._backprop(parts, ds, U_t2, K)]
        self.D_emp = self._backprop(parts, ds, p - onehot, 1)
        self.A = [a.T @ a / n for a in self.Atil]
        self.G = {"type2": [_gram(d.reshape(-1, d.shape[2])) / n for d in self.D_t2],
                  "empirical": [d.T @ d / n for d in self.D_emp]}
        mask = s.weight_mask.astype(np.float64)
        self.ggn_diag = np.concatenate([
            ((a * a).T @ (d * d).sum(axis=0) / n).ravel()
            for a, d in zip(self.Atil, self.D_t2, strict=True)]) + L2 * mask
        self.fisher_diag = np.concatenate([
            ((a * a).T @ (d * d) / n).ravel() for a, d in zip(self.Atil, self.D_emp,
                                                              strict=True)])
        self.blocks = [(o, a, b) for o, (a, b) in zip(s.offsets, s.shapes, strict=False)]

    @staticmethod
    def _backprop(parts, ds, U, reps):
        out = [None] * len(parts)
        D = U
        for i in range(len(parts) - 1, -1, -1):
            out[i] = D
            if i > 0:
                D = (D @ parts[i][:-1].T) * np.tile(ds[i - 1], (reps, 1))
        return out

    def ekfac_scalings(self, bases):
        """``S_l = ((Ã_l Q_A)²)ᵀ Σ_j (D_lj Q_G)² / n`` (type2)."""
        return [((a @ qa) ** 2).T @ ((d @ qg) ** 2).sum(axis=0) / self.n
                for a, d, (qa, qg) in zip(self.Atil, self.D_t2, bases, strict=True)]

    # products in θ's layout (float64)
    def _per_layer(self, v, f, damping):
        v = np.asarray(v, np.float64)
        out = np.empty_like(v)
        for l, (o, a, b) in enumerate(self.blocks):
            V = v[o:o + a * b].reshape(a, b)
            out[o:o + a * b] = (f(l, V) + damping * V).ravel()
        return out

    def kron_apply(self, As, Gs, v, damping):
        return self._per_layer(v, lambda l, V: As[l] @ V @ Gs[l], damping)

    def eig_apply(self, bases, diags, v, damping=0.0):
        def f(l, V):
            qa, qg = bases[l]
            return qa @ ((qa.T @ V @ qg) * diags[l]) @ qg.T
        return self._per_layer(v, f, damping)

    def factored_inverse(self, factors, v, damping):
        def f(l, V):
            A, G = factors[l]
            pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
            r = np.sqrt(damping)
            left = np.linalg.solve(A + pi * r * np.eye(A.shape[0]), V)
            return np.linalg.solve(G + r / pi * np.eye(G.shape[0]), left.T).T
        return self._per_layer(v, f, 0.0)


def _gram(M):
    return M.T @ M


def eig_bases(factors):
    """Float64 eigenbases of the operator's own factors (np.linalg.eigh, like fastcurv)."""
    return [(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1]) for A, G in factors]


# ----------------------------------------------------------------------------- data
_DATA = {}


def data(case):
    """Problem, θ, v, reference and the fixed operators of a case (built once)."""
    if case not in _DATA:
        import fastcurv as fc

        dt = CASES[case]
        rng = np.random.default_rng(SEED)
        X = rng.standard_normal((N_ROWS, SIZES[0])).astype(dt)
        y = rng.integers(0, SIZES[-1], N_ROWS)
        p = fc.MLP(X, y, sizes=SIZES, activation=ACTIVATION, loss=LOSS, l2=L2)
        assert p.dtype == dt
        theta = p.init(0).copy()
        brng = np.random.default_rng(SEED + 1)
        for Wt in p.unflatten(theta):  # views: small random biases
            Wt[-1] = 0.1 * brng.standard_normal(Wt.shape[1])
        v = rng.standard_normal(p.n_params).astype(dt)
        ref = Reference(X, y, theta)
        _DATA[case] = dict(p=p, theta=theta, v=v, ref=ref, ops={})
    return _DATA[case]


def fixed_ops(case):
    """The type2 K-FAC and EK-FAC operators (damping OP_DAMPING) and their inverses."""
    D = data(case)
    if not D["ops"]:
        import fastcurv as fc

        p, theta = D["p"], D["theta"]
        op = fc.KFACOperator(p, theta, fisher="type2", damping=OP_DAMPING, seed=0)
        ek = fc.EKFACOperator(p, theta, fisher="type2", damping=OP_DAMPING, seed=0)
        D["ops"] = dict(kfac=op, kfac_inv_exact=op.inverse("exact"),
                        kfac_inv_factored=op.inverse("factored"), ekfac=ek,
                        ekfac_inv=ek.inverse())
    return D["ops"]


# ----------------------------------------------------------------------------- checks
def _tol(case, what):
    return RTOL[np.dtype(CASES[case])][what]


def check_factors(case, kind):
    ref = data(case)["ref"]

    def check(op):
        assert len(op.factors) == len(SIZES) - 1
        err = 0.0
        for l, (A, G) in enumerate(op.factors):
            assert A.dtype == np.float64 and G.dtype == np.float64
            err = max(err, assert_agree(A, ref.A[l], _tol(case, "factor"),
                                        f"{case} {kind} A_{l}"))
            if kind == "mc":
                Gt = ref.G["type2"][l]
                assert np.allclose(G, G.T, rtol=0, atol=1e-12 * np.abs(G).max())
                dev = np.linalg.norm(G - Gt) / np.linalg.norm(Gt)
                assert dev <= _tol(case, "mc_g"), f"{case} mc G_{l} vs type2 G: {dev:.3f}"
            else:
                err = max(err, assert_agree(G, ref.G[kind][l], _tol(case, "factor"),
                                            f"{case} {kind} G_{l}"))
        return err

    return check


def check_ekfac(case, kind):
    ref = data(case)["ref"]

    def check(ek):
        bases = eig_bases(ek.factors)
        if kind == "type2":
            want = ref.ekfac_scalings(bases)
            return max(assert_agree(S, w, _tol(case, "factor"), f"{case} EK-FAC S_{l}")
                       for l, (S, w) in enumerate(zip(ek.scalings, want, strict=True)))
        # mc: labels cannot be reproduced; compare with type2's moments loosely
        want = ref.ekfac_scalings(bases)
        for l, (S, w) in enumerate(zip(ek.scalings, want, strict=True)):
            assert np.all(np.isfinite(S)) and S.min() >= 0
            dev = np.linalg.norm(S - w) / np.linalg.norm(w)
            assert dev <= _tol(case, "mc_g"), f"{case} EK-FAC mc S_{l} vs type2: {dev:.3f}"
        return None

    return check


def product_reference(case, impl):
    """(float64 reference of the fixed operator ``impl`` applied to v, tolerance name)."""
    D = data(case)
    ref, v = D["ref"], D["v"]
    ops = fixed_ops(case)
    op, ek = ops["kfac"], ops["ekfac"]
    if impl == "kfac":
        return ref.kron_apply(ref.A, ref.G["type2"], v, OP_DAMPING), "product"
    if impl == "kfac_inv_exact":
        diags, bases = [], []
        for A, G in op.factors:
            la, qa = np.linalg.eigh(A)
            lg, qg = np.linalg.eigh(G)
            diags.append(1.0 / (np.outer(np.maximum(la, 0), np.maximum(lg, 0)) + OP_DAMPING))
            bases.append((qa, qg))
        return ref.eig_apply(bases, diags, v), "inverse"
    if impl == "kfac_inv_factored":
        return ref.factored_inverse(op.factors, v, OP_DAMPING), "inverse"
    bases = eig_bases(ek.factors)
    S = ref.ekfac_scalings(bases)
    if impl == "ekfac":
        return ref.eig_apply(bases, S, v, OP_DAMPING), "product"
    if impl == "ekfac_inv":
        return ref.eig_apply(bases, [1.0 / (s + OP_DAMPING) for s in S], v), "inverse"
    raise ValueError(impl)


def _vector_check(case, want, what, label):
    dt = CASES[case]

    def check(out):
        out = np.asarray(out)
        assert out.dtype == dt, f"{label}: dtype {out.dtype} != {np.dtype(dt)}"
        return assert_agree(out, want, _tol(case, what), f"{case} {label} vs float64 reference")

    return check


# ----------------------------------------------------------------------------- timing
def _rounds(fn):
    """Rounds for about ROUND_S seconds of calls (one extra untimed call to time it)."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, ROUND_S / max(t, 1e-6))))


def _time(benchmark, case, op, impl, fn, check, gflop, note):
    benchmark.group = f"{case_title(case)}: K-FAC and diagonals"
    err = check(fn())  # warm-up (compiles) + check on θ_0 = θ exactly
    rounds = _rounds(fn)
    measure(benchmark, fn, key=f"{case}.{op}.{impl}", nbytes=0, rounds=rounds,
            rel_err_vs_ref=err, gflop=None if gflop is None else gflop / 1e9, note=note)


ROWS = [
    # (op, impl, label, target multiple of a gradient or None)
    ("grad", "fastcurv", "gradient `p.grad` (new θ each call)", None),
    ("factors", "type2", "K-FAC factors, type2 (K=10 backward columns)", 2.0),
    ("factors", "mc", "K-FAC factors, mc (1 sample)", 2.0),
    ("factors", "empirical", "K-FAC factors, empirical", 2.0),
    ("factors", "empirical_cold", "K-FAC factors, empirical, first-layer A not cached", 2.0),
    ("eigen", "kfac", "first `op.inverse()`: eigendecompositions + inverse", None),
    ("ekfac_build", "type2", "EK-FAC construction, type2 (2 passes + eigh)", None),
    ("ekfac_build", "mc", "EK-FAC construction, mc (2 passes + eigh)", None),
    ("matvec", "kfac", "K-FAC `op @ v`", 0.3),
    ("matvec", "kfac_inv_exact", "K-FAC `op.inverse('exact') @ v`", 0.3),
    ("matvec", "kfac_inv_factored", "K-FAC `op.inverse('factored') @ v`", 0.3),
    ("matvec", "ekfac", "EK-FAC `ek @ v`", None),
    ("matvec", "ekfac_inv", "EK-FAC `ek.inverse() @ v`", None),
    ("diag", "ggn_diag_new_theta", "`p.ggn_diag` exact (new θ each call)", None),
    ("diag", "ggn_diag_fixed_theta", "`p.ggn_diag` exact (fixed θ after value_and_grad)", None),
    ("diag", "fisher_diag", "`p.fisher_diag` (empirical Fisher)", None),
    ("ggn_vp", "fixed_theta", "`p.ggn_vp` (fixed θ, as inside CG)", None),
    ("grad", "fastcurv_again", "gradient again (end of the case: drift check)", None),
]


def _params():
    return [pytest.param(case, op, impl, id=f"{case}-{op}-{impl}")
            for case in CASES for op, impl, _, _ in ROWS]


@pytest.mark.parametrize(("case", "op", "impl"), _params())
def test_kfac_cost(benchmark, case, op, impl):
    import fastcurv as fc

    D = data(case)
    p, theta, v, ref = D["p"], D["theta"], D["v"], D["ref"]
    if op == "grad":
        fn = FreshTheta(p.grad, theta)
        check = _vector_check(case, ref.grad, "grad", "gradient")
        _time(benchmark, case, op, impl, fn, check, FLOPS.grad(), "p.grad on a new θ every call")
        return
    if op == "factors":
        kind = impl.replace("_cold", "")
        if impl.endswith("_cold"):
            def build(t):
                p.__dict__.pop("_kfac_A0", None)  # the first layer's A, cached on the problem
                return fc.KFACOperator(p, t, fisher=kind, damping=OP_DAMPING, seed=0)
        else:
            def build(t):
                return fc.KFACOperator(p, t, fisher=kind, damping=OP_DAMPING, seed=0)
        _time(benchmark, case, op, impl, FreshTheta(build, theta), check_factors(case, kind),
              FLOPS.factors(COLS[kind], cold=impl.endswith("_cold")),
              "fc.KFACOperator(p, θ_k, fisher, damping, seed=0) on a new θ every call")
        return
    if op == "eigen":
        kop = fixed_ops(case)["kfac"]
        want, _ = product_reference(case, "kfac_inv_exact")

        def first_inverse():
            kop._eig = None  # the operator's cache of op.eigen()
            return kop.inverse()

        def check(inv):
            return _vector_check(case, want, "inverse", "first inverse() @ v")(inv @ v)

        _time(benchmark, case, op, impl, first_inverse, check, None,
              "op.eigen() (eigh of every A_l, G_l in float64) + building op.inverse()")
        return
    if op == "ekfac_build":
        def build(t):
            return fc.EKFACOperator(p, t, fisher=impl, damping=OP_DAMPING, seed=0)
        _time(benchmark, case, op, impl, FreshTheta(build, theta), check_ekfac(case, impl),
              FLOPS.ekfac(COLS[impl]),
              "fc.EKFACOperator(p, θ_k, fisher, damping, seed=0) on a new θ every call "
              "(flops without eigh)")
        return
    if op == "matvec":
        A = fixed_ops(case)[impl]
        want, what = product_reference(case, impl)
        two = impl in ("kfac", "kfac_inv_factored")
        _time(benchmark, case, op, impl, lambda: A @ v,
              _vector_check(case, want, what, impl), FLOPS.kron * (1 if two else 2),
              f"{type(A).__name__} @ v, fixed operator (type2, damping {OP_DAMPING:g})")
        return
    if op == "diag":
        if impl == "ggn_diag_new_theta":
            fn, want, fl = FreshTheta(p.ggn_diag, theta), ref.ggn_diag, FLOPS.ggn_diag()
            note = "p.ggn_diag on a new θ every call"
        elif impl == "ggn_diag_fixed_theta":
            p.value_and_grad(theta)  # state at θ, as a Newton step leaves it

            def fn():
                return p.ggn_diag(theta)
            want, fl = ref.ggn_diag, FLOPS.ggn_diag(fixed=True)
            note = "p.ggn_diag(θ) at a fixed θ after p.value_and_grad(θ) (forward reused)"
        else:
            fn, want, fl = FreshTheta(p.fisher_diag, theta), ref.fisher_diag, FLOPS.fisher_diag()
            note = "p.fisher_diag on a new θ every call (it never reuses state)"
        _time(benchmark, case, op, impl, fn, _vector_check(case, want, "diag", impl), fl, note)
        return
    if op == "ggn_vp":
        p.value_and_grad(theta)
        want = mb.NumpyMLP(ref.spec.X, ref.spec.y, SIZES, ACTIVATION, LOSS,
                           L2).ggn_vp(np.asarray(theta, np.float64), np.asarray(v, np.float64))

        def fn():
            return p.ggn_vp(theta, v)
        _time(benchmark, case, op, impl, fn, _vector_check(case, want, "product", "ggn_vp"),
              FLOPS.ggn_vp_fixed(), "p.ggn_vp(θ, v) at a fixed θ after p.value_and_grad(θ)")
        return
    raise ValueError(op)


# ----------------------------------------------------------------------------- CG
PRECONDITIONERS = ("none", "jacobi", "kfac_type2", "kfac_type2_factored", "kfac_mc",
                   "ekfac_type2")
PRECOND_LABELS = {"none": "none", "jacobi": "Jacobi: 1 / (ggn_diag + δ)",
                  "kfac_type2": "K-FAC type2, exact inverse",
                  "kfac_type2_factored": "K-FAC type2, factored inverse",
                  "kfac_mc": "K-FAC mc, exact inverse", "ekfac_type2": "EK-FAC type2 inverse"}
#: diagnostic rows: numpy's OpenBLAS on one thread (last δ only)
DIAGNOSTIC = ("none", "kfac_type2")


def _numpy_blas():
    """threadpoolctl controller of numpy's own BLAS (None if it cannot be told apart)."""
    from threadpoolctl import ThreadpoolController

    libdir = os.path.dirname(os.path.dirname(np.__file__))
    ctl = ThreadpoolController()
    mine = [lc.filepath for lc in ctl.lib_controllers if lc.user_api == "blas"
            and os.path.basename(os.path.dirname(lc.filepath)) == "numpy.libs"
            and lc.filepath.startswith(libdir)]
    return ctl.select(filepath=mine) if len(mine) == 1 else None


def make_preconditioner(p, theta, name, delta):
    """The preconditioner (an approximation of the inverse), or None."""
    from scipy.sparse.linalg import LinearOperator

    import fastcurv as fc

    if name == "none":
        return None
    if name == "jacobi":
        d = (p.ggn_diag(theta) + delta).astype(p.dtype)

        def inv(x):
            x = np.asarray(x).reshape(-1)
            return x / d
        return LinearOperator((p.n_params, p.n_params), matvec=inv, rmatvec=inv,
                              dtype=p.dtype)
    damping = p.l2 + delta
    if name == "kfac_type2":
        return fc.KFACOperator(p, theta, fisher="type2", damping=damping, seed=0).inverse()
    if name == "kfac_type2_factored":
        return fc.KFACOperator(p, theta, fisher="type2", damping=damping,
                               seed=0).inverse("factored")
    if name == "kfac_mc":
        return fc.KFACOperator(p, theta, fisher="mc", damping=damping, seed=0).inverse()
    if name == "ekfac_type2":
        return fc.EKFACOperator(p, theta, fisher="type2", damping=damping, seed=0).inverse()
    raise ValueError(name)


class CGRun:
    """One timed round: build the preconditioner, then CG; times and counts kept."""

    def __init__(self, p, theta, g, A, name, delta):
        self.p, self.theta, self.g, self.A = p, theta, g, A
        self.name, self.delta = name, delta
        self.info = {}

    def __call__(self):
        from scipy.sparse.linalg import cg

        t0 = time.perf_counter()
        M = make_preconditioner(self.p, self.theta, self.name, self.delta)
        t1 = time.perf_counter()
        count = [0]

        def cb(_xk):
            count[0] += 1
        x, code = cg(self.A, self.g, rtol=CG_RTOL, maxiter=CG_MAXITER, M=M, callback=cb)
        t2 = time.perf_counter()
        self.info = dict(cg_iterations=count[0], cg_info=int(code), setup_s=t1 - t0,
                         solve_s=t2 - t1, total_s=t2 - t0)
        return x


def _cg_params():
    out = []
    for dname in CG_DTYPES:
        case = {"f32": "kfac784f32", "f64": "kfac784f64"}[dname]
        for delta in CG_DELTAS:
            for name in PRECONDITIONERS:
                out.append(pytest.param(case, delta, name, False,
                                        id=f"{case}-cg-{name}-delta{delta:g}"))
        for name in DIAGNOSTIC:
            out.append(pytest.param(case, CG_DELTAS[-1], name, True,
                                    id=f"{case}-cg-{name}-delta{CG_DELTAS[-1]:g}-numpyblas1"))
    return out


@pytest.mark.parametrize(("case", "delta", "name", "blas1"), _cg_params())
def test_kfac_cg(benchmark, case, delta, name, blas1):
    import contextlib

    import fastcurv as fc

    D = data(case)
    p, theta = D["p"], D["theta"]
    benchmark.group = f"{case_title(case)}: CG on (GGN + δI) x = g, rtol {CG_RTOL:g}"
    limit = contextlib.nullcontext()
    if blas1:
        sel = _numpy_blas()
        if sel is None:
            pytest.skip("numpy's BLAS cannot be told apart from scipy's here")
        limit = sel.limit(limits=1)
    g = p.grad(theta)
    A = fc.GGNOperator(p, theta, damping=delta)
    run = CGRun(p, theta, g, A, name, delta)
    with limit:
        M = make_preconditioner(p, theta, name, delta)  # warm-up (compiles, faults pages)
        if M is not None:
            M @ g
        A @ g
        del M
        p.value_and_grad(theta)  # every round starts where a Newton step's gradient leaves p
        gc.collect()
        waited, _ = wait_quiet(harness.SETTLE, harness.QUIET_WAIT)
        gate = RoundGate()
        x = benchmark.pedantic(run, setup=gate.setup, rounds=1, iterations=1)
        shares = gate.finish()
    info = run.info
    res = float(np.linalg.norm(A @ x - g) / np.linalg.norm(g))
    impl = f"{name}_delta{delta:.0e}" + ("_numpyblas1" if blas1 else "")
    benchmark.extra_info.update(
        key=f"{case}.cg.{impl}", problem=case, op="cg", impl=impl, bytes=0, delta=delta,
        preconditioner=name, numpy_blas_1_thread=bool(blas1), rtol=CG_RTOL,
        maxiter=CG_MAXITER, true_rel_residual=res, clean_share=CG_CLEAN_SHARE, clean_min=1,
        waited_for_quiet_s=round(waited + gate.waited, 2),
        round_foreign_share=[round(s, 3) for s in shares], **info)
    assert info["cg_info"] == 0, f"CG did not converge in {CG_MAXITER} iterations ({name})"
    assert res <= 2 * CG_RTOL, f"true residual {res:.2e} > 2 rtol ({name})"


# ----------------------------------------------------------------------------- tables
def _per_call(b):
    med, n_clean, n, _ = report.clean_stats(b)
    return med, (b.get("stats") or b)["min"], n_clean, n


def kfac_rows(benchmarks):
    """Cost rows (one per timed operation) and CG rows."""
    idx = {}
    cg = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        key = info.get("key", "")
        if not key.startswith("kfac784"):
            continue
        if info.get("op") == "cg":
            cg.append(b)
        else:
            idx[key] = b
    rows = []
    grads = {}
    for case in CASES:
        gb = idx.get(f"{case}.grad.fastcurv")
        grad = _per_call(gb) if gb else None
        grads[case] = grad
        for op, impl, label, target in ROWS:
            b = idx.get(f"{case}.{op}.{impl}")
            if b is None:
                continue
            med, mn, n_clean, n = _per_call(b)
            info = b.get("extra_info") or {}
            gf = info.get("gflop")
            in_g = med / grad[0] if grad else None
            rows.append({
                "case": case, "problem": case_title(case), "op": op, "impl": impl,
                "operation": label, "median_ms": med * 1e3, "min_ms": mn * 1e3,
                "clean": n_clean, "rounds": n, "in_grads": in_g,
                "in_grads_min": mn / grad[1] if grad else None,
                "gflop": gf, "gflops": gf / med if gf else None,
                "target": target, "met": None if target is None or in_g is None
                else in_g <= target,
                "rel_err_vs_ref": info.get("rel_err_vs_ref"),
            })
    products = {(r["case"], r["op"], r["impl"]): r["median_ms"] for r in rows}
    apply_of = {"none": None, "jacobi": None, "kfac_type2": "kfac_inv_exact",
                "kfac_type2_factored": "kfac_inv_factored", "kfac_mc": "kfac_inv_exact",
                "ekfac_type2": "ekfac_inv"}
    cg_rows = []
    for b in cg:
        info = b["extra_info"]
        case, name = info["problem"], info["preconditioner"]
        it = info["cg_iterations"]
        gvp = products.get((case, "ggn_vp", "fixed_theta"))
        app = apply_of.get(name)
        alone = None
        if gvp is not None:
            alone = gvp + (products.get((case, "matvec", app), 0.0) if app else 0.0)
        grad = grads.get(case)
        share = info.get("round_foreign_share") or [None]
        cg_rows.append({
            "case": case, "dtype": _dt_name(CASES[case]), "delta": info["delta"],
            "preconditioner": name, "label": PRECOND_LABELS[name]
            + (" [numpy BLAS 1 thread]" if info.get("numpy_blas_1_thread") else ""),
            "numpy_blas_1_thread": info.get("numpy_blas_1_thread"),
            "iterations": it, "converged": info["cg_info"] == 0,
            "true_rel_residual": info["true_rel_residual"], "setup_s": info["setup_s"],
            "solve_s": info["solve_s"], "total_s": info["total_s"],
            "ms_per_iteration": 1e3 * info["solve_s"] / max(it, 1),
            "products_alone_ms": alone,
            "total_in_grads": info["total_s"] / grad[0] if grad else None,
            "foreign_share": share[0],
        })
    cg_rows.sort(key=lambda r: (r["case"], r["numpy_blas_1_thread"], r["delta"],
                                PRECONDITIONERS.index(r["preconditioner"])))
    return rows, cg_rows


def _f(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def _table(header, body, markdown):
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(map(str, ln)) + " |" for ln in body]
        return out
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(ln, widths, strict=True)) for ln in body]
    return out


def render_kfac(benchmarks, markdown=False):
    rows, cg_rows = kfac_rows(benchmarks)
    if not rows and not cg_rows:
        return ""
    out = []
    if rows:
        body = []
        for r in rows:
            tgt = "—" if r["target"] is None else f"≤ {r['target']:g}"
            met = {None: "—", True: "yes", False: "**no**" if markdown else "NO"}[r["met"]]
            body.append([_dt_name(CASES[r["case"]]), r["operation"], _f(r["median_ms"], 1),
                         _f(r["min_ms"], 1),
                         f"{'—' if r['clean'] is None else r['clean']}/{r['rounds']}",
                         _f(r["in_grads"]), _f(r["in_grads_min"]), _f(r["gflop"], 2),
                         _f(r["gflops"], 0), tgt, met])
        out += _table(["dtype", "operation", "median ms", "min ms", "clean/rounds",
                       "× gradient", "× gradient (mins)", "GFLOP", "GFLOP/s", "target", "met"],
                      body, markdown)
        out.append("× gradient = median / median of the gradient of the same dtype in the same "
                   "run (mins: min / min); GFLOP = flop model of the dense matrix products "
                   "(bench_kfac.Flops); medians over clean rounds")
    if cg_rows:
        out.append("")
        body = [[r["dtype"], f"{r['delta']:g}", r["label"], r["iterations"],
                 "yes" if r["converged"] else "NO", f"{r['true_rel_residual']:.1e}",
                 _f(r["setup_s"]), _f(r["solve_s"]), _f(r["total_s"]),
                 _f(r["ms_per_iteration"], 0), _f(r["products_alone_ms"], 0),
                 _f(r["total_in_grads"], 0),
                 "—" if r["foreign_share"] is None else f"{100 * r['foreign_share']:.0f}%"]
                for r in cg_rows]
        out += _table(["dtype", "δ", "preconditioner", "CG it", "conv.", "‖Ax−g‖/‖g‖",
                       "setup s", "solve s", "total s", "ms / it",
                       "products alone ms / it", "total in gradients", "other load"],
                      body, markdown)
        out.append(f"CG: scipy.sparse.linalg.cg, rtol {CG_RTOL:g}, maxiter {CG_MAXITER}, x0 = 0, "
                   "A = fc.GGNOperator(p, θ, damping=δ) (GGN incl. the L2 penalty, + δI), "
                   "g = p.grad(θ); preconditioners built with damping = l2 + δ; one run each "
                   "(setup = building the preconditioner after p.value_and_grad(θ)); "
                   "products alone = p.ggn_vp at a fixed θ + the preconditioner's product, "
                   "medians from the table above")
    return "\n".join(out)


class _Summary:
    """Prints the K-FAC tables at the end of the session (registered by the fixture below)."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter, config):
        text = harness.RESULTS.get("kfac", {}).get("table")
        if text:
            terminalreporter.write_sep("=", "fastcurv K-FAC and diagonals (same run)")
            terminalreporter.write_line(text)


@pytest.fixture(scope="module", autouse=True)
def _kfac_report(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("fastcurv-kfac-summary"):
        pm.register(_Summary(), "fastcurv-kfac-summary")
    yield
    bs = getattr(request.config, "_benchmarksession", None)
    benchmarks = [b.as_dict(include_data=True) for b in (bs.benchmarks if bs else [])
                  if not b.has_error]
    rows, cg_rows = kfac_rows(benchmarks)
    harness.RESULTS["kfac"] = {"rows": rows, "cg_rows": cg_rows,
                               "table": render_kfac(benchmarks)}
    _DATA.clear()


if __name__ == "__main__":
    import json

    if len(sys.argv) < 2:
        print("usage: python bench/bench_kfac.py OUT.json [--markdown]")
        sys.exit(2)
    with open(sys.argv[1]) as fh:
        doc = json.load(fh)
    print(render_kfac(doc.get("benchmarks", []), markdown="--markdown" in sys.argv))
