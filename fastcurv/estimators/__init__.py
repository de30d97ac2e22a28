"""Estimators built on curvature operators: diagonals, traces, extreme eigenvalues and the
spectral density."""

from .density import SpectralDensity, spectral_density
from .diagonal import DiagonalEstimate, hutchinson_diag
from .eigen import top_eigenvalues
from .trace_estimators import TraceEstimate, trace

__all__ = [
    "DiagonalEstimate",
    "hutchinson_diag",
    "TraceEstimate",
    "trace",
    "top_eigenvalues",
    "SpectralDensity",
    "spectral_density",
]
