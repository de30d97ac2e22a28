"""CSR binary logistic, n=500,000, d=50,000, 60 random nonzeros per row (30M nonzeros).

data float64 + indices int32 + indptr int32 = 362 MB per pass. scipy's sparse products are
single-threaded; fastcurv runs on 2 threads.
"""

import baselines as bl
import pytest
from datasets import CSR
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

RTOL = 1e-8
_SHAPE = f"{CSR['n']}x{CSR['d']} {CSR['nnz_per_row']}nnz/row"
G_HVP = f"CSR logistic {_SHAPE} f64: HVP"
G_VG = f"CSR logistic {_SHAPE} f64: value+grad"


@pytest.fixture(scope="module")
def ref(csr):
    P = csr
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    p.value_and_grad(P.theta)
    fc_hvp = p.hvp(P.theta, P.v)
    hw = bl.logistic_hess_weights(P.X, P.theta)
    sp_hvp = bl.twopass_logistic_hvp(P.X, hw, P.l2)(P.v)
    assert_agree(fc_hvp, sp_hvp, RTOL, "fastcurv CSR HVP vs scipy reference")
    sp_vg = [bl.twopass_logistic_value_grad(P.X, P.y, P.l2)(t) for t in (P.theta, P.theta2)]
    fc_vg = [fc.GLM(P.X, P.y, family="logistic", l2=P.l2).value_and_grad(t)
             for t in (P.theta, P.theta2)]
    for a, b in zip(fc_vg, sp_vg, strict=True):
        agree_value_grad(a, b, RTOL, "fastcurv CSR value+grad vs scipy reference")
    return {"p": p, "hvp": fc_hvp, "sp_hvp": sp_hvp, "hw": hw, "vg": fc_vg, "sp_vg": sp_vg}


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_probe(benchmark, csr):
    pr = probe(csr.X)
    check_probe(pr, csr.X)
    measure(benchmark, pr, key="csr.hvp.probe", nbytes=pr.nbytes,
            note="reads data + indices + indptr once",
            x_hugepage_fraction=hugepage_fraction(csr.X.data))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_fastcurv(benchmark, csr, ref):
    P, p = csr, ref["p"]
    p.value_and_grad(P.theta)
    measure(benchmark, p.hvp, P.theta, P.v, key="csr.hvp.fastcurv", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["sp_hvp"], RTOL, "fastcurv vs scipy"))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_scipy(benchmark, csr, ref):
    P = csr
    hvp = bl.twopass_logistic_hvp(P.X, ref["hw"], P.l2)
    measure(benchmark, hvp, P.v, key="csr.hvp.scipy", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["hvp"], RTOL, "scipy vs fastcurv"),
            note="X.T @ (h * (X @ v)), scipy.sparse (single-threaded)")


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_sklearn(benchmark, csr, ref):
    P = csr
    setup, hvp, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2)
    assert_agree(hvp(P.v), ref["hvp"], RTOL, "scikit-learn vs fastcurv CSR HVP")
    measure(benchmark, hvp_sk, P.v, key="csr.hvp.sklearn", nbytes=P.nbytes,
            sklearn_setup_s=setup, note="hessp closure only; setup builds hX = diag(h) X")


def _vg_check(want, what):
    return lambda out: agree_value_grad(out, want[0], RTOL, what)


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_fastcurv(benchmark, csr, ref):
    P = csr
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    alt = FreshTheta(p.value_and_grad, P.theta)
    measure(benchmark, alt, key="csr.value_grad.fastcurv", nbytes=P.nbytes,
            check=_vg_check(ref["sp_vg"], "fastcurv vs scipy"))


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_sklearn(benchmark, csr, ref):
    P = csr
    alt = FreshTheta(bl.sklearn_value_grad(P.X, P.y, P.l2), P.theta)
    measure(benchmark, alt, key="csr.value_grad.sklearn", nbytes=P.nbytes,
            check=_vg_check(ref["vg"], "scikit-learn vs fastcurv"))


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_scipy(benchmark, csr, ref):
    P = csr
    alt = FreshTheta(bl.twopass_logistic_value_grad(P.X, P.y, P.l2), P.theta)
    measure(benchmark, alt, key="csr.value_grad.scipy", nbytes=P.nbytes,
            check=_vg_check(ref["vg"], "scipy vs fastcurv"))


# --------------------------------------------------- the same comparisons, interleaved
@pytest.mark.benchmark(group=f"{G_HVP} (interleaved)")
def test_hvp_interleaved(benchmark, csr, ref):
    P, p = csr, ref["p"]
    p.value_and_grad(P.theta)
    _, _, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2)
    interleaved(benchmark, [
        ("csr.hvp.probe", probe(P.X), (), None),
        ("csr.hvp.fastcurv", p.hvp, (P.theta, P.v),
         lambda out: assert_agree(out, ref["sp_hvp"], RTOL, "fastcurv vs scipy")),
        ("csr.hvp.scipy", bl.twopass_logistic_hvp(P.X, ref["hw"], P.l2), (P.v,),
         lambda out: assert_agree(out, ref["hvp"], RTOL, "scipy vs fastcurv")),
        ("csr.hvp.sklearn", hvp_sk, (P.v,),
         lambda out: assert_agree(out, ref["hvp"], RTOL, "scikit-learn vs fastcurv")),
    ], key="csr.hvp.interleaved")


@pytest.mark.benchmark(group=f"{G_VG} (interleaved)")
def test_value_grad_interleaved(benchmark, csr, ref):
    P = csr
    p = fc.GLM(P.X, P.y, family="logistic", l2=P.l2)
    interleaved(benchmark, [
        ("csr.value_grad.fastcurv", FreshTheta(p.value_and_grad, P.theta), (),
         _vg_check(ref["sp_vg"], "fastcurv vs scipy")),
        ("csr.value_grad.sklearn",
         FreshTheta(bl.sklearn_value_grad(P.X, P.y, P.l2), P.theta), (),
         _vg_check(ref["vg"], "scikit-learn vs fastcurv")),
        ("csr.value_grad.scipy",
         FreshTheta(bl.twopass_logistic_value_grad(P.X, P.y, P.l2), P.theta), (),
         _vg_check(ref["vg"], "scipy vs fastcurv")),
    ], key="csr.value_grad.interleaved")
