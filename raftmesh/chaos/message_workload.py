"""The chaos message workload: senders with unique ids and sequence numbers, on both paths.

Each client thread is one sender (``m<c>``, its own SDK client, so its ``client:<id>``
sender is stable across failovers) and sends closed-loop, one call at a time, to a few
``chaos_log`` actors (``raftmesh.chaos.agents.ChaosLog``): per call it draws the path
(durable or fast), the kind (send or request), the target and, for a seeded share, a
short TTL so some messages expire in mailboxes and inboxes while the faults go on. Each
message carries ``{"id", "s", "p", "q"}``: its logical id, sender, path and the sender's
sequence number on that path. What the sender saw is recorded (``MessageCall``): call and
return times, the outcome (``ok``; ``failed``: refused before anything was accepted;
``unknown``: the SDK gave up, it may or may not have been delivered) and a request's reply.

After the faults, ``read_effects`` reads the actors' committed turns from the KV (one record
per turn, see ``ChaosLog``) for ``raftmesh.chaos.message_check``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from ..client._security import Credentials
from ..consensus import limits
from ..errors import FailedPrecondition, InvalidArgument, RaftmeshError, ResourceExhausted
from .agents import ACTOR_TYPE, EFFECT_PREFIX, RELAY_TYPE
from .kv_workload import HistoryClock
from .message_check import Effect, MessageCall, MsgOutcome
from .workload import ClientThreads

DURABLE_SHARE = 0.5
REQUEST_SHARE = 0.3
RELAY_SHARE = 0.2
"""Share of the durable sends that go through a ``chaos_relay`` (its turn sends them on)."""
SHORT_TTL_SHARE = 0.1
SHORT_TTL_MS = (200, 1500)
"""Short enough that a message waiting out a fault expires (and is dead-lettered, never handled)."""
TTL_MS = 30_000
"""The others': long enough to outlive the faults (a durable one waits for its target's re-placement)."""
REQUEST_TIMEOUT_S = 10.0
PAUSE_S = (0.01, 0.05)
PAUSE_AFTER_ERROR_S = 0.2
CALL_TIMEOUT_S = 5.0
RETRY_DEADLINE_S = 10.0

_DEFINITE: tuple[type[RaftmeshError], ...] = (InvalidArgument, FailedPrecondition, ResourceExhausted)
"""Refused before anything was committed or accepted (a full mailbox, no such actor type)."""


def target_names(n: int) -> list[str]:
    return [f"{ACTOR_TYPE}/k{j}" for j in range(n)]


def relay_names(n: int) -> list[str]:
    return [f"{RELAY_TYPE}/k{j}" for j in range(n)]


def parse_effect(address: str, value: Any, mod_revision: int, version: int) -> Effect | None:
    if not isinstance(value, dict):
        return None
    try:
        return Effect(
            address,
            int(value["n"]),
            str(value["id"]),
            str(value["s"]),
            str(value["p"]),
            int(value["q"]),
            int(value["epoch"]),
            str(value["node"]),
            int(value["start_ms"]),
            int(value["expires_ms"]),
            mod_revision,
            version,
            str(value.get("to", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_effects(client: Client, addresses: list[str]) -> tuple[list[Effect], list[str]]:
    """Every chaos actor's committed turns (linearizable reads), and what could not be read."""
    effects: list[Effect] = []
    problems: list[str] = []
    for address in addresses:
        entries = client.kv.list(f"{EFFECT_PREFIX}{address}/", limit=limits.MAX_KV_LIST)
        if len(entries) >= limits.MAX_KV_LIST:
            problems.append(f"{address}: more than {limits.MAX_KV_LIST} effects; only the first were read")
        for e in entries:
            eff = parse_effect(address, e.value, e.mod_revision, e.version)
            if eff is None:
                problems.append(f"{e.key}: not an effect record: {e.value!r}")
            else:
                effects.append(eff)
    return effects, problems


@dataclass
class MessageWorkload(ClientThreads):
    """``clients`` senders on ``targets`` chaos actors; ``start()``, then ``stop()``."""

    THREAD_PREFIX = "chaos-msg"

    addresses: list[str]
    seed: int
    clients: int = 2
    targets: int = 4
    clock: HistoryClock = field(default_factory=HistoryClock)
    records: list[MessageCall] = field(default_factory=list)
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        self._init_threads()
        self._lock = threading.Lock()

    @property
    def target_names(self) -> list[str]:
        return target_names(self.targets)

    @property
    def addresses_used(self) -> list[str]:
        """Every chaos actor the senders may reach: the logs and the relays."""
        return target_names(self.targets) + relay_names(self.targets)

    def snapshot(self) -> list[MessageCall]:
        with self._lock:
            return list(self.records)

    def _client_loop(self, c: int) -> None:
        rng = random.Random(f"{self.seed}-msg-{c}")
        sender = f"m{c}"
        targets = self.target_names
        relays = relay_names(self.targets)
        seqs = {"durable": 0, "fast": 0}
        with Client(
            self.addresses,
            timeout_s=CALL_TIMEOUT_S,
            retry_deadline_s=RETRY_DEADLINE_S,
            credentials=self.credentials,
        ) as sdk:
            while not self._stop.is_set():
                # Every draw happens whatever the outcomes, so a seed gives the same plan.
                path = "durable" if rng.random() < DURABLE_SHARE else "fast"
                kind = "request" if rng.random() < REQUEST_SHARE else "send"
                target = rng.choice(targets)
                short = rng.random() < SHORT_TTL_SHARE
                ttl_ms = rng.randint(*SHORT_TTL_MS) if short else TTL_MS
                pause = rng.uniform(*PAUSE_S)
                relay = rng.random() < RELAY_SHARE and path == "durable" and kind == "send"
                relay_to = rng.choice(relays)
                seqs[path] += 1
                seq = seqs[path]
                mid = f"{self.seed}-{sender}-{path[0]}{seq}"
                payload: dict[str, Any] = {"id": mid, "s": sender, "p": path, "q": seq}
                if relay:  # through a relay, which sends it on to ``target``
                    payload["to"], target = target, relay_to
                rec = MessageCall(sender, path, kind, seq, mid, target, self.clock.wall_ms(), ttl_ms)  # type: ignore[arg-type]
                with self._lock:
                    self.records.append(rec)
                self._call(sdk, rec, payload)
                self._stop.wait(PAUSE_AFTER_ERROR_S if rec.outcome != "ok" else pause)

    def _call(self, sdk: Client, rec: MessageCall, payload: dict[str, Any]) -> None:
        durable = rec.path == "durable"
        outcome: MsgOutcome = "unknown"
        try:
            if rec.kind == "request":
                # A request has no TTL of its own: its timeout bounds it (the SDK picks the id).
                reply = sdk.messages.request(
                    rec.target, payload, timeout_s=REQUEST_TIMEOUT_S, durable=durable
                )
                rec.reply, rec.reply_epoch = reply.payload, reply.epoch
                rec.ttl_ms = 0
            else:
                sdk.messages.send(rec.target, payload, durable=durable, ttl_ms=rec.ttl_ms, id=rec.mid)
            outcome = "ok"
        except _DEFINITE as exc:
            outcome, rec.error = "failed", f"{exc.code}: {exc.message}"
        except RaftmeshError as exc:
            rec.error = f"{exc.code}: {exc.message}"
        except Exception as exc:  # a transport error the SDK did not translate: may have been delivered
            rec.error = f"{type(exc).__name__}: {exc}"
        finally:
            rec.outcome = outcome
            rec.return_ms = self.clock.wall_ms()
