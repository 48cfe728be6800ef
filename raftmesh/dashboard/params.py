"""Every query and path parameter of the dashboard's API, checked at the boundary: a bad one is a
400 naming it (an unknown one too, and a token, which never belongs in a URL)."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from ..consensus import limits
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from .errors import bad

MAX_OFFSET = 1_000_000
MAX_PREFIX_CHARS = 1024

_RUN_STATUSES = {n.removeprefix("RUN_STATUS_") for n in pb.RunStatus.DESCRIPTOR.values_by_name} - {
    "UNSPECIFIED"
}


def query(request: web.Request, *allowed: str) -> dict[str, str]:
    q = request.query
    for k in q:
        if k in ("token", "access_token"):
            raise bad("tokens never go in URLs: send 'Authorization: Bearer TOKEN'")
        if k not in allowed:
            raise bad(
                f"unknown query parameter {k[:40]!r}" + (f"; use {', '.join(allowed)}" if allowed else "")
            )
        if len(q.getall(k)) > 1:
            raise bad(f"query parameter {k!r} is given more than once")
    return {k: q[k] for k in q}


def whole(q: dict[str, str], name: str, lo: int, hi: int, default: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise bad(f"{name} must be a whole number between {lo} and {hi}, got {raw[:40]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise bad(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def run_status(q: dict[str, str]) -> pb.RunStatus:
    raw = q.get("status", "")
    if not raw:
        return pb.RUN_STATUS_UNSPECIFIED
    name = raw.upper()
    if name not in _RUN_STATUSES:
        raise bad(f"status must be one of {', '.join(sorted(_RUN_STATUSES))}, got {raw[:40]!r}")
    return cast(pb.RunStatus, pb.RunStatus.Value(f"RUN_STATUS_{name}"))


def namespace(q: dict[str, str]) -> str:
    ns = q.get("namespace", "")
    why = limits.namespace_error(ns) if ns else ""
    if why:
        raise bad(why)
    return ns


def prefix(q: dict[str, str]) -> str:
    p = q.get("prefix", "")
    if len(p) > MAX_PREFIX_CHARS or not limits.printable(p):
        raise bad(f"prefix must be at most {MAX_PREFIX_CHARS} printable characters")
    return p


def check_id(what: str, value: str) -> None:
    if not value or len(value) > limits.MAX_ID_CHARS or not limits.printable(value):
        raise bad(f"{what} must be 1-{limits.MAX_ID_CHARS} printable characters")


def run_id(request: web.Request) -> str:
    v = request.match_info["run_id"]
    check_id("run id", v)
    return v


def task_id(request: web.Request) -> str:
    v = request.match_info["task_id"]
    if not v or len(v) > 2 * limits.MAX_ID_CHARS or not limits.printable(v):
        raise bad(f"task id must be 1-{2 * limits.MAX_ID_CHARS} printable characters")
    return v
