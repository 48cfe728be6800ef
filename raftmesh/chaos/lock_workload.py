"""The chaos lock workload: lock holders incrementing counters that fencing tokens protect.

Each client thread loops: acquire one of a few locks (exclusive, short TTL) under a
fresh owner name, read the counters, write counter + 1 with its token, release.
Two resources are incremented in every critical section:

- ``FencedCounter``: an "external database" living in the harness process. It
  accepts a write only if its token is at least the highest token it has seen.
  Reads present the token too (``read(token)``): without that, a new holder could
  read, a stale holder then write, and the new holder overwrite that write with a
  value computed before it (a lost update the token rule alone lets through).
- a raftmesh KV key written with ``fence=(lock, token)``: the state machine
  rejects it (Aborted) if the lock has a newer grant. This one is ordered with the
  grants in the log, so the audit can say exactly whether a stale holder's write
  went through.

Holders go stale on purpose: in a few seeded iterations a holder that does not
renew its lease (the raw API) *stalls* for 1.5-2.5 TTLs between its reads and its
writes, as a holder paused by GC or SIGSTOP would (a thread of the harness cannot
be SIGSTOPped on its own). The lock expires meanwhile, another client takes it,
and the stalled holder's late writes must be refused. Other iterations hold the
lock through a ``Lease`` (the SDK's background keep-alive, as ``client.lock(...)``
uses), so renewals are exercised under faults as well.

With ``unfenced=True`` every critical section also increments an
``UnfencedCounter``, a resource that ignores tokens: the deliberate experiment that
shows what fencing prevents. Both counters see the same holders in the same order,
so their lost increments can be compared side by side.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..client import Client
from ..client._coord import Lease
from ..client._security import Credentials
from ..errors import Aborted, RaftmeshError
from .kv_workload import HistoryClock, KvRecord, KvRecorder, sdk_client
from .workload import ClientThreads

LOCK_PREFIX = "chaos-lock/"
COUNTER_PREFIX = "chaos-lockctr/"
TTL_S = 2.0
WAIT_S = 5.0
"""How long an acquire waits in the lock's queue (longer than a stall: waiters outlast expiry)."""
STALL_P = 0.08
"""Chance that an iteration without keep-alive stalls past its TTL."""
STALL_TTLS = (1.5, 2.5)
FORCED_STALL_AT = 1
"""Client 0 always stalls in this iteration, so every run has at least one stale holder."""
P_LEASE = 0.4
"""Chance that an iteration holds its lock through a ``Lease`` (background keep-alive)."""
HOLD_S = (0.0, 0.05)
PAUSE_S = (0.02, 0.15)

LockOutcome = Literal["granted", "refused", "aborted", "failed", "unknown"]


@dataclass(frozen=True)
class CounterWrite:
    """One write a counter received, accepted or not."""

    at_s: float
    at_ms: int
    owner: str
    token: int
    value: int
    previous: int
    """The counter's value when the write arrived."""
    highest: int
    """The highest token the counter had seen (read or written) when the write arrived."""
    accepted: bool

    @property
    def stale(self) -> bool:
        """The writer's token was already superseded at this resource."""
        return self.token < self.highest


class FencedCounter:
    """An external resource that accepts a write only with a token >= the highest it has seen."""

    fenced = True

    def __init__(self, name: str, clock: HistoryClock) -> None:
        self.name = name
        self.value = 0
        self.highest = 0
        self.writes: list[CounterWrite] = []
        self._clock = clock
        self._lock = threading.Lock()

    def read(self, token: int) -> int:
        """The value; the token counts as seen (a fenced read, see the module docstring)."""
        with self._lock:
            self.highest = max(self.highest, token)
            return self.value

    def write(self, value: int, token: int, owner: str) -> bool:
        with self._lock:
            ok = self._accepts(token)
            self.writes.append(
                CounterWrite(
                    self._clock.mono(),
                    self._clock.wall_ms(),
                    owner,
                    token,
                    value,
                    self.value,
                    self.highest,
                    ok,
                )
            )
            if ok:
                self.value = value
            self.highest = max(self.highest, token)
            return ok

    def _accepts(self, token: int) -> bool:
        return token >= self.highest

    def summary(self) -> dict[str, Any]:
        accepted = [w for w in self.writes if w.accepted]
        return {
            "name": self.name,
            "fenced": self.fenced,
            "writes": len(self.writes),
            "accepted": len(accepted),
            "rejected": len(self.writes) - len(accepted),
            "final": self.value,
            "lost_increments": len(accepted) - self.value,
            "stale_accepted": sum(1 for w in accepted if w.stale),
        }


