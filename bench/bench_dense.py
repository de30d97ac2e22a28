"""Dense binary logistic, n=200,000, d=500 (X float64: 800 MB; float32 copy: 400 MB).

Groups: HVP (probe, fastcurv, numpy two-pass, scikit-learn hessp), value+grad (fastcurv,
numpy two products, scikit-learn loss_gradient), and float32 vs float64 HVP; each group is
timed once more with its implementations called in alternation (``harness.interleaved``).
"""

import baselines as bl
import numpy as np
import pytest
from datasets import DENSE
from harness import (
    FreshTheta,
    agree_value_grad,
    assert_agree,
    hugepage_fraction,
    interleaved,
    measure,
)
from probe import check_probe, probe

import fastcurv as fc

RTOL64 = 1e-8
RTOL32 = 1e-4  # float32 data (X rounded to 24 bits) against the float64 result

_SHAPE = f"{DENSE['n']}x{DENSE['d']}"
G_HVP = f"dense logistic {_SHAPE} f64: HVP"
G_VG = f"dense logistic {_SHAPE} f64: value+grad"
G_DTYPE = f"dense logistic {_SHAPE}: HVP float32 vs float64"


@pytest.fixture(scope="module")
def ref(dense64):
    """fastcurv's HVP / value+grad, cross-checked against independent numpy formulas."""
    P = dense64
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    assert np.shares_memory(p.X, P.X)  # fastcurv never copies X
    p.value_and_grad(P.theta)
    fc_hvp = p.hvp(P.theta, P.v)
    hw = bl.logistic_hess_weights(P.X, P.theta)
    np_hvp = bl.twopass_logistic_hvp(P.X, hw, P.l2)(P.v)
    assert_agree(fc_hvp, np_hvp, RTOL64, "fastcurv HVP vs numpy reference")
    np_vg = [bl.twopass_logistic_value_grad(P.X, P.y, P.l2)(t) for t in (P.theta, P.theta2)]
    fc_vg = [fc.GLM(P.X, P.y, family="logistic", l2=P.l2).value_and_grad(t)
             for t in (P.theta, P.theta2)]
    for a, b in zip(fc_vg, np_vg, strict=True):
        agree_value_grad(a, b, RTOL64, "fastcurv value+grad vs numpy reference")
    return {"p": p, "hvp": fc_hvp, "np_hvp": np_hvp, "hw": hw, "vg": fc_vg, "np_vg": np_vg}


# ------------------------------------------------------------------------------ HVP
@pytest.mark.benchmark(group=G_HVP)
def test_hvp_probe(benchmark, dense64):
    pr = probe(dense64.X)
    check_probe(pr, dense64.X)
    measure(benchmark, pr, key="dense64.hvp.probe", nbytes=pr.nbytes,
            x_hugepage_fraction=hugepage_fraction(dense64.X))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_fastcurv(benchmark, dense64, ref):
    P, p = dense64, ref["p"]
    p.value_and_grad(P.theta)  # state at θ cached, as in Newton-CG
    measure(benchmark, p.hvp, P.theta, P.v, key="dense64.hvp.fastcurv", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["np_hvp"], RTOL64, "fastcurv vs numpy"))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_numpy(benchmark, dense64, ref):
    P = dense64
    hvp = bl.twopass_logistic_hvp(P.X, ref["hw"], P.l2)
    measure(benchmark, hvp, P.v, key="dense64.hvp.numpy", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["hvp"], RTOL64, "numpy vs fastcurv"))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_numpy_one_pass(benchmark, dense64):
    """Context: one BLAS pass ``X @ v`` (gemv), the speed of a single read of X by OpenBLAS."""
    P = dense64
    d = P.X.shape[1]
    w = np.ascontiguousarray(P.v[:d])
    measure(benchmark, lambda: P.X @ w, key="dense64.hvp.numpy_one_pass", nbytes=P.nbytes,
            check=lambda out: assert_agree(out[:2000], np.einsum("ij,j->i", P.X[:2000], w),
                                           RTOL64, "X @ v vs einsum"),
            note="X @ v alone: not an HVP, the time of one BLAS read of X")


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_sklearn(benchmark, dense64, ref):
    P = dense64
    setup, hvp, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2)
    assert_agree(hvp(P.v), ref["hvp"], RTOL64, "scikit-learn vs fastcurv")
    v_sk = bl.fc_to_sk(P.v, P.X.shape[1], 1)
    measure(benchmark, hvp_sk, v_sk, key="dense64.hvp.sklearn", nbytes=P.nbytes,
            sklearn_setup_s=setup,
            note="hessp closure only; gradient_hessian_product setup (copies h*X) excluded")


# ------------------------------------------------------------------------ value + grad
def _vg_check(want):
    return lambda out: agree_value_grad(out, want[0], RTOL64, "value+grad")


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_fastcurv(benchmark, dense64, ref):
    P = dense64
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    alt = FreshTheta(p.value_and_grad, P.theta)  # new θ every call: no cache
    measure(benchmark, alt, key="dense64.value_grad.fastcurv", nbytes=P.nbytes,
            check=_vg_check(ref["np_vg"]))


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_numpy(benchmark, dense64, ref):
    P = dense64
    alt = FreshTheta(bl.twopass_logistic_value_grad(P.X, P.y, P.l2), P.theta)
    measure(benchmark, alt, key="dense64.value_grad.numpy", nbytes=P.nbytes,
            check=_vg_check(ref["vg"]))


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_sklearn(benchmark, dense64, ref):
    P = dense64
    alt = FreshTheta(bl.sklearn_value_grad(P.X, P.y, P.l2), P.theta)
    measure(benchmark, alt, key="dense64.value_grad.sklearn", nbytes=P.nbytes,
            check=_vg_check(ref["vg"]))


