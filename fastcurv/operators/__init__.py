"""SciPy ``LinearOperator``s over a problem's parameters (one class per file)."""

from .ekfac import EKFACOperator
from .fisher import FisherOperator
from .ggn import GGNOperator
from .hessian import HessianOperator
from .jacobian import JacobianOperator
from .kfac import KFACOperator

__all__ = ["EKFACOperator", "FisherOperator", "GGNOperator", "HessianOperator",
           "JacobianOperator", "KFACOperator"]
