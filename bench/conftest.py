"""Benchmark suite configuration: collection, environment checks, shared data, final report.

Run as ``pytest bench ...`` (see bench/README.md). Benchmark files are named ``bench_*.py``
and are collected by the hook below only when bench/ (or a file in it) is named on the
command line, so plain ``pytest`` (testpaths = tests/) and ``pytest .`` never run them.
"""

import os
import pathlib
import warnings

import harness
import pytest
import report

BENCH_DIR = pathlib.Path(__file__).resolve().parent
N_THREADS = 2
_SLOW_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ----------------------------------------------------------------------------- collection
def _bench_requested(config):
    for arg in config.args:
        p = pathlib.Path(str(arg).split("::")[0]).resolve()
        if p == BENCH_DIR or BENCH_DIR in p.parents:
            return True
    return False


def pytest_collect_file(file_path, parent):
    # a file named on the command line is already collected by pytest's own python plugin
    # (whatever its name): collecting it here too would run every benchmark twice
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and _bench_requested(parent.config) and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# ----------------------------------------------------------------------------- environment
def pytest_configure(config):
    if not _bench_requested(config):
        return
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(N_THREADS, numba.config.NUMBA_NUM_THREADS))
    config._fc_blas_limit = threadpool_limits(limits=N_THREADS)
    config._fc_monitor = harness.CPUMonitor()
    bad = {k: os.environ[k] for k in _SLOW_BLAS_VARS if os.environ.get(k)}
    if bad:
        warnings.warn(f"{bad} is set: OpenBLAS picks a slower kernel for the numpy/scipy "
                      "baselines; run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`",
                      stacklevel=1)


def pytest_report_header(config):
    if not _bench_requested(config):
        return None
    env = harness.environment()
    blas = ", ".join(f"{t['internal_api']} {t['version']} {t.get('architecture') or ''} "
                     f"{t['num_threads']} threads" for t in env["threadpools"])
    return [f"fastcurv bench: cpu {env['cpu']} x{env['n_cpus']}, numba threads "
            f"{env['numba_threads']}, numpy {env['numpy']}, scipy {env['scipy']}, "
            f"sklearn {env['sklearn']}",
            f"thread pools: {blas}",
            f"env: {env['env']}"]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastcurv"] = {"env": harness.environment(), "results": _results(config)}


def _results(config):
    res = dict(harness.RESULTS)
    mon = getattr(config, "_fc_monitor", None)
    if mon is not None:
        res["contention"] = mon.foreign()
    return res


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _bench_requested(config):
        return
    bs = getattr(config, "_benchmarksession", None)
    benchmarks = [b.as_dict(include_data=True) for b in (bs.benchmarks if bs else [])
                  if not b.has_error]
    if not benchmarks and not harness.RESULTS:
        return
    tr = terminalreporter
    tr.write_sep("=", "fastcurv ratios (medians, same run)")
    tr.write_line(report.render(benchmarks, _results(config), harness.environment()))


# ----------------------------------------------------------------------------- data
# Data are built once per module (module scope) and freed when the module ends; the largest
# module (dense) holds X f64 (800 MB) + X f32 (400 MB) + scikit-learn's hX copy (800 MB).

@pytest.fixture(scope="module")
def dense64():
    import datasets

    return datasets.dense_logistic()


@pytest.fixture(scope="module")
def dense32(dense64):
    import datasets

    return datasets.as_float32(dense64)


@pytest.fixture(scope="module")
def multi():
    import datasets

    return datasets.dense_multinomial()


@pytest.fixture(scope="module")
def csr():
    import datasets

    return datasets.csr_logistic()
