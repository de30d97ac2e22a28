"""Multinomial logistic, K=10, n=100,000, d=300 (X float64: 240 MB).

scikit-learn keeps coefficients as (n_classes, n_features + 1), raveled in F order when flat;
fastcurv as (d + 1, K) in C order. Vectors are converted with baselines.fc_to_sk / sk_to_fc
and the results are checked to agree before timing.
"""

import baselines as bl
import numpy as np
import pytest
from datasets import MULTI
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
_SHAPE = f"K={MULTI['K']} {MULTI['n']}x{MULTI['d']}"
G_HVP = f"multinomial {_SHAPE} f64: HVP"
G_VG = f"multinomial {_SHAPE} f64: value+grad"


def numpy_multinomial_hvp(X, P, theta, v):
    """Independent reference: H v = (1/n) Σ x̃_i ⊗ (diag(p_i) − p_i p_iᵀ) (Vᵀ x̃_i) + λ V."""
    n, d = X.shape
    K = P.n_classes
    T = theta.reshape(d + 1, K)
    eta = X @ T[:d] + T[d]
    eta -= eta.max(axis=1, keepdims=True)
    prob = np.exp(eta)
    prob /= prob.sum(axis=1, keepdims=True)
    V = v.reshape(d + 1, K)
    u = X @ V[:d] + V[d]
    t = prob * (u - (prob * u).sum(axis=1, keepdims=True)) / n
    out = np.empty((d + 1, K))
    out[:d] = X.T @ t + P.l2 * V[:d]
    out[d] = t.sum(axis=0)
    return out.ravel()


@pytest.fixture(scope="module")
def ref(multi):
    P = multi
    p = fc.GLM(P.X, P.y, family="multinomial", l2=P.l2, n_classes=P.n_classes)
    p.value_and_grad(P.theta)
    fc_hvp = p.hvp(P.theta, P.v)
    assert_agree(fc_hvp, numpy_multinomial_hvp(P.X, P, P.theta, P.v), RTOL,
                 "fastcurv multinomial HVP vs numpy reference")
    sk_vg = bl.sklearn_value_grad(P.X, P.y, P.l2, "multinomial", P.n_classes)
    vg_sk = [sk_vg(t) for t in (P.theta, P.theta2)]
    vg_fc = [fc.GLM(P.X, P.y, family="multinomial", l2=P.l2,
                    n_classes=P.n_classes).value_and_grad(t) for t in (P.theta, P.theta2)]
    for a, b in zip(vg_fc, vg_sk, strict=True):
        agree_value_grad(a, b, RTOL, "fastcurv vs scikit-learn multinomial value+grad")
    return {"p": p, "hvp": fc_hvp, "vg_fc": vg_fc, "vg_sk": vg_sk}


def test_layout_conversion_roundtrip(multi):
    d, K = multi.X.shape[1], multi.n_classes
    v = multi.v
    sk = bl.fc_to_sk(v, d, K)
    # coefficient (feature j, class k) sits at sk[k, j] in scikit-learn's (K, d+1) layout
    assert sk.reshape((K, d + 1), order="F")[3, 7] == v.reshape(d + 1, K)[7, 3]
    np.testing.assert_array_equal(bl.sk_to_fc(sk, d, K), v)


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_probe(benchmark, multi):
    pr = probe(multi.X)
    check_probe(pr, multi.X)
    measure(benchmark, pr, key="multi.hvp.probe", nbytes=pr.nbytes,
            x_hugepage_fraction=hugepage_fraction(multi.X))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_fastcurv(benchmark, multi, ref):
    P, p = multi, ref["p"]
    p.value_and_grad(P.theta)
    measure(benchmark, p.hvp, P.theta, P.v, key="multi.hvp.fastcurv", nbytes=P.nbytes,
            check=lambda out: assert_agree(out, ref["hvp"], RTOL, "fastcurv (repeat)"))


@pytest.mark.benchmark(group=G_HVP)
def test_hvp_sklearn(benchmark, multi, ref):
    P = multi
    d, K = P.X.shape[1], P.n_classes
    setup, hvp, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2, "multinomial", K)
    assert_agree(hvp(P.v), ref["hvp"], RTOL, "scikit-learn vs fastcurv multinomial HVP")
    v_sk = bl.fc_to_sk(P.v, d, K)
    measure(benchmark, hvp_sk, v_sk, key="multi.hvp.sklearn", nbytes=P.nbytes,
            sklearn_setup_s=setup, note="hessp closure only, on a vector in sklearn layout")


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_fastcurv(benchmark, multi, ref):
    P = multi
    p = fc.GLM(P.X, P.y, family="multinomial", l2=P.l2, n_classes=P.n_classes)
    alt = FreshTheta(p.value_and_grad, P.theta)
    measure(benchmark, alt, key="multi.value_grad.fastcurv", nbytes=P.nbytes,
            check=lambda out: agree_value_grad(out, ref["vg_sk"][0], RTOL, "fastcurv"))


@pytest.mark.benchmark(group=G_VG)
def test_value_grad_sklearn(benchmark, multi, ref):
    P = multi
    alt = FreshTheta(bl.sklearn_value_grad(P.X, P.y, P.l2, "multinomial", P.n_classes),
                     P.theta)
    measure(benchmark, alt, key="multi.value_grad.sklearn", nbytes=P.nbytes,
            check=lambda out: agree_value_grad(out, ref["vg_fc"][0], RTOL, "sklearn"))


# --------------------------------------------------- the same comparisons, interleaved
@pytest.mark.benchmark(group=f"{G_HVP} (interleaved)")
def test_hvp_interleaved(benchmark, multi, ref):
    P, p = multi, ref["p"]
    d, K = P.X.shape[1], P.n_classes
    p.value_and_grad(P.theta)
    _, _, hvp_sk = bl.sklearn_hessp(P.X, P.y, P.theta, P.l2, "multinomial", K)
    interleaved(benchmark, [
        ("multi.hvp.probe", probe(P.X), (), None),
        ("multi.hvp.fastcurv", p.hvp, (P.theta, P.v),
         lambda out: assert_agree(out, ref["hvp"], RTOL, "fastcurv (repeat)")),
        ("multi.hvp.sklearn", hvp_sk, (bl.fc_to_sk(P.v, d, K),),
         lambda out: assert_agree(bl.sk_to_fc(out, d, K), ref["hvp"], RTOL, "scikit-learn")),
    ], key="multi.hvp.interleaved")


@pytest.mark.benchmark(group=f"{G_VG} (interleaved)")
def test_value_grad_interleaved(benchmark, multi, ref):
    P = multi
    p = fc.GLM(P.X, P.y, family="multinomial", l2=P.l2, n_classes=P.n_classes)
    sk = bl.sklearn_value_grad(P.X, P.y, P.l2, "multinomial", P.n_classes)
    interleaved(benchmark, [
        ("multi.value_grad.fastcurv", FreshTheta(p.value_and_grad, P.theta), (),
         lambda out: agree_value_grad(out, ref["vg_sk"][0], RTOL, "fastcurv")),
        ("multi.value_grad.sklearn", FreshTheta(sk, P.theta), (),
         lambda out: agree_value_grad(out, ref["vg_fc"][0], RTOL, "sklearn")),
    ], key="multi.value_grad.interleaved")
