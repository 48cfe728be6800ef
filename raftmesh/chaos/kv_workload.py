"""The chaos KV workload: closed-loop clients on a few keys, recording a history to check.

Each client thread draws its operations from its own seeded RNG: ``get``, ``put`` of
a value unique in the whole run (``"<client>-<i>"``), ``cas`` against the
mod_revision this client last read for the key, and now and then ``delete``. Every
operation is recorded with its call and return times on one monotonic clock shared
by the whole harness (``HistoryClock``), so histories of different clients can be
compared in real time, which linearizability requires.

What the client saw decides how an operation enters the history:

- ``ok``: it returned; its output is known.
- ``failed``: the cluster refused it before applying it (a definite error such as
  ``InvalidArgument``, or ``Aborted`` for a fenced write): it had no effect, so it
  is left out.
- ``unknown``: the SDK gave up (``Unavailable``/``OutcomeUnknown``,
  ``DeadlineExceeded``, a transport error). A write may have taken effect at any
  time after its call: it returns "at infinity" in the checker. A read that failed
  had no effect at all, so it is simply dropped.

Why ``cas`` on a mod_revision can be checked with a register model that compares
values: every value is written once, and each write gets its own revision, so
while a key holds value ``v`` its mod_revision is the one the client read with
``v`` (and 0 with "absent"). Comparing the revision is comparing the value. The
checker verifies the premise too: every value must always come with the same
revision (``revision_conflicts``).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..client import Client
from ..client._coord import fence_pb
from ..client._security import Credentials
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import Aborted, FailedPrecondition, InvalidArgument, RaftmeshError
from ..verify.linearizability import Operation as LinOp
from ..verify.models import Cas, Delete, Get, KvOp, Put
from .workload import ClientThreads

KvOutcome = Literal["ok", "failed", "unknown"]

RETRY_BUDGETS_S = (4.0, 2.0, 1.0)
"""The SDK's retry budget per call, by client (client c gets ``[c % 3]``).

The DAG workload's 10 s rides out nearly every fault (the SDK fails over to a node
that works within 1-3 s), so its calls almost never end unknown. These budgets are
shorter than most faults, so some KV calls do end with an unknown outcome: that is
what the linearizability checker must handle, and where retry bugs would show.
"""
CALL_TIMEOUT_S = 2.0
"""Per attempt (at most the budget): a call stuck on a paused or cut-off node moves on soon."""


def sdk_client(addresses: list[str], client: int, credentials: Credentials | None = None) -> Client:
    """The SDK client of workload client ``client``, with its retry budget."""
    budget = RETRY_BUDGETS_S[client % len(RETRY_BUDGETS_S)]
    return Client(
        addresses, timeout_s=min(CALL_TIMEOUT_S, budget), retry_deadline_s=budget, credentials=credentials
    )


PAUSE_S = (0.005, 0.03)
"""Think time between a client's operations: bounds the history the checker has to search."""
PAUSE_AFTER_ERROR_S = 0.2
KEY_PREFIX = "chaos-kv/"

# Errors returned by the state machine or the node before anything was applied.
DEFINITE_FAILURES: tuple[type[RaftmeshError], ...] = (InvalidArgument, FailedPrecondition, Aborted)


class HistoryClock:
    """Seconds since the harness started (monotonic) and wall-clock ms, for every history.

    One instance is shared by all workloads of a run, so call and return times are
    comparable across clients; wall ms place operations next to the fault timeline.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._origin = clock.monotonic()

    def mono(self) -> float:
        return round(self._clock.monotonic() - self._origin, 6)

    def wall_ms(self) -> int:
        return self._clock.now_ms()


@dataclass
class KvRecord:
    """One KV operation as its client saw it."""

    client: str
    index: int
    kind: str
    """``get``, ``put``, ``cas`` or ``delete``."""
    key: str
    call_s: float
    value: Any = None
    """What a put or cas writes."""
    expected: Any = None
    """A cas: the value the client read with ``expected_revision`` (None: absent)."""
    expected_revision: int = 0
    return_s: float = math.inf
    """math.inf while pending or if the outcome is unknown."""
    return_ms: int = 0
    outcome: KvOutcome = "unknown"
    output: Any = None
    """A get: the value read (None: absent). A cas: whether it wrote. Else None."""
    revision: int = 0
    """A get: the mod_revision read (0: absent). A put: the mod_revision it wrote."""
    fence: tuple[str, int] | None = None
    """(lock, token) of a write fenced by a lock (the lock workload's counter)."""
    error: str = ""

    def model_input(self) -> KvOp:
        if self.kind == "get":
            return Get(self.key)
        if self.kind == "put":
            return Put(self.key, _hashable(self.value))
        if self.kind == "cas":
            return Cas(self.key, _hashable(self.expected), _hashable(self.value))
        if self.kind == "delete":
            return Delete(self.key)
        raise ValueError(f"unknown KV operation kind {self.kind!r}")

    def to_operation(self) -> LinOp | None:
        """The operation for the checker, or None if it cannot have had an effect."""
        if self.outcome == "failed":
            return None
        if self.outcome == "unknown":
            if self.kind == "get":
                return None
            return LinOp.timed_out(self.client, self.model_input(), self.call_s)
        output = _hashable(self.output) if self.kind in ("get", "cas") else None
        return LinOp(self.client, self.model_input(), output, self.call_s, self.return_s)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if v is not None and v != ""}
        if self.return_s == math.inf:
            d["return_s"] = None
        return d


