"""``raftmesh node``: run one node in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from ..agents._pools import PROCESS_POOL_SIZE, THREAD_POOL_SIZE
from ..consensus.raft import RaftTimings
from ..errors import InvalidArgument
from ..log_format import JsonFormatter, skip_unused_record_fields
from ..redaction import filter_for_env
from ..storage.audit import DEFAULT_MAX_BYTES as DEFAULT_AUDIT_BYTES
from ..storage.audit import DEFAULT_MAX_RUNS as DEFAULT_AUDIT_RUNS
from .config import build_config, load_config_file, parse_peers, read_secret_file
from .runtime import NodeRuntime
from .tls import load_tls


def _setting(args: argparse.Namespace, file_cfg: dict[str, Any], name: str, default: Any = None) -> Any:
    v = getattr(args, name.replace("-", "_"), None)
    if v is not None:
        return v
    return file_cfg.get(name, file_cfg.get(name.replace("-", "_"), default))


def _flag(name: str, v: Any) -> bool:
    """A boolean setting: a config file's ``"false"`` (a string) must not read as true."""
    if isinstance(v, bool):
        return v
    raise InvalidArgument(f"{name} must be true or false in the config file, got {v!r}")


def _number(name: str, v: Any, kind: type[int] | type[float]) -> Any:
    """A numeric setting; a config file's ``"x"`` is a usage error that names the key."""
    # A config file's true or 2.9 for a count is a mistake, not 1 or 2.
    if isinstance(v, bool) or (kind is int and isinstance(v, float) and not v.is_integer()):
        raise InvalidArgument(f"{name} must be a whole number, got {str(v)[:40]!r}")
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be a number, got {str(v)[:40]!r}") from None


def _names(name: str, v: Any) -> tuple[str, ...]:
    """A list setting: a list of strings, or one comma-separated string."""
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise InvalidArgument(
            f"{name} must be a list of strings or a comma-separated string, got {str(v)[:40]!r}"
        )
    return tuple(i.strip() for i in items if i.strip())


def _optional_int(name: str, v: Any) -> int | None:
    return None if v is None else int(_number(name, v, int))


def _otel_spans(node_id: str, endpoint: str) -> Any:
    """The OTLP exporter, imported only when asked for (the ``otel`` extra)."""
    if not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"--otel-endpoint {endpoint[:80]!r}: give the collector's http:// or https:// URL"
        )
    try:
        from .otel import OtelSpans
    except ImportError as exc:
        raise InvalidArgument(
            f"--otel-endpoint needs OpenTelemetry ({exc.name} is not installed): pip install 'raftmesh[otel]'"
        ) from None
    return OtelSpans(node_id, endpoint)


def otel_spans_for(node_id: str, flag: Any, ambient: str | None, log: logging.Logger) -> Any:
    """The span exporter, or None. ``--otel-endpoint`` (``flag``) that cannot work stops the node;
    an ambient ``OTEL_EXPORTER_OTLP_ENDPOINT`` (set for some other program, perhaps) only warns."""
    if flag:
        return _otel_spans(node_id, str(flag))
    if not ambient:
        return None
    try:
        return _otel_spans(node_id, ambient)
    except InvalidArgument as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set, but no spans are exported: %s", exc)
        return None


OPEN_FILES_WANTED = 65_536


def _raise_open_files_limit(log: logging.Logger) -> None:
    """Every client connection is a descriptor: a soft limit of 1,024 (a common default) would let a
    thousand idle connections stop a node accepting, so take up to the hard limit the OS allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, want, exc)


GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a thread that wants the GIL waits before the running one is asked to yield.

CPython's default, 5 ms, is paid on every hand-off between a node's threads (Raft tick,
proposer, asyncio loop, audit): a lock release waited for several of them between the RPC,
the commit and the reply (py-spy: the leader's threads mostly idle while a contended lock
cycle took 14 ms).
"""


