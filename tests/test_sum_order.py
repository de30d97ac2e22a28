"""The order of every floating-point sum is fixed by the shapes alone, never by where arrays
lie in memory (DESIGN: a result is bitwise the same on every run and every thread).

A loop that both stores and sums is vectorized behind a runtime check of pointer distances,
which two distinct arrays that happen to lie close together fail; the loop then sums in the
scalar order (tests/ir_audit.py explains it). One ``GLM`` shared by Python threads gave the
intercept entry of ``hvp`` 1 ulp apart in some calls this way (the dense single-output pass
kept a per-row sum in the loop that stored the row weights), and ``softmax_row`` gave other
bits when its output row lay just after its input row. The kernels now sum in loops that
only load (kernels/_jit.py, "Reductions").

Checked two ways: the IR of fresh compilations of those kernels has no sum behind a distance
check (with a deliberately bad kernel as the audit's positive control), and ``softmax_row``
gives the same bits for adjacent and distant arrays.
"""

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from fastcurv.kernels import _jit, glm_csr, glm_dense, losses, mlp
from ir_audit import address_dependent_sums
from llvmlite.binding import llvm_version_info

import fastcurv as fc

_FRESH = dict(_jit._OPTIONS, cache=False)


def _store_and_sum(a, b):
    """The pattern the kernels avoid: ``b = 1.5 a`` and ``sum(b)`` in one loop."""
    s = 0.0
    for k in range(a.shape[0]):
        e = 1.5 * a[k]
        b[k] = e
        s += e
    return s


def _apart_and_adjacent(K):
    """(a, b) in separate allocations, and (a, b) with b right after a in one buffer."""
    buf = np.zeros(2 * K)
    return (np.zeros(K), np.zeros(K)), (buf[:K], buf[K:])


@pytest.mark.skipif(
    llvm_version_info < (15,),
    reason="LLVM 14 (numba 0.60) guards such loops with an overlap check, not the pointer "
           "distance check the audit looks for, and its sums did not depend on addresses "
           "(adjacent and distant arrays gave the same bits in 50 of 50 trials)")
def test_the_audit_finds_a_sum_behind_a_distance_check():
    bad = numba.njit(**_FRESH)(_store_and_sum)
    sig = (numba.float64[::1], numba.float64[::1])
    bad.compile(sig)
    assert address_dependent_sums(bad.inspect_llvm(sig)), (
        "tests/ir_audit.py no longer recognizes LLVM's runtime-checked vector sums; "
        "update its names for this LLVM version")
    # and the mechanism is real: the same numbers, other bits when b lies just after a
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(50):
        x = rng.standard_normal(12) * 10.0 ** rng.integers(-8, 8, 12)
        (a1, b1), (a2, b2) = _apart_and_adjacent(12)
        a1[:] = x
        a2[:] = x
        differ += bad(a1, b1) != bad(a2, b2)
    assert differ > 0


def _fresh_ir(kernel, sig, parallel):
    f = numba.njit(**dict(_FRESH, parallel=parallel))(kernel.py_func)
    f.compile(sig)
    return f.inspect_llvm(sig)


def _data_dtype(args):
    """The dtype of a kernel call's first array argument."""
    return next(a.dtype for a in args if isinstance(a, np.ndarray))


@pytest.fixture(scope="module")
def calls(monkeypatch_module):
    """The arguments of the parallel kernels' calls (by kernel and data dtype) in a workload
    of dense and CSR, single- and multi-output GLMs and a softmax MLP. Recorded from the calls
    themselves: a dispatcher loaded from Numba's cache does not list its callees' types."""
    seen = {}
    call = _jit.ChunkedKernel.__call__

    def recording(self, *args):
        seen.setdefault((self, _data_dtype(args)), args)
        return call(self, *args)

    monkeypatch_module.setattr(_jit.ChunkedKernel, "__call__", recording)
    rng = np.random.default_rng(1)
    for dt in (np.float64, np.float32):
        X = rng.standard_normal((3000, 7)).astype(dt)
        y2 = (X[:, 0] > 0).astype(float)
        yk = rng.integers(0, 5, 3000).astype(float)
        for data in (X, sp.csr_matrix(X)):
            for fam, y in (("logistic", y2), ("multinomial", yk)):
                p = fc.GLM(data, y, family=fam, l2=0.1)
                p.hvp(p.init(), np.ones(p.n_params, dtype=dt))
        m = fc.MLP(X[:200], yk[:200], sizes=(7, 6, 5), loss="softmax_cross_entropy")
        m.grad(m.init(seed=0))
    return seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_softmax_row_sums_in_a_fixed_order():
    sig = (numba.float64[::1], numba.int64, numba.float64[::1], numba.float64[::1])
    found = address_dependent_sums(_fresh_ir(losses.softmax_row, sig, False))
    assert not found, f"softmax_row: sums whose order depends on heap addresses, in {found}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel, flavour", [
    (glm_dense.pass_k1, "parallel"), (glm_dense.pass_k1, "serial"),
    (glm_csr.pass_k1, "parallel"), (glm_csr.pass_k1, "serial"),
    (glm_dense.pass_gen, "parallel"), (glm_dense.pass_gen, "serial"),
    (glm_csr.pass_gen, "parallel"), (glm_csr.pass_gen, "serial"),
    (mlp.run, "serial"),  # its parallel flavour runs the same body (and takes 16 s to build)
], ids=lambda x: x if isinstance(x, str) else f"{x.__module__.rsplit('.', 1)[-1]}.{x.__name__}")
def test_no_kernel_sums_behind_a_distance_check(calls, kernel, flavour, dtype):
    args = calls.get((kernel, np.dtype(dtype)))
    assert args is not None, f"the workload did not reach {kernel.__name__} in {dtype}"
    sig = tuple(numba.typeof(a) for a in args)
    found = address_dependent_sums(_fresh_ir(getattr(kernel, flavour), sig,
                                             flavour == "parallel"))
    assert not found, f"{kernel.__name__}: sums whose order depends on heap addresses, in {found}"


@pytest.mark.parametrize("K", [4, 5, 8, 13, 16, 31])
def test_softmax_row_bits_do_not_depend_on_where_its_arrays_lie(K):
    rng = np.random.default_rng(K)
    for _ in range(30):
        eta = rng.standard_normal(K) * 4.0
        label = int(rng.integers(K))
        p1, r1 = np.zeros(K), np.zeros(K)
        loss1 = losses.softmax_row(eta.copy(), label, p1, r1)
        buf = np.zeros(3 * K)  # the probabilities and residuals right after the logits
        buf[:K] = eta
        loss2 = losses.softmax_row(buf[:K], label, buf[K:2 * K], buf[2 * K:])
        assert loss1 == loss2
        np.testing.assert_array_equal(p1, buf[K:2 * K])
        np.testing.assert_array_equal(r1, buf[2 * K:])
