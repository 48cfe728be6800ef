"""Roles and the one table of which role each gRPC method needs.

Roles are ordered: ``reader`` < ``submitter`` < ``operator`` < ``admin``; a role may do
everything the roles below it may. ``node`` is apart: the identity nodes use with each
other (the ``Peer`` service, which no person's token may call) and for their agents,
which act with their node's identity; it may also do what ``admin`` may.

Ownership and namespaces are finer than a method: a ``submitter`` may cancel only the
runs it submitted, and a token limited to namespaces touches only runs and keys in them.
Those checks live where the run or key is known (the services); this table is the
coarse gate every call passes first.
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    READER = 1
    SUBMITTER = 2
    OPERATOR = 3
    ADMIN = 4
    NODE = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {text[:40]!r}: use one of {', '.join(r.label for r in cls)}"
            ) from None


OPEN = 0
"""Needs no credential at all (health checks, so probes work on a secured cluster)."""

R, S, OP, A, N = Role.READER, Role.SUBMITTER, Role.OPERATOR, Role.ADMIN, Role.NODE

METHOD_ROLES: dict[str, int] = {
    # Cluster
    "/raftmesh.v1.Cluster/SubmitRun": S,
    "/raftmesh.v1.Cluster/GetRun": R,
    "/raftmesh.v1.Cluster/ListRuns": R,
    "/raftmesh.v1.Cluster/WatchRun": R,
    "/raftmesh.v1.Cluster/SubmitAndWatchRun": S,
    "/raftmesh.v1.Cluster/RunToEnd": S,
    "/raftmesh.v1.Cluster/CancelRun": S,  # a submitter: only its own runs (checked by the service)
    "/raftmesh.v1.Cluster/ClusterStatus": R,
    "/raftmesh.v1.Cluster/ListDeadLetters": R,
    "/raftmesh.v1.Cluster/RetryTask": OP,
    "/raftmesh.v1.Cluster/ApproveTask": OP,
    "/raftmesh.v1.Cluster/ListApprovals": R,
    "/raftmesh.v1.Cluster/PauseRun": OP,
    "/raftmesh.v1.Cluster/ResumeRun": OP,
    "/raftmesh.v1.Cluster/RerunTask": OP,
    "/raftmesh.v1.Cluster/GetAudit": R,
    "/raftmesh.v1.Cluster/WhoAmI": R,
    "/raftmesh.v1.Cluster/WatchRuns": R,
    # Kv
    "/raftmesh.v1.Kv/Get": R,
    "/raftmesh.v1.Kv/List": R,
    "/raftmesh.v1.Kv/Watch": R,
    "/raftmesh.v1.Kv/Put": S,
    "/raftmesh.v1.Kv/Delete": S,
    "/raftmesh.v1.Kv/Txn": S,
    "/raftmesh.v1.Kv/Lease": S,
    # Locks
    "/raftmesh.v1.Locks/Acquire": S,
    "/raftmesh.v1.Locks/Release": S,
    "/raftmesh.v1.Locks/KeepAlive": S,
    "/raftmesh.v1.Locks/List": R,
    # Messages
    "/raftmesh.v1.Messages/Send": S,
    "/raftmesh.v1.Messages/Request": S,
    "/raftmesh.v1.Messages/Subscribe": R,
    "/raftmesh.v1.Messages/DeadLetters": R,
    "/raftmesh.v1.Messages/SubscribeActor": OP,
    "/raftmesh.v1.Messages/ListActivations": R,
    # Peer: nodes only
    "/raftmesh.v1.Peer/Heartbeat": N,
    "/raftmesh.v1.Peer/Exchange": N,
    # Standard services
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": R,
}


def required_role(method: str) -> int | None:
    """The role ``method`` needs (``OPEN``: none); None for a method no table row names
    (refused: a new RPC must be given its role here before anyone can call it)."""
    return METHOD_ROLES.get(method)


def allows(role: Role, method: str) -> bool:
    need = required_role(method)
    if need is None:
        return False
    if need == OPEN:
        return True
    if need == Role.NODE:
        return role == Role.NODE
    return role >= need
