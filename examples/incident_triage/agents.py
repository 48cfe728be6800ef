"""The incident-triage agent module: load it on every node (``--agents-module``).

It declares the tools the analyst ``llm`` tasks call (``@raftmesh.tool``: plain functions, the
model sees a JSON schema derived from their type hints) and one agent type, ``runbook``,
that the reviewer calls as a tool (any registered agent type can be a tool).

The tools read the incident API named by ``INCIDENT_API_URL`` in the node's environment.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import httpx

import raftmesh

Metric = Literal["error_rate", "latency_p99_ms", "db_connections_in_use"]


def _api(path: str, **params: Any) -> Any:
    base = os.environ.get("INCIDENT_API_URL", "http://127.0.0.1:8470")
    with httpx.Client(timeout=10) as c:  # a plain def tool runs in a worker thread: blocking is fine
        r = c.get(base + path, params=params)
        r.raise_for_status()
        return r.json()


@raftmesh.tool
def search_logs(service: str, pattern: str, limit: int = 20) -> list[str]:
    """Log lines of a service from the last hour that contain a pattern (case-insensitive)."""
    lines: list[str] = _api("/logs", service=service, pattern=pattern, limit=limit)
    return lines


@raftmesh.tool
def recent_deploys(service: str, hours: int = 24) -> list[dict[str, Any]]:
    """Deploys of a service in the last hours: when, version, author and the change."""
    deploys: list[dict[str, Any]] = _api("/deploys", service=service, hours=hours)
    return deploys


@raftmesh.tool
def metric_summary(service: str, metric: Metric) -> dict[str, Any]:
    """A metric of a service before and after the alert fired."""
    m: dict[str, Any] = _api("/metrics", service=service, metric=metric)
    return m


RUNBOOKS = {
    "connection pool exhausted": (
        "Roll back the last config change to the pool size, or raise pool.max_connections to the "
        "documented 50; confirm db_connections_in_use recovers; page the DB on-call if the "
        "database itself refuses connections."
    ),
    "high latency": "Check the dependency dashboards; shed load with the checkout feature flags.",
}


@raftmesh.agent("runbook", capabilities=["docs"], concurrency=8)
async def runbook(ctx: raftmesh.agents.TaskContext) -> dict[str, Any]:
    """The runbook entry for a symptom (input: {"service": ..., "symptom": ...})."""
    inp = ctx.input if isinstance(ctx.input, dict) else {}
    symptom = str(inp.get("symptom", "")).lower()
    for key, text in RUNBOOKS.items():
        if key in symptom:
            return {"service": inp.get("service"), "symptom": key, "steps": text}
    return {
        "service": inp.get("service"),
        "symptom": symptom,
        "steps": "no runbook entry; escalate to the owner",
    }
