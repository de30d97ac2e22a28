"""fastcurv: Numba-compiled CPU kernels for curvature.

Public API (everything else is private)::

    GLM        generalized linear models: value, grad, hvp, ggn_vp, fisher_vp, jvp, vjp, ...
    warmup     compile the common kernels ahead of time
"""

from .problems.glm import GLM
from .warmup import warmup

__version__ = "0.1.0"
__all__ = ["GLM", "warmup", "__version__"]
