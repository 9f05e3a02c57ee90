"""The one place where errors become gRPC statuses (docs/API.md, "Status codes"; docs/DESIGN.md).

Handlers raise the world core's exceptions (``world.errors``) or the service-only ones below; the wrappers
``unary`` and ``streaming`` turn them into a status so that every RPC answers the same way and the server keeps
serving. Every status carries, next to its readable message, AIP-193 details: a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer with an ``ErrorInfo`` (``reason``, ``domain`` = ``spatia.v1``, ``metadata``
such as the limit's name) and, for bad input that names a field, a ``BadRequest`` field violation.

Anything unexpected becomes INTERNAL whose message carries only an error id (``err-<12 hex>``): the exception's
text (paths, reprs) never reaches the client; the log has the id, the exception type and a bounded, plain
traceback (no locals), written off the event loop so one error never stalls other clients.
``ERROR_COUNTS["unexpected"]`` counts them (the fuzz tests require it to stay 0).

Ids (world, recording, session) are validated here, in one place, against one pattern: ``check_id``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import re
import shutil
import traceback
import uuid
from pathlib import Path

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from spatia.world.errors import (
    AlreadyExistsError, InvalidInputError, LimitExceededError, NotFoundError, PreconditionError, SnapshotError,
    SpatiaError,
)

log = structlog.get_logger("spatia.server")

DOMAIN = "spatia.v1"
DETAILS_KEY = "grpc-status-details-bin"
MAX_TRACEBACK_CHARS = 8000  # a logged traceback is cut to this many characters (its last, most useful part)

# Counters read by metrics: unexpected exceptions (INTERNAL) and all statuses by code name.
ERROR_COUNTS: dict[str, int] = {"unexpected": 0}


class OutOfRangeError(SpatiaError):
    """A seek or index past the end of what exists (OUT_OF_RANGE), e.g. a replay start after the last frame."""


class UnavailableError(SpatiaError):
    """The server is draining (shutdown in progress) and takes no new work (UNAVAILABLE)."""


class AbortedError(SpatiaError):
    """A concurrent change won the race (ABORTED); the client may retry."""


class DataLossError(SnapshotError):
    """A world's snapshot on disk is unreadable: its id stays taken and the file is never overwritten
    (DATA_LOSS); ``DeleteWorld`` removes it, ``spatia repair`` / docs/API.md say how to recover."""


# ---- ids: one pattern, one place -------------------------------------------------------------------------------

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ID_MAX_CHARS = {"world_id": 64, "session_id": 64, "recording_id": 129}  # recording = <world_id>.<session_id>


def check_id(value: str, field: str, kind: str = "world_id") -> str:
    """``value`` if it is a valid id of ``kind``; else INVALID_ARGUMENT naming ``field`` (empty ones included)."""
    limit = ID_MAX_CHARS[kind]
    if not value:
        raise invalid(field, f"{field} is required (1-{limit} characters of [A-Za-z0-9_.-])")
    if len(value) > limit or not ID_PATTERN.match(value) or ".." in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise invalid(field, f"{field} {shown!r} is not valid: 1-{limit} characters of [A-Za-z0-9_.-], starting "
                             "with a letter or digit, no '..'")
    return value


# ---- errors that carry details -------------------------------------------------------------------------------

def invalid(field: str, message: str) -> InvalidInputError:
    """INVALID_ARGUMENT whose details name ``field`` (a BadRequest field violation)."""
    exc = InvalidInputError(message)
    exc.field = field
    return exc


def limit_exceeded(limit: str, message: str) -> LimitExceededError:
    """RESOURCE_EXHAUSTED whose ErrorInfo metadata names the limit."""
    exc = LimitExceededError(message)
    exc.limit = limit
    return exc


_data_dir: Path | None = None


def set_data_dir(path: Path) -> None:
    """The data dir whose free space a disk-full answer reports."""
    global _data_dir
    _data_dir = Path(path)


def disk_full(exc: OSError) -> LimitExceededError:
    """RESOURCE_EXHAUSTED for ENOSPC / EDQUOT, naming the data dir's space (not its path)."""
    space = ""
    if _data_dir is not None:
        try:
            u = shutil.disk_usage(_data_dir)
            space = f" ({u.free / 2**20:.1f} MiB free of {u.total / 2**20:.1f} MiB)"
        except OSError:
            pass
    err = limit_exceeded("data_dir_space", f"the server's data dir is out of disk space{space}; the last good "
                                           "snapshot is kept; free space or delete worlds / recordings")
    err.reason = "DISK_FULL"
    return err


# Most specific first: ImageDecodeError is an InvalidInputError and maps with it.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED"),
    (NotFoundError, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE, "OUT_OF_RANGE"),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (AbortedError, grpc.StatusCode.ABORTED, "ABORTED"),
    (SnapshotError, grpc.StatusCode.DATA_LOSS, "SNAPSHOT_UNREADABLE"),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc`` (INTERNAL: a message with an error id only)."""
    code, message, _ = _classify(exc)
    return code, message


def _classify(exc: BaseException) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        exc = disk_full(exc)
    for cls, code, reason in _STATUS:
        if isinstance(exc, cls):
            message = str(exc)
            return code, message, _details(code, message, getattr(exc, "reason", reason), exc)
    error_id = getattr(exc, "error_id", None) or f"err-{uuid.uuid4().hex[:12]}"
    try:
        exc.error_id = error_id  # the same id in the log and in the status
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        pass
    message = f"internal error {error_id} (the server's log has the details)"
    return grpc.StatusCode.INTERNAL, message, _details(grpc.StatusCode.INTERNAL, message, "INTERNAL", exc,
                                                       {"error_id": error_id})


def _details(code: grpc.StatusCode, message: str, reason: str, exc: BaseException,
             extra: dict[str, str] | None = None) -> status_pb2.Status:
    metadata = dict(extra or {})
    for attr in ("limit", "field"):
        if getattr(exc, attr, None):
            metadata[attr] = str(getattr(exc, attr))
    details = []
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    details.append(info)
    if getattr(exc, "field", None):
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=message)]))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


def _log_unexpected(method: str, error_id: str, exc: BaseException) -> None:
    """Plain, bounded traceback (no locals, no rich rendering), on a worker thread."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=30))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    log.error("rpc failed unexpectedly", method=method, error_id=error_id, error_type=type(exc).__name__,
              traceback=text)


def _error_id(status: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    for d in status.details:
        if d.Unpack(info):
            return info.metadata.get("error_id", "")
    return ""


def report(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """Classify ``exc``, count it, and log it (unexpected ones off the event loop)."""
    code, message, status = _classify(exc)
    ERROR_COUNTS[code.name] = ERROR_COUNTS.get(code.name, 0) + 1
    if code is grpc.StatusCode.INTERNAL:
        ERROR_COUNTS["unexpected"] += 1
        error_id = _error_id(status)
        try:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, _log_unexpected, method, error_id, exc)
        except RuntimeError:  # no loop: log here
            _log_unexpected(method, error_id, exc)
    else:
        log.info("rpc rejected", method=method, code=code.name, reason=message[:500])
    return code, message, status


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code, message, status = report(exc, method)
    await context.abort(code, message, trailing_metadata=((DETAILS_KEY, status.SerializeToString()),))


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
