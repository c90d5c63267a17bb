"""The project's own error types.

Every error a user can cause by giving bad input is a :class:`DreamGSError`. The CLI prints
these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DreamGSError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(DreamGSError, ValueError):
    """A config file or a ``key=value`` override is invalid."""


class InputError(DreamGSError, ValueError):
    """An input file or argument (image, prompt, .ply, mesh) is missing or malformed."""


class EmptyModelError(InputError):
    """A trained or loaded model has no surface to mesh (a method's failure, not always the user's)."""


class ModelNotFoundError(DreamGSError):
    """Diffusion weights could not be found locally or downloaded."""


class TrainingError(DreamGSError):
    """Training diverged (too many non-finite steps) or ran out of memory."""
