"""Influence functions, leave-one-out validation and classical GLM diagnostics."""

from .diagnostics import GLMDiagnostics, glm_diagnostics
from .influence import Influence
from .loo import LooResult, loo_refit

__all__ = ["GLMDiagnostics", "Influence", "LooResult", "glm_diagnostics", "loo_refit"]