def _hashable(v: Any) -> Hashable:
    """Values come back from JSON: lists become tuples so the checker can hash states."""
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def classify(exc: BaseException) -> tuple[KvOutcome, str]:
    """How an exception from the SDK bears on the operation's outcome."""
    if isinstance(exc, DEFINITE_FAILURES):
        return "failed", f"{exc.code}: {exc.message}"
    if isinstance(exc, RaftmeshError):
        return "unknown", f"{exc.code}: {exc.message}"
    return "unknown", f"{type(exc).__name__}: {exc}"


class KvRecorder:
    """Runs one KV call and records it: outcome, output and times (shared with the lock workload)."""

    def __init__(self, clock: HistoryClock, sink: list[KvRecord], lock: threading.Lock) -> None:
        self.clock = clock
        self._sink = sink
        self._lock = lock

    def _done(self, rec: KvRecord, outcome: KvOutcome, error: str = "") -> None:
        rec.outcome, rec.error = outcome, error
        rec.return_ms = self.clock.wall_ms()
        if outcome != "unknown":
            rec.return_s = self.clock.mono()

    def _call(self, rec: KvRecord, call: Callable[[], object]) -> KvRecord:
        """Record ``rec`` as called, run ``call`` (which fills in the output), record the outcome."""
        with self._lock:
            self._sink.append(rec)
        try:
            call()
        except Exception as exc:
            self._done(rec, *classify(exc))
        else:
            self._done(rec, "ok")
        return rec

    def get(self, sdk: Client, client: str, index: int, key: str) -> KvRecord:
        rec = KvRecord(client, index, "get", key, self.clock.mono())

        def call() -> None:
            e = sdk.kv.get(key)
            rec.output, rec.revision = (e.value, e.mod_revision) if e is not None else (None, 0)

        return self._call(rec, call)

    def put(
        self,
        sdk: Client,
        client: str,
        index: int,
        key: str,
        value: Any,
        fence: tuple[str, int] | None = None,
    ) -> KvRecord:
        rec = KvRecord(client, index, "put", key, self.clock.mono(), value=value, fence=fence)
        pbf = fence_pb(lock=fence[0], token=fence[1]) if fence else None

        def call() -> None:
            rec.revision = sdk.kv.put(key, value, fence=pbf)

        return self._call(rec, call)

    def cas(
        self, sdk: Client, client: str, index: int, key: str, expected: Any, revision: int, value: Any
    ) -> KvRecord:
        rec = KvRecord(client, index, "cas", key, self.clock.mono(), value, expected, revision)

        def call() -> None:
            rec.output = sdk.kv.cas(key, revision, value)

        return self._call(rec, call)

    def delete(self, sdk: Client, client: str, index: int, key: str) -> KvRecord:
        rec = KvRecord(client, index, "delete", key, self.clock.mono())
        return self._call(rec, lambda: sdk.kv.delete(key))


# Operation mix: cumulative thresholds of one uniform draw.
P_GET, P_PUT, P_CAS = 0.40, 0.70, 0.95  # the rest: delete


@dataclass
class KvWorkload(ClientThreads):
    """``clients`` closed-loop threads on ``keys`` keys; ``start()``, then ``stop()``.

    Records are appended (under a lock) when an operation is called, so a record
    exists even for a call that never returns.
    """

    THREAD_PREFIX = "chaos-kv"

    addresses: list[str]
    seed: int
    clients: int = 3
    keys: int = 4
    clock: HistoryClock = field(default_factory=HistoryClock)
    records: list[KvRecord] = field(default_factory=list)
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        self._init_threads()
        self._lock = threading.Lock()
        self.recorder = KvRecorder(self.clock, self.records, self._lock)

    @property
    def key_names(self) -> list[str]:
        return [f"{KEY_PREFIX}k{j}" for j in range(self.keys)]

    def snapshot(self) -> list[KvRecord]:
        with self._lock:
            return list(self.records)

    def _client_loop(self, c: int) -> None:
        rng = random.Random(f"{self.seed}-kv-{c}")
        name = f"kv{c}"
        keys = self.key_names
        last_read: dict[str, tuple[Any, int]] = {}
        rec = self.recorder
        with sdk_client(self.addresses, c, self.credentials) as sdk:
            i = 0
            while not self._stop.is_set():
                # Every draw happens whatever the outcomes, so a seed gives the same plan.
                key = rng.choice(keys)
                draw = rng.random()
                pause = rng.uniform(*PAUSE_S)
                value = f"{c}-{i}"
                if draw < P_GET or (draw < P_CAS and draw >= P_PUT and key not in last_read):
                    r = rec.get(sdk, name, i, key)
                    if r.outcome == "ok":
                        last_read[key] = (r.output, r.revision)
                elif draw < P_PUT:
                    r = rec.put(sdk, name, i, key, value)
                elif draw < P_CAS:
                    expected, revision = last_read.pop(key)
                    r = rec.cas(sdk, name, i, key, expected, revision, value)
                else:
                    r = rec.delete(sdk, name, i, key)
                i += 1
                self._stop.wait(PAUSE_AFTER_ERROR_S if r.outcome != "ok" else pause)
