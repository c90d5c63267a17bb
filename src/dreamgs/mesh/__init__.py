"""Triangle meshes: the type, extraction from Gaussians, rasterisation and texturing."""

from .core import Mesh

__all__ = ["Mesh"]
