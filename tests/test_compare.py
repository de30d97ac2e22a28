"""fc.compare and its report, against dense matrices built from the problem's own exact
products (tested elsewhere) with numpy's linear algebra."""

import csv
import json

import numpy as np
import pytest
from mlp_reference import make_data, random_theta

import fastcurv as fc
from fastcurv.cli import main
from fastcurv.compare import compare


def _mlp(n=60, sizes=(3, 5, 3), seed=0):
    X, y, w = make_data("softmax_cross_entropy", sizes[-1], n, sizes[0], seed=seed)
    p = fc.MLP(X, y, sizes=sizes, loss="softmax_cross_entropy", l2=1e-2, sample_weight=w)
    return p, random_theta(sizes, seed=seed, scale=0.5)


def test_metrics_match_dense_linear_algebra():
    p, theta = _mlp()
    delta = 1e-3
    recs = {r["name"]: r for r in compare(p, theta, damping=delta, seed=0, rtol=1e-10)}
    R = p.ggn(theta)
    g = p.grad(theta)
    x_ref = np.linalg.solve(R + delta * np.eye(p.n_params), g)
    ref = recs["reference"]
    assert ref["rel_frobenius"] == 0.0
    np.testing.assert_allclose(ref["top_eig"], np.linalg.eigvalsh(R)[-1], rtol=1e-8)
    np.testing.assert_allclose(ref["trace"], np.trace(R), rtol=1e-10)
    d = np.diag(R)
    r = recs["diag_ggn"]
    np.testing.assert_allclose(r["rel_frobenius"],
                               np.linalg.norm(R - np.diag(d)) / np.linalg.norm(R), rtol=1e-10)
    x = g / (d + delta)
    np.testing.assert_allclose(r["newton_cosine"],
                               x @ x_ref / np.linalg.norm(x) / np.linalg.norm(x_ref), rtol=1e-8)
    np.testing.assert_allclose(r["trace_ratio"], 1.0, rtol=1e-10)
    np.testing.assert_allclose(r["top_eig_ratio"], d.max() / np.linalg.eigvalsh(R)[-1],
                               rtol=1e-8)
    # K-FAC: its dense matrix (plus the penalty) gives the same error
    K = fc.KFACOperator(p, theta, fisher="type2")
    Kd = K @ np.eye(p.n_params) + np.diag(p.l2 * _penalty_mask(p))
    np.testing.assert_allclose(recs["kfac"]["rel_frobenius"],
                               np.linalg.norm(Kd - R) / np.linalg.norm(R), rtol=1e-8)
    np.testing.assert_allclose(recs["kfac"]["trace"], np.trace(Kd), rtol=1e-10)
    # EK-FAC is at least as close as K-FAC; the block-diagonal GGN at least as close as both
    assert recs["ekfac"]["rel_frobenius"] <= recs["kfac"]["rel_frobenius"] * (1 + 1e-12)
    assert recs["block_ggn"]["rel_frobenius"] <= recs["ekfac"]["rel_frobenius"] * (1 + 1e-12)
    # preconditioned CG counts are counts, the reference's is plain CG
    assert recs["kfac"]["cg_iters"] >= 1 and ref["cg_iters"] >= 1
    # the empirical Fisher as a preconditioner (dense path): against CG run here with
    # (F + δI)⁻¹ from per-sample gradients (an independent route to F)
    G = p.per_sample_grads(theta)
    c = p._cw
    F = (G * c[:, None]).T @ G + np.diag(p.l2 * _penalty_mask(p))
    from scipy.sparse.linalg import cg

    Finv = np.linalg.inv(F + delta * np.eye(p.n_params))
    n = [0]
    cg(R + delta * np.eye(p.n_params), g, rtol=1e-10, atol=0.0, maxiter=1000, M=Finv,
       callback=lambda _x: n.__setitem__(0, n[0] + 1))
    assert abs(recs["empirical_fisher"]["cg_iters"] - n[0]) <= 2
    assert recs["block_ggn"]["cg_iters"] >= 1


def _penalty_mask(p):
    m = np.zeros(p.n_params)
    for l, (a, b) in enumerate(zip(p.sizes[:-1], p.sizes[1:], strict=True)):
        o = p._poff[l]
        m[o:o + a * b] = 1.0
    return m


