"""The public surface is pinned: changing it is a deliberate act (update this test and the README)."""

from __future__ import annotations

import raftmesh
import raftmesh.client
import raftmesh.consensus


def test_top_level_exports() -> None:
    assert sorted(raftmesh.__all__) == sorted(
        [
            "DAG",
            "Client",
            "ClusterInfo",
            "RaftmeshError",
            "RunEvent",
            "RunInfo",
            "TaskInfo",
            "__version__",
            "ActorContext",
            "Message",
            "actor",
            "agent",
            "tool",
        ]
    )
    for name in raftmesh.__all__:
        assert hasattr(raftmesh, name)


def test_client_exports() -> None:
    assert sorted(raftmesh.client.__all__) == sorted(
        [
            "DAG",
            "ApprovalInfo",
            "AttemptInfo",
            "AuditEventInfo",
            "AuditTrail",
            "BreakerInfo",
            "Client",
            "ClusterInfo",
            "DeadLetterInfo",
            "DecisionInfo",
            "FusionInfo",
            "GateInfo",
            "MemberInfo",
            "PreemptionInfo",
            "ReplicaInfo",
            "RerunInfo",
            "RetryInfo",
            "RunControlInfo",
            "OfferInfo",
            "RunEvent",
            "RunInfo",
            "Task",
            "TaskInfo",
            "UsageInfo",
            "parse_addresses",
        ]
    )


def test_agents_exports() -> None:
    import raftmesh.agents

    assert sorted(raftmesh.agents.__all__) == sorted(
        [
            "ENTRY_POINT_GROUP",
            "ActorContext",
            "ActorDef",
            "ActorHost",
            "HandlerError",
            "actor",
            "AgentDef",
            "AgentDefinitionError",
            "AgentHost",
            "AgentLoadError",
            "AgentNode",
            "AgentRegistry",
            "AgentSetupError",
            "DuplicateAgentError",
            "SpawnError",
            "SyncTaskContext",
            "TaskContext",
            "TaskKv",
            "TaskLocks",
            "agent",
            "default_registry",
            "load_agent",
            "load_agents",
        ]
    )


def test_error_classes_and_the_status_each_names() -> None:
    """One hierarchy: every raftmesh error is a RaftmeshError and names its gRPC status."""
    import raftmesh.errors as errors
    from raftmesh.agents import (
        AgentDefinitionError,
        AgentLoadError,
        AgentSetupError,
        DuplicateAgentError,
    )
    from raftmesh.agents._builtin import AgentInputError
    from raftmesh.storage.snapshots import SnapshotError
    from raftmesh.verify import HistoryError

    codes = {
        name: cls.code
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.RaftmeshError)
    }
    assert codes == {
        "RaftmeshError": "UNKNOWN",
        "InvalidArgument": "INVALID_ARGUMENT",
        "DagCycleError": "INVALID_ARGUMENT",
        "UnknownAgentError": "INVALID_ARGUMENT",
        "UnknownDependencyError": "INVALID_ARGUMENT",
        "LimitExceeded": "INVALID_ARGUMENT",
        "NotFound": "NOT_FOUND",
        "RunNotFound": "NOT_FOUND",
        "AlreadyExists": "ALREADY_EXISTS",
        "FailedPrecondition": "FAILED_PRECONDITION",
        "OutOfRange": "OUT_OF_RANGE",
        "Aborted": "ABORTED",
        "StaleToken": "ABORTED",
        "Unavailable": "UNAVAILABLE",
        "NoLeader": "UNAVAILABLE",
        "OutcomeUnknown": "UNAVAILABLE",
        "DeadlineExceeded": "DEADLINE_EXCEEDED",
        "ResourceExhausted": "RESOURCE_EXHAUSTED",
        "Unauthenticated": "UNAUTHENTICATED",
        "PermissionDenied": "PERMISSION_DENIED",
        "DataLoss": "DATA_LOSS",
        "Internal": "INTERNAL",
    }
    outside_errors = (
        AgentInputError,
        AgentDefinitionError,
        AgentLoadError,
        DuplicateAgentError,
        AgentSetupError,
        SnapshotError,
        HistoryError,
    )
    for outside in outside_errors:
        assert issubclass(outside, errors.RaftmeshError), outside
    # The SDK maps each status back to its base class.
    assert type(errors.error_for_code("OUT_OF_RANGE", "m")) is errors.OutOfRange
    assert type(errors.error_for_code("NO_SUCH_CODE", "m")) is errors.RaftmeshError


def test_only_the_raft_package_imports_pysyncobj() -> None:
    import ast
    import pathlib

    def imports_pysyncobj(path: pathlib.Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "pysyncobj" for a in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pysyncobj":
                return True
        return False

    pkg = pathlib.Path(raftmesh.__file__).parent
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if imports_pysyncobj(p))
    assert all(u.startswith("consensus/raft/") for u in users), users


def test_one_replicated_entry_point() -> None:
    from raftmesh.consensus.raft import member as raft

    replicated = [n for n, v in vars(raft._SyncObj).items() if getattr(v, "replicated", False)]
    assert replicated == ["apply_batch"] or sorted(replicated) == ["apply_batch", "apply_batch_v0"]


def test_aio_exports() -> None:
    import raftmesh.aio

    assert sorted(raftmesh.aio.__all__) == sorted(
        ["Client", "KvClient", "Lease", "LockClient", "LockContext", "MessagesClient", "Subscription"]
    )
    for name in raftmesh.aio.__all__:
        assert hasattr(raftmesh.aio, name)


def test_a_subpackage_loads_on_first_use_after_a_bare_import() -> None:
    """``import raftmesh`` loads neither the client nor grpcio (a process worker's start), yet
    ``raftmesh.client.X`` after it works as before."""
    import subprocess
    import sys

    code = (
        "import sys, raftmesh\n"
        "assert 'grpc' not in sys.modules and 'raftmesh.client' not in sys.modules\n"
        "assert raftmesh.client.Client is raftmesh.Client\n"
        "try:\n    raftmesh.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
        "assert not hasattr(raftmesh, 'client.x') and not hasattr(raftmesh, 'no_such_module')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
