"""Ratio table of a benchmark run.

Usage::

    python bench/report.py out.json [--markdown]

``out.json`` is written by ``pytest bench --benchmark-json=out.json``. The same table is
printed at the end of every ``pytest bench`` session by bench/conftest.py.

All ratios are between medians measured in the same run. A speed-up is
``median(baseline) / median(fastcurv)``; the probe ratio is fastcurv's GB/s over the probe's
(``median(probe) / median(fastcurv)`` on the same bytes).

Each comparison is measured twice: by separate benchmarks (one implementation after the
other, seconds to minutes apart: the first table), and by one benchmark that calls the
implementations in alternation (``harness.interleaved``: the last table). On a virtual
machine whose speed drifts by up to 2x within minutes only the second is a like-for-like
comparison; both are printed.
"""

import json
import sys

#: (label, baseline key, fastcurv key, minimum ratio, what the ratio means)
TARGETS = [
    ("dense f64 HVP: GB/s vs bandwidth probe", "dense64.hvp.probe", "dense64.hvp.fastcurv",
     0.80, "fraction of probe GB/s"),
    ("dense f64 HVP vs numpy two-pass", "dense64.hvp.numpy", "dense64.hvp.fastcurv", 2.0,
     "speed-up"),
    ("dense f64 HVP vs scikit-learn hessp", "dense64.hvp.sklearn", "dense64.hvp.fastcurv", 2.0,
     "speed-up"),
    ("dense f64 value+grad vs numpy two products", "dense64.value_grad.numpy",
     "dense64.value_grad.fastcurv", 1.5, "speed-up"),
    ("multinomial K=10 HVP vs scikit-learn hessp", "multi.hvp.sklearn", "multi.hvp.fastcurv",
     3.0, "speed-up"),
    ("CSR HVP vs scipy two-pass", "csr.hvp.scipy", "csr.hvp.fastcurv", 2.5, "speed-up"),
    ("CSR value+grad vs scikit-learn loss_gradient", "csr.value_grad.sklearn",
     "csr.value_grad.fastcurv", 1.5, "speed-up"),
    ("dense HVP float32 vs float64", "dense64.hvp.fastcurv_again", "dense32.hvp.fastcurv", 1.7,
     "speed-up"),
]

#: informational ratios (no target)
INFO = [
    ("dense f64 HVP vs ONE numpy pass X @ v (the best a one-pass kernel can do is ~1)",
     "dense64.hvp.numpy_one_pass", "dense64.hvp.fastcurv"),
    ("numpy one pass X @ v: GB/s vs probe", "dense64.hvp.probe", "dense64.hvp.numpy_one_pass"),
    ("dense f64 value+grad vs scikit-learn loss_gradient", "dense64.value_grad.sklearn",
     "dense64.value_grad.fastcurv"),
    ("dense f64 value+grad: GB/s vs probe", "dense64.hvp.probe", "dense64.value_grad.fastcurv"),
    ("dense f32 HVP: GB/s vs f32 probe", "dense32.hvp.probe", "dense32.hvp.fastcurv"),
    ("dense f32 HVP vs numpy f32 two-pass", "dense32.hvp.numpy", "dense32.hvp.fastcurv"),
    ("multinomial HVP: GB/s vs probe", "multi.hvp.probe", "multi.hvp.fastcurv"),
    ("multinomial value+grad vs scikit-learn", "multi.value_grad.sklearn",
     "multi.value_grad.fastcurv"),
    ("CSR HVP vs scikit-learn hessp", "csr.hvp.sklearn", "csr.hvp.fastcurv"),
    ("CSR HVP: GB/s vs probe", "csr.hvp.probe", "csr.hvp.fastcurv"),
    ("CSR value+grad vs scipy two products", "csr.value_grad.scipy", "csr.value_grad.fastcurv"),
]

