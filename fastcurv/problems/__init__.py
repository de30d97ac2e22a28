"""Problems: model + loss + data + penalty, with methods of the parameters ``theta``."""

from .glm import GLM

__all__ = ["GLM"]
