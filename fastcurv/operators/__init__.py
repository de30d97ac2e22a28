"""SciPy ``LinearOperator``s over a problem's parameters (one class per file)."""

from .fisher import FisherOperator
from .ggn import GGNOperator
from .hessian import HessianOperator
from .jacobian import JacobianOperator

__all__ = ["FisherOperator", "GGNOperator", "HessianOperator", "JacobianOperator"]
