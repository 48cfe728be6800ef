"""The status codes of the state machine's results.

Each name is a gRPC status code name, so ``raftmesh.errors.error_for_code`` maps a
rejection to its error class (and the node to its wire status) by name, with no table
to keep in step. Its own module because the lock table (``locks.py``) stores codes of
ended requests and ``results.py`` depends on the state that holds that table.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The command is malformed or over a limit; the message says what to fix."""
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """The state does not allow it now (e.g. no assignment of a batch applies)."""
    ABORTED = "ABORTED"
    """Lost a race: a stale fencing token, or the victim of a deadlock."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """A lock request's wait timed out."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The caller may not: a lock release or renewal without the grant's lease handle."""
    CANCELLED = "CANCELLED"
    """A lock request's waiter gave up."""
    INTERNAL = "INTERNAL"
    """A bug in apply (logged); nothing was changed."""
