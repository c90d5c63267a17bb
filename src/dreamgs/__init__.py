"""dreamgs: text or image to 3D Gaussians and textured meshes with score distillation.

The Python API is :func:`dreamgs.generate` (what ``dreamgs text`` and ``dreamgs image`` run) and
:func:`dreamgs.resume_run`; both live in :mod:`dreamgs.pipeline` and are imported on first use,
so ``import dreamgs`` stays light.
"""

__version__ = "0.1.0"

_API = ("generate", "resume_run", "RunResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'dreamgs' has no attribute {name!r}")
