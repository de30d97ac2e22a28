"""The vectorized activations of fastcurv.kernels.activations against mpmath (120-bit)."""

import numpy as np
import pytest
from fastcurv.kernels import activations as ac
from fastcurv.kernels._jit import jit

mpmath = pytest.importorskip("mpmath")


@jit(strict=True)
def _values(code, x, out):
    for i in range(x.shape[0]):
        out[i] = ac.value(code, x[i])


@jit(strict=True)
def _tanh_t(x, out):
    for i in range(x.shape[0]):
        out[i] = ac.tanh_t(x[i])


def _grid(hi, n):
    g = np.concatenate([np.linspace(-hi, hi, n), np.logspace(-300, np.log10(hi), 400),
                        -np.logspace(-300, np.log10(hi), 400), [0.0, 0.625, 0.6249999999]])
    return g


def _ulps(got, exact, dtype):
    spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def _exact(f, x):
    with mpmath.workprec(120):
        return np.array([float(f(mpmath.mpf(float(v)))) for v in x])


@jit(strict=True)
def _tanh_pairs(x, t, c):
    for i in range(x.shape[0]):
        t[i], c[i] = ac.tanh_c(x[i])


def test_tanh_float64_within_1_ulp():
    """tanh from one division, its complement the quotient (it was ``(1 − E)/(1 + E)``, a
    second division, within 2 ulp)."""
    x = _grid(40.0, 20001)
    out = np.empty_like(x)
    _values(ac.TANH, x, out)
    assert _ulps(out, _exact(mpmath.tanh, x), np.float64).max() <= 1.0


def test_tanh_complement_float64_within_2_ulp():
    """``1 − |tanh x|`` from ``e^{−2|x|}`` (what the MLP's derivatives use), up to the
    clamp at 373 where it becomes subnormal; tanh itself along the same grid."""
    rng = np.random.default_rng(0)
    x = np.concatenate([_grid(372.0, 20001), rng.uniform(0.5, 0.75, 5000), [0.625]])
    t = np.empty_like(x)
    c = np.empty_like(x)
    _tanh_pairs(x, t, c)
    with mpmath.workprec(120):
        comp = np.array([float(2 / (mpmath.exp(2 * abs(mpmath.mpf(float(v)))) + 1))
                         for v in x])
    assert _ulps(c, comp, np.float64).max() <= 2.0
    assert _ulps(t, _exact(mpmath.tanh, x), np.float64).max() <= 1.0


def test_tanh_complement_float32_down_to_the_normal_range():
    """The float32 row loop's complement ``1 − |tanh z|`` (what the MLP's φ' = c (2 − c)
    reads) keeps its digits up to |z| = 44, where it is still a normal float32, and is 0
    beyond (flushed, not subnormal). It was clamped at 43: φ' stayed 1.8e-37 for every
    |z| > 43 (5x the exact value at 43.8; a review)."""
    z = np.concatenate([np.linspace(0.5, 44.0, 4001), [43.0, 43.5, 43.8, 43.99, 44.0]])
    z = np.concatenate([z, -z]).astype(np.float32)
    Z = z.reshape(1, -1).copy()
    A = np.empty_like(Z)
    ac.bias_act(ac.TANH, Z, np.zeros(z.size, np.float32), A, False)
    with mpmath.workprec(120):
        comp = np.array([float(2 / (mpmath.exp(2 * abs(mpmath.mpf(float(v)))) + 1)) for v in z])
    assert np.all(comp.astype(np.float32) >= np.finfo(np.float32).tiny)
    assert _ulps(Z[0], comp, np.float32).max() <= 2.0
    far = np.array([44.01, 44.5, 50.0, 60.0, 1e6, np.inf], np.float32)
    far = np.concatenate([far, -far])
    Zf = far.reshape(1, -1).copy()
    Af = np.empty_like(Zf)
    ac.bias_act(ac.TANH, Zf, np.zeros(far.size, np.float32), Af, False)
    assert np.array_equal(Zf[0], np.zeros_like(far))
    assert np.array_equal(Af[0], np.sign(far))


