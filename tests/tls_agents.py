"""Agents for tests/test_tls.py: each calls its own node's API the way README "TLS" tells agents to."""

from __future__ import annotations

from typing import Any

import raftmesh

SOURCE = __file__


class _SelfCall:
    def setup(self, node: Any) -> None:
        self.node = node

    def run(self, ctx: Any) -> Any:
        creds = self.node.credentials()
        with raftmesh.Client([self.node.grpc], credentials=creds, retry_deadline_s=10) as c:
            return {"leader": c.status().leader, "tls": creds.tls, "node": self.node.node_id}


@raftmesh.agent("selfcall_thread", isolation="thread")
class SelfCallThread(_SelfCall):
    pass


@raftmesh.agent("selfcall_process", isolation="process")
class SelfCallProcess(_SelfCall):
    pass
