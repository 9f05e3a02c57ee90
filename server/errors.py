"""The one place where errors become gRPC status codes (``docs/DESIGN.md``, "Status codes").

Handlers raise the world core's exceptions (``world.errors``) or the two service-only ones below; the wrappers
``unary`` and ``streaming`` turn them into ``context.abort(code, message)`` so that every RPC answers the same
way and the server keeps serving. Anything unexpected becomes INTERNAL with the traceback in the log.
"""

from __future__ import annotations

import functools

import grpc
import structlog

from spatia.world.errors import (
    AlreadyExistsError, InvalidInputError, LimitExceededError, NotFoundError, PreconditionError, SnapshotError,
    SpatiaError,
)

log = structlog.get_logger("spatia.server")


class OutOfRangeError(SpatiaError):
    """A seek or index past the end of what exists (OUT_OF_RANGE), e.g. a replay start after the last frame."""


class UnavailableError(SpatiaError):
    """The server is draining (shutdown in progress) and takes no new work (UNAVAILABLE)."""


# Most specific first: ImageDecodeError is an InvalidInputError and maps with it.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (SnapshotError, grpc.StatusCode.DATA_LOSS),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("rpc failed", method=method)
    else:
        log.info("rpc rejected", method=method, code=code.name, reason=message)
    await context.abort(code, message)


def unary(fn):
    """Wrap an ``async def handler(self, request, context)`` (unary or client-streaming response)."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 -- mapped to a status, never crashes the server
            await abort_with(context, exc, fn.__name__)

    return wrapper


def streaming(fn):
    """Wrap an async-generator handler (server- or bidirectional-streaming response)."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, fn.__name__)

    return wrapper
