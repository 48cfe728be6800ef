"""What an agent receives when it runs one attempt of a task."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskContext:
    """One attempt of one task.

    ``token`` is the attempt's fencing token: results and fenced writes carrying
    an older token are rejected by the state machine. ``cancelled`` is set when
    the cluster no longer wants this attempt (run cancelled, attempt fenced).
    """

    run_id: str
    task_id: str
    attempt: int
    token: int
    node_id: str
    input: Any
    upstream: dict[str, Any]
    """Outputs of the task's dependencies, by task id."""
    trace_id: str
    logger: logging.LoggerAdapter[logging.Logger]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    kv: Any = None
    """The cluster KV store; writes are fenced by this attempt's token (``raftmesh.agents.TaskKv``)."""
    locks: Any = None
    """Locks owned by this attempt (``raftmesh.agents.TaskLocks``)."""
