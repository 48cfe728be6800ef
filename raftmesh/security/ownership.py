"""Ownership and namespace checks, finer than the role table: made by the services, per call.

The interceptor binds the caller's ``raftmesh.calls.Call`` (principal, role, namespaces);
these helpers read it and raise ``PermissionDenied``. Each is O(1) (a run's namespace and
submitter are fields of the run, a key's namespace is its first path segment), so a
call pays nothing for them beyond one dict lookup. Outside a call (the node acting on its
own) everything is allowed, as on an open cluster (whose callers have every namespace).

- A run belongs to a namespace ("" the default one). A token limited to namespaces
  submits only into them and sees and touches only runs in them.
- A KV key or lock name ``NS/rest`` is in namespace ``NS``; a limited token may use only
  keys under one of its namespaces (any other key is refused).
- A ``submitter`` may cancel only runs whose submitter is its own principal;
  ``operator`` and ``admin`` any run.
"""

from __future__ import annotations

from .. import calls
from ..errors import PermissionDenied
from .roles import Role


def _call() -> calls.Call | None:
    """The call whose access to a run needs checking (None: it may touch every run)."""
    c = calls.current()
    return None if c is None or ("*" in c.namespaces and c.role != Role.SUBMITTER.label) else c


def principal_or(fallback: str) -> str:
    """Who the caller is, for what it makes (a run's submitter, an approval's decider): the
    authenticated principal (``fallback``, e.g. the peer address,
    on an open cluster where everyone is ``anonymous``)."""
    c = calls.current()
    return c.principal if c is not None and c.principal != calls.ANONYMOUS else fallback


def restricted() -> bool:
    """True if the caller is limited to some namespaces (lists must be filtered for it)."""
    c = calls.current()
    return c is not None and "*" not in c.namespaces


def may_see(namespace: str) -> bool:
    c = calls.current()
    return c is None or c.may_use(namespace)


def check_namespace(namespace: str, what: str = "this namespace") -> None:
    c = calls.current()
    if c is not None and not c.may_use(namespace):
        label = repr(namespace) if namespace else "the default namespace"
        raise PermissionDenied(
            f"{c.principal} may not use {label} ({what}); its token is limited to "
            f"{', '.join(c.namespaces) or 'no namespace'}"
        )


def check_run(namespace: str, owner: str, run_id: str, *, cancel: bool = False) -> None:
    """May the caller see (``cancel``: cancel) run ``run_id`` of ``namespace`` submitted by ``owner``?"""
    c = _call()
    if c is None:
        return
    if not c.may_use(namespace):
        # Said as "not found" would hide that the run exists; a limited token is told the rule.
        raise PermissionDenied(
            f"run {run_id!r} is not in a namespace {c.principal} may use ({', '.join(c.namespaces)})"
        )
    if cancel and c.role == Role.SUBMITTER.label and owner != c.principal:
        raise PermissionDenied(
            f"run {run_id!r} was submitted by {owner or 'someone else'}; a submitter may cancel only "
            "its own runs (an operator or admin may cancel any)"
        )


def key_namespace(key: str) -> str:
    """The namespace a KV key or lock name is in: its first ``/`` segment ("" if none)."""
    head, sep, _ = key.partition("/")
    return head if sep else ""


def check_key(key: str) -> None:
    """May the caller use KV key (or lock name, or prefix) ``key``?"""
    c = calls.current()
    if c is None or "*" in c.namespaces:
        return
    ns = key_namespace(key)
    if not ns or ns not in c.namespaces:
        raise PermissionDenied(
            f"key {key[:80]!r} is not under a namespace {c.principal} may use: its token may use only "
            f"keys under {', '.join(n + '/' for n in c.namespaces)}"
        )


def may_cancel_only_own() -> bool:
    """True if the caller is a ``submitter`` (its cancels need the run's submitter)."""
    c = calls.current()
    return c is not None and c.role == Role.SUBMITTER.label
