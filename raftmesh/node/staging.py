"""The proposer side of a staged submit: a large run goes to the log in parts of bounded size.

One ``SubmitRun`` of 10,000 tasks held apply on every node for ~170 ms (validating and
building every task in one entry), stalling every other command and reader. Here a run over
``limits.STAGE_ABOVE_TASKS`` tasks (or ``STAGE_PART_BYTES`` of inputs) is proposed as ``StageRun`` parts, one
entry each and one after the other (proposed together, the proposer would batch them back
into one entry), then its ``SubmitRun`` with the last part: each entry's apply is bounded by
its part. The run appears whole, or not at all, when that ``SubmitRun`` applies.

A retry is safe: each part has its own request id, and a part that finds the idempotency key
taken answers the existing run. A stage cut short (a leader change past the deadline, a
tick dropping an abandoned stage) is answered UNAVAILABLE: the client retries the whole
submit with the same idempotency key, as after any unknown outcome.
"""

from __future__ import annotations

from dataclasses import replace

import grpc

from ..consensus import limits
from ..consensus.codes import Code
from ..consensus.commands import StageRun, SubmitRun
from ..consensus.dag import stage_parts
from ..consensus.results import Rejected, Result, SubmitRunResult
from ..errors import Unavailable
from .access import NodeAccess


async def propose_submit(
    node: NodeAccess, cmd: SubmitRun, node_id: str, context: grpc.aio.ServicerContext
) -> Result:
    """Propose ``cmd`` as one entry, or staged in parts when it is large; its result."""
    if len(cmd.tasks) <= limits.STAGE_ABOVE_TASKS and not _heavy(cmd):
        return await node.propose(cmd, context)
    parts = stage_parts(cmd.tasks, limits.encoded_size([t.input for t in cmd.tasks]))
    if len(parts) == 1:
        return await node.propose(cmd, context)
    staged = 0
    for seq, part in enumerate(parts[:-1]):
        res = await node.propose(
            StageRun(
                request_id=f"g-{cmd.run_id}-{seq}",
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
    res = await node.propose(replace(cmd, tasks=tuple(parts[-1]), staged=staged), context)
    return _retryable(res)


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
