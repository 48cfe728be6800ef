"""The leader-only scheduling loop.

Watches the local replica (woken by every applied batch) and proposes batched
``assign`` commands for READY tasks, and a ``tick`` whenever a timeout is due.
It keeps no state that matters: a new leader rebuilds its view from the
replicated state alone. Tasks proposed but not yet applied are remembered in
``_inflight`` so they are not proposed twice; the state machine rejects any
assignment that no longer fits, so a stale plan is harmless.

With ``preempt_priority`` set, a waiting task of at least that priority that finds
no free slot preempts one lower running attempt (``consensus.preemption``). Each
waiting task has at most one preemption in flight (``_preempting``), and a victim
is not chosen twice, so a slow commit never costs extra victims.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..clock import Clock
from ..consensus.codes import Code
from ..consensus.commands import Assign, Command, NodeDown, Preempt, SuspectNode, Tick
from ..consensus.members import moves_on_suspicion
from ..consensus.placement import plan_assignments
from ..consensus.preemption import plan_preemptions
from ..consensus.state import ClusterState, TaskKey
from ..errors import RaftmeshError
from .access import Writer
from .liveness import Liveness
from .proposer import new_request_id
from .reads import ReadView

log = logging.getLogger(__name__)

MAX_ASSIGN_ITEMS = 1000
MAX_INFLIGHT_ASSIGNS = 2
IDLE_WAKE_S = 0.25
MAX_PREEMPTIONS_PER_STEP = 8


class Scheduler:
    def __init__(
        self,
        reads: ReadView,
        writer: Writer,
        is_leader: Callable[[], bool],
        self_id: str,
        liveness: Liveness,
        clock: Clock,
        preempt_priority: int | None = None,
        leader_term: Callable[[], int | None] | None = None,
    ) -> None:
        self._reads = reads
        self._writer = writer
        self._is_leader = is_leader
        self._leader_term = leader_term
        """The term this node leads in (``RaftMember.leader_term``): read when a liveness decision
        is made and carried by it, so a decision is never stamped with a later leadership's term."""
        self._self_id = self_id
        self.liveness = liveness
        self._clock = clock
        self._down_inflight: set[str] = set()
        self._suspect_inflight: set[str] = set()
        """Members whose ``SuspectNode`` is proposed and not yet settled."""
        self._wake = asyncio.Event()
        self._inflight: dict[TaskKey, str] = {}
        self._assigns = 0
        self._tick_inflight = False
        self._preempt_priority = preempt_priority
        self._preempting: dict[TaskKey, TaskKey] = {}
        self.preempted = 0
        """Attempts this node preempted while it led (a metric)."""
        """Waiting task -> the victim of its preemption in flight."""

    def poke(self) -> None:
        self._wake.set()

    def heard_from(self, node_id: str) -> None:
        """A heartbeat arrived (``raftmesh.node.peers``)."""
        self.liveness.heard_from(node_id)

    async def run(self) -> None:
        while True:
            try:
                # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands as the
                # event is set, and this loop would then outlive the node's stop.
                async with asyncio.timeout(IDLE_WAKE_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._is_leader():
                self._inflight.clear()
                self._preempting.clear()
                self.liveness.reset()
                continue
            try:
                for cmd in self._reads.read(self.decide):
                    asyncio.get_running_loop().create_task(self._propose(cmd))
            except Exception:
                log.exception("scheduler step failed")

    def decide(self, st: ClusterState) -> list[Command]:
        """What this leader proposes now, given the state and the clock (no I/O).

        Runs under the apply lock: the work is the placement plan, bounded by
        ``MAX_ASSIGN_ITEMS``. What it returns is recorded as in flight until
        ``_propose`` settles it, so the next step does not propose it again.
        """
        now = self._clock.now_ms()
        ups = [m for m in st.members.values() if m.up]
        cmds: list[Command] = []
        # The term this step decides in; None: this node no longer leads (or is only just becoming
        # leader), so it decides nobody's liveness this step. Without a callback (tests), 0: the
        # proposer stamps its own term.
        led = self._leader_term() if self._leader_term is not None else 0
        term = led or 0
        self.liveness.observe_raft()
        for o in self.liveness.overdue(ups) if led is not None else ():
            if o.node_id in self._down_inflight or self.liveness.cut_off:
                continue
            self._down_inflight.add(o.node_id)
            reason = f"no heartbeat reached the leader for {o.silent_s:.1f} s"
            cmds.append(
                NodeDown(
                    new_request_id("d-"),
                    now,
                    node_id=o.node_id,
                    incarnation=o.incarnation,
                    reason=reason,
                    leader_term=term,
                )
            )
        # The replicated flag follows this leader's view: one command per change of it (and a
        # new leader's first corrections), none while the two agree.
        silent = self.liveness.silent(ups)
        lost = self.liveness.lost(ups)
        for m in ups if led is not None else ():
            node_id = m.node_id
            if node_id in self._down_inflight | self._suspect_inflight or self.liveness.cut_off:
                continue
            if node_id in lost and any(
                moves_on_suspicion(st.runs[r].tasks[t]) for r, t in st.running.get(node_id, ())
            ):
                # Silent on both signals: move its movable attempts now (flagging it too) rather
                # than after node_down_after_s; the requeue fences the old attempts. Only while
                # one would move (O(its slots)), so a member whose work is all lock holders or
                # already moved costs no entry per step.
                suspect, requeue = True, True
            elif (node_id in silent) == m.suspect:
                continue
            elif m.suspect and node_id != self._self_id and not self.liveness.heard(node_id):
                # Flagged by an earlier leader: its grace here says nothing about it (it may be
                # the dead one); the flag stays until this leader hears it.
                continue
            else:
                suspect, requeue = not m.suspect, False
            self._suspect_inflight.add(node_id)
            cmds.append(
                SuspectNode(
                    new_request_id("s-"),
                    now,
                    node_id=node_id,
                    incarnation=m.incarnation,
                    suspect=suspect,
                    requeue=requeue,
                    leader_term=term,
                )
            )
        due = st.next_deadline_ms()
        if due is not None and due <= now and not self._tick_inflight:
            self._tick_inflight = True
            cmds.append(Tick(new_request_id("t-"), now))
        if self._assigns < MAX_INFLIGHT_ASSIGNS:
            plan = plan_assignments(st, now, self._inflight, MAX_ASSIGN_ITEMS, self.liveness.suspects(ups))
            if plan:
                for a in plan:
                    self._inflight[(a.run_id, a.task_id)] = a.node_id
                self._assigns += 1
                cmds.append(Assign(new_request_id("a-"), now, tuple(plan)))
        if self._preempt_priority is not None:
            preempt = plan_preemptions(
                st,
                now,
                self._preempt_priority,
                self._inflight,
                skip=self._preempting,
                busy_victims=set(self._preempting.values()),
                avoid=self.liveness.suspects(ups),
                max_items=MAX_PREEMPTIONS_PER_STEP,
            )
            if preempt:
                for p in preempt:
                    self._preempting[(p.by_run_id, p.by_task_id)] = (p.run_id, p.task_id)
                cmds.append(Preempt(new_request_id("p-"), now, tuple(preempt)))
        return cmds

    async def _propose(self, cmd: Command) -> None:
        if isinstance(cmd, Assign):
            await self._assign(cmd)
        elif isinstance(cmd, NodeDown):
            await self._node_down(cmd)
        elif isinstance(cmd, Tick):
            await self._tick(cmd)
        elif isinstance(cmd, Preempt):
            await self._preempt(cmd)
        elif isinstance(cmd, SuspectNode):
            await self._suspect(cmd)

    async def _assign(self, cmd: Assign) -> None:
        try:
            res = await self._writer.propose(cmd, timeout_s=10.0)
            if not res.ok and res.code is not Code.FAILED_PRECONDITION:
                log.warning("assign rejected: %s %s", res.code, res.message)
        except RaftmeshError as exc:
            log.info("assign outcome unknown (%s); the next plan re-reads the state", exc)
        finally:
            self._assigns -= 1
            for a in cmd.items:
                self._inflight.pop((a.run_id, a.task_id), None)
            self._wake.set()

    async def _node_down(self, cmd: NodeDown) -> None:
        try:
            # leader_only: this leader's liveness view, never committed through a later leader.
            res = await self._writer.propose(cmd, timeout_s=5.0, leader_only=True)
            if res.ok:
                log.warning("node %s marked down (%s)", cmd.node_id, cmd.reason)
            else:  # e.g. ABORTED: decided in a term that ended before it reached the log
                log.info("node %s not marked down (%s): %s %s", cmd.node_id, cmd.reason, res.code, res)
        except RaftmeshError as exc:
            log.info("node_down %s failed: %s", cmd.node_id, exc)
        finally:
            self._down_inflight.discard(cmd.node_id)
            self._wake.set()

    async def _suspect(self, cmd: SuspectNode) -> None:
        try:
            res = await self._writer.propose(cmd, timeout_s=5.0, leader_only=True)
            log.log(
                logging.WARNING if cmd.requeue else logging.INFO,
                "node %s suspect=%s%s: %s",
                cmd.node_id,
                cmd.suspect,
                ", its attempts requeued (no Raft answer)" if cmd.requeue else "",
                res.code,
            )
        except RaftmeshError as exc:
            log.info("suspect_node %s failed: %s", cmd.node_id, exc)
        finally:
            self._suspect_inflight.discard(cmd.node_id)
            self._wake.set()

    async def _tick(self, cmd: Tick) -> None:
        try:
            await self._writer.propose(cmd, timeout_s=5.0)
        except RaftmeshError as exc:
            log.info("tick failed: %s", exc)
        finally:
            self._tick_inflight = False
            self._wake.set()

    async def _preempt(self, cmd: Preempt) -> None:
        try:
            res = await self._writer.propose(cmd, timeout_s=5.0)
            if res.ok:
                self.preempted += getattr(res, "accepted", 0)
                log.info(
                    "preempted %d attempt(s): %s", len(cmd.items), [(p.run_id, p.task_id) for p in cmd.items]
                )
            elif res.code is not Code.FAILED_PRECONDITION:
                log.warning("preempt rejected: %s %s", res.code, res.message)
        except RaftmeshError as exc:
            log.info("preempt outcome unknown (%s); the next plan re-reads the state", exc)
        finally:
            for p in cmd.items:
                self._preempting.pop((p.by_run_id, p.by_task_id), None)
            self._wake.set()
