"""fastcurv: Numba-compiled CPU kernels for curvature.

Public API (everything else is private)::

    GLM                 generalized linear models: value, grad, hvp, ggn_vp, fisher_vp, jvp, ...
    MLP                 multilayer perceptrons with the same problem API
    HessianOperator, GGNOperator, FisherOperator, JacobianOperator
                        scipy.sparse.linalg.LinearOperator views of the curvature
    KFACOperator, EKFACOperator
                        Kronecker-factored block approximations and their inverses
    newton_cg           truncated Newton (line search or trust region) with CG
    Influence, loo_refit
                        influence functions of training points, and their leave-one-out check
    glm_diagnostics     leverage, Cook's distance, DFBETA(S), studentized residuals of a GLM
    hutchinson_diag     stochastic diagonal estimate of any symmetric operator
    trace               stochastic trace estimates (Hutchinson, Hutch++, XTrace) or the exact one
    top_eigenvalues     extreme eigenvalues (ARPACK Lanczos) of a symmetric operator
    spectral_density    smoothed eigenvalue density by stochastic Lanczos quadrature
    compare             curvature approximations against the exact curvature
    warmup              compile the common kernels ahead of time
"""

import os as _os

# Installed, the kernels are the subpackage fastcurv/kernels. In a source checkout they sit
# in kernels/ beside this package: let the import system find them there too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(
    _os.path.join(_root, "kernels", "_jit.py")
):
    __path__.append(_root)

from .compare import compare  # noqa: E402
from .estimators import (  # noqa: E402
    DiagonalEstimate,
    SpectralDensity,
    TraceEstimate,
    hutchinson_diag,
    spectral_density,
    top_eigenvalues,
    trace,
)
from .influence import (  # noqa: E402
    GLMDiagnostics,
    Influence,
    LooResult,
    glm_diagnostics,
    loo_refit,
)
from .newton import NewtonResult, newton_cg  # noqa: E402
from .operators import (  # noqa: E402
    EKFACOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    JacobianOperator,
    KFACOperator,
)
from .problems.glm import GLM  # noqa: E402
from .problems.mlp import MLP  # noqa: E402
from .warmup import warmup  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "GLM",
    "MLP",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "JacobianOperator",
    "KFACOperator",
    "EKFACOperator",
    "newton_cg",
    "Influence",
    "loo_refit",
    "LooResult",
    "glm_diagnostics",
    "GLMDiagnostics",
    "hutchinson_diag",
    "trace",
    "TraceEstimate",
    "top_eigenvalues",
    "spectral_density",
    "SpectralDensity",
    "compare",
    "DiagonalEstimate",
    "NewtonResult",
    "warmup",
    "__version__",
]
