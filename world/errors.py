"""Errors raised by the world core.

Every bad input gets a specific exception that names the problem; the service maps these to gRPC status
codes in one place (``server/errors.py``). All derive from ``SpatiaError`` so callers can catch the family.
"""

from __future__ import annotations


class SpatiaError(Exception):
    """Base class of every error the project raises on purpose."""


class InvalidInputError(SpatiaError, ValueError):
    """An argument is malformed: wrong shape, NaN, non-rigid pose, non-positive intrinsics, ... (INVALID_ARGUMENT)."""


class ImageDecodeError(InvalidInputError):
    """Image or depth bytes could not be decoded (corrupt or unsupported file)."""


class NotFoundError(SpatiaError, LookupError):
    """A named thing (world, recording, case directory, file) does not exist (NOT_FOUND)."""


class AlreadyExistsError(SpatiaError):
    """A caller-chosen id is already taken (ALREADY_EXISTS)."""


class PreconditionError(SpatiaError):
    """The request is valid but the state does not allow it now (FAILED_PRECONDITION)."""


class LimitExceededError(SpatiaError):
    """A configured limit would be exceeded; the message names the limit (RESOURCE_EXHAUSTED)."""


class SnapshotError(SpatiaError):
    """A world snapshot is unreadable, truncated or of an unsupported version."""
