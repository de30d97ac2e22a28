"""The ``fastcurv newton`` command, run in-process through ``fastcurv.cli.main(argv)`` (and once
as ``python -m fastcurv.cli``). Data are small; the embedded default problem (100,000 x 300) is
never run here.

The fitted coefficients are checked against scikit-learn with the CLI's defaults
(l2 = 1e-3, gtol = 1e-8) mapped as in test_newton.py (C = 1/(n l2), Ridge α = n l2), to 1e-6
normwise relative (the gtol → parameter-error argument of test_newton.py, with μ ≥ 0.05 here).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cases import assert_close, synthetic

import fastcurv as fc
from fastcurv.cli import main

skd = pytest.importorskip("sklearn.datasets")
sklm = pytest.importorskip("sklearn.linear_model")

L2 = 1e-3  # the CLI default


def _sk_logistic(X, y, l2=L2):
    m = sklm.LogisticRegression(C=1.0 / (X.shape[0] * l2), solver="newton-cholesky", tol=1e-12,
                                max_iter=1000).fit(X, y)
    return m.coef_.ravel(), m.intercept_


def _iteration_lines(out):
    return [ln for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastcurv: error:")
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def logistic_npz(tmp_path_factory):
    X, y = synthetic("logistic", n=300, d=4, seed=21)
    path = tmp_path_factory.mktemp("cli") / "small.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


def test_newton_npz_writes_outputs(logistic_npz, tmp_path, capsys):
    path, X, y = logistic_npz
    out_dir = tmp_path / "fit"
    rc = main(["newton", "--data", str(path), "--family", "logistic", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "converged" in out and "NOT converged" not in out
    assert len(_iteration_lines(out)) >= 2  # iteration 0 and at least one Newton step
    coef = np.load(out_dir / "coef.npy")
    intercept = np.load(out_dir / "intercept.npy")
    with open(out_dir / "summary.json") as fh:
        summary = json.load(fh)
    assert coef.size == 4 and intercept.size == 1
    # the same fit through the library with the CLI's defaults
    res = fc.newton_cg(fc.GLM(X, y, family="logistic", l2=L2), preconditioner="diag")
    assert_close(coef.ravel(), res.x[:4], 1e-6, "coef vs newton_cg")
    assert_close(intercept.ravel(), res.x[4:], 1e-6, "intercept vs newton_cg")
    # and against scikit-learn
    sk_coef, sk_b = _sk_logistic(X, y)
    assert_close(np.r_[coef.ravel(), intercept.ravel()], np.r_[sk_coef, sk_b], 1e-6,
                 "coef vs sklearn")
    assert summary["success"] is True
    assert summary["family"] == "logistic" and summary["n_samples"] == 300
    assert summary["n_features"] == 4 and summary["l2"] == L2
    assert isinstance(summary["history"], list) and len(summary["history"]) >= 2


def test_newton_svmlight_pm1_labels(tmp_path, capsys):
    X, y01 = synthetic("logistic", n=300, d=5, seed=22, density=0.5)
    ypm = 2.0 * y01 - 1.0
    path = tmp_path / "d.svmlight"
    skd.dump_svmlight_file(X, ypm, str(path), zero_based=False)
    out_dir = tmp_path / "fit"
    rc = main(["newton", "--data", str(path), "--out", str(out_dir), "--method",
               "trust-region"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "note:" in out and "-1/+1" in out
    assert "CSR" in out
    coef = np.load(out_dir / "coef.npy").ravel()
    intercept = np.load(out_dir / "intercept.npy").ravel()
    sk_coef, sk_b = _sk_logistic(X.toarray(), y01)
    assert_close(np.r_[coef, intercept], np.r_[sk_coef, sk_b], 1e-6, "svmlight fit vs sklearn")


def test_newton_csv_gaussian(tmp_path, capsys):
    X, y = synthetic("gaussian", n=200, d=3, seed=23)
    path = tmp_path / "d.csv"
    with open(path, "w") as fh:
        fh.write("x1,x2,x3,target\n")
        for row, t in zip(X, y, strict=True):
            fh.write(",".join(repr(float(v)) for v in (*row, t)) + "\n")
    out_dir = tmp_path / "fit"
    rc = main(["newton", "--data", str(path), "--family", "gaussian", "--quiet", "--out",
               str(out_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert not _iteration_lines(out)  # --quiet
    m = sklm.Ridge(alpha=200 * L2, solver="cholesky").fit(X, y)
    fit = np.r_[np.load(out_dir / "coef.npy").ravel(), np.load(out_dir / "intercept.npy")]
    assert_close(fit, np.r_[m.coef_, m.intercept_], 1e-6, "CSV ridge vs sklearn")


def test_newton_multinomial_labels_are_mapped(tmp_path, capsys):
    X, y = synthetic("multinomial", n=200, d=3, seed=24)
    np.savez(tmp_path / "m.npz", X=X, y=y + 1.0)  # classes 1, 2, 3
    rc = main(["newton", "--data", str(tmp_path / "m.npz"), "--family", "multinomial",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "note:" in out and "mapped" in out


def test_newton_not_converged_exit_code(logistic_npz, capsys):
    path, _, _ = logistic_npz
    rc = main(["newton", "--data", str(path), "--max-iter", "1", "--quiet"])
    out, _ = capsys.readouterr()
    assert rc != 0
    assert "NOT converged" in out


def _write_bad(tmp_path, kind):
    if kind == "bad-svmlight":
        path = tmp_path / "bad.svm"
        path.write_text("1 1:2\nfoo 2:3\n")
    elif kind == "missing":
        path = tmp_path / "missing.npz"
    elif kind == "wrong-labels":
        path = tmp_path / "three.npz"
        np.savez(path, X=np.random.default_rng(0).standard_normal((30, 2)),
                 y=np.arange(30) % 3)
    elif kind == "nan-csv":
        path = tmp_path / "nan.csv"
        path.write_text("a,b,y\n1,2,0\n3,nan,1\n")
    elif kind == "not-npz":
        path = tmp_path / "fake.npz"
        path.write_text("hello")
    elif kind == "unknown-extension":
        path = tmp_path / "data.parquet"
        path.write_text("1,2,0\n")
    elif kind == "huge-index":  # once cut short silently, then ran out of memory
        path = tmp_path / "huge.svm"
        path.write_text("1 1:0.5 1234567890123456789:1\n0 2:1\n")
    elif kind == "many-features":  # a valid index whose feature space cannot be allocated
        path = tmp_path / "wide.svm"
        path.write_text("1 1:0.5 1000000000000:1\n0 2:1\n")
    elif kind == "scalar-y":
        path = tmp_path / "y0d.npz"
        np.savez(path, X=np.ones((20, 3)), y=np.array(1.0))
    elif kind == "overflowing-gradient":  # numpy overflow warnings once came first
        path = tmp_path / "big.svm"
        path.write_text("1 1:1e200\n0 1:2\n1 2:1\n0 2:3\n")
    elif kind == "directory":
        path = tmp_path
    elif kind == "empty-csv":  # numpy's "input contained no data" warning once came first
        path = tmp_path / "empty.csv"
        path.write_text("")
    return path


@pytest.mark.parametrize("kind", ["bad-svmlight", "missing", "wrong-labels", "nan-csv",
                                  "not-npz", "unknown-extension", "huge-index", "many-features",
                                  "scalar-y", "directory", "empty-csv"])
def test_newton_errors_are_one_line(tmp_path, capsys, kind):
    path = _write_bad(tmp_path, kind)
    rc = main(["newton", "--data", str(path), "--family", "logistic", "--quiet"])
    out, err = capsys.readouterr()
    assert rc != 0
    _one_error_line(err)
    if kind in ("bad-svmlight", "nan-csv"):
        assert "line" in err


def test_newton_invalid_option_value(logistic_npz, capsys):
    path, _, _ = logistic_npz
    rc = main(["newton", "--data", str(path), "--l2", "-1", "--quiet"])
    _, err = capsys.readouterr()
    assert rc != 0
    _one_error_line(err)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["newton", "--help"])
    assert info.value.code == 0
    assert "--data" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    rc = main([])
    assert rc != 0
    assert "newton" in capsys.readouterr().out


def test_float32_option(logistic_npz, capsys):
    path, X, y = logistic_npz
    rc = main(["newton", "--data", str(path), "--dtype", "float32", "--gtol", "1e-4",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "float32" in out


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_option_refuses_values_beyond_float32(tmp_path, capsys, sparse):
    """Finite float64 values beyond float32's range: the cast made them inf, and the error
    told the user to remove NaN/inf entries that the file does not hold (a review)."""
    import scipy.sparse as sp

    X, y = synthetic("logistic", n=50, d=3, seed=2)
    X = X * 1e39
    if sparse:
        A = sp.csr_matrix(X)
        np.savez(tmp_path / "big.npz", X_data=A.data, X_indices=A.indices, X_indptr=A.indptr,
                 X_shape=np.array(A.shape), y=y)
    else:
        np.savez(tmp_path / "big.npz", X=X, y=y)
    rc = main(["newton", "--data", str(tmp_path / "big.npz"), "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert rc == 2
    _one_error_line(err)
    assert "beyond float32's range" in err and "--dtype float64" in err
    assert "NaN" not in err


def test_float32_npz_is_fitted_in_float64_by_default(tmp_path, capsys):
    X, y = synthetic("logistic", n=300, d=4, seed=21)
    np.savez(tmp_path / "f32.npz", X=X.astype(np.float32), y=y)
    rc = main(["newton", "--data", str(tmp_path / "f32.npz"), "--quiet"])
    out, _ = capsys.readouterr()
    assert "float64" in out
    assert rc == 0


def test_module_entry_point_subprocess(logistic_npz):
    path, _, _ = logistic_npz
    proc = subprocess.run([sys.executable, "-m", "fastcurv.cli", "newton", "--data", str(path),
                           "--quiet"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "converged" in proc.stdout and "NOT converged" not in proc.stdout


# ----------------------------------------------------------------------------- influence
def test_influence_default_finds_flipped_labels_and_writes_outputs(tmp_path, capsys):
    """The embedded default (20,000 x 50, 1% labels flipped) takes a few seconds."""
    out = tmp_path / "inf"
    assert main(["influence", "--out", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "most helpful" in text and "most harmful" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flipped_found_fraction"] > 0.3  # chance is 0.01
    S = np.load(out / "scores.npy")
    train = np.load(out / "train_rows.npy")
    assert S.shape == (3, 19_997) and train.size == 19_997
    # the printed lists are the extremes of the stored scores
    best = summary["top"]["19999"]["helpful"][0]
    assert best[0] == train[np.argmax(S[0])] and np.isclose(best[1], S[0].max())


def test_influence_on_a_file_with_chosen_rows(logistic_npz, tmp_path, capsys):
    path, X, y = logistic_npz
    out = tmp_path / "o"
    assert main(["influence", "--data", str(path), "--test-rows", "0,5",
                 "--method", "cg", "--damping", "1e-6", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_rows"] == [0, 5]
    train = np.setdiff1d(np.arange(len(y)), [0, 5])
    p = fc.GLM(X[train], y[train], l2=L2)
    theta = fc.newton_cg(p, gtol=1e-10).x
    want = fc.Influence(p, theta, "direct", damping=1e-6).scores(p.with_data(X[[0, 5]],
                                                                            y[[0, 5]]))
    np.testing.assert_allclose(np.load(out / "scores.npy"), want, rtol=1e-6,
                               atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("rows", ["x", "0,0", "99999"])
def test_influence_bad_test_rows_is_one_error_line(logistic_npz, capsys, rows):
    assert main(["influence", "--data", str(logistic_npz[0]), "--test-rows", rows]) == 2
    _one_error_line(capsys.readouterr().err)


def test_overflowing_gradient_stops_with_one_message(tmp_path, capsys):
    """Finite data so large that the gradient's norm overflows: the fit stops at once and says
    what to do, with no numpy warning in the output; summary.json stays valid JSON."""
    path = _write_bad(tmp_path, "overflowing-gradient")
    rc = main(["newton", "--data", str(path), "--quiet", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 1 and err == ""
    assert "rescale the data" in out and "Warning" not in out
    summary = json.load(open(tmp_path / "o" / "summary.json"))  # strict: no Infinity/NaN
    assert summary["success"] is False


def test_summary_json_has_no_infinity(tmp_path, capsys):
    path = tmp_path / "g.svm"
    path.write_text("1e300 1:1\n0 1:2\n3 2:1\n-1e300 2:3\n")
    main(["newton", "--data", str(path), "--family", "gaussian", "--quiet", "--out",
          str(tmp_path / "o")])
    capsys.readouterr()
    text = (tmp_path / "o" / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_influence_test_row_that_overflows_is_one_error_line(tmp_path, capsys):
    """A held-out row far outside the training data makes exp(eta) overflow at the fitted
    Poisson model: one error line naming the overflow (it was a traceback)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2))
    y = rng.poisson(np.exp(0.5 * X[:, 0] + 0.3)).astype(float)
    X[-1] = [1e4, 1e4]
    path = tmp_path / "p.npz"
    np.savez(path, X=X, y=y)
    rc = main(["influence", "--data", str(path), "--family", "poisson", "--test-rows", "-1",
               "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 2
    _one_error_line(err)
    assert "overflows" in err and "exp(eta)" in err


def test_influence_multinomial_class_only_in_test_rows(tmp_path, capsys):
    """The model's classes are those of all rows (a label seen only in the held-out test rows
    was refused as out of range); a class held out entirely leaves the training fit without a
    finite minimizer (its intercept runs to -inf), which is refused before the fit, naming the
    class and the test rows, instead of scores at an intercept that only gtol stopped."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(float)
    y[-1] = 2.0
    y[-2] = 2.0
    path = tmp_path / "m.npz"
    np.savez(path, X=X, y=y)
    rc = main(["influence", "--data", str(path), "--family", "multinomial", "--test-rows", "-1",
               "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 0, err  # class 2 also has a training row: K = 3 from all rows
    assert np.load(tmp_path / "o" / "scores.npy").shape == (1, 39)
    rc = main(["influence", "--data", str(path), "--family", "multinomial", "--test-rows",
               "38,39", "--out", str(tmp_path / "o2")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "class 2 occurs only in the test rows" in err and "--test-rows" in err
    assert "fit:" not in out and not (tmp_path / "o2" / "scores.npy").exists()
    _one_error_line(err)


def test_influence_top_must_be_positive(logistic_npz, capsys):
    path, _, _ = logistic_npz
    rc = main(["influence", "--data", str(path), "--top", "-3"])
    _, err = capsys.readouterr()
    assert rc == 2 and "--top" in err
    _one_error_line(err)


def test_bad_options_are_refused_before_reading(tmp_path, capsys):
    """--gtol, --l2 and --out are checked before the data is read (a missing file would
    otherwise be the error) or a fit has run (--out naming a file was refused at the end)."""
    missing = str(tmp_path / "not-there.npz")
    (tmp_path / "afile").write_text("")
    for extra, pattern in ((["--gtol", "-1"], "--gtol"), (["--l2", "nan"], "--l2"),
                           (["--out", str(tmp_path / "afile")], "--out")):
        for cmd in ("newton", "influence"):
            rc = main([cmd, "--data", missing, *extra])
            _, err = capsys.readouterr()
            assert rc == 2 and pattern in err and "not-there" not in err, (cmd, err)
            _one_error_line(err)


def test_two_valued_targets_in_0_1_are_probabilities(tmp_path, capsys):
    """Logistic targets 0.2/0.8 are probabilities, as fc.GLM takes them (the command once
    mapped them to 0/1 and fitted another model)."""
    X, y = synthetic("logistic", n=300, d=3, seed=5)
    t = np.where(y > 0, 0.8, 0.2)
    path = tmp_path / "soft.npz"
    np.savez(path, X=X, y=t)
    out_dir = tmp_path / "fit"
    assert main(["newton", "--data", str(path), "--quiet", "--out", str(out_dir)]) == 0
    out, _ = capsys.readouterr()
    assert "probabilities" in out
    res = fc.newton_cg(fc.GLM(X, t, l2=L2), gtol=1e-10)
    np.testing.assert_allclose(np.load(out_dir / "coef.npy").ravel(), res.x[:3], rtol=1e-6)


def test_out_that_cannot_be_a_folder_fails_before_the_fit(logistic_npz, tmp_path, capsys):
    path, _, _ = logistic_npz
    (tmp_path / "afile").write_text("")
    rc = main(["newton", "--data", str(path), "--quiet", "--out",
               str(tmp_path / "afile" / "sub")])
    out, err = capsys.readouterr()
    assert rc == 2 and "converged" not in out
    _one_error_line(err)
    assert "--out" in err


@pytest.mark.parametrize("command", ["newton", "influence"])
def test_out_folder_that_cannot_be_written_fails_before_the_work(logistic_npz, tmp_path,
                                                                 capsys, monkeypatch, command):
    """An existing folder that refuses new files (read-only, immutable) passed the checks, and
    the command failed only after the whole fit, with an OSError naming coef.npy but not
    --out (a review's finding). The probe write is made to fail here: root may write into
    read-only folders, so permissions cannot stage it portably."""
    import tempfile

    path, _, _ = logistic_npz
    out_dir = tmp_path / "locked"
    out_dir.mkdir()

    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):  # only in that folder (Numba probes its cache too)
        if dir is not None and os.path.samefile(dir, out_dir):
            raise PermissionError(1, "Operation not permitted")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    quiet = ["--quiet"] if command == "newton" else []
    rc = main([command, "--data", str(path), *quiet, "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert rc == 2 and "converged" not in out and "influence" not in out
    _one_error_line(err)
    assert "--out" in err and "cannot write" in err
    assert list(out_dir.iterdir()) == []


def test_binary_file_read_as_csv_is_a_short_error_line(logistic_npz, capsys):
    path, _, _ = logistic_npz
    rc = main(["newton", "--data", str(path), "--format", "csv", "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 2
    _one_error_line(err)
    assert len(err) < 400, err


def test_csv_with_bom_and_a_latin1_byte_is_one_error_line(tmp_path, capsys):
    """A UTF-8 byte-order mark then a latin-1 byte: one line naming the file's line and the fix
    (a bare UnicodeDecodeError message once, with no file and no line)."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfx,b,y\n1,2,0\n3,4\xe9,1\n")
    rc = main(["newton", "--data", str(path), "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 2
    _one_error_line(err)
    assert str(path) in err and "line 3: byte 0xe9" in err and "save the file as UTF-8" in err


def test_csv_in_a_txt_file_names_the_format_option(tmp_path, capsys):
    """A CSV file saved as .txt is read as svmlight; the error says it looks like CSV and names
    the option that reads it as such."""
    X, y = synthetic("logistic", n=60, d=2, seed=3)
    path = tmp_path / "d.txt"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,y", comments="")
    rc = main(["newton", "--data", str(path), "--family", "logistic", "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 2
    _one_error_line(err)
    assert "line 1: the label is not a number" in err and "looks like CSV: pass --format csv" in err
    rc = main(["newton", "--data", str(path), "--format", "csv", "--family", "logistic",
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err


def test_influence_solver_warnings_and_failures_are_lines(tmp_path, capsys):
    """A LiSSA series that stops short is a warning line (the command hid every
    RuntimeWarning and printed rankings 29% off with exit code 0); a CG that does not
    converge is one error line (it was a traceback)."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((300, 6)) * np.array([1, 1, 1e-2, 1e-3, 1e-4, 1e-5])
    path = tmp_path / "ill.npz"
    np.savez(path, X=X, y=X @ np.ones(6) + 0.1 * rng.standard_normal(300))
    rc = main(["influence", "--data", str(path), "--family", "gaussian", "--l2", "0",
               "--method", "lissa", "--test-rows", "0", "--top", "2"])
    _, err = capsys.readouterr()
    assert rc == 0 and err.startswith("fastcurv: warning: LiSSA stopped"), err
    assert "Traceback" not in err
    # in the command's words: the library's "use method='cg' or 'direct'"
    assert "--method cg or direct" in err and "method='" not in err, err
    X = rng.standard_normal((300, 30)) * np.logspace(0, -6, 30)
    path = tmp_path / "cgfail.npz"
    np.savez(path, X=X, y=X @ np.ones(30) + 0.1 * rng.standard_normal(300))
    rc = main(["influence", "--data", str(path), "--family", "gaussian", "--l2", "0",
               "--method", "cg", "--top", "2"])
    _, err = capsys.readouterr()
    assert rc == 2 and "CG did not reach" in err
    _one_error_line(err)


def test_influence_refusals_come_before_the_fit(tmp_path, capsys):
    """--method direct beyond its dense limit and --test-rows that leave no training rows are
    refused before the fit, in the command's words; --format without --data is refused."""
    rng = np.random.default_rng(2)
    wide = tmp_path / "wide.svm"
    with open(wide, "w") as f:
        for _ in range(50):
            idx = np.sort(rng.choice(25000, 5, replace=False)) + 1
            f.write(f"{int(rng.random() < 0.5)} "
                    + " ".join(f"{j}:{rng.standard_normal():.4g}" for j in idx) + "\n")
    rc = main(["influence", "--data", str(wide)])
    out, err = capsys.readouterr()
    assert rc == 2 and "fit:" not in out and "--method cg" in err
    _one_error_line(err)
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, X=rng.standard_normal((4, 2)), y=np.array([0.0, 1.0, 0.0, 1.0]))
    rc = main(["influence", "--data", str(tiny), "--test-rows", "0,1,2,3"])
    _, err = capsys.readouterr()
    assert rc == 2 and "no training rows" in err
    for cmd in ("newton", "influence", "compare"):
        rc = main([cmd, "--format", "csv"])
        _, err = capsys.readouterr()
        assert rc == 2 and "--format applies to the file of --data" in err, (cmd, err)


def test_influence_harmful_ties_and_compare_inputs(tmp_path, capsys):
    """Equal scores (duplicated rows) are listed smaller row first in both lists, as
    Influence.top_k does; compare refuses a name listed twice and real-valued targets in
    its own words."""
    rng = np.random.default_rng(0)
    X0 = rng.standard_normal((20, 2))
    y0 = (X0[:, 0] + 0.5 * rng.standard_normal(20) > 0).astype(float)
    X = np.vstack([X0, X0, X0[:1]])
    y = np.concatenate([y0, y0, y0[:1]])
    path = tmp_path / "dups.npz"
    np.savez(path, X=X, y=y)
    out_dir = tmp_path / "inf"
    assert main(["influence", "--data", str(path), "--test-rows", "40", "--top", "6",
                 "--out", str(out_dir)]) == 0
    capsys.readouterr()
    top = json.loads((out_dir / "summary.json").read_text())["top"]["40"]
    for kind in ("helpful", "harmful"):
        rows = [r for r, _ in top[kind]]
        scores = [s for _, s in top[kind]]
        for a in range(len(rows) - 1):
            if scores[a] == scores[a + 1]:
                assert rows[a] < rows[a + 1], (kind, top[kind])
    rc = main(["compare", "--approx", "kfac,kfac", "--out", str(tmp_path / "c")])
    _, err = capsys.readouterr()
    assert rc == 2 and "listed more than once" in err
    real = tmp_path / "real.npz"
    np.savez(real, X=rng.standard_normal((30, 2)), y=rng.standard_normal(30))
    rc = main(["compare", "--data", str(real), "--out", str(tmp_path / "c2")])
    _, err = capsys.readouterr()
    assert rc == 2 and "needs class labels" in err


def test_influence_errors_name_rows_of_the_file(tmp_path, capsys):
    """A bad target is reported at its row in the file, as 'newton' does (the check ran on
    the training subset and named row 7 for file row 10 with three rows held out)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    y = (X[:, 0] > 0).astype(float)
    y[10] = 2.0
    path = tmp_path / "bad.npz"
    np.savez(path, X=X, y=y)
    for cmd in (["newton"], ["influence", "--test-rows", "0,1,2"]):
        rc = main([*cmd, "--data", str(path), "--family", "logistic"])
        _, err = capsys.readouterr()
        assert rc == 2 and "row 10" in err, (cmd, err)
        _one_error_line(err)


def test_fit_messages_printed_in_the_commands_spelling(logistic_npz, capsys):
    """The fit's closing message was printed as written for Python callers."""
    path, _, _ = logistic_npz
    rc = main(["newton", "--data", str(path), "--max-iter", "0", "--quiet", "--precond",
               "none"])
    out, _ = capsys.readouterr()
    assert rc == 1
    assert "Stopped after --max-iter 0 Newton iterations" in out
    assert "increase --max-iter, loosen --gtol, or try --precond diag" in out
    assert "max_iter" not in out and "gtol =" not in out
    # with a preconditioner in use, no advice to try one
    rc = main(["newton", "--data", str(path), "--max-iter", "0", "--quiet"])
    out, _ = capsys.readouterr()
    assert rc == 1 and "increase --max-iter, loosen --gtol." in out and "--precond" not in out
    # refused before the data are read: a missing file is not the error
    rc = main(["newton", "--data", str(path) + ".missing", "--method", "trust-region",
               "--precond", "cholesky"])
    out, err = capsys.readouterr()
    assert rc == 2 and "use --precond none, diag or auto" in err and "data:" not in out


def test_newton_out_names_every_file_written(logistic_npz, tmp_path, capsys):
    path, _, _ = logistic_npz
    for extra, files in (([], ["coef.npy", "intercept.npy", "summary.json"]),
                         (["--no-intercept"], ["coef.npy", "summary.json"])):
        out_dir = tmp_path / f"o{len(extra)}"
        assert main(["newton", "--data", str(path), "--quiet", "--out", str(out_dir)] + extra) == 0
        out, _ = capsys.readouterr()
        assert f"wrote {', '.join(f'{out_dir}/{f}' for f in files)}" in out
        assert sorted(os.listdir(out_dir)) == sorted(files)


def test_newton_no_intercept_removes_an_earlier_runs_intercept(logistic_npz, tmp_path, capsys):
    """A folder reused with --no-intercept kept the earlier run's intercept.npy, which a
    reader then paired with the new coefficients."""
    path, _, _ = logistic_npz
    out_dir = tmp_path / "o"
    assert main(["newton", "--data", str(path), "--quiet", "--out", str(out_dir)]) == 0
    assert (out_dir / "intercept.npy").exists()
    capsys.readouterr()
    assert main(["newton", "--data", str(path), "--quiet", "--out", str(out_dir),
                 "--no-intercept"]) == 0
    out, _ = capsys.readouterr()
    assert sorted(os.listdir(out_dir)) == ["coef.npy", "summary.json"]
    assert f"removed {out_dir}/intercept.npy" in out


def test_influence_nystrom_is_seeded(tmp_path, capsys):
    """--method nystrom drew a fresh sketch every run (different rankings); --seed (default
    0) fixes it."""
    outs = []
    for seed in ("0", "0", "5"):
        rc = main(["influence", "--method", "nystrom", "--seed", seed, "--out",
                   str(tmp_path / f"n{len(outs)}")])
        assert rc == 0
        capsys.readouterr()
        outs.append(np.load(tmp_path / f"n{len(outs)}" / "scores.npy"))
    assert np.array_equal(outs[0], outs[1])
    # the default problem has 51 parameters, below Nyström's default rank: any sketch is
    # exact, so another seed changes only the rounding
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-6, atol=1e-9 * np.abs(outs[0]).max())
    assert main(["influence", "--seed", "-1"]) == 2


def test_library_messages_in_the_commands_spelling():
    """Errors and warnings written for Python callers name the command's options."""
    from fastcurv.cli import _in_command_words as words
    assert words("use method='cg', 'lissa' or \"kfac\"") == "use --method cg, lissa or kfac"
    assert (words("method='trust-region' refuses preconditioner='kfac'")
            == "--method trust-region refuses --precond kfac")
    assert words("use preconditioner=None or 'diag'") == "use --precond none or diag"
    assert words("max_iter=50 reached") == "--max-iter 50 reached"
    assert words("pass fmt='npz', 'csv' or 'svmlight'") == "pass --format npz, csv or svmlight"
    assert (words("region in a diagonal norm: use preconditioner=None, 'diag' or 'auto')")
            == "region in a diagonal norm: use --precond none, diag or auto)")
    assert words("Set l2 > 0 (for example l2=1e-4).") == "Set l2 > 0 (for example --l2 1e-4)."
    assert (words("increase max_iter, loosen gtol, or try preconditioner='diag'.")
            == "increase --max-iter, loosen --gtol, or try --precond diag.")
    assert words("; fit_intercept=False removes it") == "; --no-intercept removes it"
    # other names, and names inside longer identifiers, stay as they are
    for text in ("curvature='ggn'", "some_method='x'", "scale=..., damping > 0"):
        assert words(text) == text



def test_compare_with_an_overflowing_l2_names_the_option(tmp_path, capsys):
    """`--l2 1e300`: the products' λ v overflow float64. The one error line names --l2 as
    the cause (it said to add an L2 penalty)."""
    rc = main(["compare", "--l2", "1e300", "--fit-iter", "3", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "--l2 1e+300" in err and "use a smaller --l2" in err and "add an L2" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path, capsys):
    """``--out`` is created before the work (an unusable path fails early), but a run that
    then failed (a missing data file) left the empty folder behind, and ``compare`` its
    default ``compare-report/`` in the current folder."""
    out = tmp_path / "fit" / "deep"
    assert main(["newton", "--data", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "fit").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["newton", "--data", str(tmp_path / "missing.npz"), "--out", str(kept)]) == 2
    assert kept.is_dir()  # not created by the run: left alone


def test_version_and_python_m():
    out = subprocess.run([sys.executable, "-m", "fastcurv", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"fastcurv {fc.__version__}"


def test_an_unknown_option_is_named_with_the_command_usage(capsys):
    """``fastcurv newton --bogus`` printed the top-level usage (``fastcurv [-h] COMMAND``)."""
    with pytest.raises(SystemExit) as exc:
        main(["newton", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastcurv newton") and "unrecognized arguments: --bogus" in err