# ----------------------------------------------------------------- float32 vs float64
@pytest.mark.benchmark(group=G_DTYPE)
def test_dtype_probe_f32(benchmark, dense32):
    pr = probe(dense32.X)
    check_probe(pr, dense32.X)
    measure(benchmark, pr, key="dense32.hvp.probe", nbytes=pr.nbytes,
            x_hugepage_fraction=hugepage_fraction(dense32.X))


@pytest.mark.benchmark(group=G_DTYPE)
def test_dtype_hvp_fastcurv_f32(benchmark, dense32, ref):
    P = dense32
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    assert p.dtype == np.float32
    p.value_and_grad(P.theta)
    measure(benchmark, p.hvp, P.theta, P.v, key="dense32.hvp.fastcurv", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["hvp"], RTOL32, "f32 vs f64 fastcurv"))


@pytest.mark.benchmark(group=G_DTYPE)
def test_dtype_hvp_fastcurv_f64(benchmark, dense64, ref):
    """The float64 HVP again, timed right next to the float32 one."""
    P, p = dense64, ref["p"]
    p.value_and_grad(P.theta)
    measure(benchmark, p.hvp, P.theta, P.v, key="dense64.hvp.fastcurv_again", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["np_hvp"], RTOL64, "fastcurv vs numpy"))


@pytest.mark.benchmark(group=G_DTYPE)
def test_dtype_hvp_numpy_f32(benchmark, dense32, ref):
    P = dense32
    hvp = bl.twopass_logistic_hvp(P.X, ref["hw"].astype(np.float32), P.l2)
    measure(benchmark, hvp, P.v, key="dense32.hvp.numpy", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["hvp"], RTOL32, "numpy f32 vs fastcurv"))


# --------------------------------------------------- the same comparisons, interleaved
@pytest.mark.benchmark(group=f"{G_HVP} (interleaved)")
def test_hvp_interleaved(benchmark, dense64, ref):
    P, p = dense64, ref["p"]
    p.value_and_grad(P.theta)
    pr = probe(P.X)
    d = P.X.shape[1]
    w = np.ascontiguousarray(P.v[:d])
    _, _, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2)
    v_sk = bl.fc_to_sk(P.v, d, 1)
    vs_ref = lambda out: assert_agree(out, ref["np_hvp"], RTOL64, "HVP vs numpy")  # noqa: E731
    interleaved(benchmark, [
        ("dense64.hvp.probe", pr, (), None),
        ("dense64.hvp.fastcurv", p.hvp, (P.theta, P.v), vs_ref),
        ("dense64.hvp.numpy", bl.twopass_logistic_hvp(P.X, ref["hw"], P.l2), (P.v,),
         lambda out: assert_agree(out, ref["hvp"], RTOL64, "numpy vs fastcurv")),
        ("dense64.hvp.numpy_one_pass", lambda: P.X @ w, (), None),
        ("dense64.hvp.sklearn", hvp_sk, (v_sk,),
         lambda out: assert_agree(out, ref["hvp"], RTOL64, "scikit-learn vs fastcurv")),
    ], key="dense64.hvp.interleaved")


@pytest.mark.benchmark(group=f"{G_VG} (interleaved)")
def test_value_grad_interleaved(benchmark, dense64, ref):
    P = dense64
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    interleaved(benchmark, [
        ("dense64.value_grad.fastcurv", FreshTheta(p.value_and_grad, P.theta), (),
         _vg_check(ref["np_vg"])),
        ("dense64.value_grad.numpy",
         FreshTheta(bl.twopass_logistic_value_grad(P.X, P.y, P.l2), P.theta), (),
         _vg_check(ref["vg"])),
        ("dense64.value_grad.sklearn",
         FreshTheta(bl.sklearn_value_grad(P.X, P.y, P.l2), P.theta), (), _vg_check(ref["vg"])),
    ], key="dense64.value_grad.interleaved")


@pytest.mark.benchmark(group=f"{G_DTYPE} (interleaved)")
def test_dtype_interleaved(benchmark, dense64, dense32, ref):
    p64 = ref["p"]
    p64.value_and_grad(dense64.theta)
    p32 = fc.GLM(dense32.X, dense32.y, family="logistic", l2=dense32.l2)
    p32.value_and_grad(dense32.theta)
    interleaved(benchmark, [
        ("dense64.hvp.fastcurv_again", p64.hvp, (dense64.theta, dense64.v),
         lambda out: assert_agree(out, ref["np_hvp"], RTOL64, "f64 vs numpy")),
        ("dense32.hvp.fastcurv", p32.hvp, (dense32.theta, dense32.v),
         lambda out: assert_agree(out, ref["hvp"], RTOL32, "f32 vs f64")),
    ], key="dense_dtype.hvp.interleaved")