def test_exact_cases_and_the_randomized_error():
    """A one-layer mse model: K-FAC, EK-FAC and the block GGN are the GGN itself."""
    X, y, w = make_data("mse", 1, 80, 4, seed=3)
    p = fc.MLP(X, y, sizes=(4, 1), loss="mse", l2=0.0, sample_weight=w)
    theta = np.linspace(-1, 1, p.n_params)
    recs = {r["name"]: r for r in compare(p, theta, ("kfac", "ekfac", "block_ggn"), seed=0)}
    for name in ("kfac", "ekfac", "block_ggn"):
        assert recs[name]["rel_frobenius"] < 1e-12
        np.testing.assert_allclose(recs[name]["newton_cosine"], 1.0, rtol=1e-9)
    # randomized Frobenius error: close to the exact one with many probes
    q, t = _mlp(sizes=(3, 6, 3))
    exact = {r["name"]: r["rel_frobenius"] for r in compare(q, t, ("diag_ggn",), seed=1)}
    rnd = {r["name"]: r["rel_frobenius"] for r in compare(q, t, ("diag_ggn",), seed=1,
                                                          dense_limit=0, n_probes=400)}
    np.testing.assert_allclose(rnd["diag_ggn"], exact["diag_ggn"], rtol=0.15)


def test_hessian_reference_and_bad_arguments():
    p, theta = _mlp()
    recs = compare(p, theta, ("diag_hessian",), reference="hessian", seed=0)
    H = p.hessian(theta)
    np.testing.assert_allclose(recs[0]["trace"], np.trace(H), rtol=1e-10)
    with pytest.raises(ValueError, match="unknown approximation"):
        compare(p, theta, ("lowrank",))
    with pytest.raises(ValueError, match="reference"):
        compare(p, theta, reference="fisher")
    with pytest.raises(TypeError, match=r"approximations.*\['kfac'\]"):
        compare(p, theta, "kfac")
    for key, value in (("damping", -1.0), ("damping", np.nan), ("rtol", 0.0), ("maxiter", 0),
                       ("n_probes", 0), ("dense_limit", -5), ("hutch_probes", 0),
                       ("density_probes", 0), ("density_steps", 0)):
        with pytest.raises(ValueError, match=key):
            compare(p, theta, ("diag_ggn",), **{key: value})
    with pytest.raises(TypeError, match="density_steps"):
        compare(p, theta, ("diag_ggn",), density_steps=2.5)


def test_report_files_and_command(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fastcurv.compare_report import write_report

    p, theta = _mlp()
    recs = compare(p, theta, seed=0, densities=True, density_probes=2, density_steps=12)
    files = write_report(recs, tmp_path / "r", description="test")
    names = {f.split("/")[-1] for f in map(str, files)}
    assert {"report.md", "table.csv", "table.json", "spectral_density.png",
            "diagonal_scatter.png", "error_vs_cost.png"} <= names
    for f in files:
        if str(f).endswith(".png"):
            assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "r" / "table.csv")))
    assert [r["name"] for r in rows][0] == "reference" and len(rows) == 8
    assert json.load(open(tmp_path / "r" / "table.json"))[1]["name"] == "diag_hessian"
    out = tmp_path / "cli"
    assert main(["compare", "--out", str(out), "--fit-iter", "3", "--hidden", "8",
                 "--approx", "diag_ggn,kfac"]) == 0
    text = capsys.readouterr().out
    assert "K-FAC" in text and (out / "report.md").exists()


