"""The user-facing errors: what went wrong, in words a user can act on.

Every layer raises these (and the built-in ``FileNotFoundError``/``KeyError``/``ValueError`` where
those say it best); the widget shows their message as a notification. No imports: any module may
import this one.
"""

from __future__ import annotations

__all__ = [
    "Cancelled", "CheckpointError", "ChecksumError", "MissingDependencyError", "ModelDownloadError",
    "SamInputWarning", "SamTypeError", "SamUserError", "TooMuchWorkError",
]


class SamUserError(ValueError):
    """A user-facing problem (wrong layer, prompts on the wrong slice ...): shown as a notification."""


class SamTypeError(SamUserError, TypeError):
    """An argument of the wrong kind (a string where numbers are expected, None where a model is):
    both a ``ValueError`` (as every ``SamUserError``) and a ``TypeError``, so callers catching either keep working."""


class TooMuchWorkError(SamUserError):
    """A call would start far more work than is likely meant (thousands of tile encodings, a batch whose
    masks do not fit in memory): refused before it starts. The message gives the count, an estimate
    and how to go ahead; ``count`` and ``estimate`` (seconds or bytes, as the message says) hold them."""

    def __init__(self, message: str, count: int = 0, estimate: float | None = None) -> None:
        super().__init__(message)
        self.count, self.estimate = count, estimate


class MissingDependencyError(SamUserError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


class SamInputWarning(UserWarning):
    """Input that is allowed but probably not meant: prompts wholly outside the image, thresholds
    that let no mask through."""


class Cancelled(RuntimeError):
    """Raised by long functions when their ``cancel`` argument says so."""


class ModelDownloadError(RuntimeError):
    """A registry model could not be downloaded (network, server, or no known URL)."""


class ChecksumError(ModelDownloadError):
    """A download did not match the registry's hash; the file was not kept."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the architecture."""
