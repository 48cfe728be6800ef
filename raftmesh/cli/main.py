"""The ``raftmesh`` command. Its flags, ``--json`` shapes and exit codes are a
contract relied on by scripts (README, "CLI"): extend, never break.

Exit codes: 0 ok; 1 the run did not succeed (FAILED or CANCELLED); 2 bad input
or usage; 3 not found; 4 cluster unavailable, deadline exceeded, or a lock not
granted; 5 other error (e.g. FAILED_PRECONDITION: `retry` of a task that is not a
dead letter); 6 aborted (stale fencing token, deadlock victim).
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from typing import Any, TextIO

from ..consensus.limits import UNPRINTABLE_CATEGORIES
from ..errors import (
    Aborted,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RaftmeshError,
    Unauthenticated,
    Unavailable,
)

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_ERROR, EXIT_ABORTED = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
EXIT_DENIED = 7
"""The credential was refused: UNAUTHENTICATED (no or bad token/certificate) or PERMISSION_DENIED."""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _tty(args: argparse.Namespace) -> Any:
    """A rich console when stdout is a terminal a person reads (render.py), else None: --json,
    --plain, pipes and TERM=dumb keep the plain output scripts parse (rich is not even imported)."""
    if getattr(args, "json", False) or getattr(args, "plain", False) or not sys.stdout.isatty():
        return None
    from .render import console_for

    # main() wraps stdout in an escaping writer (this module's class: `python -m` loads it as __main__)
    out = sys.stdout
    return console_for(args, out.inner if isinstance(out, _EscapingWriter) else out)


def _client(args: argparse.Namespace) -> Any:
    from ..client import Client

    return Client(
        args.addresses,
        timeout_s=args.timeout,
        retry_deadline_s=max(args.timeout, 30.0) if args.retry_deadline is None else args.retry_deadline,
        token=args.cred_token,
        ca=args.cred_ca,
        cert=args.cred_cert,
        key=args.cred_key,
        connect_timeout_s=args.connect_timeout,
        ping_timeout_s=args.ping_timeout,
    )


def _usage_text(u: Any) -> str:
    return f"usage: tokens_in={u.tokens_in} tokens_out={u.tokens_out} cost={u.cost:g}"


def _fusion_text(f: Any) -> str:
    """One line for a replicated task: its rule and what each replica counts for so far."""
    parts = []
    for r in f.standings:
        counts = r.to_json(f.rule)
        mark = next(
            (f" {k}={counts[k]}" for k in ("vote", "weight", "score") if counts.get(k) is not None), ""
        )
        parts.append(f"{r.id} {r.status}{mark}" + (f" on {r.node}" if r.node else ""))
    return f"fusion {f.rule}, quorum {f.quorum} of {f.replicas}: " + ", ".join(parts)


def _print_run(run: Any) -> None:
    print(f"run {run.run_id}: {run.status}" + (f" ({run.error})" if run.error else ""))
    if run.usage.tokens_in or run.usage.tokens_out or run.usage.cost:
        print(f"  {_usage_text(run.usage)}")
    if run.reason:
        print(f"  reason: {run.reason}")
    if run.budget is not None:
        limits = ", ".join(f"{k}={v:g}" for k, v in run.budget.items() if v)
        print(f"  budget: {limits or 'none'}")
    for step in run.compensations:
        print(f"  compensation of {step.task_id}: {step.status} attempt={step.attempt}")
    # Children (map instances, replicas, spawned tasks) are listed under their parent, indented.
    todo = [(t, 0) for t in reversed(run.tasks.values()) if not t.parent or t.parent not in run.tasks]
    while todo:
        t, level = todo.pop()
        _print_task(t, level, run.tasks)
        todo.extend((run.tasks[c], level + 1) for c in reversed(t.children) if c in run.tasks)


_ENDED_TASK = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"})


def _print_task(t: Any, level: int, tasks: dict[str, Any]) -> None:
    out = json.dumps(t.output) if t.output is not None else ""
    if len(out) > 80:
        out = out[:77] + "..."
    where = f" on {t.node}" if t.node else ""
    if t.status == "SKIPPED":
        extra = f" ({t.error})" if t.error else ""
    else:
        extra = f" error={t.error}" if t.error and t.status != "SUCCEEDED" else ""
    if t.waiting_reason:
        extra += f" waiting: {t.waiting_reason}"
    if t.suspect_moves:
        extra += f" suspect_moves={t.suspect_moves}"
    if t.children:
        ended = sum(1 for c in t.children if c in tasks and tasks[c].status in _ENDED_TASK)
        extra += f" children={ended}/{len(t.children)} ended"
    if t.origin == "map":
        item = json.dumps(t.item)
        extra += f" item={item if len(item) <= 40 else item[:37] + '...'}"
    name = "  " * level + t.id
    attempt = f" attempt={t.attempt}" if t.attempt or not t.children else ""
    print(f"  {name:<24} {t.status:<10}{attempt}{where} {out}{extra}".rstrip())
    if t.usage.tokens_in or t.usage.tokens_out or t.usage.cost:
        print(f"  {'':<24} {_usage_text(t.usage)}")
    for p in t.preempted_by:
        print(f"  {'':<24} attempt {p.attempt} preempted by {p.by_run_id}/{p.by_task_id} at {p.at_ms}")
    if t.fusion is not None:
        print(f"  {'':<24} {_fusion_text(t.fusion)}")
    if t.gate is not None:
        g = t.gate
        said = f" by {g.by}" + (f": {g.comment}" if g.comment else "") if g.decision else ""
        print(f"  {'':<24} gate {g.id}: {g.decision or 'open'}{said}")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.status(include_digest=args.digest)
    if args.json:
        data = info.to_json()
        if args.digest:
            data["digest"] = info.digest
        _print_json(data)
    elif (con := _tty(args)) is not None:
        from .render import status_tables

        status_tables(con, info)
    else:
        print(f"leader: {info.leader or '(none)'}  term: {info.term}  answered by: {info.node_id}")
        for m in info.members:
            print(
                f"  {m.id:<8} grpc={m.grpc:<22} up={str(m.up).lower():<5} running={m.running}/{m.slots} "
                f"agents={','.join(m.agents)}" + (" suspect" if m.suspect else "")
            )
            # one line per offer that placement treats specially; plain ones are in agents=
            for o in m.offers:
                if o.capabilities or o.concurrency:
                    caps = f" capabilities={','.join(o.capabilities)}" if o.capabilities else ""
                    conc = f"/{o.concurrency}" if o.concurrency else ""
                    print(f"      {o.agent}: running={o.running}{conc}{caps}")
            for b in m.breakers:
                until = f" until_ms={b.open_until_ms}" if b.state != "closed" else ""
                print(f"      breaker {b.agent}: {b.state} failures={b.failures}{until}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from ..client import DAG

    dag = DAG.from_file(args.file)
    flags = {k: getattr(args, k) for k in ("max_tasks", "max_seconds", "max_cost", "max_tokens")}
    budget = {k: v for k, v in flags.items() if v is not None}  # each replaces the file's figure
    kw: dict[str, Any] = {
        "idempotency_key": args.idempotency_key,
        "budget": budget or None,
        "namespace": args.namespace,
        "trace_id": args.trace_id,
    }
    with _client(args) as c:
        if not args.wait:
            run_id = c.submit(dag, **kw)
            if args.json:
                _print_json({"run_id": run_id})
            else:
                print(run_id)
            return EXIT_OK
        if (con := _tty(args)) is not None:
            from .render import follow, run_summary

            run_id = c.submit(dag, **kw)
            follow(con, c.watch(run_id, timeout_s=args.wait_timeout), run_id, show_events=False)
            run = c.get(run_id)
            run_summary(con, run)
            return EXIT_OK if run.status == "SUCCEEDED" else EXIT_RUN_FAILED
        # Not following on a terminal: the submit and the ended run in one call (RunToEnd).
        run = c.run(dag, timeout_s=args.wait_timeout, **kw)
    if args.json:
        _print_json(run.to_json())
    else:
        _print_run(run)
    return EXIT_OK if run.status == "SUCCEEDED" else EXIT_RUN_FAILED


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        run = c.get(args.run_id, stale_ok=args.stale_ok)
    if args.json:
        _print_json(run.to_json())
    else:
        _print_run(run)
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InvalidArgument("--limit must be at least 1")
    with _client(args) as c:
        trail = c.audit(args.run_id, limit=args.limit)
    if args.json:
        _print_json(trail.to_dict())
        return EXIT_OK
    flag = "" if trail.complete else "  (INCOMPLETE: no node holds the whole history; the longest shown)"
    print(f"run {trail.run_id}: {len(trail)} events from node {trail.node}{flag}")
    print(
        f"{'REV':>8}  {'TIME_MS':>14}  {'KIND':<18} {'TASK':<20} {'ATT':>3}  {'NODE':<10} {'PRINCIPAL':<20} DETAIL"
    )
    for e in trail:
        detail = json.dumps(e.detail, separators=(",", ":")) if e.detail else ""
        print(
            f"{e.revision:>8}  {e.time_ms:>14}  {e.kind:<18} {e.task_id[:20]:<20} {e.attempt:>3}  "
            f"{e.node[:10]:<10} {e.principal[:20]:<20} {detail}"
        )
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if (con := _tty(args)) is not None:
            from .render import follow, run_summary

            follow(con, c.watch(args.run_id, timeout_s=args.wait_timeout), args.run_id, show_events=True)
            run_summary(con, c.get(args.run_id))
            return EXIT_OK
        for ev in c.watch(args.run_id, timeout_s=args.wait_timeout):
            if args.json:
                d: dict[str, Any] = {"revision": ev.revision, "kind": ev.kind, "status": ev.status}
                if ev.kind == "snapshot" and ev.run is not None:
                    d["run"] = ev.run.to_json()
                if ev.kind == "task":
                    d.update(task_id=ev.task_id, attempt=ev.attempt, node=ev.node)
                if ev.error:
                    d["error"] = ev.error
                print(json.dumps(d), flush=True)
            elif ev.kind == "snapshot" and ev.run is not None:
                print(f"[{ev.revision}] run {ev.run.run_id} is {ev.run.status}", flush=True)
            elif ev.kind == "task":
                print(f"[{ev.revision}] {ev.task_id} {ev.status} attempt={ev.attempt} {ev.node}", flush=True)
            else:
                print(f"[{ev.revision}] run {ev.status} {ev.error}", flush=True)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        status = c.cancel(args.run_id, args.reason)
    if args.json:
        _print_json({"run_id": args.run_id, "status": status})
    else:
        print(f"run {args.run_id}: {status}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_runs(args)
    with _client(args) as c:
        runs = c.list_runs(limit=args.limit, status=args.status, namespace=args.namespace)
    if args.json:
        _print_json({"runs": runs})
    elif (con := _tty(args)) is not None:
        from .render import runs_table

        runs_table(con, runs)
    else:
        for r in runs:
            print(
                f"{r['run_id']}  {r['status']:<10} tasks={r['tasks']} unfinished={r['unfinished']} {r['name']}"
            )
    return EXIT_OK


def _watch_runs(args: argparse.Namespace) -> int:
    """``runs --watch``: the snapshot, then each change, until interrupted (--json: JSON lines)."""
    with _client(args) as c:
        events = c.watch_runs(limit=args.limit, status=args.status, namespace=args.namespace)
        if (con := _tty(args)) is not None:
            from .render import watch_runs

            watch_runs(con, events, args.limit)
            return EXIT_OK
        for ev in events:
            if args.json:
                print(json.dumps(ev, separators=(",", ":")), flush=True)
                continue
            for r in ev.get("snapshot", [ev["run"]] if "run" in ev else []):
                print(
                    f"{r['run_id']}  {r['status']:<10} tasks={r['tasks']} unfinished={r['unfinished']} "
                    f"{r['name']}",
                    flush=True,
                )
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    with _client(args) as c:
        me = c.whoami()
    if args.json:
        _print_json(me)
    else:
        print(f"principal  {me['principal']}")
        print(f"role       {me['role']}")
        print(f"namespaces {', '.join(me['namespaces'])}")
        print(f"auth       {'on (tokens checked)' if me['auth'] else 'off (an open cluster)'}")
        print(f"node       {me['node_id']}")
    return EXIT_OK


def cmd_dead_letters(args: argparse.Namespace) -> int:
    if args.messages:
        from .messages import print_dead_letters

        return print_dead_letters(args)
    with _client(args) as c:
        dead = c.dead_letters(limit=args.limit)
    if args.json:
        _print_json({"dead_letters": [d.to_json() for d in dead]})
    elif (con := _tty(args)) is not None:
        from .render import dead_letters_table

        dead_letters_table(con, dead)
    else:
        for d in dead:
            print(f"{d.run_id}  {d.task_id:<24} agent={d.agent} attempt={d.attempt} error={d.error}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Exit 0 when requeued or already requeued; 3 unknown run/task; 5 not a dead letter."""
    with _client(args) as c:
        r = c.retry(args.run_id, args.task_id, attempt=args.attempt, request_id=args.request_id)
    if args.json:
        _print_json(r.to_json())
    elif r.requeued:
        print(f"requeued {r.run_id}/{r.task_id} (attempt {r.attempt} failed; now {r.status})")
    else:
        print(f"already requeued {r.run_id}/{r.task_id} (attempt {r.attempt}; now {r.status})")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    """Exit 0 when decided (or already decided so); 3 unknown run/task; 5 no open gate, or decided
    the other way."""
    with _client(args) as c:
        d = c.approve(
            args.run_id,
            args.task_id,
            reject=args.reject,
            comment=args.comment,
            by=args.by,
            request_id=args.request_id,
        )
    if args.json:
        _print_json(d.to_json())
    else:
        already = "" if d.applied else " (already)"
        print(f"{d.decision}{already} {d.run_id}/{d.task_id} gate {d.gate} by {d.by}; task is {d.status}")
    return EXIT_OK


