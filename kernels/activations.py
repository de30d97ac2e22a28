"""Hidden-layer activations φ and their first two derivatives, as loops that vectorize.

Codes (shared with :mod:`fastcurv.problems.mlp`)::

    IDENTITY = 0   φ = z                  φ' = 1                φ'' = 0
    TANH = 1       φ = tanh z             φ' = 1 − a²           φ'' = −2 a (1 − a²)
    RELU = 2       φ = max(z, 0)          φ' = [z > 0]          φ'' = 0
    SIGMOID = 3    φ = 1 / (1 + e^−z)     φ' = a σ(−z)          φ'' = a σ(−z)(σ(−z) − a)
    SOFTPLUS = 4   φ = log(1 + e^z)       φ' = σ(z)             φ'' = σ(z) σ(−z)
    GELU = 5       φ = z Φ(z)             φ' = Φ(z) + z ϕ(z)    φ'' = ϕ(z) (2 − z²)

(``a = φ(z)``, ``Φ``/``ϕ`` the standard normal cdf/pdf; relu'(0) = 0.)

The sigmoid's derivatives use ``σ(−z)`` for ``1 − a``, which cancels once ``a`` nears 1
(``a (1 − a)`` lost 12% of φ' at z = 35 in float64). For the same reason ``tanh``'s take
``1 − |a|`` from ``e^{−2|z|}``, computed with ``a`` in the forward pass and kept in place of
``z`` (:func:`tanh_rows`): ``(1 − a)(1 + a)`` from the rounded ``a`` lost ``0.87 |z|``
digits (a review against mpmath: 4 at z = 5, 7.6 at z = 10, every one from z = 19 in
float64 and z = 9 in float32, where ``a`` rounds to ±1 and φ' became 0) in every gradient
and product below a saturated tanh layer. It costs nothing: both precisions form the
complement on the way to tanh (:func:`_tanh_abs`, :func:`_tanh32_abs`).

Without Intel SVML, LLVM turns ``math.tanh``/``math.exp`` into one libm call per element (about
20 ns: 20 ms for the 10⁶ hidden units of a 1,024-row 512-512 MLP, more than its matrix
products). ``tanh`` and the sigmoid are therefore written here from a branch-free ``exp`` (Cephes'
Padé form on ``|r| ≤ ln2/2`` and ``2^k`` built from its bit pattern) that LLVM vectorizes:
each with a single division: ``tanh`` is within 1 ulp of the correctly rounded value (tested
against mpmath). Float32 data get a float32 ``tanh``. The row loops ask for whole AVX-512
registers (:func:`.simd.prefer_wide_vectors`: 16 float32 or 8 float64 lanes). They
are compiled with ``strict=True`` (see :mod:`._jit`): reassociation would undo the exact
argument reduction of ``exp`` (an error of 100 ulp in the sigmoid at −700 was seen).
"""

import math

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from ._jit import jit
from .simd import prefer_wide_vectors

IDENTITY = 0
TANH = 1
RELU = 2
SIGMOID = 3
SOFTPLUS = 4
GELU = 5

_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6
_LOG2E = 1.4426950408889634073599
_INV_SQRT2 = 0.70710678118654752440
_INV_SQRT2PI = 0.39894228040143267794


def _bitcast(src, dst):
    """An intrinsic reinterpreting the bits of a ``src`` scalar as a ``dst`` scalar of the same
    width (free: a register move, and it vectorizes)."""

    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    return cast


_bits_as_f64 = _bitcast(types.int64, types.float64)
_bits_as_f32 = _bitcast(types.int32, types.float32)
_f64_as_bits = _bitcast(types.float64, types.int64)


#: 1.5·2⁵²: for an integer-valued float64 ``k`` with ``|k| < 2⁵¹``, ``k + M`` is exact and its
#: bit pattern is ``bits(M) + k``
_ROUND_MAGIC = 6755399441055744.0