class UnfencedCounter(FencedCounter):
    """The same resource with fencing switched off: it accepts every write (the experiment)."""

    fenced = False

    def _accepts(self, token: int) -> bool:
        return True


@dataclass
class LockRecord:
    """One iteration of a lock client: the acquire, what it did holding the lock, the release."""

    client: str
    index: int
    lock: str
    owner: str
    api: str
    """``raw`` (no keep-alive) or ``lease`` (background keep-alive)."""
    call_s: float
    call_ms: int
    return_s: float = math.inf
    return_ms: int = 0
    outcome: LockOutcome = "unknown"
    token: int = 0
    stall_s: float = 0.0
    counter_read: int | None = None
    counter_write: str = ""
    """``accepted`` or ``rejected`` by the fenced counter ("" if not attempted)."""
    unfenced_write: str = ""
    kv_write: str = ""
    """The fenced KV put: ``ok``, ``failed`` (Aborted: fenced), ``unknown`` ("" if not attempted)."""
    release: str = ""
    """``ok``, ``expired`` (Aborted: the lease had run out), ``unknown``."""
    lease_handle: str = field(default="", repr=False)
    """The grant's secret lease handle (kept out of reports: it is a credential)."""
    lease_lost: bool = False
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if v is not None and v != "" and k != "lease_handle"}
        if self.return_s == math.inf:
            d["return_s"] = None
        return d


def lock_names(n: int) -> list[str]:
    return [f"{LOCK_PREFIX}l{j}" for j in range(n)]


def counter_key(lock: str) -> str:
    return COUNTER_PREFIX + lock.removeprefix(LOCK_PREFIX)