def _one_line(text: str) -> str:
    """``text`` on one line of a listing: a newline in it shows as ``\\n`` (and a backslash doubles)."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def cmd_approvals(args: argparse.Namespace) -> int:
    with _client(args) as c:
        gates = c.approvals(run_id=args.run, limit=args.limit)
    if args.json:
        _print_json({"approvals": [g.to_json() for g in gates]})
    elif (con := _tty(args)) is not None:
        from .render import approvals_table

        approvals_table(con, gates)
    else:
        for g in gates:
            print(f"{g.run_id}  {g.task_id:<24} gate={g.gate} {_one_line(g.prompt)}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    """Exit 0 when paused (or already); 3 unknown run; 5 a finished or compensating run."""
    with _client(args) as c:
        r = c.pause(args.run_id, cancel_running=args.cancel_running, request_id=args.request_id)
    if args.json:
        _print_json(r.to_json())
    else:
        stopped = f"; {r.stopped} running attempt(s) stopped and requeued" if r.stopped else ""
        print(f"run {r.run_id}: {r.status}" + ("" if r.changed else " (already)") + stopped)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Exit 0 when resumed (or not paused); 3 unknown run; 5 a finished run."""
    with _client(args) as c:
        r = c.resume(args.run_id, request_id=args.request_id)
    if args.json:
        _print_json(r.to_json())
    else:
        print(f"run {r.run_id}: {r.status}" + ("" if r.changed else " (was not paused)"))
    return EXIT_OK