def test_dense_and_operator_paths_agree_and_exact_spectra():
    """Below dense_limit the spectra are the exact eigenvalues of the dense matrices (here
    checked against p.ggn and a K-FAC matrix built column by column); above it the
    operator path (CG, Lanczos, SLQ, randomized Frobenius) must give the same directions,
    top eigenvalues and traces, and densities on one common grid."""
    p, theta = _mlp(n=80, sizes=(4, 6, 3))
    names = ("diag_ggn", "empirical_fisher", "kfac", "block_ggn")
    kw = dict(damping=1e-2, seed=3, rtol=1e-12, maxiter=5000, densities=True,
              density_probes=3, density_steps=30)
    dense = {r["name"]: r for r in compare(p, theta, names, **kw)}
    ops = {r["name"]: r for r in compare(p, theta, names, dense_limit=0, **kw)}
    R = p.ggn(theta)
    eig = np.linalg.eigvalsh(R)
    d = dense["reference"]["density"]
    np.testing.assert_allclose(np.sort(d.nodes[0]), eig, rtol=1e-10, atol=1e-12 * eig[-1])
    assert dense["reference"]["spectrum"] == "exact eigenvalues"
    assert ops["reference"]["spectrum"] == "stochastic Lanczos quadrature"
    # every density integrates to ~1 on the shared grid
    for recs in (dense, ops):
        grid = recs["reference"]["density"].grid
        for r in recs.values():
            assert r["density"].grid is grid or np.array_equal(r["density"].grid, grid)
            np.testing.assert_allclose(np.trapezoid(r["density"].density, grid), 1.0,
                                       atol=2e-3)
    # block-diagonal GGN: the diagonal blocks of the dense GGN
    B = np.zeros_like(R)
    for a, b in zip(p._poff[:-1], p._poff[1:], strict=True):
        B[a:b, a:b] = R[a:b, a:b]
    np.testing.assert_allclose(dense["block_ggn"]["rel_frobenius"],
                               np.linalg.norm(B - R) / np.linalg.norm(R), rtol=1e-10)
    np.testing.assert_allclose(dense["block_ggn"]["top_eig"], np.linalg.eigvalsh(B)[-1],
                               rtol=1e-10)
    for name in ("reference",) + names:
        a, b = dense[name], ops[name]
        np.testing.assert_allclose(b["newton_cosine"], a["newton_cosine"], rtol=1e-6)
        np.testing.assert_allclose(b["top_eig"], a["top_eig"], rtol=1e-6)
        np.testing.assert_allclose(b["trace"], a["trace"], rtol=1e-10)
        # CG on the dense reference or on its operator: the same iterates up to rounding;
        # the approximations without a cheap inverse precondition on the dense path only
        if name in ("empirical_fisher", "block_ggn"):
            assert b["cg_iters"] is None and a["cg_iters"] >= 1
        else:
            assert abs(a["cg_iters"] - b["cg_iters"]) <= 2
        assert a["apply_grads"] >= 0


def test_report_without_matplotlib(tmp_path, capsys, monkeypatch):
    """Without matplotlib the command still writes the tables and report.md, and says why
    there are no figures; write_report(figures=True) raises an ImportError naming the fix."""
    import fastcurv.compare_report as cr

    def missing():
        raise ImportError("the figures of the comparison report need matplotlib: "
                          "pip install 'fastcurv[report]' (or pip install matplotlib)")

    monkeypatch.setattr(cr, "have_matplotlib", lambda: False)
    monkeypatch.setattr(cr, "_pyplot", missing)
    p, theta = _mlp()
    recs = compare(p, theta, ("diag_ggn",), seed=0)
    with pytest.raises(ImportError, match="fastcurv\\[report\\]"):
        cr.write_report(recs, tmp_path / "r")
    out = tmp_path / "cli"
    assert main(["compare", "--out", str(out), "--fit-iter", "2", "--hidden", "4",
                 "--approx", "diag_ggn"]) == 0
    text = capsys.readouterr().out
    assert "matplotlib is not installed" in text
    assert sorted(f.name for f in out.iterdir()) == ["report.md", "table.csv", "table.json"]
    assert "not drawn" in (out / "report.md").read_text()


def test_command_checks_options_before_the_work(tmp_path, capsys):
    """Bad --approx, --hidden, --damping, --seed, --fit-iter or --out are refused in one line
    before any data is read (a missing --data file would otherwise be the error) or fitted."""
    missing = str(tmp_path / "not-there.npz")
    (tmp_path / "afile").write_text("")
    for extra, pattern in ((["--approx", "kfac,foo"], "--approx"),
                           (["--hidden", "32,,x"], "--hidden"), (["--hidden", ""], "--hidden"),
                           (["--damping", "-1"], "--damping"), (["--seed", "-1"], "--seed"),
                           (["--fit-iter", "-1"], "--fit-iter"),
                           (["--out", str(tmp_path / "afile")], "--out")):
        rc = main(["compare", "--data", missing, *extra])
        _, err = capsys.readouterr()
        assert rc == 2 and pattern in err and "not-there" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err


