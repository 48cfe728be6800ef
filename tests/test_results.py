"""Typed results of the state machine: canonical encoding and the mapping of codes to errors.

Results are stored in the replicated dedup table (msgpack) and handed back on a retry,
so a decoded result must equal the original, for every result type.
"""

from __future__ import annotations

import msgpack
import pytest

from raftmesh import errors
from raftmesh.consensus import Code, RunStatus, TaskStatus
from raftmesh.consensus.results import (
    RESULT_TYPES,
    ActivationResult,
    ApproveTaskResult,
    AssignResult,
    BarrierResult,
    CancelRunResult,
    ChangedResult,
    DeleteResponse,
    GetResponse,
    ItemRejected,
    KvLeaseResult,
    KvLeaseRevoked,
    KvTxnResult,
    LockAcquireResult,
    LockCancelResult,
    LockKeepAliveResult,
    LockReleaseResult,
    MemberResult,
    MessageAcked,
    MessagesSent,
    PreemptResult,
    PutResponse,
    Record,
    Rejected,
    RenewResult,
    ReportResult,
    RerunTaskResult,
    Result,
    RetryTaskResult,
    RunControlResult,
    SubmitRunResult,
    TickResult,
    decode_result,
    encode_result,
    expect,
)

SAMPLES: list[Result] = [
    Rejected(Code.ABORTED, "stale token 3 for lock 'L'"),
    Rejected(Code.INVALID_ARGUMENT, "ü ✓"),
    MemberResult("n1"),
    SubmitRunResult("r1", created=True),
    SubmitRunResult("r1", created=False),
    CancelRunResult(RunStatus.CANCELLED, cancelled=True),
    CancelRunResult(RunStatus.SUCCEEDED, cancelled=False),
    AssignResult(7, 1, (ItemRejected("r1", "b", "node 'n2' has no free slot"),)),
    AssignResult(8, 2),
    ReportResult(1, (ItemRejected("r1", "a", "stale attempt"), ItemRejected("r2", "x", "no such task"))),
    ReportResult(3),
    TickResult(expired=2, time_ms=1_000_123),
    BarrierResult(42),
    LockAcquireResult("lk-1", granted=True, waiting=False, token=9),
    LockAcquireResult("lk-2", granted=False, waiting=True, token=0),
    LockAcquireResult("lk-3", False, False, 0, Code.ABORTED, "deadlock: A waits for B on lock 'L1'"),
    LockReleaseResult(9),
    LockKeepAliveResult(9, deadline_ms=1_002_000),
    LockCancelResult(cancelled=True, released=("L1", "L2")),
    LockCancelResult(cancelled=False),
    KvTxnResult(
        True,
        12,
        (
            PutResponse("k", 12, 2, Record({"a": [1, None, 1.5, "ü"]}, 10, 3, 1, 0)),
            PutResponse("new", 12, 1, None),
            GetResponse("k", Record(True, 12, 3, 2, 11)),
            GetResponse("missing", None),
            DeleteResponse("gone", deleted=True),
            DeleteResponse("never", deleted=False),
        ),
    ),
    KvTxnResult(False, 12),
    KvLeaseResult(11, ttl_ms=1000, deadline_ms=1_001_000),
    KvLeaseRevoked(11, deleted=("a", "b")),
    RetryTaskResult(requeued=True, attempt=2, status=TaskStatus.READY),
    RetryTaskResult(requeued=False, attempt=2, status=TaskStatus.RUNNING),
    PreemptResult(1, (ItemRejected("r1", "v", "task is SUCCEEDED"),)),
    PreemptResult(2),
    ApproveTaskResult(True, 7, "approved", "ana", "ship it", 1000, TaskStatus.READY),
    ApproveTaskResult(False, 9, "rejected", "timeout", "", 0, TaskStatus.FAILED),
    RunControlResult(RunStatus.PAUSED, True, 2),
    RunControlResult(RunStatus.RUNNING, False),
    RerunTaskResult(3, 1, True, TaskStatus.WAITING_APPROVAL, RunStatus.RUNNING),
    MessagesSent((4, 5), (("a/1",), ("a/1", "b/x"))),
    MessageAcked(False, 12),
    ActivationResult("a/1", "n1", 3, 9000, True),
    RenewResult(2, ("a/2",)),
    ChangedResult(1),
]


def test_samples_cover_every_result_type() -> None:
    assert {type(r) for r in SAMPLES} == set(RESULT_TYPES)


@pytest.mark.parametrize("res", SAMPLES, ids=lambda r: type(r).__name__)
def test_result_roundtrips_through_msgpack(res: Result) -> None:
    data = msgpack.packb(encode_result(res), use_bin_type=True)
    decoded = decode_result(msgpack.unpackb(data, raw=False, strict_map_key=False))
    assert decoded == res
    assert type(decoded) is type(res)
    # Canonical: the decoded result encodes to the same bytes.
    assert msgpack.packb(encode_result(decoded), use_bin_type=True) == data


def test_ok_code_and_message_read_alike_on_every_result() -> None:
    for res in SAMPLES:
        if isinstance(res, Rejected):
            assert not res.ok and res.code is not Code.OK and res.message
        else:
            assert res.ok and res.code is Code.OK and res.message == ""


# Codes a rejection carries. CANCELLED only ends a lock wait (LockChanged, LockAcquireResult).
REJECTION_CODES = [c for c in Code if c not in (Code.OK, Code.CANCELLED)]


@pytest.mark.parametrize("code", REJECTION_CODES)
def test_every_rejection_code_maps_to_the_error_of_that_status(code: Code) -> None:
    err = Rejected(code, "what to fix").error()
    assert isinstance(err, errors.RaftmeshError) and type(err) is not errors.RaftmeshError
    assert err.code == code.value and err.message == "what to fix"


def test_expect_narrows_raises_the_rejection_or_a_type_error() -> None:
    res: Result = SubmitRunResult("r1", created=True)
    assert expect(res, SubmitRunResult).run_id == "r1"
    with pytest.raises(errors.Aborted, match="stale"):
        expect(Rejected(Code.ABORTED, "stale token"), SubmitRunResult)
    with pytest.raises(errors.NotFound):
        expect(Rejected(Code.NOT_FOUND, "run 'x' not found"), CancelRunResult)
    with pytest.raises(TypeError, match="SubmitRunResult"):
        expect(BarrierResult(1), SubmitRunResult)
