"""Agents for the secret-redaction tests (``tests/test_audit.py``): one logs the node's API key
and fails quoting its secret input; one returns a digest of what it received."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from raftmesh.agents import AgentRegistry, TaskContext

SOURCE = "tests.secret_agents:register_agents"
log = logging.getLogger("raftmesh.agent.leaky")


async def _leaky(ctx: TaskContext) -> Any:
    key = os.environ.get("RAFTMESH_TEST_API_KEY")
    log.warning("calling out with key %s", key)  # a module logger: the node's filter masks env keys
    ctx.logger.warning(
        "logging in with password %s", ctx.input["password"]
    )  # the attempt's logger masks inputs
    raise RuntimeError(f"login refused for password {ctx.input['password']}")


async def _digest(ctx: TaskContext) -> Any:
    return {"sha256": hashlib.sha256(str(ctx.input["password"]).encode()).hexdigest()}


def register_agents(reg: AgentRegistry) -> None:
    reg.register("leaky", _leaky, isolation="async", source=SOURCE)
    reg.register("digest", _digest, isolation="async", source=SOURCE)
