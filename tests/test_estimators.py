"""fc.hutchinson_diag against exact diagonals of dense matrices built independently."""

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

import fastcurv as fc


def _sym(P, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((P, P))
    return B @ B.T / P


def test_diagonal_matrix_is_exact_with_one_probe():
    d = np.linspace(-2.0, 3.0, 17)
    est = fc.hutchinson_diag(aslinearoperator(np.diag(d)), 1, seed=0)
    np.testing.assert_array_equal(est.diag, d)
    assert est.n_probes == 1 and np.all(np.isnan(est.std_error))


def test_same_seed_same_result_and_block_size_does_not_matter():
    A = aslinearoperator(_sym(30, 1))
    a = fc.hutchinson_diag(A, 50, seed=3, block=7)
    b = fc.hutchinson_diag(A, 50, seed=3, block=7)
    np.testing.assert_array_equal(a.diag, b.diag)
    # probes are drawn one after the other and summarized in fixed groups: the block size is
    # memory and speed only (different blocks gave estimates up to 11.5 apart for one seed).
    # Bitwise for an operator whose columns do not depend on the block's width; BLAS may
    # round A @ Z (here) differently for 7 and 50 columns, by an ulp
    exact_cols = aslinearoperator(_sym(30, 1))
    exact_cols.matmat = lambda Z: np.column_stack([_sym(30, 1) @ z for z in Z.T])
    ref = fc.hutchinson_diag(exact_cols, 50, seed=3, block=7)
    for block in (1, 13, 32, 50, 64):
        c = fc.hutchinson_diag(exact_cols, 50, seed=3, block=block)
        np.testing.assert_array_equal(c.diag, ref.diag)
        np.testing.assert_array_equal(c.std_error, ref.std_error)
        np.testing.assert_allclose(fc.hutchinson_diag(A, 50, seed=3, block=block).diag, a.diag,
                                   rtol=1e-14, atol=1e-14)
    # the probes are those of an independent draw: z_j is the j-th P-run of the stream
    Z = 2.0 * np.random.default_rng(3).integers(0, 2, size=(50, 30)) - 1.0
    np.testing.assert_allclose(a.diag, np.mean(Z * (Z @ _sym(30, 1)), axis=0), rtol=1e-12,
                               atol=1e-12)


def test_error_shrinks_like_one_over_sqrt_probes_and_std_error_is_calibrated():
    M = _sym(40, 2)
    A = aslinearoperator(M)
    true = np.diag(M)
    # exact per-coordinate standard deviation of one probe: sqrt(sum_{k != j} M_jk^2)
    sd1 = np.sqrt((M * M).sum(axis=1) - true ** 2)
    errs = {}
    for S in (16, 256):
        runs = [fc.hutchinson_diag(A, S, seed=s) for s in range(40)]
        errs[S] = np.sqrt(np.mean([np.mean((r.diag - true) ** 2) for r in runs]))
        expected = np.sqrt(np.mean(sd1 ** 2 / S))
        assert 0.7 * expected < errs[S] < 1.3 * expected
        se = np.mean([r.std_error for r in runs], axis=0)
        np.testing.assert_allclose(se, sd1 / np.sqrt(S), rtol=0.25)
    assert 3.0 < errs[16] / errs[256] < 5.5  # sqrt(16) = 4


def test_works_on_fastcurv_operators():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    p = fc.MLP(X, rng.standard_normal(60), sizes=(4, 5, 1), loss="mse")
    theta = p.init(0)
    exact = np.diag(p.hessian(theta))
    est = fc.hutchinson_diag(fc.HessianOperator(p, theta), 2000, seed=0)
    z = (est.diag - exact) / est.std_error
    assert np.sqrt(np.mean(z ** 2)) < 2.0


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_bad_n_probes(bad, err):
    with pytest.raises(err, match="n_probes"):
        fc.hutchinson_diag(aslinearoperator(np.eye(3)), bad)


def test_non_square_operator():
    with pytest.raises(ValueError, match="square"):
        fc.hutchinson_diag(aslinearoperator(np.ones((3, 4))), 4)


def test_a_problem_instead_of_an_operator_is_named():
    X = np.random.default_rng(0).standard_normal((30, 2))
    p = fc.GLM(X, (X[:, 0] > 0).astype(float))
    with pytest.raises(TypeError, match=r"got the problem GLM.*HessianOperator\(p, theta\)"):
        fc.hutchinson_diag(p, 4)


def test_dense_and_sparse_matrices_are_operators():
    """Like ``trace`` and ``top_eigenvalues``, ``hutchinson_diag`` takes a dense array or a
    sparse matrix directly (a diagonal matrix is recovered exactly by any probe)."""
    import scipy.sparse as sp

    A = np.diag([1.0, 2.0, 3.0])
    for op in (A, sp.csr_matrix(A)):
        np.testing.assert_array_equal(fc.hutchinson_diag(op, 3, seed=0).diag, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("c, scale", [(1.0, 1e-170), (1e6, 1.0), (1e8, 1.0), (1.0, 1e170)])
def test_std_error_keeps_its_digits_far_from_unit_scale(c, scale):
    """A large diagonal next to a small spread, ``scale (c I + N)`` with symmetric noise N of
    1e-3: the standard error is the spread of the per-probe values, computed without the
    one-pass Σx² − n·mean² (which cancelled to 0, "exact", from c = 1e6 on) and without
    squares that underflow (scale 1e-170) or overflow (1e170). Checked against a two-pass
    spread of the same probe values, rebuilt from the operator's own products."""
    P, S = 60, 40
    rng = np.random.default_rng(4)
    N = 1e-3 * rng.standard_normal((P, P))
    M = scale * (c * np.eye(P) + (N + N.T) / 2)

    class Probes:
        """The operator, keeping every block of probe values z_j (A z)_j."""
        shape, dtype = (P, P), np.float64

        def __init__(self):
            self.vals = []

        def matmat(self, Z):
            AZ = M @ Z
            self.vals.append(Z * AZ)
            return AZ

    op = Probes()
    est = fc.hutchinson_diag(op, S, seed=1, block=16)
    vals = np.concatenate(op.vals, axis=1) / scale  # two-pass spread, at unit scale
    expected = scale * vals.std(axis=1, ddof=1) / np.sqrt(S)
    assert np.all(est.std_error > 0)
    np.testing.assert_allclose(est.std_error, expected, rtol=1e-6)
    np.testing.assert_allclose(est.diag / scale, vals.mean(axis=1), rtol=1e-14)


def test_trace_is_one_name_for_one_thing():
    """``fastcurv.estimators.trace`` is the function (also ``fc.trace``); the module that
    holds it is ``trace_estimators``, so importing it by path does not meet the function."""
    import importlib

    import fastcurv.estimators as E

    assert callable(E.trace) and E.trace is fc.trace
    mod = importlib.import_module("fastcurv.estimators.trace_estimators")
    assert mod.trace is fc.trace
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fastcurv.estimators.trace")
