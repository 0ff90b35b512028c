"""The user-facing errors: what went wrong, in words a user can act on.

Every layer raises these (and the built-in ``FileNotFoundError``/``KeyError``/``ValueError`` where
those say it best); the widget shows their message as a notification. No imports: any module may
import this one.
"""

from __future__ import annotations

__all__ = ["Cancelled", "CheckpointError", "ChecksumError", "ModelDownloadError", "SamUserError"]


class SamUserError(ValueError):
    """A user-facing problem (wrong layer, prompts on the wrong slice ...): shown as a notification."""


class Cancelled(RuntimeError):
    """Raised by long functions when their ``cancel`` argument says so."""


class ModelDownloadError(RuntimeError):
    """A registry model could not be downloaded (network, server, or no known URL)."""


class ChecksumError(ModelDownloadError):
    """A download did not match the registry's hash; the file was not kept."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the architecture."""
