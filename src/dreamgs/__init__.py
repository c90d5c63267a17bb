"""dreamgs: text or image to 3D Gaussians and textured meshes with score distillation."""

__version__ = "0.1.0"