@jit(inline=True)
def _pow2(k):
    """``2^k`` for an integer-valued float64 ``k`` in [−1022, 1023], built from its bit pattern
    through ``bits(k + M) = bits(M) + k`` (the low 12 bits of ``bits(M)`` are 0, so they
    vanish in the shift). No float-to-integer conversion: AVX2 has no vector instruction for
    one to int64, and LLVM would convert lane by lane."""
    return _bits_as_f64((_f64_as_bits(k + _ROUND_MAGIC) + 1023) << 52)


@jit(inline=True)
def _exp_pade(t):
    """``e^t = 2^k (q + p) / (q − p)`` for ``t <= 0`` (Cephes exp: Padé form on the reduced
    argument ``|r| <= ln2/2``). Returns ``(q − p, q + p, s1, s2)`` with ``2^k = s1 s2`` split
    into two normal powers of two, so that the caller does a single division and subnormal
    results round once."""
    t = max(t, -746.0)
    k = np.floor(t * _LOG2E + 0.5)
    r = (t - k * _LN2_HI) - k * _LN2_LO
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    qx = (((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
           + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0)
    k1 = np.floor(0.5 * k)
    return qx - px, qx + px, _pow2(k1), _pow2(k - k1)


@jit(inline=True)
def exp_nonpos(t):
    """``e^t`` for ``t <= 0`` (float64, within 1 ulp)."""
    den, num, s1, s2 = _exp_pade(t)
    return ((num * s1) * s2) / den


@jit(inline=True)
def _tanh_abs(ax):
    """``(tanh ax, 1 − tanh ax)`` for ``0 <= ax <= 373`` in float64 with one division: tanh
    within 1 ulp, its complement within 2 (tested against mpmath). Below 0.625 Cephes'
    rational form ``t = x + x z P(z)/Q(z)`` and ``1 − t`` (at least 0.44 there, without
    cancellation); above, the complement ``c = 2E/(1 + E)`` with ``E = e^{−2 ax}`` in Padé
    form and ``t = 1 − c`` (``c < 0.45`` there, so the subtraction loses nothing). tanh rounds
    to 1 from 19.1 on; its complement keeps its digits down to float64's subnormals at 373.
    (Computing ``(1 − E)/(1 + E)`` and ``2E/(1 + E)`` took two divisions, the loop's
    bottleneck, and left tanh within 2 ulp.)"""
    z = ax * ax
    num_s = ax * z * ((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                      - 1.61468768441708447952e3)
    den_s = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z \
        + 4.84406305325125486048e3
    qm, qp, s1, s2 = _exp_pade(-2.0 * ax)
    e = (qp * s1) * s2
    small = ax < 0.625
    q = (num_s if small else e + e) / (den_s if small else qm + e)
    t = ax + q if small else 1.0 - q
    c = 1.0 - t if small else q
    return t, c


#: |x| beyond which float64 tanh's complement 1 − |tanh x| = 2 e^{−2|x|}/(1 + e^{−2|x|}) is
#: below float64's smallest subnormal
TANH_CLAMP = 373.0


@jit(inline=True)
def tanh(x):
    """tanh in float64 with one division (see :func:`_tanh_abs`). Within 1 ulp (tested
    against mpmath). NaN stays NaN."""
    return tanh_c(x)[0]


@jit(inline=True)
def tanh_c(x):
    """``(tanh x, 1 − |tanh x|)`` in float64: the complement from ``e^{−2|x|}``, not from the
    rounded tanh (``1 − |a|`` of a rounded ``a`` has lost ``log10(e^{2|x|}/4)`` digits,
    all of them beyond |x| = 19.1, where ``a`` rounds to ±1). NaN gives (NaN, NaN)."""
    t, c = _tanh_abs(min(abs(x), TANH_CLAMP))
    if x != x:
        return x, x
    return math.copysign(t, x), c


#: float32 tanh's complement 2/(e^{2|x|} + 1) is a normal float32 up to |x| = 44.01 (it is
#: 2^−126 there); beyond |x| = 44 it is flushed to 0 (see :func:`tanh32_c`)
_F32_CLAMP = np.float32(44.0)
_F32_SMALL = np.float32(0.625)
_F32_LOG2E = np.float32(1.44269504088896341)
_F32_C1 = np.float32(0.693359375)
_F32_C2 = np.float32(-2.12194440e-4)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_T = (np.float32(-5.70498872745e-3), np.float32(2.06390887954e-2),
          np.float32(-5.37397155531e-2), np.float32(1.33314422036e-1),
          np.float32(-3.33332819422e-1))
_F32_E = (np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3),
          np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1))


@jit(inline=True)
def _tanh32_abs(ax):
    """``(tanh ax, 1 − tanh ax)`` in float32 arithmetic for ``0 <= ax <= 44`` (16 lanes per
    AVX-512 vector): Cephes' tanhf polynomial below 0.625 (complement ``1 − t``), and
    ``1 − c`` with ``c = 2/(e^{2 ax} + 1)`` from Cephes' expf above (tanh rounds to 1 from
    9.01 on; ``c`` keeps its digits up to 44, a normal float32 there: ``e^{88}`` is below
    float32's largest number and ``2^127`` the largest scale the exponent bits give). Within
    2 float32 ulp."""
    z = ax * ax
    c = _F32_T
    small = ((((c[0] * z + c[1]) * z + c[2]) * z + c[3]) * z + c[4]) * z * ax + ax
    t = _F32_TWO * ax
    kf = np.floor(t * _F32_LOG2E + _F32_HALF)
    r = (t - kf * _F32_C1) - kf * _F32_C2
    q = _F32_E
    e = ((((((q[0] * r + q[1]) * r + q[2]) * r + q[3]) * r + q[4]) * r + q[5]) * (r * r)
         + r + _F32_ONE)
    E = e * _bits_as_f32((np.int32(kf) + np.int32(127)) << np.int32(23))
    comp = _F32_TWO / (E + _F32_ONE)
    below = ax < _F32_SMALL
    return (small if below else _F32_ONE - comp), (_F32_ONE - small if below else comp)


@jit(inline=True)
def tanh32(x):
    """tanh in float32 arithmetic (see :func:`_tanh32_abs`). Within 2 float32 ulp (tested).
    NaN stays NaN."""
    return tanh32_c(x)[0]


@jit(inline=True)
def tanh32_c(x):
    """``(tanh x, 1 − |tanh x|)`` in float32 arithmetic (see :func:`tanh_c`). Beyond
    |x| = 44 the complement is 0 (flushed: below ``2^−126`` it would be subnormal, and
    subnormal operands cost ~10x per element here, in these loops and in every matrix
    product below a saturated layer); up to 44 it keeps its relative digits. (It was clamped
    at |x| = 43: ``φ' = 1.8e-37`` for every |x| > 43, 5x the exact value at 43.8 and a
    wrong sign in a gradient entry at 50, a review.)"""
    ax = abs(x)
    y, c = _tanh32_abs(min(ax, _F32_CLAMP))
    if x != x:
        return x, x
    return np.float32(math.copysign(y, x)), (c if ax <= _F32_CLAMP else np.float32(0.0))


def tanh_t(x):
    """tanh in the precision of ``x`` (float32 arithmetic for float32, else float64)."""
    return math.tanh(x)


@overload(tanh_t)
def _tanh_t(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: tanh32(x)
    return lambda x: tanh(np.float64(x))


@jit(strict=True)
def _tanh_rows32(Z, b, A, add_bias):
    prefer_wide_vectors()
    nb, w = Z.shape
    for i in range(nb):
        for j in range(w):
            a, c = tanh32_c(Z[i, j] + b[j] if add_bias else Z[i, j])
            A[i, j] = a
            Z[i, j] = c


@jit(strict=True)
def _tanh_rows64(Z, b, A, add_bias):
    prefer_wide_vectors()
    nb, w = Z.shape
    for i in range(nb):
        for j in range(w):
            a, c = tanh_c(np.float64(Z[i, j] + b[j] if add_bias else Z[i, j]))
            A[i, j] = a
            Z[i, j] = c


def tanh_rows(Z, b, A, add_bias):
    """``A[:, :w] = tanh(Z + b)`` (``b`` added if ``add_bias``), and ``Z`` overwritten with
    the complement ``1 − |A|`` computed from ``e^{−2|z|}`` (:func:`tanh_c`): what the
    derivatives ``φ' = c (2 − c)`` and ``φ'' = −2 a φ'`` need, to full relative precision
    also where ``a`` rounds to ±1. In float32 arithmetic for float32 ``Z`` (one compiled loop
    per dtype, chosen at compile time)."""
    z = Z + b if add_bias else Z
    A[:, :Z.shape[1]] = np.tanh(z)
    Z[...] = 1.0 - np.abs(np.tanh(z))


@overload(tanh_rows)
def _tanh_rows(Z, b, A, add_bias):
    if isinstance(Z.dtype, types.Float) and Z.dtype.bitwidth == 32:
        return lambda Z, b, A, add_bias: _tanh_rows32(Z, b, A, add_bias)
    return lambda Z, b, A, add_bias: _tanh_rows64(Z, b, A, add_bias)


@jit(inline=True)
def sigmoid(x):
    """``1 / (1 + e^−x)`` without overflow and with one division, from ``e^{−|x|}`` in Padé
    form. NaN stays NaN."""
    qm, qp, s1, s2 = _exp_pade(-abs(x))
    e = (qp * s1) * s2
    s = (qm if x >= 0.0 else e) / (qm + e)
    return s if x == x else x


@jit(inline=True)
def value(code, z):
    """``φ(z)`` in float64."""
    if code == TANH:
        return tanh(z)
    if code == RELU:
        return z if z > 0.0 else 0.0
    if code == SIGMOID:
        return sigmoid(z)
    if code == SOFTPLUS:
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    if code == GELU:
        return z * 0.5 * math.erfc(-z * _INV_SQRT2)
    return z


@jit(inline=True)
def d1(code, z, a):
    """``φ'(z)`` from ``z`` and ``a = φ(z)`` (float64). (The MLP kernels take tanh's from
    the complement ``1 − |a|`` instead: :func:`tanh_rows`.)"""
    if code == TANH:
        return (1.0 - a) * (1.0 + a)
    if code == RELU:
        return 1.0 if z > 0.0 else 0.0
    if code == SIGMOID:
        # σ(z) σ(−z), not a (1 − a): 1 − a cancels once σ(z) nears 1 (z = 35 in float64 lost
        # 12% of φ', z = 15 in float32 2.6%)
        return a * sigmoid(-z)
    if code == SOFTPLUS:
        return sigmoid(z)
    if code == GELU:
        return 0.5 * math.erfc(-z * _INV_SQRT2) + z * _INV_SQRT2PI * math.exp(-0.5 * z * z)
    return 1.0


@jit(inline=True)
def d2(code, z, a):
    """``φ''(z)`` from ``z`` and ``a = φ(z)`` (float64)."""
    if code == TANH:
        return -2.0 * a * (1.0 - a) * (1.0 + a)
    if code == SIGMOID:
        # σ(z) σ(−z) (σ(−z) − σ(z)), with σ(−z) − σ(z) = −tanh(z/2): the difference of the
        # two rounded sigmoids lost 7.4 digits at z = 1e-8 (a review against mpmath)
        return -(a * sigmoid(-z)) * tanh(0.5 * z)
    if code == SOFTPLUS:
        s = sigmoid(z)
        return s * sigmoid(-z)
    if code == GELU:
        e = math.exp(-0.5 * z * z)
        # beyond |z| ~ 38.6 the density underflows to 0 and so is φ''; without the test,
        # |z| > 1.34e154 would give 0 · (2 − inf) = NaN
        return _INV_SQRT2PI * e * (2.0 - z * z) if e > 0.0 else 0.0
    return 0.0


@jit(inline=True)
def _one(A):
    """1 in the dtype of ``A`` (a Python ``1.0`` would promote float32 arithmetic to float64)."""
    return np.ones(1, dtype=A.dtype)[0]


@jit(strict=True)
def bias_act(code, Z, b, A, add_bias):
    """``Z += b`` (per row, if ``add_bias``), then ``A[:, :w] = φ(Z)``; if ``A`` has a column
    more than ``Z`` (the augmented input ``[h, 1]`` of the next layer) it is set to 1.
    ``code < 0``: bias only, ``A`` unused. For ``TANH``, ``Z`` then holds the complement
    ``1 − |a|`` instead of ``z`` (:func:`tanh_rows`), which the derivative kernels below
    read."""
    prefer_wide_vectors()
    nb, w = Z.shape
    if code < 0:
        if add_bias:
            for i in range(nb):
                for j in range(w):
                    Z[i, j] += b[j]
        return
    if A.shape[1] > w:
        for i in range(nb):
            A[i, w] = 1.0
    if code == TANH:
        tanh_rows(Z, b, A, add_bias)
        return
    if add_bias:
        for i in range(nb):
            for j in range(w):
                Z[i, j] += b[j]
    if True:
        for i in range(nb):
            for j in range(w):
                A[i, j] = value(code, np.float64(Z[i, j]))


@jit(strict=True)
def times_d1(code, Z, A, G, out):
    """``out = G ⊙ φ'(Z)`` (out may be G); for ``TANH`` ``Z`` holds ``c = 1 − |a|``
    (:func:`tanh_rows`) and ``φ' = c (2 − c)``."""
    prefer_wide_vectors()
    two = _one(A) + _one(A)  # in the data's precision
    nb, w = Z.shape
    if code == TANH:
        for i in range(nb):
            for j in range(w):
                c = Z[i, j]
                out[i, j] = G[i, j] * (c * (two - c))
    elif code == IDENTITY:
        for i in range(nb):
            for j in range(w):
                out[i, j] = G[i, j]
    else:
        for i in range(nb):
            for j in range(w):
                out[i, j] = G[i, j] * d1(code, np.float64(Z[i, j]), np.float64(A[i, j]))


@jit(strict=True)
def r_act(code, Z, A, RZ, T, b, use_T, RA):
    """``RZ += T`` (or ``+= b`` per row if not ``use_T``), then ``RA[:, :w] = φ'(Z) ⊙ RZ``
    and ``RA[:, w] = 0`` if ``RA`` has the extra column: one pass (R-forward of a layer).
    For ``TANH`` ``Z`` holds ``c = 1 − |a|`` and ``φ' = c (2 − c)``."""
    prefer_wide_vectors()
    two = _one(A) + _one(A)  # in the data's precision
    nb, w = Z.shape
    if RA.shape[1] > w:
        for i in range(nb):
            RA[i, w] = 0.0
    if code == TANH and use_T:
        for i in range(nb):
            for j in range(w):
                r = RZ[i, j] + T[i, j]
                RZ[i, j] = r
                c = Z[i, j]
                RA[i, j] = r * (c * (two - c))
    elif code == TANH:
        for i in range(nb):
            for j in range(w):
                r = RZ[i, j] + b[j]
                RZ[i, j] = r
                c = Z[i, j]
                RA[i, j] = r * (c * (two - c))
    else:
        for i in range(nb):
            for j in range(w):
                r = RZ[i, j] + (T[i, j] if use_T else b[j])
                RZ[i, j] = r
                RA[i, j] = r * d1(code, np.float64(Z[i, j]), np.float64(A[i, j]))


@jit(strict=True)
def r_backward_fuse(code, Z, A, RD, T, DP, RZ):
    """``RD = (RD + T) ⊙ φ'(Z) + DP ⊙ φ''(Z) ⊙ RZ``: the R-operator of ``δ = (δ' Wᵀ) ⊙ φ'``.
    For ``TANH`` ``Z`` holds ``c = 1 − |a|``: ``φ' = c (2 − c)``, ``φ'' = −2 a φ'``."""
    prefer_wide_vectors()
    two = _one(A) + _one(A)  # in the data's precision
    nb, w = Z.shape
    if code == TANH:
        for i in range(nb):
            for j in range(w):
                a = A[i, j]
                c = Z[i, j]
                g = c * (two - c)
                RD[i, j] = (RD[i, j] + T[i, j]) * g - (a + a) * g * DP[i, j] * RZ[i, j]
    else:
        for i in range(nb):
            for j in range(w):
                z = np.float64(Z[i, j])
                a = np.float64(A[i, j])
                RD[i, j] = ((RD[i, j] + T[i, j]) * d1(code, z, a)
                            + DP[i, j] * d2(code, z, a) * RZ[i, j])
