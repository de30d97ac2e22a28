"""Influence functions, leave-one-out validation and classical GLM diagnostics."""

from .influence import Influence
from .loo import LooResult, loo_refit

__all__ = ["Influence", "LooResult", "loo_refit"]
