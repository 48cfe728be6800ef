"""Every request limit of README's Limits table that a client can reach, at the boundary.

One in-process node, real gRPC. Each row sends the request with the limited quantity exactly at
its limit (accepted) and one over (refused with the row's status code, and a message that names
the limit's figure so the caller knows what to fix). The limits come from
``raftmesh/consensus/limits.py`` by name, so a changed limit moves its test with it.

Limits not here are tested elsewhere at their boundary (the state machine's tests:
``test_machine.py``, ``test_kv.py``, ``test_locks.py``, ``test_messages.py``, ``test_spawn.py``,
``test_maps.py``), or are internal bounds no request sets directly (queues, retained records).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from raftmesh.consensus import limits as L
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from tests.test_fuzz_grpc import inprocess_node

_n = itertools.count()


def uid() -> str:
    return f"u{next(_n)}"


@dataclass
class Stubs:
    cluster: pb_grpc.ClusterStub
    kv: pb_grpc.KvStub
    locks: pb_grpc.LocksStub
    messages: pb_grpc.MessagesStub


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    with inprocess_node(str(tmp_path_factory.mktemp("limits") / "n1")) as (addr, failure):
        ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 32 << 20)])
        try:
            yield Stubs(
                pb_grpc.ClusterStub(ch), pb_grpc.KvStub(ch), pb_grpc.LocksStub(ch), pb_grpc.MessagesStub(ch)
            )
        finally:
            ch.close()
        assert not failure, failure


def task(**kw: Any) -> pb.TaskSpec:
    # Gated by an approval, so a run made at a limit does not run (the node's slots stay free).
    kw.setdefault("id", "a")
    kw.setdefault("agent", "echo")
    kw.setdefault("approval", pb.ApprovalSpec(prompt="hold"))
    return pb.TaskSpec(**kw)


def submit(s: Stubs, **kw: Any) -> Any:
    kw.setdefault("tasks", [task()])
    return s.cluster.SubmitRun(pb.SubmitRunRequest(**kw), timeout=20)


# bin32 (and str32) headers are 5 bytes: the limits count encoded bytes.


def json_str_of_encoded_size(n: int) -> str:
    """A JSON string whose msgpack encoding (str32 header: 5 bytes) is exactly ``n`` bytes."""
    return json.dumps("x" * (n - 5))


def put_kv(s: Stubs, **kw: Any) -> Any:
    kw.setdefault("key", uid())
    kw.setdefault("value_json", "1")
    return s.kv.Put(pb.KvPutRequest(**kw), timeout=20)


def acquire(s: Stubs, **kw: Any) -> Any:
    kw.setdefault("owner", uid())
    kw.setdefault("locks", [pb.LockItem(name=uid())])
    kw.setdefault("ttl_ms", 10_000)
    return s.locks.Acquire(pb.LockAcquireRequest(**kw), timeout=20)


def publish(s: Stubs, **kw: Any) -> Any:
    kw.setdefault("topic", uid())
    kw.setdefault("type", "t")
    kw.setdefault("payload_json", "1")
    return s.messages.Send(pb.SendMessageRequest(message=pb.AgentMessage(**kw)), timeout=20)


def run_with_gate(s: Stubs) -> str:
    return str(submit(s, tasks=[task(id=uid())]).run_id)


@dataclass(frozen=True)
class Row:
    name: str
    at: Any
    over: Any
    send: Callable[[Stubs, Any], Any]
    names: tuple[str, ...]  # the message names the limit with one of these
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT

    def __str__(self) -> str:
        return self.name


def _figures(n: int) -> tuple[str, ...]:
    # Budget figures are floats on the wire and are printed as such (1e+06).
    return (str(n), f"{n:,}", f"{n:g}", f"{float(n):.5g}")


DAY = 24 * 3600 * 1000
ROWS = [
    # ---- runs and tasks ----
    Row("task id chars", L.MAX_ID_CHARS, L.MAX_ID_CHARS + 1, lambda s, n: submit(s, tasks=[task(id="t" * n)]), _figures(L.MAX_ID_CHARS)),
    Row("idempotency key chars", L.MAX_ID_CHARS, L.MAX_ID_CHARS + 1, lambda s, n: submit(s, idempotency_key=(uid() + "k" * n)[:n]), _figures(L.MAX_ID_CHARS)),
    Row("run name chars", L.MAX_RUN_NAME_CHARS, L.MAX_RUN_NAME_CHARS + 1, lambda s, n: submit(s, name="n" * n), _figures(L.MAX_RUN_NAME_CHARS)),
    Row("run priority", L.MAX_PRIORITY, L.MAX_PRIORITY + 1, lambda s, n: submit(s, priority=n), _figures(L.MAX_PRIORITY)),
    Row("run priority (negative)", -L.MAX_PRIORITY, -L.MAX_PRIORITY - 1, lambda s, n: submit(s, priority=n), _figures(L.MAX_PRIORITY)),
    Row("task priority", L.MAX_PRIORITY, L.MAX_PRIORITY + 1, lambda s, n: submit(s, tasks=[task(priority=n)]), _figures(L.MAX_PRIORITY)),
    Row("retries", L.MAX_RETRIES, L.MAX_RETRIES + 1, lambda s, n: submit(s, tasks=[task(retries=n)]), _figures(L.MAX_RETRIES)),
    Row("timeout_ms", L.MAX_TIMEOUT_MS, L.MAX_TIMEOUT_MS + 1, lambda s, n: submit(s, tasks=[task(timeout_ms=n)]), _figures(L.MAX_TIMEOUT_MS)),
    Row("retry_backoff_ms", L.MAX_BACKOFF_MS, L.MAX_BACKOFF_MS + 1, lambda s, n: submit(s, tasks=[task(retry_backoff_ms=n)]), _figures(L.MAX_BACKOFF_MS)),
    Row("task input bytes", L.MAX_TASK_INPUT_BYTES, L.MAX_TASK_INPUT_BYTES + 1, lambda s, n: submit(s, tasks=[task(input_json=json_str_of_encoded_size(n))]), _figures(L.MAX_TASK_INPUT_BYTES)),
    Row("replicas", L.MAX_REPLICAS, L.MAX_REPLICAS + 1, lambda s, n: submit(s, tasks=[task(replicas=n, fusion="vote")]), _figures(L.MAX_REPLICAS)),
    Row("approval prompt chars", L.MAX_APPROVAL_PROMPT_CHARS, L.MAX_APPROVAL_PROMPT_CHARS + 1, lambda s, n: submit(s, tasks=[task(approval=pb.ApprovalSpec(prompt="p" * n))]), _figures(L.MAX_APPROVAL_PROMPT_CHARS)),
    Row("approval timeout_ms", L.MAX_APPROVAL_TIMEOUT_MS, L.MAX_APPROVAL_TIMEOUT_MS + 1, lambda s, n: submit(s, tasks=[task(approval=pb.ApprovalSpec(prompt="p", timeout_ms=n))]), _figures(L.MAX_APPROVAL_TIMEOUT_MS)),
    Row("budget max_tasks", L.MAX_BUDGET_TASKS, L.MAX_BUDGET_TASKS + 1, lambda s, n: submit(s, budget=pb.Budget(max_tasks=n)), _figures(L.MAX_BUDGET_TASKS)),
    Row("budget max_tokens", L.MAX_BUDGET_TOKENS, L.MAX_BUDGET_TOKENS + 1, lambda s, n: submit(s, budget=pb.Budget(max_tokens=n)), _figures(L.MAX_BUDGET_TOKENS)),
    Row("cancel reason chars", L.MAX_CANCEL_REASON_CHARS, L.MAX_CANCEL_REASON_CHARS + 1, lambda s, n: s.cluster.CancelRun(pb.CancelRunRequest(run_id=run_with_gate(s), reason="r" * n), timeout=20), _figures(L.MAX_CANCEL_REASON_CHARS)),
    Row("ListRuns limit", 1000, 1001, lambda s, n: s.cluster.ListRuns(pb.ListRunsRequest(limit=n), timeout=20), _figures(1000)),
    Row("ListDeadLetters limit", L.MAX_DEAD_LETTERS_LISTED, L.MAX_DEAD_LETTERS_LISTED + 1, lambda s, n: s.cluster.ListDeadLetters(pb.ListDeadLettersRequest(limit=n), timeout=20), _figures(L.MAX_DEAD_LETTERS_LISTED)),
    Row("ListApprovals limit", L.MAX_APPROVALS_LISTED, L.MAX_APPROVALS_LISTED + 1, lambda s, n: s.cluster.ListApprovals(pb.ListApprovalsRequest(limit=n), timeout=20), _figures(L.MAX_APPROVALS_LISTED)),
    # ---- KV ----
    Row("KV key chars", L.MAX_KV_KEY_CHARS, L.MAX_KV_KEY_CHARS + 1, lambda s, n: put_kv(s, key=(uid() + "k" * n)[:n]), _figures(L.MAX_KV_KEY_CHARS)),
    Row("KV value bytes", L.MAX_KV_VALUE_BYTES, L.MAX_KV_VALUE_BYTES + 1, lambda s, n: put_kv(s, value_json=json_str_of_encoded_size(n)), _figures(L.MAX_KV_VALUE_BYTES)),
    Row("KV request id chars", L.MAX_REQUEST_ID_CHARS, L.MAX_REQUEST_ID_CHARS + 1, lambda s, n: put_kv(s, request_id=(uid() + "q" * n)[:n]), _figures(L.MAX_REQUEST_ID_CHARS)),
    Row("Kv.List limit", L.MAX_KV_LIST, L.MAX_KV_LIST + 1, lambda s, n: s.kv.List(pb.KvListRequest(prefix="", limit=n), timeout=20), _figures(L.MAX_KV_LIST)),
    Row("KV txn operations", L.MAX_TXN_OPS, L.MAX_TXN_OPS + 1, lambda s, n: s.kv.Txn(pb.KvTxnRequest(success=[pb.KvOperation(kind="get", key=f"k{i}") for i in range(n)]), timeout=20), _figures(L.MAX_TXN_OPS)),
    Row("KV lease TTL (max)", L.MAX_KV_LEASE_TTL_MS, L.MAX_KV_LEASE_TTL_MS + 1, lambda s, n: s.kv.Lease(pb.KvLeaseRequest(action="grant", ttl_ms=n), timeout=20), _figures(L.MAX_KV_LEASE_TTL_MS)),
    Row("KV lease TTL (min)", L.MIN_KV_LEASE_TTL_MS, L.MIN_KV_LEASE_TTL_MS - 1, lambda s, n: s.kv.Lease(pb.KvLeaseRequest(action="grant", ttl_ms=n), timeout=20), _figures(L.MIN_KV_LEASE_TTL_MS)),
    # ---- locks ----
    Row("lock name chars", L.MAX_LOCK_NAME_CHARS, L.MAX_LOCK_NAME_CHARS + 1, lambda s, n: acquire(s, locks=[pb.LockItem(name=(uid() + "l" * n)[:n])]), _figures(L.MAX_LOCK_NAME_CHARS)),
    Row("locks per request", L.MAX_LOCKS_PER_REQUEST, L.MAX_LOCKS_PER_REQUEST + 1, lambda s, n: acquire(s, locks=[pb.LockItem(name=uid()) for _ in range(n)]), _figures(L.MAX_LOCKS_PER_REQUEST)),
    Row("lock TTL (max)", L.MAX_LOCK_TTL_MS, L.MAX_LOCK_TTL_MS + 1, lambda s, n: acquire(s, ttl_ms=n), _figures(L.MAX_LOCK_TTL_MS)),
    Row("lock TTL (min)", L.MIN_LOCK_TTL_MS, L.MIN_LOCK_TTL_MS - 1, lambda s, n: acquire(s, ttl_ms=n), _figures(L.MIN_LOCK_TTL_MS)),
    Row("lock wait", L.MAX_LOCK_WAIT_MS, L.MAX_LOCK_WAIT_MS + 1, lambda s, n: acquire(s, wait_ms=n), _figures(L.MAX_LOCK_WAIT_MS)),
    Row("lock priority", L.MAX_LOCK_PRIORITY, L.MAX_LOCK_PRIORITY + 1, lambda s, n: acquire(s, priority=n), _figures(L.MAX_LOCK_PRIORITY)),
    # ---- messages ----
    Row("topic chars", L.MAX_TOPIC_CHARS, L.MAX_TOPIC_CHARS + 1, lambda s, n: publish(s, topic=(uid() + "t" * n)[:n]), _figures(L.MAX_TOPIC_CHARS)),
    Row("message type chars", L.MAX_MESSAGE_TYPE_CHARS, L.MAX_MESSAGE_TYPE_CHARS + 1, lambda s, n: publish(s, type="y" * n), _figures(L.MAX_MESSAGE_TYPE_CHARS)),
    Row("message id chars", L.MAX_MESSAGE_ID_CHARS, L.MAX_MESSAGE_ID_CHARS + 1, lambda s, n: publish(s, id=(uid() + "i" * n)[:n]), _figures(L.MAX_MESSAGE_ID_CHARS)),
    Row("message payload bytes", L.MAX_MESSAGE_PAYLOAD_BYTES, L.MAX_MESSAGE_PAYLOAD_BYTES + 1, lambda s, n: publish(s, payload_bytes=b"p" * (n - 5), payload_json=None), _figures(L.MAX_MESSAGE_PAYLOAD_BYTES)),
    Row("message priority", L.MAX_MESSAGE_PRIORITY, L.MAX_MESSAGE_PRIORITY + 1, lambda s, n: publish(s, priority=n), _figures(L.MAX_MESSAGE_PRIORITY)),
    Row("message priority (negative)", -L.MAX_MESSAGE_PRIORITY, -L.MAX_MESSAGE_PRIORITY - 1, lambda s, n: publish(s, priority=n), _figures(L.MAX_MESSAGE_PRIORITY)),
    Row("message TTL", L.MAX_MESSAGE_TTL_MS, L.MAX_MESSAGE_TTL_MS + 1, lambda s, n: publish(s, ttl_ms=n), _figures(L.MAX_MESSAGE_TTL_MS)),
    Row("durable message payload bytes", L.MAX_MESSAGE_PAYLOAD_BYTES, L.MAX_MESSAGE_PAYLOAD_BYTES + 1, lambda s, n: publish(s, payload_bytes=b"p" * (n - 5), payload_json=None, durable=True), _figures(L.MAX_MESSAGE_PAYLOAD_BYTES)),
    Row("message dead letters listed", L.MAX_MESSAGE_DEAD_LETTERS_LISTED, L.MAX_MESSAGE_DEAD_LETTERS_LISTED + 1, lambda s, n: s.messages.DeadLetters(pb.MessageDeadLettersRequest(limit=n), timeout=20), _figures(L.MAX_MESSAGE_DEAD_LETTERS_LISTED)),
    Row("ListActivations limit", L.MAX_ACTIVATIONS_LISTED, L.MAX_ACTIVATIONS_LISTED + 1, lambda s, n: s.messages.ListActivations(pb.ListActivationsRequest(limit=n), timeout=20), _figures(L.MAX_ACTIVATIONS_LISTED)),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_limit_at_and_one_over(stubs: Stubs, row: Row) -> None:
    row.send(stubs, row.at)  # at the limit: accepted (an RpcError fails the test with its message)
    with pytest.raises(grpc.RpcError) as info:
        row.send(stubs, row.over)
    err: Any = info.value
    assert err.code() == row.code, f"{row.name}: one over answered {err.code()} {err.details()}"
    assert any(f in err.details() for f in row.names), (
        f"{row.name}: {err.details()!r} does not name {row.names[0]}"
    )


def test_the_table_covers_distinct_limits() -> None:
    assert len({r.name for r in ROWS}) == len(ROWS)
