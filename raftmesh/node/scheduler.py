"""The leader-only scheduling loop.

Watches the local replica (woken by every applied batch) and proposes batched
``assign`` commands for READY tasks, and a ``tick`` whenever a timeout is due.
It keeps no state that matters: a new leader rebuilds its view from the
replicated state alone. Tasks proposed but not yet applied are remembered in
``_inflight`` so they are not proposed twice; the state machine rejects any
assignment that no longer fits, so a stale plan is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..consensus.codes import Code
from ..consensus.commands import Assign, NodeDown, Tick
from ..consensus.placement import plan_assignments
from ..consensus.raft import RaftMember
from ..consensus.state import TaskKey
from ..errors import RaftmeshError
from .proposer import Proposer, new_request_id, now_ms

log = logging.getLogger(__name__)

MAX_ASSIGN_ITEMS = 1000
MAX_INFLIGHT_ASSIGNS = 2
IDLE_WAKE_S = 0.25
SUSPECT_AFTER_S = 1.5
"""No heartbeat for this long (3 missed beats): place no new work there until it is heard from again."""


class Scheduler:
    def __init__(
        self, raft: RaftMember, proposer: Proposer, self_id: str, node_down_after_s: float = 5.0
    ) -> None:
        self._raft = raft
        self._proposer = proposer
        self._self_id = self_id
        self._node_down_after_s = node_down_after_s
        self._last_seen: dict[str, float] = {}
        """node id -> when this leader last had a Raft connection to it (monotonic)."""
        self._down_inflight: set[str] = set()
        self._heard: set[str] = set()
        """Members that heartbeated this node since it became leader."""
        self._was_up: dict[str, tuple[str, int]] = {}
        """node id -> (incarnation, registered_ms) of the member as last seen up."""
        self._wake = asyncio.Event()
        self._inflight: dict[TaskKey, str] = {}
        self._assigns = 0
        self._tick_inflight = False

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_WAKE_S)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._raft.is_leader:
                self._inflight.clear()
                self._last_seen.clear()
                self._was_up.clear()
                self._heard.clear()
                continue
            try:
                self._step()
            except Exception:
                log.exception("scheduler step failed")

    def _step(self) -> None:
        now = now_ms()
        self._check_liveness(now)
        with self._raft.lock:
            st = self._raft.machine.state
            due = st.next_deadline_ms()
            plan = []
            if self._assigns < MAX_INFLIGHT_ASSIGNS:
                plan = plan_assignments(st, now, self._inflight, MAX_ASSIGN_ITEMS, self._suspects())
        if due is not None and due <= now and not self._tick_inflight:
            self._tick_inflight = True
            asyncio.get_running_loop().create_task(self._tick(now))
        if plan:
            for a in plan:
                self._inflight[(a.run_id, a.task_id)] = a.node_id
            self._assigns += 1
            cmd = Assign(new_request_id("a-"), now, tuple(plan))
            asyncio.get_running_loop().create_task(self._assign(cmd))

    async def _assign(self, cmd: Assign) -> None:
        try:
            res = await self._proposer.propose(cmd, timeout_s=10.0)
            if not res.ok and res.code is not Code.FAILED_PRECONDITION:
                log.warning("assign rejected: %s %s", res.code, res.message)
        except RaftmeshError as exc:
            log.info("assign outcome unknown (%s); the next plan re-reads the state", exc)
        finally:
            self._assigns -= 1
            for a in cmd.items:
                self._inflight.pop((a.run_id, a.task_id), None)
            self._wake.set()

    def _suspects(self) -> frozenset[str]:
        """Members to give no new work: not heard from since this node leads, or silent lately.

        A new leader has no history, and right after a partition the member it lost touch
        with is usually the old leader: waiting for a first heartbeat (healthy members send
        one within about a second) keeps new work off it until node-down settles the matter.
        """
        mono = time.monotonic()
        with self._raft.lock:
            members = [n for n, m in self._raft.machine.state.members.items() if m.up and n != self._self_id]
        return frozenset(
            n for n in members if n not in self._heard or mono - self._last_seen.get(n, 0.0) > SUSPECT_AFTER_S
        )

    def heard_from(self, node_id: str) -> None:
        """A heartbeat arrived (``raftmesh.node.peers``)."""
        self._last_seen[node_id] = time.monotonic()
        self._heard.add(node_id)

    def _check_liveness(self, now: int) -> None:
        """Mark down the members whose heartbeats stopped for ``node_down_after_s``.

        A new leader starts every clock afresh (``_last_seen`` is cleared when this node
        is not leading), so a leader change alone never marks a node down.
        """
        mono = time.monotonic()
        with self._raft.lock:
            ups = [m for m in self._raft.machine.state.members.values() if m.up]
            members = [(m.node_id, m.incarnation) for m in ups]
            up_now = {m.node_id: (m.incarnation, m.registered_ms) for m in ups}
        for node_id, reg in up_now.items():
            if self._was_up.get(node_id) != reg:
                # It just joined, rejoined or restarted: a full timeout to reach us, whatever we heard before.
                self._last_seen[node_id] = mono
        self._was_up = up_now
        for gone in [n for n in self._last_seen if n not in up_now]:  # bounded by the up members
            del self._last_seen[gone]
        self._heard.intersection_update(up_now)
        for node_id, incarnation in members:
            if node_id == self._self_id:
                continue
            seen = self._last_seen.setdefault(node_id, mono)
            if mono - seen >= self._node_down_after_s and node_id not in self._down_inflight:
                self._down_inflight.add(node_id)
                reason = f"no heartbeat reached the leader for {mono - seen:.1f} s"
                cmd = NodeDown(
                    new_request_id("d-"), now, node_id=node_id, incarnation=incarnation, reason=reason
                )
                asyncio.get_running_loop().create_task(self._node_down(cmd))

    async def _node_down(self, cmd: NodeDown) -> None:
        try:
            res = await self._proposer.propose(cmd, timeout_s=5.0)
            log.warning("node %s marked down (%s): %s", cmd.node_id, cmd.reason, res.code)
        except RaftmeshError as exc:
            log.info("node_down %s failed: %s", cmd.node_id, exc)
        finally:
            self._down_inflight.discard(cmd.node_id)
            self._wake.set()

    async def _tick(self, ts: int) -> None:
        try:
            await self._proposer.propose(Tick(new_request_id("t-"), ts), timeout_s=5.0)
        except RaftmeshError as exc:
            log.info("tick failed: %s", exc)
        finally:
            self._tick_inflight = False
            self._wake.set()
