"""The nemesis: a seeded schedule of faults, injected one at a time into a real cluster.

``plan_schedule`` is pure: the same seed gives the same kinds, durations, gaps and
target choices, so a failing seed replays with ``--seed``. What it cannot fix is
which node leads when a fault starts: ``kill-leader`` and friends resolve the leader
at run time, and the record says which node it was.

``Nemesis`` drives the faults from the calling (main) thread, one at a time: inject,
hold for the planned duration, heal, then wait until the cluster is whole again
(every node up and registered, a leader agreed) before the gap to the next fault.
So two faults never overlap, even in effect, and each fault's recovery time is
measured. Every fault is recorded with wall-clock start and end times.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from ..clock import SYSTEM_CLOCK
from ..localcluster import LocalCluster, wait_until
from .netns import NetnsLab, bridge, groups_reachability, majorities_ring, resolve_reachability
from .proxy import TcpProxy

NetMode = Literal["netns", "proxy", "none"]

GAP_S = (2.0, 6.0)
LEADER_WAIT_S = 10.0
RECOVERY_TIMEOUT_S = 60.0


class FaultKind(StrEnum):
    KILL_NODE = "kill-node"
    KILL_LEADER = "kill-leader"
    PAUSE_NODE = "pause-node"
    PAUSE_LEADER = "pause-leader"
    ISOLATE_LEADER = "isolate-leader"
    ISOLATE_FOLLOWER = "isolate-follower"
    HALVES = "halves"
    BRIDGE = "bridge"
    MAJORITIES_RING = "majorities-ring"
    CLIENT_CUT = "client-cut"
    CLIENT_DELAY = "client-delay"


PROCESS_FAULTS = (FaultKind.KILL_NODE, FaultKind.KILL_LEADER, FaultKind.PAUSE_NODE, FaultKind.PAUSE_LEADER)
PARTITION_FAULTS = (
    FaultKind.ISOLATE_LEADER,
    FaultKind.ISOLATE_FOLLOWER,
    FaultKind.HALVES,
    FaultKind.BRIDGE,
    FaultKind.MAJORITIES_RING,
)
CLIENT_FAULTS = (FaultKind.CLIENT_CUT, FaultKind.CLIENT_DELAY)

# Seconds a fault is held: kills keep the node down this long, pauses last longer than the
# election timeout (1-2 s) and up to past the default node-down timeout (5 s).
DURATION_S: dict[FaultKind, tuple[float, float]] = {
    FaultKind.KILL_NODE: (2.0, 10.0),
    FaultKind.KILL_LEADER: (2.0, 10.0),
    FaultKind.PAUSE_NODE: (3.0, 8.0),
    FaultKind.PAUSE_LEADER: (3.0, 8.0),
    FaultKind.ISOLATE_LEADER: (4.0, 12.0),
    FaultKind.ISOLATE_FOLLOWER: (4.0, 12.0),
    FaultKind.HALVES: (4.0, 12.0),
    FaultKind.BRIDGE: (4.0, 12.0),
    FaultKind.MAJORITIES_RING: (4.0, 12.0),
    FaultKind.CLIENT_CUT: (3.0, 10.0),
    FaultKind.CLIENT_DELAY: (5.0, 15.0),
}
CLIENT_DELAY_MS = (50, 800)


def available_faults(net: NetMode, nodes: int) -> tuple[list[FaultKind], dict[str, str]]:
    """The fault kinds a mode can inject, and for each one it cannot, why not."""
    kinds = list(PROCESS_FAULTS)
    skipped: dict[str, str] = {}
    if net == "netns":
        kinds += [k for k in PARTITION_FAULTS if k is not FaultKind.MAJORITIES_RING or nodes >= 5]
        if nodes < 5:
            skipped[FaultKind.MAJORITIES_RING] = (
                f"needs at least 5 nodes (with {nodes} every majority is the whole cluster)"
            )
        for k in CLIENT_FAULTS:
            skipped[k] = "netns mode injects real partitions; client-link cuts and delays are proxy mode's"
    elif net == "proxy":
        kinds += list(CLIENT_FAULTS)
        why = (
            "not injected in proxy mode: pysyncobj identifies a peer by the address the peer "
            "advertises for itself, so node-to-node Raft links cannot be routed through per-link "
            "proxies without changing the node; only client links go through proxies (use --net netns)"
        )
        for k in PARTITION_FAULTS:
            skipped[k] = why
    else:
        for k in (*PARTITION_FAULTS, *CLIENT_FAULTS):
            skipped[k] = "--net none injects process faults only (kill -9, SIGSTOP)"
    return kinds, skipped


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule. ``choice_seed`` seeds the pick of targets at run time."""

    kind: FaultKind
    duration_s: float
    gap_after_s: float
    choice_seed: int


