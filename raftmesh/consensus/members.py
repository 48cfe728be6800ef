"""Member commands: a node registers (at start, and as a new incarnation after a
restart) or is marked down by the leader; either way its running attempts go back
to READY. Processors over an ``ApplyContext`` (see ``context.py``).
"""

from __future__ import annotations

from . import limits
from .codes import Code
from .commands import NodeDown, RegisterNode
from .context import ApplyContext
from .results import MemberChanged, MemberResult, Rejected, Result
from .state import Member
from .tasks import requeue_node_tasks


def register(ctx: ApplyContext, cmd: RegisterNode) -> Result:
    why = limits.id_error("node id", cmd.node_id)
    for a in cmd.agents:
        why = why or limits.id_error("agent type", a)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    if cmd.slots < 0:
        return Rejected(Code.INVALID_ARGUMENT, "slots must be >= 0")
    st = ctx.state
    rev = ctx.advance()
    old = st.members.get(cmd.node_id)
    if old is not None and old.incarnation != cmd.incarnation:
        # The node restarted: whatever it was running died with the old process.
        requeue_node_tasks(ctx, cmd.node_id, rev, "node restarted")
    st.members[cmd.node_id] = Member(
        cmd.node_id,
        cmd.grpc,
        cmd.raft,
        tuple(sorted(set(cmd.agents))),
        cmd.slots,
        cmd.incarnation,
        True,
        st.time_ms,
    )
    ctx.emit(MemberChanged(rev, cmd.node_id, True))
    return MemberResult(cmd.node_id)


def node_down(ctx: ApplyContext, cmd: NodeDown) -> Result:
    m = ctx.state.members.get(cmd.node_id)
    if m is None:
        return Rejected(Code.NOT_FOUND, f"node {cmd.node_id!r} is not a member")
    if not m.up or m.incarnation != cmd.incarnation:
        return Rejected(
            Code.FAILED_PRECONDITION, f"node {cmd.node_id!r} incarnation {cmd.incarnation} is not up"
        )
    rev = ctx.advance()
    m.up = False
    requeue_node_tasks(ctx, cmd.node_id, rev, f"node {cmd.node_id} down: {cmd.reason or 'unreachable'}")
    ctx.emit(MemberChanged(rev, cmd.node_id, False))
    return MemberResult(cmd.node_id)
