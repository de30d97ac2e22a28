"""Estimators built on curvature operators: diagonals (and, later, traces and spectra)."""

from .diagonal import DiagonalEstimate, hutchinson_diag

__all__ = ["DiagonalEstimate", "hutchinson_diag"]