def plan_schedule(
    seed: int, phase_s: float, kinds: Sequence[FaultKind], *, limit: int = 10_000
) -> list[PlannedFault]:
    """Faults (with gaps) that fit in ``phase_s`` seconds, drawn from a shuffled bag of ``kinds``.

    The bag makes every kind appear once before any appears twice, so short runs still
    cover the whole list. Pure: depends on ``seed`` and the arguments only.
    """
    if not kinds:
        return []
    rng = random.Random(f"{seed}-nemesis")
    out: list[PlannedFault] = []
    bag: list[FaultKind] = []
    t = 0.0
    while len(out) < limit:
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        lo, hi = DURATION_S[kind]
        duration = round(rng.uniform(lo, hi), 1)
        gap = round(rng.uniform(*GAP_S), 1)
        if t + duration > phase_s:
            break
        out.append(PlannedFault(kind, duration, gap, rng.getrandbits(32)))
        t += duration + gap
    return out


def quorum_possible(
    nodes: Collection[str], alive: Collection[str], reach: Mapping[str, Collection[str]]
) -> bool:
    """Whether some live node can exchange messages with a majority (itself included).

    ``reach[a]`` lists the peers ``a`` can send to; a link counts only if it works both
    ways. That is what a Raft leader needs: if no node has it, no progress is possible
    whatever the code does.
    """
    majority = len(nodes) // 2 + 1
    live = set(alive)
    return any(
        1 + sum(1 for b in reach.get(a, ()) if b in live and b != a and a in reach.get(b, ())) >= majority
        for a in live
    )