COMPILE_TARGET_S = 2.0
#: a row is flagged when other processes used more than this share of the CPUs while timing
BUSY = 0.05
#: "never allocates anything of X's size": peak extra memory below this fraction of X.nbytes
MEMORY_TARGET_FRACTION = 0.10


#: a round is "clean" when other processes used at most this share of the CPUs during it
#: (per-round shares come from 10 ms /proc/stat ticks: ±0.25 noise on a 40 ms round, while a
#: competing CPU-bound process shows up as 0.4-0.6)
CLEAN_SHARE = 0.35


def clean_stats(b):
    """(median s, clean rounds, rounds, median of all rounds) of one benchmark.

    The median is over the clean rounds when there are at least max(5, rounds / 3) of them,
    else over all rounds.
    """
    s = b.get("stats") or b
    data = s.get("data")
    info = b.get("extra_info") or {}
    shares = info.get("round_foreign_share")
    n = s.get("rounds") or (len(data) if data else 0)
    if not data or not shares or len(shares) != len(data):
        return s["median"], None, n, s["median"]
    # whole fits / file reads (bench_newton.py, bench_io.py) have few, long rounds whose load
    # share is precise: they set their own clean threshold and minimum clean count
    limit = info.get("clean_share", CLEAN_SHARE)
    clean = sorted(t for t, f in zip(data, shares, strict=True) if f <= limit)
    med_all = s["median"]
    if len(clean) >= _min_clean(b, len(data)):
        m = len(clean)
        med = clean[m // 2] if m % 2 else 0.5 * (clean[m // 2 - 1] + clean[m // 2])
        return med, m, len(data), med_all
    return med_all, len(clean), len(data), med_all


def _min_clean(b, rounds):
    """Clean rounds needed to use their median: max(5, rounds / 3), or the benchmark's own
    ``clean_min`` (whole fits and file reads: few rounds of seconds each)."""
    own = (b.get("extra_info") or {}).get("clean_min")
    return max(5, rounds // 3) if own is None else min(int(own), rounds)


def _median(b):
    return clean_stats(b)[0]


def _min(b):
    return (b.get("stats") or b)["min"]


def index(benchmarks):
    out = {}
    for b in benchmarks:
        key = (b.get("extra_info") or {}).get("key")
        if key:
            out[key] = b
    return out


def timing_rows(benchmarks):
    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if "interleaved" in info:  # whole alternating rounds: see interleaved_rows
            continue
        s = b.get("stats") or b
        med, n_clean, n, med_all = clean_stats(b)
        nb = info.get("bytes")
        rows.append({
            "group": b.get("group") or "",
            "impl": info.get("impl", b.get("name")),
            "key": info.get("key", b.get("name")),
            "median_ms": med * 1e3,
            "median_all_ms": med_all * 1e3,
            "iqr_ms": s.get("iqr", float("nan")) * 1e3,
            "min_ms": s["min"] * 1e3,
            "rounds": n,
            "clean": n_clean,
            "gbs": (nb / med / 1e9) if nb else None,
            # mean over the timed rounds (the whole phase also counts the gaps in which the
            # gate waited for other processes, which did not slow any round)
            "busy": (sum(info["round_foreign_share"]) / len(info["round_foreign_share"])
                     if info.get("round_foreign_share") else info.get("foreign_cpu_share")),
            "min_clean": _min_clean(b, n),
        })
    return rows


def target_rows(benchmarks, results=None):
    idx = index(benchmarks)
    rows = []
    for label, base, fc, lo, meaning in TARGETS:
        if base in idx and fc in idx:
            r = _median(idx[base]) / _median(idx[fc])
            rmin = _min(idx[base]) / _min(idx[fc])
            rows.append({"label": label, "ratio": r, "ratio_min": rmin, "target": f">= {lo:g}",
                         "met": r >= lo, "meaning": meaning})
        else:
            rows.append({"label": label, "ratio": None, "target": f">= {lo:g}", "met": None,
                         "meaning": "not measured"})
    results = results or {}
    mem = results.get("memory")
    if mem:
        frac = mem["peak_extra_bytes"] / mem["x_nbytes"]
        rows.append({"label": f"100 HVPs on {mem['x_nbytes'] / 1e6:.0f} MB X: peak extra memory",
                     "ratio": frac, "target": f"< {MEMORY_TARGET_FRACTION:g} x X.nbytes",
                     "met": frac < MEMORY_TARGET_FRACTION,
                     "meaning": f"{mem['peak_extra_bytes'] / 1e6:.2f} MB ({mem['method']})"})
    comp = results.get("compile")
    if comp:
        t = comp["import_and_first_hvp_s"]
        rows.append({"label": "import fastcurv + first HVP (warm cache, fresh process)",
                     "ratio": t, "target": f"< {COMPILE_TARGET_S:g} s",
                     "met": t < COMPILE_TARGET_S, "meaning": "seconds (median)"})
    return rows


def _clean_median(ts, shares):
    """Median of the calls during which no other process competed (as :func:`clean_stats`),
    or of all calls when fewer than max(5, n / 3) were clean."""
    import statistics

    if shares and len(shares) == len(ts):
        clean = [t for t, f in zip(ts, shares, strict=True) if f <= CLEAN_SHARE]
        if len(clean) >= max(5, len(ts) // 3):
            return statistics.median(clean)
    return statistics.median(ts)


def interleaved_rows(benchmarks):
    """The targets (and informational ratios) measured again in alternating calls
    (``harness.interleaved``): ``ratio`` is the ratio of the two implementations' medians,
    ``paired`` the median over rounds of the ratio of their calls in the same round."""
    import statistics

    rows = []
    pairs = [(label, base, fc, lo) for label, base, fc, lo, _ in TARGETS]
    pairs += [(label, base, fc, None) for label, base, fc in INFO]
    for b in benchmarks:
        info = b.get("extra_info") or {}
        T = info.get("interleaved")
        if not T:
            continue
        S = info.get("interleaved_share") or {}
        for label, base, fc, lo in pairs:
            if base not in T or fc not in T:
                continue
            r = _clean_median(T[base], S.get(base)) / _clean_median(T[fc], S.get(fc))
            paired = statistics.median(x / y for x, y in zip(T[base], T[fc], strict=True))
            rows.append({"label": label, "ratio": r, "paired": paired,
                         "ratio_min": min(T[base]) / min(T[fc]), "rounds": len(T[fc]),
                         "target": "—" if lo is None else f">= {lo:g}",
                         "met": None if lo is None else r >= lo})
    return rows


def info_rows(benchmarks):
    idx = index(benchmarks)
    rows = []
    for label, base, fc in INFO:
        if base in idx and fc in idx:
            rows.append({"label": label, "ratio": _median(idx[base]) / _median(idx[fc])})
    return rows


def _fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def render(benchmarks, results=None, env=None, markdown=False):
    """The report as text (aligned columns) or GitHub markdown tables."""
    lines = []
    trows = timing_rows(benchmarks)
    grows = target_rows(benchmarks, results)
    irows = info_rows(benchmarks)

    def table(header, rows):
        if markdown:
            out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
            return out
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
        out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return out

    if env:
        blas = "; ".join(f"{t['internal_api']} {t['version']} {t.get('architecture') or ''} "
                         f"({t['num_threads']} thr)".strip() for t in env.get("threadpools", []))
        lines.append(f"date: {env.get('date')}; cpu: {env.get('cpu')} x{env.get('n_cpus')}; "
                     f"numba {env.get('numba')} ({env.get('numba_threads')} threads, "
                     f"{env.get('numba_threading_layer')}); numpy {env.get('numpy')}; scipy "
                     f"{env.get('scipy')}; sklearn {env.get('sklearn')}")
        lines.append(f"thread pools: {blas}")
        if env.get("git"):
            lines.append(f"fastcurv: {env['git']}")
        bad = {k: v for k, v in env.get("env", {}).items()
               if k.startswith("OPENBLAS_C") or k == "OPENBLAS_L2_SIZE"}
        if any(bad.values()):
            lines.append(f"WARNING: {bad} set: numpy baselines run a slower BLAS kernel")
    busy = (results or {}).get("contention")
    if busy:
        lines.append(f"other processes used {busy['foreign_cpu_s']:.0f} CPU-s during the "
                     f"{busy['wall_s']:.0f} s run ({100 * busy['foreign_share_of_machine']:.0f}%"
                     " of the machine; the suite pauses while they are busy, and the last column"
                     " below is the load while each row was being timed)")
    lines.append("")
    def load(r):
        if r["busy"] is None:
            return "—"
        few = r["clean"] is not None and r["clean"] < r["min_clean"]
        return f"{100 * r['busy']:.0f}%" + (" !" if few or (r["clean"] is None
                                                            and r["busy"] > BUSY) else "")

    lines += table(["group", "implementation", "median ms", "all-round median", "min ms",
                    "IQR ms", "GB/s", "clean/rounds", "other load"],
                   [(r["group"], r["impl"], _fmt(r["median_ms"]), _fmt(r["median_all_ms"]),
                     _fmt(r["min_ms"]), _fmt(r["iqr_ms"]), _fmt(r["gbs"], 1),
                     f"{'—' if r['clean'] is None else r['clean']}/{r['rounds']}", load(r))
                    for r in trows])
    hp = [(b["extra_info"]["problem"], b["extra_info"].get("x_hugepage_fraction"))
          for b in benchmarks if (b.get("extra_info") or {}).get("impl") == "probe"]
    if any(f is not None for _, f in hp):
        lines.append("X backed by transparent huge pages: " + ", ".join(
            f"{p} {100 * f:.0f}%" for p, f in hp if f is not None))
    lines.append("median ms: over the clean rounds (no other process competed for the CPUs); "
                 "GB/s = bytes one pass reads / median; other load: share of the CPUs other "
                 "processes used while the row was timed")
    if any(load(r).endswith("!") for r in trows):
        lines.append("! too few clean rounds: this row's time is suspect")
    probe_gbs = {r["key"].split(".")[0]: r["gbs"] for r in trows
                 if r["key"].endswith(".probe") and r["gbs"]}
    top = max(probe_gbs.values(), default=None)
    for r in trows:
        lim = top
        if lim and r["gbs"] and r["gbs"] > 1.5 * lim and r["impl"].startswith("fastcurv"):
            lines.append(f"WARNING: {r['key']} ran at {r['gbs']:.0f} GB/s, far above the "
                         f"fastest probe's {lim:.0f} GB/s: it cannot have read X "
                         "(a cache answered?)")
    lines.append("")
    lines += table(["target", "measured (medians)", "target", "met", "ratio of mins", "note"],
                   [(r["label"], _fmt(r["ratio"]), r["target"],
                     {True: "yes", False: "NO", None: "—"}[r["met"]],
                     _fmt(r.get("ratio_min")), r["meaning"])
                    for r in grows])
    if irows:
        lines.append("")
        lines += table(["informational ratio (baseline / fastcurv)", "value"],
                       [(r["label"], _fmt(r["ratio"])) for r in irows])
    lrows = interleaved_rows(benchmarks)
    if lrows:
        lines += ["", "the same ratios from alternating calls (one call of each implementation "
                  "per round, order reversed every other round: both see the same machine "
                  "speed, which drifts by up to 2x within minutes on a virtual machine)"]
        lines += table(["ratio (baseline / fastcurv)", "ratio of medians", "median of paired "
                        "ratios", "ratio of mins", "rounds", "target", "met"],
                       [(r["label"], _fmt(r["ratio"]), _fmt(r["paired"]), _fmt(r["ratio_min"]),
                         r["rounds"], r["target"],
                         {True: "yes", False: "NO", None: "—"}[r["met"]]) for r in lrows])
    lines += fit_section(benchmarks, table)
    return "\n".join(lines)


# ------------------------------------------------------------------ whole fits and readers
# (bench/bench_newton.py, bench/bench_io.py; keys ``<problem>.fit.<impl>`` / ``svmlight.read.*``)

#: (label, problem, baseline impl, minimum speed-up of fastcurv); each is judged for every
#: fastcurv variant the run measured (FIT_VARIANTS: the preconditioners)
FIT_TARGETS = [
    ("dense logistic fit vs scikit-learn newton-cg", "fitdense", "sklearn_newton_cg", 4.0),
    ("dense logistic fit vs scikit-learn lbfgs", "fitdense", "sklearn_lbfgs", 6.0),
    ("dense logistic fit vs scikit-learn newton-cholesky", "fitdense",
     "sklearn_newton_cholesky", 1.0),
    ("CSR logistic fit vs scikit-learn newton-cg", "fitcsr", "sklearn_newton_cg", 3.0),
    ("CSR logistic fit vs scikit-learn lbfgs", "fitcsr", "sklearn_lbfgs", 3.0),
    ("multinomial fit vs scikit-learn newton-cg", "fitmulti", "sklearn_newton_cg", 3.0),
    ("multinomial fit vs scikit-learn lbfgs", "fitmulti", "sklearn_lbfgs", 3.0),
    ("correlated dense fit vs scikit-learn newton-cg", "fitcorr", "sklearn_newton_cg", 4.0),
    ("correlated dense fit vs scikit-learn lbfgs", "fitcorr", "sklearn_lbfgs", 6.0),
    ("correlated dense fit vs scikit-learn newton-cholesky", "fitcorr",
     "sklearn_newton_cholesky", 1.0),
    ("correlated multinomial fit vs scikit-learn newton-cg", "fitmulticorr",
     "sklearn_newton_cg", 3.0),
    ("correlated multinomial fit vs scikit-learn lbfgs", "fitmulticorr", "sklearn_lbfgs", 3.0),
]
FIT_VARIANTS = (("fastcurv_none", "fastcurv (no precond.)"), ("fastcurv_diag", "fastcurv diag"),
                ("fastcurv_cholesky", "fastcurv cholesky"), ("fastcurv_auto", "fastcurv auto"),
                ("fastcurv_kfac", "fastcurv kfac"))


def _g(x, fmt=".2e"):
    return "—" if x is None else format(x, fmt)


def fit_rows(benchmarks):
    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if info.get("op") != "fit":
            continue
        med, n_clean, n, _ = clean_stats(b)
        per_step = info.get("cg_per_step")
        rows.append({
            "problem": info.get("problem"), "impl": info.get("impl"), "median_s": med,
            "min_s": _min(b), "clean": n_clean, "rounds": n,
            "max_grad": info.get("max_grad"), "reached": info.get("reached_gtol"),
            "df": info.get("f_minus_ref"), "n_iter": info.get("n_iter"),
            "n_cg": info.get("n_cg"), "n_hvp": info.get("n_hvp"),
            "cg_per_step": "—" if not per_step else ",".join(str(c) for c in per_step),
            "passes": info.get("passes"), "tol": info.get("tol"), "note": info.get("note", ""),
        })
    return rows


def fit_target_rows(benchmarks):
    idx = index(benchmarks)
    rows = []
    for label, prob, base, lo in FIT_TARGETS:
        bkey = f"{prob}.fit.{base}"
        for impl, name in FIT_VARIANTS:
            fkey = f"{prob}.fit.{impl}"
            if bkey not in idx or fkey not in idx:
                continue
            r = _median(idx[bkey]) / _median(idx[fkey])
            binfo = idx[bkey].get("extra_info") or {}
            note = "" if binfo.get("reached_gtol", True) else (
                f"baseline stopped at max abs grad {binfo.get('max_grad'):.2e} > gtol")
            rows.append({"label": f"{label} ({name})", "ratio": r,
                         "ratio_min": _min(idx[bkey]) / _min(idx[fkey]),
                         "target": f">= {lo:g}" if lo > 1 else "> 1", "met": r >= lo if lo > 1
                         else r > lo, "note": note})
    return rows


def read_rows(benchmarks):
    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if info.get("op") != "read":
            continue
        med = _median(b)
        rows.append({"impl": info.get("impl"), "median_s": med, "min_s": _min(b),
                     "mbs": info.get("file_bytes", 0) / med / 1e6,
                     "file_mb": info.get("file_bytes", 0) / 1e6, "key": info.get("key"),
                     "long16": info.get("share_16_digit_values"),
                     "clean": clean_stats(b)[1], "rounds": clean_stats(b)[2]})
    return rows


def fit_section(benchmarks, table):
    """Lines for the whole-fit and reader benchmarks (none if the run had neither)."""
    lines = []
    frows = fit_rows(benchmarks)
    if frows:
        lines += ["", "whole fits (one round = one complete fit from zero; medians over clean "
                  "rounds; max abs grad = max|p.grad| of fastcurv at the returned coefficients; "
                  "F - F* vs the reference fit)"]
        lines += table(["problem", "solver", "median s", "min s", "clean/rounds", "max abs grad",
                        "<= gtol", "F - F*", "Newton it", "CG it", "HVPs", "CG per step",
                        "passes/evals", "tol"],
                       [(r["problem"], r["impl"], _fmt(r["median_s"], 3), _fmt(r["min_s"], 3),
                         f"{'—' if r['clean'] is None else r['clean']}/{r['rounds']}",
                         _g(r["max_grad"]), {True: "yes", False: "NO", None: "—"}[r["reached"]],
                         _g(r["df"], ".1e"), "—" if r["n_iter"] is None else r["n_iter"],
                         "—" if r["n_cg"] is None else r["n_cg"],
                         "—" if r["n_hvp"] is None else r["n_hvp"], r["cg_per_step"],
                         r["passes"] or "—", _g(r["tol"], ".0e")) for r in frows])
        trows = fit_target_rows(benchmarks)
        if trows:
            lines.append("")
            lines += table(["whole-fit target (baseline median / fastcurv median)", "speed-up",
                            "target", "met", "ratio of mins", "note"],
                           [(r["label"], _fmt(r["ratio"]), r["target"],
                             "yes" if r["met"] else "NO", _fmt(r["ratio_min"]), r["note"])
                            for r in trows])
    rrows = read_rows(benchmarks)
    if rrows:
        long16 = rrows[0]["long16"]
        lines += ["", "svmlight readers (same file, in the page cache" + (
            "" if long16 is None else f"; {100 * long16:.0f}% of its values are written with 16 "
            "digits by dump_svmlight_file's %.16g") + ")"]
        lines += table(["reader", "median s", "min s", "MB/s", "file MB", "clean/rounds"],
                       [(r["impl"], _fmt(r["median_s"], 3), _fmt(r["min_s"], 3),
                         _fmt(r["mbs"], 0), _fmt(r["file_mb"], 1),
                         f"{'—' if r['clean'] is None else r['clean']}/{r['rounds']}")
                        for r in rrows])
        by = {r["impl"]: r for r in rrows}
        if "fastcurv" in by and "sklearn" in by:
            lines.append(f"fastcurv.io.load_svmlight / sklearn load_svmlight_file speed: "
                         f"{by['sklearn']['median_s'] / by['fastcurv']['median_s']:.2f}x")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    with open(argv[0]) as f:
        data = json.load(f)
    extra = data.get("fastcurv", {})
    print(render(data.get("benchmarks", []), extra.get("results"), extra.get("env"),
                 markdown="--markdown" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