def run_node(args: argparse.Namespace) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    file_cfg = load_config_file(args.config) if args.config else {}
    node_id = _setting(args, file_cfg, "id")
    missing = [f"--{k}" for k in ("id", "raft", "grpc", "data-dir") if not _setting(args, file_cfg, k)]
    if missing:
        raise InvalidArgument(f"raftmesh node needs {', '.join(missing)} (or a --config file with them)")
    peers_text = _setting(args, file_cfg, "peers", "")
    peers = parse_peers(peers_text if isinstance(peers_text, str) else ",".join(peers_text))
    secret_file = _setting(args, file_cfg, "raft-secret-file")
    secret = (
        read_secret_file(secret_file)
        if secret_file
        else os.environ.get("RAFTMESH_RAFT_SECRET")
        or os.environ.get("RAFTMESH_RAFT_PASSWORD")
        or file_cfg.get("raft_password")
    )
    agents = _setting(args, file_cfg, "agents", "")
    agent_list = _names("agents", agents)
    modules = _names("agents_modules", _setting(args, file_cfg, "agents-modules", ()))
    cfg = build_config(
        node_id=node_id,
        raft=_setting(args, file_cfg, "raft"),
        grpc_addr=_setting(args, file_cfg, "grpc"),
        peers=peers,
        data_dir=_setting(args, file_cfg, "data-dir"),
        slots=_number("slots", _setting(args, file_cfg, "slots", 64), int),
        agents=agent_list,
        raft_password=secret or None,
        fsync=not _flag("unsafe-no-fsync", _setting(args, file_cfg, "unsafe-no-fsync", False)),
        timings=RaftTimings(
            log_compaction_entries=_number(
                "snapshot-entries", _setting(args, file_cfg, "snapshot-entries", 20_000), int
            ),
            log_compaction_s=_number(
                "snapshot-seconds", _setting(args, file_cfg, "snapshot-seconds", 600.0), float
            ),
        ),
        node_down_after_s=_number("node-down-after", _setting(args, file_cfg, "node-down-after", 5.0), float),
        archive_applied=_flag("archive-applied", _setting(args, file_cfg, "archive-applied", False)),
        agent_threads=_number(
            "agent-threads", _setting(args, file_cfg, "agent-threads", THREAD_POOL_SIZE), int
        ),
        agent_processes=_number(
            "agent-processes", _setting(args, file_cfg, "agent-processes", PROCESS_POOL_SIZE), int
        ),
        agents_modules=modules,
        audit_max_runs=_number(
            "audit-max-runs", _setting(args, file_cfg, "audit-max-runs", DEFAULT_AUDIT_RUNS), int
        ),
        audit_max_bytes=_number(
            "audit-max-bytes", _setting(args, file_cfg, "audit-max-bytes", DEFAULT_AUDIT_BYTES), int
        ),
        preempt_priority=_optional_int("preempt-priority", _setting(args, file_cfg, "preempt-priority")),
        tokens_file=_setting(args, file_cfg, "tokens-file"),
        tls=load_tls(
            _setting(args, file_cfg, "tls-cert"),
            _setting(args, file_cfg, "tls-key"),
            _setting(args, file_cfg, "tls-ca"),
            _setting(args, file_cfg, "tls-client-auth"),
        ),
        metrics=str(_setting(args, file_cfg, "metrics", "") or ""),
        http=str(_setting(args, file_cfg, "http", "") or ""),
        http_max_streams=_number("http-max-streams", _setting(args, file_cfg, "http-max-streams", 64), int),
        http_client_auth=str(_setting(args, file_cfg, "http-client-auth", "") or ""),
    )
    skip_unused_record_fields()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(cfg.node_id))
    handler.addFilter(filter_for_env(cfg.raft_password))  # keys and tokens never reach the log
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), handlers=[handler])
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    log = logging.getLogger("raftmesh.node")
    if not cfg.raft_password:
        log.warning("no cluster secret: Raft traffic on %s is unauthenticated (loopback only)", cfg.raft)
    host = cfg.grpc.rsplit(":", 1)[0]
    if cfg.tls is not None and not cfg.tls.covers(host):
        log.warning(
            "the certificate in --tls-cert does not name %s (the host of --grpc): peers and clients "
            "dialling %s will fail its hostname check (raftmesh certs init --hosts)",
            host,
            cfg.grpc,
        )
    if not cfg.fsync:
        log.warning("--unsafe-no-fsync: a power cut on every node can lose acknowledged writes")

    _raise_open_files_limit(log)

    import uvloop

    node = NodeRuntime(cfg)
    spans = otel_spans_for(
        cfg.node_id,
        _setting(args, file_cfg, "otel-endpoint"),
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        log,
    )
    if spans is not None:
        node.spans = spans
        log.info("exporting run and attempt spans to %s", spans.url)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.stop)
        auth = node.authenticator
        if auth is not None:  # read and parsed off the loop: the file may be megabytes of YAML
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, auth.reload))
        await node.run()

    uvloop.run(main())
    return 0