def test_row_loops_use_whole_avx512_registers():
    """The activation row loops carry ``"prefer-vector-width"="512"`` (kernels/simd.py:
    ``prefer_wide_vectors``) where the code is compiled for AVX-512, and LLVM then uses zmm
    registers; elsewhere nothing is added."""
    import numba
    from fastcurv.kernels import _jit, simd

    f = numba.njit(**dict(_jit._OPTIONS, cache=False,
                          fastmath=set(_jit.FASTMATH_STRICT)))(ac._tanh_rows32.py_func)
    sig = (numba.float32[:, ::1], numba.float32[::1], numba.float32[:, ::1], numba.boolean)
    f.compile(sig)
    ir = f.inspect_llvm(sig)
    if simd.WIDE_BYTES == 64:
        assert '"prefer-vector-width"="512"' in ir
        assert "zmm" in f.inspect_asm(sig)
    else:
        assert "prefer-vector-width" not in ir


def test_sigmoid_float64_within_2_ulp():
    x = np.concatenate([_grid(40.0, 20001), [-700.0, -745.0, -746.0, -800.0, 700.0]])
    out = np.empty_like(x)
    _values(ac.SIGMOID, x, out)
    exact = _exact(lambda t: 1 / (1 + mpmath.exp(-t)), x)
    tiny = exact < np.finfo(np.float64).tiny  # subnormal results: absolute error <= 1 ulp
    assert _ulps(out[~tiny], exact[~tiny], np.float64).max() <= 2.0
    assert np.all(np.abs(out[tiny] - exact[tiny]) <= 5e-324)


def test_tanh_float32_within_1_ulp():
    x = np.concatenate([np.linspace(-12, 12, 100001), np.logspace(-30, 1.2, 2000),
                        -np.logspace(-30, 1.2, 2000)]).astype(np.float32)
    out = np.empty_like(x)
    _tanh_t(x, out)
    assert out.dtype == np.float32
    exact = _exact(mpmath.tanh, x.astype(np.float64))
    assert _ulps(out, exact.astype(np.float32).astype(np.float64), np.float32).max() <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)
    out = np.empty_like(x)
    _tanh_t(x, out)
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == -1.0 and out[3] == 0.0
    x64 = x.astype(np.float64)
    o64 = np.empty_like(x64)
    _values(ac.SIGMOID, x64, o64)
    assert np.isnan(o64[0]) and o64[1] == 1.0 and o64[2] == 0.0 and o64[3] == 0.5


@pytest.mark.parametrize("code, f", [
    (ac.RELU, lambda t: max(t, 0)),
    (ac.SOFTPLUS, lambda t: mpmath.log1p(mpmath.exp(t))),
    (ac.GELU, lambda t: t * mpmath.ncdf(t)),
])
def test_other_activations(code, f):
    x = np.linspace(-30, 30, 3001)
    out = np.empty_like(x)
    _values(code, x, out)
    exact = _exact(f, x)
    big = np.abs(exact) > 1e-300
    # gelu's left tail x Φ(x) has relative condition number about 1 + x² (the rounding of x
    # itself is amplified that much): allow 4 ulp times the conditioning
    cond = 1.0 + x * x if code == ac.GELU else np.ones_like(x)
    assert np.all(_ulps(out[big], exact[big], np.float64) <= 4.0 * cond[big])


@jit(strict=True)
def _derivs(code, x, o1, o2):
    for i in range(x.shape[0]):
        a = ac.value(code, x[i])
        o1[i] = ac.d1(code, x[i], a)
        o2[i] = ac.d2(code, x[i], a)


@pytest.mark.parametrize("code", [ac.TANH, ac.RELU, ac.SIGMOID, ac.SOFTPLUS, ac.GELU])
def test_derivatives_in_the_far_tails(code):
    # far out every activation is flat or linear: φ' is 0 or 1 and φ'' is 0, never NaN
    # (gelu's φ'' = ϕ(z)(2 − z²) once gave 0 · (−inf) = NaN beyond |z| = 1.34e154)
    x = np.array([-1e300, -1e155, -1e20, -800.0, 800.0, 1e20, 1e155, 1e300])
    o1, o2 = np.empty_like(x), np.empty_like(x)
    _derivs(code, x, o1, o2)
    assert np.array_equal(o1, np.where(x > 0, 1.0, 0.0) if code in (ac.RELU, ac.SOFTPLUS, ac.GELU)
                          else np.zeros_like(x))
    assert np.array_equal(o2, np.zeros_like(x))


