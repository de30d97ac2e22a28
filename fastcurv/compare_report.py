"""The report of :func:`fastcurv.compare`: a folder with report.md, the table as CSV and JSON,
and PNG figures (matplotlib, an optional dependency: ``pip install fastcurv[report]``)."""

import csv
import json
import os

import numpy as np

COLUMNS = ("name", "label", "rel_frobenius", "newton_cosine", "top_eig_ratio", "trace_ratio",
           "cg_iters", "build_s", "build_grads", "apply_grads", "solve_grads", "top_eig",
           "trace")
_COLORS = {"diag_hessian": "#1f77b4", "diag_ggn": "#2ca02c", "diag_ggn_mc": "#98df8a",
           "empirical_fisher": "#d62728", "kfac": "#9467bd", "ekfac": "#ff7f0e",
           "block_ggn": "#8c564b"}


def have_matplotlib():
    """Whether the figures can be drawn (matplotlib importable)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the figures of the comparison report need matplotlib: "
                          "pip install 'fastcurv[report]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.3g}"


def table_rows(records):
    return [{k: r.get(k) for k in COLUMNS} for r in records]


def markdown_table(records):
    head = ["approximation", "rel. Frobenius error", "Newton cosine", "top eig ratio",
            "trace ratio", "CG iterations (as preconditioner)", "build (gradients)",
            "A v (gradients)", "(A + δI)⁻¹ v (gradients)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in (
            "label", "rel_frobenius", "newton_cosine", "top_eig_ratio", "trace_ratio",
            "cg_iters", "build_grads", "apply_grads", "solve_grads")) + " |")
    return "\n".join(lines)


def _json_value(v):
    """None, a string, an int (counts stay integers) or a float; JSON has no NaN or inf."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


def write_report(records, folder, title="Curvature approximations", description="",
                 figures=True):
    """Write ``report.md``, ``table.csv``, ``table.json`` and the figures into ``folder``.

    ``figures=False`` skips the PNG figures (and matplotlib); with ``figures=True`` a missing
    matplotlib raises an ``ImportError`` saying how to install it, before anything is
    written. Returns the list of files written."""
    plt = _pyplot() if figures else None
    os.makedirs(folder, exist_ok=True)
    rows = table_rows(records)
    files = []
    path = os.path.join(folder, "table.csv")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    files.append(path)
    path = os.path.join(folder, "table.json")
    with open(path, "w") as fh:
        json.dump([{k: _json_value(v) for k, v in r.items()} for r in rows], fh, indent=2)
    files.append(path)
    figs = []
    if plt is not None and all("density" in r for r in records):
        figs.append(("spectral_density.png", _plot_densities(plt, records),
                     "Eigenvalue density of each approximation (colour) against the exact "
                     f"curvature (black), from {ref_spectrum(records)}, Gaussian-smoothed. Log "
                     "scale: the spectra span orders of magnitude."))
    ref = records[0]
    if plt is not None and ref.get("diag") is not None:
        figs.append(("diagonal_scatter.png", _plot_diagonals(plt, records),
                     "Diagonal of each approximation against the exact diagonal of the "
                     "reference (one point per parameter, log-log; on the line = exact)."))
    if plt is not None:
        figs.append(("error_vs_cost.png", _plot_error_cost(plt, records),
                     "Relative Frobenius error against the cost of building the "
                     "approximation and applying it once, in gradient evaluations: lower "
                     "left is better."))
    for name, fig, _ in figs:
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    md = [f"# {title}", "", description, "", markdown_table(records), "",
          "* **rel. Frobenius error**: ‖A − R‖_F / ‖R‖_F against the reference R.",
          "* **Newton cosine**: cosine between (A + δI)⁻¹g and (R + δI)⁻¹g.",
          "* **top eig / trace ratio**: λ_max(A)/λ_max(R) and tr(A)/tr(R).",
          "* **CG iterations**: CG on (R + δI)x = g with (A + δI)⁻¹ as preconditioner "
          "(reference row: no preconditioner; the empirical Fisher and the block GGN, "
          "which have no cheap inverse, only where compare formed dense matrices "
          "(P ≤ dense_limit, 3,000 by default), from a dense Cholesky factor; — "
          "otherwise).",
          "* **costs**: in gradient evaluations of the same model: building the "
          "approximation, one product A v, one inverse product (A + δI)⁻¹ v.", ""]
    if plt is None:
        md += ["Figures: not drawn (matplotlib is not installed: "
               "`pip install 'fastcurv[report]'`).", ""]
    for name, _, caption in figs:
        md += [f"![{caption}]({name})", "", caption, ""]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    files.append(path)
    return files


def _plot_densities(plt, records):
    ref = records[0]["density"]
    others = records[1:]
    cols = min(3, max(1, len(others)))
    rows = int(np.ceil(len(others) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                             sharex=True, sharey=True)
    floor = 1e-6 * float(np.max(ref.density)) if np.max(ref.density) > 0 else 1e-12
    for ax, rec in zip(axes.flat, others, strict=False):
        dens = rec["density"]
        ax.semilogy(ref.grid, np.maximum(ref.density, floor), color="black", lw=1.2,
                    ls="--", label="exact")
        ax.semilogy(dens.grid, np.maximum(dens.density, floor), color=_COLORS.get(rec["name"]),
                    lw=1.5, label=rec["label"])
        ax.set_title(rec["label"], fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(others):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("eigenvalue")
    for ax in axes[:, 0]:
        ax.set_ylabel("density (log)")
    fig.suptitle("Spectral density: approximations vs exact", fontsize=12)
    fig.tight_layout()
    return fig


def _plot_diagonals(plt, records):
    ref = np.asarray(records[0]["diag"], np.float64)
    others = [r for r in records[1:] if r.get("diag") is not None]
    cols = min(3, max(1, len(others)))
    rows = int(np.ceil(len(others) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.6 * rows), squeeze=False)
    pos = ref > 0
    lo = float(ref[pos].min()) if pos.any() else 1e-12
    hi = float(ref[pos].max()) if pos.any() else 1.0
    for ax, rec in zip(axes.flat, others, strict=False):
        d = np.asarray(rec["diag"], np.float64)
        keep = pos & (d > 0)
        ax.loglog(ref[keep], d[keep], ".", ms=2, alpha=0.4, color=_COLORS.get(rec["name"]))
        ax.loglog([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="exact")
        ax.set_title(rec["label"], fontsize=10)
        ax.set_xlabel("exact diagonal")
        ax.set_ylabel("approximation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes.flat[len(others):]:
        ax.axis("off")
    fig.suptitle("Diagonal entries: approximation vs exact (log-log)", fontsize=12)
    fig.tight_layout()
    return fig


def ref_spectrum(records):
    """How the spectra were computed (``"exact eigenvalues"`` or stochastic Lanczos)."""
    return records[0].get("spectrum", "stochastic Lanczos quadrature")


def _plot_error_cost(plt, records):
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    markers = "osD^vP*X"
    for k, rec in enumerate(records[1:]):
        x = max(rec["build_grads"] + (rec.get("apply_grads") or 0.0), 1e-2)
        y = max(rec["rel_frobenius"], 1e-6)
        ax.loglog([x], [y], markers[k % len(markers)], ms=9, color=_COLORS.get(rec["name"]),
                  label=rec["label"], linestyle="none")
    ax.set_xlabel("cost to build and apply once (gradient evaluations, log)")
    ax.set_ylabel("relative Frobenius error (log)")
    ax.set_title("Error vs cost of each approximation (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(0.15)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return fig
