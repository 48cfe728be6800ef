"""The one error hierarchy of raftmesh.

Every error names the gRPC status code it maps to (as the code's name, so this
module imports nothing from grpc). The node translates errors to the wire in one
place (``raftmesh.node.service``) and the SDK translates them back
(``raftmesh.client``), so a caller catches the same class on either side.
"""

from __future__ import annotations


class RaftmeshError(Exception):
    """Base class. ``code`` is the name of a ``grpc.StatusCode``."""

    code: str = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RaftmeshError):
    """The request is malformed; the message says what to fix."""

    code = "INVALID_ARGUMENT"


class DagCycleError(InvalidArgument):
    """The submitted DAG has a cycle; the message names it."""


class UnknownAgentError(InvalidArgument):
    """A task names an agent type that no node offers."""


class UnknownDependencyError(InvalidArgument):
    """A task depends on a task id that is not in the run."""


class LimitExceeded(InvalidArgument):
    """An input is over a documented limit (see README, "Limits")."""


class NotFound(RaftmeshError):
    code = "NOT_FOUND"


class RunNotFound(NotFound):
    pass


class AlreadyExists(RaftmeshError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(RaftmeshError):
    code = "FAILED_PRECONDITION"


class Aborted(RaftmeshError):
    """The operation lost a race (e.g. a stale fencing token); retrying may succeed."""

    code = "ABORTED"


class StaleToken(Aborted):
    """A fencing token is older than the current grant."""


class Unavailable(RaftmeshError):
    """The cluster cannot serve the request right now; retry, with the same idempotency key."""

    code = "UNAVAILABLE"


class NoLeader(Unavailable):
    pass


class OutcomeUnknown(Unavailable):
    """A write may or may not have been applied. Retrying with the same request id is safe."""


class DeadlineExceeded(RaftmeshError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(RaftmeshError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(RaftmeshError):
    code = "UNAUTHENTICATED"


class PermissionDenied(RaftmeshError):
    code = "PERMISSION_DENIED"


class Internal(RaftmeshError):
    code = "INTERNAL"


_BY_CODE: dict[str, type[RaftmeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def error_for_code(code: str, message: str) -> RaftmeshError:
    """The most specific error class for a status code name (used by the SDK)."""
    return _BY_CODE.get(code, RaftmeshError)(message)


def clip_message(message: str, max_bytes: int | None = None) -> str:
    """``message`` as it may go into a gRPC status: valid UTF-8, at most ``max_bytes`` (plus a count).

    grpc sends the message percent-encoded in a trailer (at most 3 bytes per byte) and the
    client refuses trailers over 16 KiB, so an error that echoes a long input (an id, a cycle)
    would reach the client as RESOURCE_EXHAUSTED instead of the error. Lone surrogates (which
    have no UTF-8) are replaced.
    """
    # Imported here: the consensus package imports this module (results name their errors).
    from .consensus.limits import MAX_STATUS_MESSAGE_BYTES

    limit = MAX_STATUS_MESSAGE_BYTES if max_bytes is None else max_bytes
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    head = data[:limit].decode("utf-8", "ignore")
    return f"{head}…({len(message) - len(head)} more characters)"
