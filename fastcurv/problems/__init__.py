"""Problems: model + loss + data + penalty, with methods of the parameters ``theta``."""

from .glm import GLM
from .mlp import MLP

__all__ = ["GLM", "MLP"]