@dataclass
class FaultRecord:
    kind: str
    targets: list[str]
    detail: str
    duration_s: float
    start_ms: int
    end_ms: int = 0
    leader_before: str = ""
    quorum: bool = True
    """Whether a majority could still form while the fault was active."""
    recovery_s: float | None = None
    """Heal to a whole cluster again (every node up, a leader agreed); None if it did not recover."""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Nemesis:
    """Injects planned faults into ``cluster``; ``lab`` for partitions, ``client_proxies`` for client links."""

    cluster: LocalCluster
    lab: NetnsLab | None = None
    client_proxies: Mapping[str, TcpProxy] = field(default_factory=dict)
    clock_ms: Callable[[], int] = SYSTEM_CLOCK.now_ms
    log: Callable[[str], None] = lambda _msg: None
    records: list[FaultRecord] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return list(self.cluster.nodes)

    def run(self, schedule: Sequence[PlannedFault], phase_end_mono: float, stop: threading.Event) -> None:
        """Inject ``schedule`` in order until it ends, the phase ends or ``stop`` is set."""
        for pf in schedule:
            if stop.is_set() or time.monotonic() + pf.duration_s > phase_end_mono:
                return
            self.inject(pf, stop)
            stop.wait(min(pf.gap_after_s, max(0.0, phase_end_mono - time.monotonic())))

    def inject(self, pf: PlannedFault, stop: threading.Event) -> FaultRecord:
        """Inject one fault, hold it, heal it and wait for the cluster to be whole again."""
        rng = random.Random(pf.choice_seed)
        leader = self._leader()
        rec = FaultRecord(str(pf.kind), [], "", pf.duration_s, self.clock_ms(), leader_before=leader or "")
        self.records.append(rec)
        heal: Callable[[], None] = _nothing
        try:
            heal = self._apply(pf, rng, leader, rec)
            self.log(f"fault {rec.kind} {','.join(rec.targets)}: {rec.detail}")
            stop.wait(pf.duration_s)  # the fault's planned length, not a wait for a condition
        except Exception as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
            self.log(f"fault {rec.kind} failed: {rec.error}")
        finally:
            try:
                heal()
            except Exception as exc:  # recorded, never masking an interrupt; heal_all() retries at the end
                rec.error += ("; " if rec.error else "") + f"heal failed: {type(exc).__name__}: {exc}"
                self.log(f"fault {rec.kind}: {rec.error}")
            rec.end_ms = self.clock_ms()
        rec.recovery_s = self.wait_whole()
        return rec

    def wait_whole(self, timeout_s: float = RECOVERY_TIMEOUT_S) -> float | None:
        """Seconds until every node is up, registered and agrees on a leader; None on timeout."""
        t0 = time.monotonic()
        try:
            self.cluster.wait_ready(timeout_s)
        except TimeoutError as exc:
            self.log(f"cluster not whole after {timeout_s} s: {exc}")
            return None
        return round(time.monotonic() - t0, 2)

    def heal_all(self) -> list[str]:
        """Undo everything a fault may have left (idempotent): nets, pauses, killed nodes, proxies."""
        done: list[str] = []
        if self.lab is not None:
            if self.lab.blocked_links():
                done.append(f"healed partition {sorted(self.lab.blocked_links())}")
            self.lab.heal()
        for p in self.client_proxies.values():
            if p.blocked:
                p.unblock()
                done.append(f"unblocked {p.name}")
            if p.delay_ms:
                p.set_delay_ms(0)
                done.append(f"undelayed {p.name}")
        for node_id, n in self.cluster.nodes.items():
            if n.paused:
                self.cluster.resume(node_id)
                done.append(f"resumed {node_id}")
            if not n.alive:
                self.cluster.start_node(node_id)
                done.append(f"restarted {node_id}")
        return done

    # ---- faults ------------------------------------------------------------------------

    def _leader(self) -> str | None:
        try:
            return str(wait_until(self.cluster.leader, LEADER_WAIT_S, "a leader", interval_s=0.1))
        except TimeoutError:
            return None

    def _pick_leader(self, rng: random.Random, leader: str | None, rec: FaultRecord) -> str:
        if leader is not None:
            return leader
        rec.detail = "no agreed leader: picked a random node; "
        return rng.choice(self.nodes)

    def _apply(
        self, pf: PlannedFault, rng: random.Random, leader: str | None, rec: FaultRecord
    ) -> Callable[[], None]:
        """Inject the fault and return what heals it."""
        kind, c, nodes = pf.kind, self.cluster, self.nodes
        if kind in (FaultKind.KILL_NODE, FaultKind.KILL_LEADER, FaultKind.PAUSE_NODE, FaultKind.PAUSE_LEADER):
            leads = kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER)
            victim = self._pick_leader(rng, leader, rec) if leads else rng.choice(nodes)
            rec.targets = [victim]
            rec.quorum = quorum_possible(nodes, set(nodes) - {victim}, self._full_reach())
            if kind in (FaultKind.KILL_NODE, FaultKind.KILL_LEADER):
                c.kill(victim)
                rec.detail += f"kill -9 pid, restart after {pf.duration_s} s"
                return lambda: c.start_node(victim)
            c.pause(victim)
            rec.detail += f"SIGSTOP, SIGCONT after {pf.duration_s} s"
            return lambda: c.resume(victim)
        if kind in PARTITION_FAULTS:
            return self._partition(kind, rng, leader, rec)
        if kind is FaultKind.CLIENT_CUT:
            victim = rng.choice(nodes)
            mode: Literal["reset", "hold"] = rng.choice(["reset", "hold"])
            proxy = self.client_proxies[victim]
            proxy.block(mode)
            rec.targets, rec.detail = [victim], f"client link to {victim} cut ({mode})"
            return proxy.unblock
        if kind is FaultKind.CLIENT_DELAY:
            victims = sorted(nodes) if rng.random() < 0.5 else [rng.choice(nodes)]
            delay_ms = rng.randint(*CLIENT_DELAY_MS)
            for v in victims:
                self.client_proxies[v].set_delay_ms(delay_ms)
            rec.targets, rec.detail = victims, f"client links delayed {delay_ms} ms per chunk"

            def undelay() -> None:
                for v in victims:
                    self.client_proxies[v].set_delay_ms(0)

            return undelay
        raise ValueError(f"unknown fault kind {kind}")

    def _partition(
        self, kind: FaultKind, rng: random.Random, leader: str | None, rec: FaultRecord
    ) -> Callable[[], None]:
        lab, nodes = self.lab, self.nodes
        if lab is None:
            raise ValueError(f"{kind} needs --net netns")
        shuffled = sorted(nodes)
        rng.shuffle(shuffled)
        if kind is FaultKind.ISOLATE_LEADER:
            victim = self._pick_leader(rng, leader, rec)
            allowed = groups_reachability(nodes, [{victim}])
            rec.targets, rec.detail = [victim], rec.detail + f"{victim} cut from every peer"
        elif kind is FaultKind.ISOLATE_FOLLOWER:
            victim = next(n for n in shuffled if n != leader)
            allowed = groups_reachability(nodes, [{victim}])
            rec.targets, rec.detail = [victim], f"{victim} cut from every peer"
        elif kind is FaultKind.HALVES:
            minority = sorted(shuffled[: len(nodes) // 2])
            allowed = groups_reachability(nodes, [minority])
            majority = sorted(set(nodes) - set(minority))
            rec.targets, rec.detail = minority, f"minority {minority} | majority {majority}"
        elif kind is FaultKind.BRIDGE:
            via, rest = shuffled[0], shuffled[1:]
            left, right = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2 :])
            allowed = bridge(left, right, via)
            rec.targets, rec.detail = [via], f"{left} <-> {via} <-> {right}; {left} and {right} cut"
        else:
            allowed = majorities_ring(shuffled)
            rec.targets, rec.detail = shuffled, f"ring {' - '.join(shuffled)}: each node sees its neighbours"
        lab.set_reachability(allowed)
        rec.quorum = quorum_possible(nodes, nodes, resolve_reachability(nodes, allowed))
        return lab.heal

    def _full_reach(self) -> dict[str, list[str]]:
        return {n: [p for p in self.nodes if p != n] for n in self.nodes}


def _nothing() -> None:
    """The heal of a fault that failed to start."""