def test_cg_count_is_none_when_cg_does_not_converge():
    """CG stopped by maxiter before rtol (as on an indefinite Hessian) reports no iteration
    count, rather than maxiter as if it had converged."""
    from fastcurv.compare import _op, _solve

    A = np.diag(np.linspace(-1.0, 1.0, 50) + 1e-3)  # indefinite, 50 distinct eigenvalues
    _, it = _solve(_op(50, lambda V: A @ V), np.ones(50), 0.0, 1e-10, 10)
    assert it is None
    _, it = _solve(_op(50, lambda V: np.abs(A) @ V),
                   np.ones(50), 0.0, 1e-10, 200)
    assert isinstance(it, int) and it <= 60


def test_table_json_keeps_counts_as_integers(tmp_path):
    p, theta = _mlp()
    recs = compare(p, theta, ("diag_ggn", "kfac"), seed=0)
    from fastcurv.compare_report import write_report

    write_report(recs, tmp_path / "r", figures=False)
    rows = json.load(open(tmp_path / "r" / "table.json"))
    counts = [r["cg_iters"] for r in rows if r["cg_iters"] is not None]
    assert counts and all(isinstance(c, int) for c in counts)


@pytest.mark.parametrize("dense_limit", [3000, 0])
def test_kfac_newton_cosine_keeps_the_penalty_off_the_biases(dense_limit):
    """A one-layer mse model with a strong L2 penalty: K-FAC (and EK-FAC) plus the penalty on
    the weights is the GGN itself, so their Newton direction is the reference's (cosine 1).
    Folding the penalty into K-FAC's damping, as their inverse does, also penalized the bias
    and gave a cosine of 0.49 here; that inverse is now only CG's preconditioner."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)) + 2.0
    y = X @ [1.0, -1.0, 0.5] + 3 + rng.standard_normal(200)
    p = fc.MLP(X, y, sizes=(3, 1), loss="mse", l2=1.0)
    recs = {r["name"]: r for r in compare(p, np.zeros(p.n_params), ("kfac", "ekfac"),
                                          damping=1e-3, seed=0, rtol=1e-12,
                                          dense_limit=dense_limit)}
    for name in ("kfac", "ekfac"):
        np.testing.assert_allclose(recs[name]["newton_cosine"], 1.0, rtol=1e-9)


def test_rows_of_weight_zero_first():
    """compare warms its kernels up on a few rows: rows of positive weight (a subset whose
    weights are all 0 is refused, which made compare fail on a valid problem)."""
    X, y, w = make_data("softmax_cross_entropy", 3, 60, 3, seed=0)
    w = np.array(w, dtype=float)
    w[:10] = 0.0
    p = fc.MLP(X, y, sizes=(3, 5, 3), loss="softmax_cross_entropy", l2=1e-2, sample_weight=w)
    recs = compare(p, random_theta((3, 5, 3), seed=0, scale=0.5), ("diag_ggn",), seed=0)
    assert [r["name"] for r in recs] == ["reference", "diag_ggn"]


def test_singular_approximations_use_the_pseudo_inverse_and_huge_damping_is_finite():
    """damping=0: the GGN and its block-diagonal part are singular along the common shift of
    the output biases (unpenalized). The block-diagonal Newton direction came from a Cholesky
    factor of the singular matrix (norm ~60x the pseudo-inverse one; cosine 0.012 where the
    pseudo-inverse gives 0.756, a review's finding). A damping of 1e300 gave NaN cosines (the
    dot product underflowed). Checked against numpy's pseudo-inverse of the dense matrices."""
    p, theta = _mlp(n=40, sizes=(3, 4, 3))
    recs = {r["name"]: r for r in compare(p, theta, damping=0.0, seed=0,
                                         approximations=("block_ggn", "empirical_fisher"))}
    R, g = p.ggn(theta), p.grad(theta)
    assert np.linalg.eigvalsh(R)[0] < 1e-12 * np.linalg.eigvalsh(R)[-1]  # singular indeed
    pinv = lambda M: np.linalg.pinv(M, rcond=1e-12, hermitian=True)  # noqa: E731
    x_ref = pinv(R) @ g
    B = np.zeros_like(R)
    for l in range(len(p.sizes) - 1):
        o, e = p._poff[l], p._poff[l + 1] if l + 1 < len(p._poff) else p.n_params
        B[o:e, o:e] = R[o:e, o:e]
    x = pinv(B) @ g
    np.testing.assert_allclose(recs["block_ggn"]["newton_cosine"],
                               x @ x_ref / np.linalg.norm(x) / np.linalg.norm(x_ref), rtol=1e-6)
    for r in compare(p, theta, damping=1e300, seed=0, approximations=("diag_ggn", "kfac")):
        np.testing.assert_allclose(r["newton_cosine"], 1.0, rtol=1e-6)