def cmd_rerun(args: argparse.Namespace) -> int:
    """Exit 0 when rerun; 3 unknown run/task; 5 a task that has not ended, or a compensated run."""
    with _client(args) as c:
        r = c.rerun(args.run_id, args.task_id, request_id=args.request_id)
    if args.json:
        _print_json(r.to_json())
    else:
        reopened = "; the run reopened" if r.reopened else ""
        print(
            f"rerun {r.run_id}/{r.task_id}: now {r.status}; {r.reset} task(s) reset, "
            f"{r.dropped} child task(s) dropped{reopened}"
        )
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 only if every address answers the standard gRPC health check with SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ..client import parse_addresses
    from ..client._security import Credentials

    creds = Credentials.resolve(args.cred_token, args.cred_ca, args.cred_cert, args.cred_key)
    results = {}
    for addr in parse_addresses(args.addresses):
        with creds.channel(addr) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
                )
                results[addr] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                results[addr] = f"UNREACHABLE ({exc.code().name})"
    if args.json:
        _print_json(results)
    else:
        for addr, st in results.items():
            print(f"{addr} {st}")
    return EXIT_OK if all(v == "SERVING" for v in results.values()) else EXIT_UNAVAILABLE


def _value(text: str) -> Any:
    """A JSON value, or the text itself when it is not JSON (so `kv put k hello` works)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_kv(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.kv_cmd == "get":
            e = c.kv.get(args.key, stale_ok=args.stale_ok)
            if e is None:
                raise NotFound(f"key {args.key!r} not found")
            out: Any = e.to_json()
            text = json.dumps(e.value)
        elif args.kv_cmd == "put":
            fence = None
            if args.fence_lock:
                from ..client._coord import fence_pb

                fence = fence_pb(lock=args.fence_lock, token=args.fence_token)
            rev = c.kv.put(args.key, _value(args.value), lease=args.lease, fence=fence)
            out = {"key": args.key, "mod_revision": rev}
            text = str(rev)
        elif args.kv_cmd == "del":
            deleted = c.kv.delete(args.key)
            out = {"key": args.key, "deleted": deleted}
            text = "deleted" if deleted else "not found"
        elif args.kv_cmd == "list":
            entries = c.kv.list(args.prefix, limit=args.limit)
            out = {"entries": [e.to_json() for e in entries]}
            text = "\n".join(f"{e.key} = {json.dumps(e.value)}  (rev {e.mod_revision})" for e in entries)
        else:  # watch
            for ev in c.kv.watch(
                args.key or "",
                prefix=args.prefix or "",
                from_revision=args.from_revision,
                timeout_s=args.wait_timeout,
            ):
                d = {"revision": ev.revision, "kind": ev.kind, "key": ev.key}
                if ev.entry is not None:
                    d["value"] = ev.entry.value
                print(
                    json.dumps(d)
                    if args.json
                    else f"[{ev.revision}] {ev.kind} {ev.key} {d.get('value', '')}",
                    flush=True,
                )
            return EXIT_OK
    if args.json:
        _print_json(out)
    elif args.kv_cmd == "list" and (con := _tty(args)) is not None:
        from .render import kv_table

        kv_table(con, entries)
    else:
        print(text)
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.lock_cmd == "acquire":
            granted, token, rid = c.locks.acquire(
                args.names.split(","),
                owner=args.owner,
                ttl_s=args.ttl,
                mode=args.mode,
                wait_s=args.wait,
                priority=args.priority,
            )
            lease = c.locks.lease_of(args.owner, token) if granted else ""
            out: Any = {
                "granted": granted,
                "token": token,
                "request_id": rid,
                "owner": args.owner,
                "names": args.names.split(","),
                "lease": lease,
            }
            text = f"granted token={token} owner={args.owner} lease={lease}" if granted else "not granted"
            code = EXIT_OK if granted else EXIT_UNAVAILABLE
        elif args.lock_cmd == "release":
            c.locks.release(args.owner, args.name, args.token, lease=args.lease)
            out, text, code = {"released": True, "name": args.name}, "released", EXIT_OK
        elif args.lock_cmd == "keepalive":
            deadline = c.locks.keep_alive(args.owner, args.name, args.token, lease=args.lease)
            out, text, code = (
                {"name": args.name, "deadline_ms": deadline},
                f"renewed until {deadline}",
                EXIT_OK,
            )
        else:
            locks = c.locks.list(args.prefix)
            out = {"locks": locks}
            text = "\n".join(
                f"{lk['name']}: holders={[h['owner'] for h in lk['holders']]} waiters={lk['waiters']} "
                f"last_token={lk['last_token']}"
                for lk in locks
            )
            code = EXIT_OK
    if args.json:
        _print_json(out)
    elif args.lock_cmd == "list" and (con := _tty(args)) is not None:
        from .render import locks_table

        locks_table(con, locks)
    else:
        print(text)
    return code


def cmd_node(args: argparse.Namespace) -> int:
    from ..node.main import run_node

    return run_node(args)


def _positive_seconds(text: str) -> float:
    value = _non_negative_seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def _request_id_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--request-id",
        default=None,
        help="repeat a call with the same id to have it applied once (default: new)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raftmesh", description="A Raft-replicated cluster that runs DAGs of agent tasks."
    )
    p.add_argument(
        "--addresses",
        default=None,
        help="node gRPC addresses host:port,... (default: env RAFTMESH_ADDRESSES)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-call timeout in seconds (default 10)")
    p.add_argument(
        "--retry-deadline",
        type=_non_negative_seconds,
        default=None,
        help="seconds to keep failing over and retrying UNAVAILABLE (default: max(--timeout, 30); 0: a single try)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_seconds,
        default=0.5,
        metavar="S",
        help="a connection attempt to a node fails after S seconds (default 0.5, a LAN's; raise it over a slow link)",
    )
    p.add_argument(
        "--ping-timeout",
        type=_positive_seconds,
        default=0.5,
        metavar="S",
        help="an open connection whose keepalive ping goes unanswered S seconds breaks (default 0.5; raise it over a slow link)",
    )
    p.add_argument(
        "--token",
        dest="cred_token",
        default=None,
        metavar="TOKEN",
        help="bearer token (default: env RAFTMESH_TOKEN)",
    )
    p.add_argument(
        "--ca",
        dest="cred_ca",
        default=None,
        metavar="PEM",
        help="CA certificate (PEM) of the nodes: use TLS (default: env RAFTMESH_CA)",
    )
    p.add_argument(
        "--cert",
        dest="cred_cert",
        default=None,
        metavar="PEM",
        help="client certificate (PEM) for mutual TLS (default: env RAFTMESH_CERT)",
    )
    p.add_argument(
        "--key",
        dest="cred_key",
        default=None,
        metavar="PEM",
        help="the client certificate's key (default: env RAFTMESH_KEY)",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="on a terminal too, print the plain lines of a pipe (no live progress, tables or colour)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    n = sub.add_parser("node", help="run one node in the foreground")
    n.add_argument("--config", help="JSON/YAML file with the same keys as these flags (flags win)")
    n.add_argument("--id", help="node id, e.g. n1")
    n.add_argument("--raft", help="HOST:PORT for Raft traffic")
    n.add_argument("--grpc", help="HOST:PORT for the gRPC API")
    n.add_argument("--peers", help="every member as ID=RAFT/GRPC,... (this node may be included)")
    n.add_argument("--data-dir", help="directory for the journal and snapshots")
    n.add_argument("--slots", type=int, help="attempts this node runs at once (default 64)")
    n.add_argument(
        "--agents", help="agent types to offer, comma-separated, among those loaded (default: all loaded)"
    )
    n.add_argument(
        "--agents-module",
        dest="agents_modules",
        action="append",
        metavar="PATH|MODULE",
        help="load the agents declared in this Python file or importable module (repeatable)",
    )
    n.add_argument(
        "--agent-threads", type=int, help="threads running 'thread' agents' attempts at once (default 16)"
    )
    n.add_argument(
        "--agent-processes",
        type=int,
        help="worker processes running 'process' agents' attempts at once (default min(4, CPUs))",
    )
    n.add_argument(
        "--node-down-after",
        type=float,
        help="seconds without contact before the leader marks a node down (default 5)",
    )
    n.add_argument(
        "--snapshot-entries",
        type=int,
        help="take a state snapshot after this many log entries (default 20000)",
    )
    n.add_argument(
        "--snapshot-seconds", type=float, help="also take a snapshot after this many seconds (default 600)"
    )
    n.add_argument(
        "--raft-secret-file",
        help="file holding the cluster secret that authenticates and encrypts Raft traffic "
        "(or env RAFTMESH_RAFT_SECRET); required unless --raft is a loopback address",
    )
    n.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        default=None,
        help="do not fsync the Raft journal before acknowledging (faster; a power cut on every "
        "node can lose acknowledged writes)",
    )
    n.add_argument(
        "--archive-applied",
        action="store_true",
        default=None,
        help="also record every applied log entry in DATA_DIR/applied.lmdb, for audits (off by default)",
    )
    n.add_argument(
        "--audit-max-runs",
        type=int,
        help="keep the audit timelines of at most this many runs in DATA_DIR/audit.lmdb, the oldest "
        "dropped first (default 10000; 0 turns the audit archive off)",
    )
    n.add_argument(
        "--audit-max-bytes",
        type=int,
        help="keep about this many bytes of audit timelines, the oldest runs dropped first "
        "(default 268435456)",
    )
    n.add_argument(
        "--preempt-priority",
        type=int,
        help="READY tasks of at least this priority preempt lower-priority running attempts when no "
        "slot is free (default: off)",
    )
    n.add_argument(
        "--tokens-file",
        help="YAML/JSON file of bearer tokens and their roles (`raftmesh tokens add` makes it); turns "
        "authentication on (needs the cluster secret); reloaded on SIGHUP",
    )
    n.add_argument("--tls-cert", help="this node's certificate (PEM): TLS on its gRPC port and to its peers")
    n.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    n.add_argument(
        "--tls-ca", help="the CA (PEM) that signed every node's certificate (and clients', for mTLS)"
    )
    n.add_argument(
        "--tls-client-auth",
        choices=("none", "require"),
        help="require (default with TLS): clients need a certificate signed by --tls-ca; none: they do not",
    )
    n.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; README Metrics)",
    )
    n.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the web dashboard and its HTTP API at http://HOST:PORT/ (https with --tls-cert; "
        "default: off; README Dashboard)",
    )
    n.add_argument(
        "--http-max-streams",
        type=int,
        help="event streams the dashboard serves at once, 503 beyond (default 64)",
    )
    n.add_argument(
        "--http-client-auth",
        choices=("require", "none"),
        help="whether the dashboard's HTTPS asks callers for a client certificate signed by --tls-ca "
        "(default: as --tls-client-auth; none: a token-only dashboard, for browsers without one)",
    )
    n.add_argument(
        "--otel-endpoint",
        default=None,
        help="export run and attempt spans over OTLP/HTTP to this collector URL (default: "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else none; needs the otel extra)",
    )
    n.add_argument("--log-level", default="INFO")
    n.set_defaults(func=cmd_node)

    s = sub.add_parser("status", help="cluster status")
    s.add_argument("--json", action="store_true")
    s.add_argument("--digest", action="store_true", help="include the answering replica's state digest")
    s.set_defaults(func=cmd_status)

    sb = sub.add_parser("submit", help="submit a DAG from a YAML or JSON file")
    sb.add_argument("file")
    sb.add_argument(
        "--wait", action="store_true", help="wait for the run to end; exit 0 only if it SUCCEEDED"
    )
    sb.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait (default: forever)")
    sb.add_argument("--idempotency-key", default=None, help="the same key always yields the same run")
    sb.add_argument(
        "--namespace",
        default="",
        help="the run's namespace (default: the default one); tokens may be limited",
    )
    sb.add_argument(
        "--trace-id", default=None, help="the run's W3C trace id (32 hex digits; default: a new one)"
    )
    sb.add_argument("--json", action="store_true")
    budget = sb.add_argument_group(
        "run budget (replaces the spec file's budget: figure by figure; 0: no limit)"
    )
    budget.add_argument(
        "--max-tasks", type=int, default=None, help="tasks the run may have, children included"
    )
    budget.add_argument("--max-seconds", type=float, default=None, help="seconds from submission")
    budget.add_argument("--max-cost", type=float, default=None, help="summed reported cost")
    budget.add_argument("--max-tokens", type=int, default=None, help="summed reported tokens (in + out)")
    sb.set_defaults(func=cmd_submit)

    g = sub.add_parser("get", help="show a run")
    g.add_argument("run_id")
    g.add_argument(
        "--stale-ok", action="store_true", help="read the answering node's replica without a barrier"
    )
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_get)

    au = sub.add_parser(
        "audit", help="show a run's audit timeline (who did what, when), also for finished runs"
    )
    au.add_argument("run_id")
    au.add_argument(
        "--limit", type=int, default=1000, help="at most this many events, oldest first (<= 10000)"
    )
    au.add_argument("--json", action="store_true")
    au.set_defaults(func=cmd_audit)

    w = sub.add_parser("watch", help="stream a run's events until it ends")
    w.add_argument("run_id")
    w.add_argument("--wait-timeout", type=float, default=None)
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.set_defaults(func=cmd_watch)

    c = sub.add_parser("cancel", help="cancel a run")
    c.add_argument("run_id")
    c.add_argument("--reason", default="")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cancel)

    h = sub.add_parser("health", help="standard gRPC health check of every address; exit 0 if all SERVING")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_health)

    kv = sub.add_parser("kv", help="the replicated KV store")
    kvs = kv.add_subparsers(dest="kv_cmd", required=True)
    g2 = kvs.add_parser("get")
    g2.add_argument("key")
    g2.add_argument("--stale-ok", action="store_true")
    p2 = kvs.add_parser("put", help="VALUE is JSON (or a plain string)")
    p2.add_argument("key")
    p2.add_argument("value")
    p2.add_argument("--lease", type=int, default=0)
    p2.add_argument(
        "--fence-lock", default="", help="reject the write if this lock has a grant newer than --fence-token"
    )
    p2.add_argument("--fence-token", type=int, default=0)
    d2 = kvs.add_parser("del")
    d2.add_argument("key")
    l2 = kvs.add_parser("list")
    l2.add_argument("prefix", nargs="?", default="")
    l2.add_argument("--limit", type=int, default=1000)
    w2 = kvs.add_parser("watch", help="print changes until interrupted (or --wait-timeout)")
    w2.add_argument("key", nargs="?", default="")
    w2.add_argument("--prefix", default="")
    w2.add_argument("--from-revision", type=int, default=0)
    w2.add_argument("--wait-timeout", type=float, default=None)
    for sp in (g2, p2, d2, l2, w2):
        sp.add_argument("--json", action="store_true")
    kv.set_defaults(func=cmd_kv)

    lk = sub.add_parser("lock", help="distributed locks with fencing tokens")
    lks = lk.add_subparsers(dest="lock_cmd", required=True)
    a3 = lks.add_parser(
        "acquire", help="acquire NAMES (comma-separated, all at once); held until TTL or release"
    )
    a3.add_argument("names")
    a3.add_argument("--owner", required=True)
    a3.add_argument("--ttl", type=float, default=30.0, help="lease seconds (renew with `lock keepalive`)")
    a3.add_argument("--mode", choices=["exclusive", "shared"], default="exclusive")
    a3.add_argument("--wait", type=float, default=0.0, help="seconds to wait (0: try once)")
    a3.add_argument("--priority", type=int, default=0)
    r3 = lks.add_parser("release")
    k3 = lks.add_parser("keepalive")
    for sp in (r3, k3):
        sp.add_argument("name")
        sp.add_argument("--owner", required=True)
        sp.add_argument("--token", type=int, required=True)
        sp.add_argument(
            "--lease", help="the lease handle `lock acquire` printed (required: it proves the grant is yours)"
        )
    li3 = lks.add_parser("list")
    li3.add_argument("prefix", nargs="?", default="")
    for sp in (a3, r3, k3, li3):
        sp.add_argument("--json", action="store_true")
    lk.set_defaults(func=cmd_lock)

    dl = sub.add_parser(
        "dead-letters", help="tasks that failed for good (retries exhausted) in retained runs, newest first"
    )
    dl.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    dl.add_argument(
        "--messages", action="store_true", help="agent messages that were not delivered, instead of tasks"
    )
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=cmd_dead_letters)

    rt = sub.add_parser(
        "retry",
        help="requeue a dead letter (its run goes back to RUNNING); applies once however often repeated",
    )
    rt.add_argument("run_id")
    rt.add_argument("task_id")
    rt.add_argument(
        "--attempt", type=int, default=0, help="the dead attempt to requeue (default: the task's current one)"
    )
    rt.add_argument(
        "--request-id",
        default=None,
        help="repeat a call with the same id to have it applied once (default: new)",
    )
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=cmd_retry)

    ap = sub.add_parser("approve", help="approve (or --reject) a task's open approval gate, exactly once")
    ap.add_argument("run_id")
    ap.add_argument("task_id")
    ap.add_argument("--reject", action="store_true", help="reject: the task fails, and its run")
    ap.add_argument("--comment", default="")
    ap.add_argument("--by", default=None, help="who decides (default: the OS user)")
    ap.add_argument(
        "--request-id",
        default=None,
        help="repeat a call with the same id to have it applied once (default: new)",
    )
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=cmd_approve)

    al = sub.add_parser("approvals", help="open approval gates, oldest first")
    al.add_argument("--run", default=None, help="only this run's gates")
    al.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_approvals)

    pa = sub.add_parser("pause", help="pause a run: nothing new starts (running attempts finish)")
    pa.add_argument("run_id")
    pa.add_argument(
        "--cancel-running", action="store_true", help="stop running attempts too (requeued, no retry used)"
    )
    _request_id_flag(pa)
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_pause)

    rs = sub.add_parser("resume", help="resume a paused run")
    rs.add_argument("run_id")
    _request_id_flag(rs)
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_resume)

    rr = sub.add_parser(
        "rerun", help="run an ended task and everything downstream of it again (a finished run reopens)"
    )
    rr.add_argument("run_id")
    rr.add_argument("task_id")
    _request_id_flag(rr)
    rr.add_argument("--json", action="store_true")
    rr.set_defaults(func=cmd_rerun)

    r = sub.add_parser("runs", help="list runs, newest first")
    r.add_argument(
        "--limit", type=int, default=100, help="at most this many runs, newest first (default 100)"
    )
    r.add_argument(
        "--status",
        help="only runs with this status (default: all)",
        choices=[
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "PAUSED",
            "COMPENSATING",
            "COMPENSATED",
            "COMPENSATION_FAILED",
        ],
    )
    r.add_argument("--namespace", default="", help="only runs in this namespace")
    r.add_argument(
        "--watch",
        action="store_true",
        help="keep watching: the runs, then each run whose status or progress changes (--json: one "
        'JSON object a line, {"snapshot": [...]} or {"run": {...}}); until interrupted',
    )
    r.add_argument("--json", action="store_true", help='print {"runs": [...]}, the SDK list_runs shape')
    r.set_defaults(func=cmd_runs)

    w = sub.add_parser("whoami", help="who the cluster takes you for: principal, role, namespaces")
    w.add_argument("--json", action="store_true", help="print the WhoAmI answer as a JSON object")
    w.set_defaults(func=cmd_whoami)

    from .messages import add_parsers

    add_parsers(sub)
    from .tokens import add_parsers as add_token_parsers

    add_token_parsers(sub)
    from .certs import add_parsers as add_certs_parsers

    add_certs_parsers(sub)
    _plain_after_subcommand(sub)
    return p


def _plain_after_subcommand(sub: Any) -> None:
    """``raftmesh runs --plain`` as well as ``raftmesh --plain runs`` (like --json, people put it
    last). Its default is SUPPRESS so a subcommand without it keeps what the global flag set."""
    for name, sp in sub.choices.items():
        if name == "node":
            continue
        if not any("--plain" in a.option_strings for a in sp._actions):
            sp.add_argument(
                "--plain", action="store_true", default=argparse.SUPPRESS, help="the same as raftmesh --plain"
            )
        for a in sp._actions:
            if isinstance(a, argparse._SubParsersAction):
                _plain_after_subcommand(a)


def escape_control(text: str) -> str:
    """``text`` with control, format and line-separator characters escaped (``\\x1b``), newlines kept.

    Names, ids, outputs and error messages come from other users of the cluster; printed raw,
    an escape sequence in one could rewrite the terminal of whoever lists runs.
    """
    if text.isascii() and text.replace("\n", "").isprintable():
        return text
    return "".join(
        c
        if c == "\n" or unicodedata.category(c) not in UNPRINTABLE_CATEGORIES
        else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


class _EscapingWriter:
    """A text stream that escapes what it is given (``escape_control``) before writing it."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    @property
    def inner(self) -> TextIO:
        """The stream underneath: render.py draws rich's own codes on it (escaping cluster text itself)."""
        return self._inner

    def write(self, text: str) -> int:
        return self._inner.write(escape_control(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is cmd_node:
        return _run(args)
    # Every line a person reads goes through here; --json output is escaped by json.dumps already.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _EscapingWriter(out), _EscapingWriter(err)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = out, err


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except InvalidArgument as exc:
        print(f"raftmesh: invalid argument: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except (Unauthenticated, PermissionDenied) as exc:
        print(f"raftmesh: refused: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_DENIED
    except Aborted as exc:
        print(f"raftmesh: aborted: {exc.message}", file=sys.stderr)
        return EXIT_ABORTED
    except NotFound as exc:
        print(f"raftmesh: not found: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (Unavailable, DeadlineExceeded) as exc:
        print(f"raftmesh: cluster unavailable: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except RaftmeshError as exc:
        print(f"raftmesh: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
