"""The proposer side of a staged submit: a large run goes to the log in parts of bounded size.

One ``SubmitRun`` of 10,000 tasks held apply on every node for ~170 ms (validating and
building every task in one entry), stalling every other command and reader. Here a run over
``limits.STAGE_ABOVE_TASKS`` tasks (or ``STAGE_PART_BYTES`` of inputs) is proposed as ``StageRun`` parts, one
entry each and one after the other (proposed together, the proposer would batch them back
into one entry), then its ``SubmitRun`` with the last part: each entry's apply is bounded by
its part. The run appears whole, or not at all, when that ``SubmitRun`` applies.

A retry is safe: apply makes a part proposed again a no-op (by its ``seq``), a retry of a keyed
submit goes on from the parts already applied (``keyed_run_id``), and a part that finds the
idempotency key taken answers the existing run. A stage cut short (a leader change past the deadline, a
tick dropping an abandoned stage) is answered UNAVAILABLE: the client retries the whole
submit with the same idempotency key, as after any unknown outcome. Another request under a key
whose stage is live (other tasks or fields: another keyed run id) is refused at its first part,
FAILED_PRECONDITION (``runs.stage``), rather than dropping that stage.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace

import grpc
import msgpack

from .. import calls
from ..consensus import limits
from ..consensus.codes import Code
from ..consensus.commands import StageRun, SubmitRun
from ..consensus.dag import stage_parts
from ..consensus.results import Rejected, Result, SubmitRunResult
from ..consensus.state import ClusterState
from ..errors import Unavailable
from .access import NodeAccess
from .proposer import new_request_id

_PACK = functools.partial(msgpack.packb, use_bin_type=True)
"""msgpack as the log encodes (``limits.encoded_size``)."""


async def propose_submit(
    node: NodeAccess, cmd: SubmitRun, node_id: str, context: grpc.aio.ServicerContext
) -> Result:
    """Propose ``cmd`` as one entry, or staged in parts when it is large; its result.

    A staged submit with an idempotency key takes the run id ``keyed_run_id`` names, not the
    caller's: a retry of the same request (the SDK retries DEADLINE_EXCEEDED and UNAVAILABLE,
    on any node) stages the same parts under the same id, so it skips the parts the log has
    already applied and goes on from there, rather than starting over and being cut short by
    the same deadline again."""
    if len(cmd.tasks) <= limits.STAGE_ABOVE_TASKS and not _heavy(cmd):
        return await node.propose(cmd, context)
    encoded = [_PACK(t.to_map()) for t in cmd.tasks]
    parts = stage_parts(cmd.tasks, {t.id: len(b) for t, b in zip(cmd.tasks, encoded, strict=True)})
    if len(parts) == 1:
        return await node.propose(cmd, context)
    if cmd.idempotency_key:
        cmd = replace(cmd, run_id=keyed_run_id(cmd, encoded))
    done = node.reads.read(functools.partial(_applied_parts, cmd=cmd, node_id=node_id))
    # Request ids of this attempt's own: an applied part is recorded under its id, so an id
    # reused by a later attempt (after the stage expired) would be answered, not applied. Apply
    # makes a part proposed twice a no-op by its seq.
    attempt = new_request_id()[:8]
    staged = 0
    for seq, part in enumerate(parts[:-1]):
        if seq < done:  # applied by an earlier attempt of this request: nothing to propose
            staged += len(part)
            continue
        res = await node.propose(
            StageRun(
                request_id=f"g-{cmd.run_id}-{seq}-{attempt}",
                ts_ms=node.clock.now_ms(),
                run_id=cmd.run_id,
                seq=seq,
                tasks=tuple(part),
                idempotency_key=cmd.idempotency_key,
                node_id=node_id,
            ),
            context,
        )
        if isinstance(res, SubmitRunResult) or not res.ok:  # the key's run exists, or refused
            return _retryable(res)
        staged += len(part)
        if seq == 0 and done == 0:  # the stage may be an earlier attempt's, now continued here
            done = node.reads.read(functools.partial(_applied_parts, cmd=cmd, node_id=node_id))
    res = await node.propose(replace(cmd, tasks=tuple(parts[-1]), staged=staged), context)
    return _retryable(res)


def keyed_run_id(cmd: SubmitRun, encoded: list[bytes]) -> str:
    """The run id of a staged submit with an idempotency key: a digest of the request as it is
    logged (key, namespace, submitter when authenticated, name, priority, budget, every task; ``encoded``: each
    task's spec encoded), so every attempt of one request names the same stage, and another
    request under the same key (other tasks, another caller) names another one, never mixing
    its parts into this one. "rk-" keeps it apart from the random "r-<hex>" ids."""
    # An anonymous caller's submitter is its peer address, whose port changes with every
    # connection: a retry on another channel must name the same stage, so it does not count.
    call = calls.current()
    submitter = "" if call is not None and call.principal == calls.ANONYMOUS else cmd.submitter
    head = replace(
        cmd,
        request_id="",
        ts_ms=0,
        run_id="",
        tasks=(),
        prefer="",
        staged=0,
        origin=None,
        submitter=submitter,
    )
    digest = hashlib.sha256(_PACK(head.to_map()))
    for b in encoded:
        digest.update(b)
    return limits.KEYED_RUN_ID_PREFIX + digest.hexdigest()[:32]


def _applied_parts(st: ClusterState, cmd: SubmitRun, node_id: str) -> int:
    """How many parts of ``cmd``'s stage this replica has applied (0: none, or not this
    request's): an attempt goes on after them. Read locally: a lagging replica only answers
    fewer, and re-proposing an applied part is a no-op."""
    stage = st.stages.get(cmd.run_id)
    if stage is None or stage.idempotency_key != cmd.idempotency_key or not cmd.idempotency_key:
        return 0
    return stage.next_seq if stage.node_id == node_id else 0


def _heavy(cmd: SubmitRun) -> bool:
    """Whether a run of few tasks may still be over one part's bytes (large inputs)."""
    return len(cmd.tasks) * limits.MAX_TASK_INPUT_BYTES > limits.STAGE_PART_BYTES and (
        limits.encoded_size([t.input for t in cmd.tasks]) > limits.STAGE_PART_BYTES
    )


def _retryable(res: Result) -> Result:
    """A stage that is gone (expired, dropped) is the caller's to retry, as UNAVAILABLE."""
    if isinstance(res, Rejected) and res.code is Code.ABORTED:
        raise Unavailable(res.message)
    return res