def test_command_fits_wide_data_with_the_diagonal_and_names_empty_data(tmp_path, capsys,
                                                                       monkeypatch):
    """The command's fit always used K-FAC, so data whose first-layer factor is too large
    (over 8,191 features) failed before any comparison, whatever --approx said; it now fits
    with the diagonal there (the factor limit is shrunk here to stand for that). An npz
    without rows gave numpy's "zero-size array to reduction operation"."""
    from fastcurv.operators import _kfac_factors

    monkeypatch.setattr(_kfac_factors, "MAX_FACTOR_ENTRIES", 16)  # factors of side <= 4
    rc = main(["compare", "--hidden", "3", "--fit-iter", "2", "--approx", "diag_ggn",
               "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "diagonal preconditioned" in out
    path = tmp_path / "empty.npz"
    np.savez(path, X=np.ones((0, 3)), y=np.ones(0))
    rc = main(["compare", "--data", str(path), "--out", str(tmp_path / "r2")])
    _, err = capsys.readouterr()
    assert rc == 2 and "no rows" in err and "zero-size" not in err


def test_float32_singular_curvature_drops_its_rounding_level_null_directions():
    """A float32 softmax GLM at δ = 0: its curvature is singular along the common shift of
    the K outputs, whose eigenvalues come out at float32 rounding level (~1e-9 of the
    largest), not 0. The dense pseudo-inverse dropped eigenvalues below P eps with float64's
    eps, so it inverted them: the reference Newton direction was mostly that shift (norm 53
    instead of 0.66) and the cosines fell to 0.45-0.77 (a review's finding). With the
    dtype's eps the float32 report agrees with the float64 one on the same numbers, and
    the float64 one with numpy's pseudo-inverse of the dense Hessian."""
    rng = np.random.default_rng(15)
    X = rng.standard_normal((60, 3)).astype(np.float32).astype(np.float64)
    y = rng.integers(0, 3, 60)
    th = (0.1 * np.random.default_rng(1).standard_normal(12)).astype(np.float32)
    r32 = compare(fc.GLM(X.astype(np.float32), y, family="multinomial"), th, damping=0.0,
                  seed=0)
    p64 = fc.GLM(X, y, family="multinomial")
    th64 = th.astype(np.float64)
    r64 = compare(p64, th64, damping=0.0, seed=0)
    H, g = p64.hessian(th64), p64.grad(th64)
    x_ref = np.linalg.pinv(H, rcond=1e-10, hermitian=True) @ g
    d = np.diag(H)
    x = np.divide(g, d, out=np.zeros_like(g), where=d > 0)  # the exact diagonal's step
    cos = x @ x_ref / np.linalg.norm(x) / np.linalg.norm(x_ref)
    rec64 = {r["name"]: r for r in r64}
    np.testing.assert_allclose(rec64["diag_hessian"]["newton_cosine"], cos, rtol=1e-6)
    for a, b in zip(r32, r64, strict=True):
        assert a["name"] == b["name"]
        np.testing.assert_allclose(a["newton_cosine"], b["newton_cosine"], rtol=1e-4,
                                   err_msg=a["name"])
        assert a["cg_iters"] == b["cg_iters"], a["name"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # SciPy's 0/0
def test_rtol_below_rounding_is_named():
    """rtol=1e-320: SciPy's CG ran its residual recurrence down to underflow and divided 0
    by 0; the next product raised 'v contains a non-finite value'."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 10))
    y = (X[:, 0] + rng.standard_normal(200) > 0).astype(float)
    p = fc.GLM(X, y, family="logistic", l2=1e-3)
    theta = fc.newton_cg(p, p.init()).x
    with pytest.raises(FloatingPointError, match="CG broke down before reaching rtol"):
        compare(p, theta, rtol=1e-320, dense_limit=0)