def test_sigmoid_derivatives_keep_their_precision_when_saturated():
    """φ' = a(1 − a) from the rounded a lost 12% at z = 35 (float64) and 2.6% of a float32
    network's gradient at z = 15 (a review's finding); σ(z)σ(−z) keeps a few ulp."""
    x = np.concatenate([np.linspace(-40.0, 40.0, 801), [-700.0, 700.0]])
    o1, o2 = np.empty_like(x), np.empty_like(x)
    _derivs(ac.SIGMOID, x, o1, o2)

    def s1(z):  # σ(z)(1 − σ(z)) = e^−z / (1 + e^−z)²: no cancellation even at 120 bits
        e = mpmath.exp(-z)
        return e / (1 + e) ** 2

    def s2(z):  # times 1 − 2σ(z) = −tanh(z / 2)
        return -s1(z) * mpmath.tanh(z / 2)

    e1, e2 = _exact(s1, x), _exact(s2, x)
    assert np.all(_ulps(o1, e1, np.float64) <= 4.0)
    big = np.abs(e2) > 1e-300
    assert np.all(_ulps(o2[big], e2[big], np.float64) <= 8.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_saturated_tanh_units_keep_their_gradient_digits(dtype):
    """φ' of tanh was ``(1 − a)(1 + a)`` from the rounded ``a``: 0.87 |z| digits lost (4 at
    z = 5, 7.6 at z = 10, all of them from z = 19 in float64 and z = 9 in float32, where it
    became 0), in every gradient and product below a saturated layer. Against numpy's
    ``1 / cosh(z)²``, the first layer's weight gradient of a 1-3-1 network whose units sit at
    z = 2 ... 30 (float32: up to 43.9, where sech² = 4e-38 is still a normal float32; a
    clamp at 43 gave 1.8e-37 there)."""
    import fastcurv as fc

    zs = np.array([2.0, 5.0, 10.0, 15.0, 30.0] if dtype == np.float64
                  else [2.0, 5.0, 8.0, 10.0, 12.0, 43.5, 43.9])
    n = zs.size
    X = np.ones((n, 1), dtype=dtype)
    y = np.zeros(n, dtype=dtype)
    p = fc.MLP(X, y, sizes=(1, n, 1), activation="tanh", loss="mse")
    W1 = np.vstack([np.zeros((1, n)), zs[None, :]]).astype(dtype)  # z_j = 0 x + zs_j (bias)
    W2 = np.vstack([np.ones((n, 1)), np.zeros((1, 1))]).astype(dtype)
    theta = p.flatten([W1, W2])
    g = p.unflatten(p.grad(theta))[0]
    # reference: z and a in float64 from the dtype's inputs, sech² from cosh
    z = W1[1].astype(np.float64)
    a = np.tanh(z)
    r = np.ones(n) * a.sum()  # every row's output (the same x = 1): sum_j a_j
    # mse: ℓ = (1/2)(f - y)^2, mean over the n rows; d f / d b1_j = sech²(z_j)
    want_b = np.mean(r) * (1.0 / np.cosh(z) ** 2)
    got_b = g[1].astype(np.float64)
    rtol = 8 * np.finfo(dtype).eps if dtype == np.float64 else 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(got_b, want_b, rtol=rtol, atol=0)


def test_sigmoid_second_derivative_near_zero():
    """φ'' = a s (s − a) with ``s = σ(−z)``: ``s − a`` cancels near z = 0 (7.4 digits lost at
    z = 1e-8, a review against mpmath); ``−tanh(z/2)`` keeps them."""
    x = np.array([-1e-2, -1e-5, -1e-8, -1e-12, 1e-12, 1e-8, 1e-5, 1e-2, 0.3])
    o1, o2 = np.empty_like(x), np.empty_like(x)
    _derivs(ac.SIGMOID, x, o1, o2)

    def s2(z):
        e = mpmath.exp(-z)
        return -(e / (1 + e) ** 2) * mpmath.tanh(z / 2)

    assert np.all(_ulps(o2, _exact(s2, x), np.float64) <= 8.0)