@dataclass
class LockWorkload(ClientThreads):
    """``clients`` lock-holder threads on ``locks`` lock names; ``start()``, then ``stop()``.

    KV calls on the counter keys go to ``kv_records`` (the same history as the KV
    workload's, so the linearizability check covers them too).
    """

    THREAD_PREFIX = "chaos-lock"

    addresses: list[str]
    seed: int
    clients: int = 3
    locks: int = 2
    clock: HistoryClock = field(default_factory=HistoryClock)
    unfenced: bool = False
    ttl_s: float = TTL_S
    wait_s: float = WAIT_S
    stall_p: float = STALL_P
    records: list[LockRecord] = field(default_factory=list)
    kv_records: list[KvRecord] = field(default_factory=list)
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        self._init_threads()
        self._lock = threading.Lock()
        self.names = lock_names(self.locks)
        self.counters = {n: FencedCounter(n, self.clock) for n in self.names}
        self.unfenced_counters: dict[str, FencedCounter] = (
            {n: UnfencedCounter(n, self.clock) for n in self.names} if self.unfenced else {}
        )
        self.recorder = KvRecorder(self.clock, self.kv_records, self._lock)

    def stop(self, timeout_s: float = 40.0) -> list[str]:
        """Holders may be mid-stall (a sleep longer than the TTL): give them longer."""
        return super().stop(timeout_s)

    def snapshot(self) -> tuple[list[LockRecord], list[KvRecord]]:
        with self._lock:
            return list(self.records), list(self.kv_records)

    def _client_loop(self, c: int) -> None:
        rng = random.Random(f"{self.seed}-lock-{c}")
        with sdk_client(self.addresses, c, self.credentials) as sdk:
            i = 0
            while not self._stop.is_set():
                # Every draw happens whatever the outcomes, so a seed gives the same plan.
                name = rng.choice(self.names)
                use_lease = rng.random() < P_LEASE
                stall_draw = rng.random()
                stall_s = round(rng.uniform(*STALL_TTLS) * self.ttl_s, 2)
                hold_s = rng.uniform(*HOLD_S)
                pause = rng.uniform(*PAUSE_S)
                stall = not use_lease and (stall_draw < self.stall_p or (c == 0 and i == FORCED_STALL_AT))
                rec = LockRecord(
                    f"lock{c}",
                    i,
                    name,
                    f"chaos-{self.seed}-lock{c}-{i}",
                    "lease" if use_lease else "raw",
                    self.clock.mono(),
                    self.clock.wall_ms(),
                    stall_s=stall_s if stall else 0.0,
                )
                with self._lock:
                    self.records.append(rec)
                self._iteration(sdk, rec, hold_s)
                i += 1
                self._stop.wait(pause)

    def _iteration(self, sdk: Client, rec: LockRecord, hold_s: float) -> None:
        try:
            granted, token, rid = sdk.locks.acquire(
                rec.lock, owner=rec.owner, ttl_s=self.ttl_s, wait_s=self.wait_s
            )
        except Aborted as exc:
            rec.outcome, rec.error = "aborted", f"{exc.code}: {exc.message}"
        except RaftmeshError as exc:
            # A grant may still land on this owner; nobody renews it, so it expires after the TTL.
            rec.outcome, rec.error = "unknown", f"{exc.code}: {exc.message}"
        except Exception as exc:
            rec.outcome, rec.error = "unknown", f"{type(exc).__name__}: {exc}"
        else:
            rec.outcome, rec.token = ("granted" if granted else "refused"), token
            rec.return_s = self.clock.mono()
        rec.return_ms = self.clock.wall_ms()
        if rec.outcome != "granted":
            return
        # The secret handle the node made at Acquire: the release and renewals must name it.
        rec.lease_handle = sdk.locks.lease_of(rec.owner, token)
        lease = (
            Lease(sdk, rec.owner, [rec.lock], token, int(self.ttl_s * 1000), rid, rec.lease_handle)
            if rec.api == "lease"
            else None
        )
        try:
            self._critical_section(sdk, rec, hold_s)
        finally:
            self._release(sdk, rec, lease)

    def _critical_section(self, sdk: Client, rec: LockRecord, hold_s: float) -> None:
        name, token = rec.lock, rec.token
        value = rec.counter_read = self.counters[name].read(token)
        unfenced_value = self.unfenced_counters[name].read(token) if self.unfenced else 0
        key = counter_key(name)
        kv = self.recorder.get(sdk, rec.client, rec.index, key)
        time.sleep(hold_s)
        if rec.stall_s:
            # The fault itself: not interruptible by stop(), a paused process does not notice either.
            time.sleep(rec.stall_s)
        ok = self.counters[name].write(value + 1, token, rec.owner)
        rec.counter_write = "accepted" if ok else "rejected"
        if self.unfenced:
            ok = self.unfenced_counters[name].write(unfenced_value + 1, token, rec.owner)
            rec.unfenced_write = "accepted" if ok else "rejected"
        if kv.outcome == "ok":
            current = kv.output if isinstance(kv.output, int) else 0
            put = self.recorder.put(sdk, rec.client, rec.index, key, current + 1, fence=(name, token))
            rec.kv_write = put.outcome
            if put.error:
                rec.error = put.error

    def _release(self, sdk: Client, rec: LockRecord, lease: Lease | None) -> None:
        try:
            if lease is not None:
                lease.release()
                rec.lease_lost = lease.lost.is_set()
                rec.release = "expired" if rec.lease_lost else "ok"
            else:
                sdk.locks.release(rec.owner, rec.lock, rec.token, lease=rec.lease_handle)
                rec.release = "ok"
        except Aborted:
            rec.release = "expired"
        except Exception as exc:
            rec.release = "unknown"
            rec.error = rec.error or f"release: {type(exc).__name__}: {exc}"
