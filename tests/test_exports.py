"""The public surface is pinned: changing it is a deliberate act (update this test and the README)."""

from __future__ import annotations

import raftmesh
import raftmesh.client
import raftmesh.consensus


def test_top_level_exports() -> None:
    assert sorted(raftmesh.__all__) == sorted(
        ["DAG", "Client", "ClusterInfo", "RaftmeshError", "RunEvent", "RunInfo", "TaskInfo", "__version__"]
    )
    for name in raftmesh.__all__:
        assert hasattr(raftmesh, name)


def test_client_exports() -> None:
    assert sorted(raftmesh.client.__all__) == sorted(
        [
            "DAG",
            "Client",
            "ClusterInfo",
            "MemberInfo",
            "RunEvent",
            "RunInfo",
            "Task",
            "TaskInfo",
            "parse_addresses",
        ]
    )


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
