"""Every limit the state machine enforces, in one place (README "Limits" lists them).

The checks that more than one place applies (the API before proposing, ``apply``
after) are defined here too, so there is one rule for each: ``id_error`` for ids,
``name_error`` for KV keys, lock names and lock owners, ``encoded_size`` for every
size limit given in bytes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import msgpack

MAX_ID_CHARS = 128
"""Run ids, task ids, node ids, agent type names and idempotency keys."""

MAX_TASKS_PER_RUN = 10_000
MAX_DEPS_PER_TASK = 10_000
MAX_TASK_INPUT_BYTES = 256 * 1024
"""Encoded (msgpack) size of one task's input."""

MAX_RUN_SPEC_BYTES = 8 * 1024 * 1024
"""Encoded size of a whole submitted run."""

STAGE_ABOVE_TASKS = 2_048
"""A run with more tasks than this (or inputs over ``STAGE_PART_BYTES``) is submitted staged, in
parts (``StageRun``), so no one log entry holds apply for the whole run. Up to this size one
entry is cheaper (one commit; ~35 ms of apply for 2,000 tasks on the project's 2-core machine)."""
STAGE_PART_TASKS = 1_000
"""Tasks in one part of a staged submit: validating and building 1,000 tasks takes ~7 ms of apply
CPU. Parts go one after the other (each a commit), so fewer, larger parts submit sooner."""
STAGE_PART_BYTES = 512 * 1024
"""Encoded size of one part's task specs (a part ends early at this size)."""
KEYED_RUN_ID_PREFIX = "rk-"
"""A keyed staged submit's run id (``node.staging.keyed_run_id``: a digest of its request) starts
with it, apart from the random "r-<hex>" ids; only such a stage speaks for its request."""
STAGE_TTL_MS = 60_000
"""A stage whose next part does not arrive within this state time is dropped by a tick."""
MAX_STAGES = 32
"""Runs being staged at once, in the whole cluster."""
MAX_STAGES_PER_NODE = 8
"""Runs being staged at once through one node."""
MAX_STAGED_BYTES = 64 * 1024 * 1024
"""Encoded task specs held by all stages together."""
MAX_STAGED_BYTES_PER_NODE = 24 * 1024 * 1024
"""Encoded task specs held by the stages of one node (three runs at the run limit)."""

MAX_TASK_OUTPUT_BYTES = 1024 * 1024
"""Encoded (msgpack) size of one task's output; a larger output fails the attempt."""

MAX_JSON_DEPTH = 64
"""Arrays/objects nested in one JSON value (task inputs and outputs, KV values)."""

MAX_REQUEST_ID_CHARS = 256
"""Request ids (Kv, Locks) and idempotency keys as carried in a request id; printable text."""

MAX_STATUS_MESSAGE_BYTES = 1024
"""UTF-8 bytes of a gRPC status message; longer ones are clipped with "…(N more)"."""

MAX_ERROR_CHARS = 4096
"""Error messages are truncated to this length."""
MAX_RUN_NAME_CHARS = 256
"""A run's name; no control, format or line-separator characters (``printable``)."""
MAX_CANCEL_REASON_CHARS = 1024
"""A cancel request's reason (it becomes the cancelled tasks' error)."""

MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_BACKOFF_MS = 3600 * 1000

# ---- agent offers and placement -----------------------------------------------

MAX_AGENT_TYPES_PER_NODE = 256
"""Agent types one node may offer (``RegisterNode``)."""
MAX_CAPABILITIES = 64
"""Capabilities one agent offer lists, and capabilities one task ``requires``; each is an id."""
MAX_AGENT_CONCURRENCY = 100_000
"""An offer's per-node concurrency (0: bounded by the node's slots only)."""
MAX_NODE_SLOTS = 100_000
MAX_BREAKER_FAILURES = 1000
"""An offer's breaker threshold (0: the breaker never opens)."""
MAX_BREAKER_COOLDOWN_MS = 24 * 3600 * 1000

DEDUP_MAX_ENTRIES = 100_000
"""Request ids remembered for exactly-once retries (oldest forgotten first)."""

DEDUP_RETENTION_MS = 15 * 60 * 1000
"""A request id is remembered at least this long (state time), unless evicted by count."""

FINISHED_RUNS_RETAINED = 10_000
"""Finished runs kept in the state (oldest finished evicted first, with their idempotency keys)."""
FINISHED_TASKS_RETAINED = 200_000
"""Tasks of the finished runs kept in the state, together: retention by size as well as count
(the oldest finished runs are evicted first; the newest is kept whatever its size). A finished
task costs ~2-3 KB of memory on every node and ~160 bytes of snapshot (scripts/bench_scale.py)."""

# ---- dead letters, preemption, usage -------------------------------------------

MAX_DEAD_LETTERS_LISTED = 1000
"""Dead letters one ``ListDeadLetters`` call returns (newest first)."""

MAX_PREEMPTED_BY = 16
"""Preemptions remembered on a task (``preempted_by``; the oldest are dropped)."""

MAX_PREEMPT_ITEMS = 64
"""Preemptions in one ``preempt`` command (the leader proposes far fewer)."""

MAX_USAGE_TOKENS = 2**53
MAX_USAGE_COST = 1e15
"""Usage sums saturate here (JSON-safe integers; a sum never overflows the encoding)."""

# ---- workflows: conditions, maps, replicas, spawn, approvals, budgets ----------

MAX_CONDITION_NODES = 64
"""Comparisons and combinators in one ``when``."""
MAX_CONDITION_DEPTH = 8
"""How deep all/any/not nest in one ``when``."""
MAX_CONDITION_PATH_CHARS = 256
MAX_CONDITION_BYTES = 64 * 1024
"""Encoded bytes of one ``when`` (its comparison values included): it is kept with the task."""

MAX_ATTEMPT_HISTORY = 16
"""Ended attempts remembered per task (``TaskState.history``; the oldest are dropped)."""

MAX_SUSPECT_MOVES = 2
"""Attempts of one task the leader may move off a suspected (not down) member
(``SuspectNode.requeue``); past it the task waits for node-down, as the node's other work does."""

MAX_MAP_ITEMS = 1000
"""Instances one ``map`` may expand to (a longer output list fails the map)."""
MAX_MAP_SPEC_BYTES = MAX_RUN_SPEC_BYTES
"""Items x the encoded size of a map task's spec: each instance keeps a copy of the spec (its
input included), so a larger expansion fails the map instead of growing the state that much."""
MAX_REPLICAS = 16
MAX_SPAWN_TASKS = 1000
"""Tasks one completion may spawn."""
MAX_SPAWN_DEPTH = 8
"""Spawned tasks may spawn in turn, this many levels deep."""
MAX_SPAWNED_BYTES_PER_RUN = MAX_RUN_SPEC_BYTES
"""Encoded size of all the task specs a run's attempts spawn, together (as a submit's tasks)."""
MAX_APPROVAL_PROMPT_CHARS = 2000
MAX_APPROVAL_TIMEOUT_MS = 30 * 24 * 3600 * 1000
MAX_COMMENT_CHARS = 2000
MAX_PRINCIPAL_CHARS = 128
"""Who decided an approval (``by``)."""
MAX_BUDGET_TASKS = 1_000_000
MAX_BUDGET_SECONDS = 365 * 24 * 3600
"""A run budget's ``max_seconds`` (a year; 0 means no limit, as for every budget figure)."""
MAX_BUDGET_COST = MAX_USAGE_COST
MAX_BUDGET_TOKENS = MAX_USAGE_TOKENS
MAX_APPROVALS_LISTED = 1000
"""Open gates one ``ListApprovals`` call returns (oldest first; page on with its cursor)."""

# ---- locks ------------------------------------------------------------------

LOCK_AGING_MS = 1000
"""One point of lock priority is worth this much waiting (priority ages; nothing starves)."""

MAX_LOCK_PRIORITY = 100
"""Lock request priority is 0..100: a waiter is overtaken for at most 100 s."""

MAX_LOCK_NAME_CHARS = 512
MAX_LOCKS_PER_REQUEST = 64
MIN_LOCK_TTL_MS = 500
MAX_LOCK_TTL_MS = 3600 * 1000
MAX_LOCK_WAIT_MS = 3600 * 1000
MAX_LOCK_RECORDS = 100_000
"""Free locks are remembered (for fencing) up to this many names."""

LOCK_ENDED_RETAINED = 10_000
"""Outcomes of requests that ended without a grant (timed out, aborted, cancelled)."""

MAX_LOCK_WAITERS = 100_000

# ---- kv ---------------------------------------------------------------------

MAX_KV_KEY_CHARS = 512
MAX_KV_VALUE_BYTES = 256 * 1024
"""Encoded (msgpack) size of one value."""

MAX_KV_KEYS = 1_000_000
MAX_TXN_OPS = 128
"""Comparisons plus operations in one transaction."""

KV_HISTORY_EVENTS = 10_000
KV_HISTORY_BYTES = 64 * 1024 * 1024
"""Watch history kept in the state (oldest dropped first); older revisions are compacted."""

MIN_KV_LEASE_TTL_MS = 500
MAX_KV_LEASE_TTL_MS = 24 * 3600 * 1000
MAX_KV_LIST = 10_000

# ---- agent messaging (README "Messages") ------------------------------------

MAX_ADDRESS_CHARS = 256
"""An actor address ``TYPE/KEY``: TYPE an id, KEY printable text without spaces."""
MAX_TOPIC_CHARS = 256
MAX_MESSAGE_TYPE_CHARS = 128
MAX_MESSAGE_ID_CHARS = 128
"""Message ids and correlation ids (printable, no spaces); trace ids too."""
MAX_MESSAGE_PAYLOAD_BYTES = 256 * 1024
"""Encoded size of one message's payload (bytes or JSON)."""
MAX_MESSAGE_PRIORITY = 1000
"""Message priority is -1000..1000: higher goes first (FIFO within one priority per sender)."""
DEFAULT_MESSAGE_TTL_MS = 60 * 1000
"""A message sent with ttl_ms 0 gets this TTL."""
MAX_MESSAGE_TTL_MS = 7 * 24 * 3600 * 1000
MAX_REQUEST_TIMEOUT_MS = 3600 * 1000
"""The longest a ``Messages.Request`` waits for its reply."""
MAX_MESSAGES_PER_SEND = 256
"""Durable messages in one ``SendMessages`` (one API call, one handler turn's sends)."""
MAX_ACKS_PER_COMMAND = 256
"""Seqs one ``AckMessage`` acknowledges with its ``also`` (effect-free turns of one activation)."""
MAX_MAILBOX_MESSAGES = 10_000
"""Durable messages waiting in one address's mailbox; a send to a full one is RESOURCE_EXHAUSTED."""
MAX_QUEUED_MESSAGES = 200_000
"""Durable messages waiting in all mailboxes together."""
MAX_ACTIVATIONS = 100_000
"""Activations in the cluster at once."""
MAX_ACTIVATIONS_PER_NODE = 10_000
"""Activations one node hosts at once (an actor offer may set fewer for its type)."""
MAX_ACTIVATIONS_LISTED = 1_000
"""``ListActivations`` / ``raftmesh actors``: activations per call."""
ACTIVATION_LEASE_MS = 6_000
"""An activation's lease; its node renews it every third of that. A node that stops renewing
(dead, cut off) loses its activations this long after its last renewal."""
MAX_ACTOR_TYPES_PER_NODE = 256
MAX_SUBSCRIBERS_PER_TOPIC = 1_000
"""Subscribers (actor types or keys) of one topic: the fan-out of one publish."""
MAX_SUBSCRIPTIONS = 100_000
"""(topic, subscriber) pairs in the cluster."""
MAX_TOPICS_RETAINED = 10_000
"""Topics whose durable publishes are retained (the oldest-written topic's log is dropped first)."""
MAX_TOPIC_RETAINED = 100
"""Durable publishes kept per topic for ``subscribe --from-start`` (oldest dropped first)."""
MAX_MESSAGE_DEAD_LETTERS = 10_000
"""Message dead letters kept in the state (oldest dropped first; the total is counted)."""
MAX_MESSAGE_DEAD_LETTERS_LISTED = 1_000
MAX_DEAD_LETTERS_PER_RECORD = 256
"""Fast-path dead letters one node records in one ``RecordDeadLetters`` (it batches)."""
MAX_DEAD_LETTER_REASON_CHARS = 512
MAX_RETAINED_REPLIES = 10_000
"""Replies to durable requests kept for a requester that asks again (oldest dropped first)."""
REPLY_RETENTION_MS = 10 * 60 * 1000
# Node-local limits of the fast path (``raftmesh.messaging``):
MAX_INBOX_MESSAGES = 10_000
"""Fast-path messages waiting for one activation's handler; the peer refuses more (the sender
retries with backoff until the TTL)."""
MAX_UNACKED_PER_PEER = 10_000
"""Fast-path messages a node sends to one peer and keeps until acknowledged; a send beyond it
waits (backpressure)."""
SEEN_MESSAGE_IDS = 100_000
"""Message ids a node remembers to drop duplicates of fast-path messages (oldest forgotten)."""
KEPT_FAST_REPLIES = 10_000
KEPT_FAST_REPLY_BYTES = 32 * 1024 * 1024
"""Replies to fast requests a node's handlers answered, kept (each until its TTL) to answer a
copy of the request (its requester asked again) without handling it again (oldest dropped)."""
MAX_PENDING_REQUESTS = 10_000
"""Requests one node waits on at once (RESOURCE_EXHAUSTED beyond)."""
MAX_PEER_FRAME_MESSAGES = 1_024
"""Messages in one peer stream frame (a peer sending more is INVALID_ARGUMENT)."""
MAX_PEER_FRAME_BYTES = 4 * 1024 * 1024
"""A sender starts a new frame once one holds this many bytes of messages."""
MAX_PENDING_ACKS = 65_536
"""Acks a node owes one peer before it stops reading that peer's stream until they are sent
(a peer that sends without reading cannot make them pile up; two nodes that both stopped
would be unstuck by the silence check, which drops the stream)."""
MAX_RECEIVE_LANES = 100_000
"""(sending node, sender, target, priority) lanes a node remembers the next number of (oldest
forgotten: a forgotten lane restarts at the sender's oldest unacknowledged message)."""
MAX_TOPIC_STREAMS = 1_000
"""Client ``Subscribe`` streams one node serves at once (RESOURCE_EXHAUSTED beyond)."""
MAX_RUN_WAITS = 10_000
"""``RunToEnd`` calls one node keeps waiting at once (RESOURCE_EXHAUSTED beyond): each holds one
run watch (its queue bounded like a ``WatchRun`` stream's, ``node/watch.py`` ``MAX_QUEUED``)."""
MAX_RUN_WAIT_MS = 600_000
"""The longest a ``RunToEnd`` call waits for its run's end (also its default)."""
MAX_WATCH_RUNS_STREAMS = 256
"""``WatchRuns`` streams one node serves at once (RESOURCE_EXHAUSTED beyond): every applied run or
task event marks each of them, and a resync sorts the runs once per stream."""
MAX_TOPIC_STREAM_BACKLOG = 10_000
"""Publishes waiting for one slow client stream; beyond it the stream ends RESOURCE_EXHAUSTED."""
MAX_PENDING_DEAD_LETTERS = 10_000
"""Fast-path dead letters a node holds until ``RecordDeadLetters`` commits them (oldest dropped
first, counted in the router's stats)."""


# ---- the checks --------------------------------------------------------------

# Used with fullmatch: "$" alone would accept a trailing newline.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")


def id_error(what: str, value: str) -> str:
    """ "" if ``value`` is a valid id (run, task, node, agent type), else what is wrong with it."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{what} {value[:40]!r}... is longer than {MAX_ID_CHARS} characters"
    if not _ID_RE.fullmatch(value):
        return (
            f"{what} {value!r} may contain only letters, digits and _ . : - (and must start with a letter "
            "or digit)"
        )
    return ""


_CHILD_ID_RE = re.compile(r"(.+?)(?:\[(?:0|[1-9][0-9]{0,5})\]|#(?:0|[1-9][0-9]{0,5}))")


def task_ref_error(what: str, value: str) -> str:
    """``id_error`` for a task named in a request: a submitted id, or a child's id
    (``ID[i]`` a map instance, ``ID#i`` a replica: ``groups.child_id``)."""
    m = _CHILD_ID_RE.fullmatch(value)
    return id_error(what, m.group(1) if m else value)


def name_error(what: str, value: str, max_chars: int) -> str:
    """ "" if ``value`` is a usable KV key, lock name or owner, else what is wrong with it."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > max_chars:
        return f"{what} {value[:40]!r}... is longer than {max_chars} characters"
    if not value.isprintable() or _SPACE_RE.search(value):
        return f"{what} {value[:40]!r} may not contain spaces or control characters"
    return ""


_SPACE_RE = re.compile(r"\s")
"""What ``str.isspace`` calls a space (sre's ``\\s`` on str is ``Py_UNICODE_ISSPACE``, as it is),
found in C: every message's names are checked in ``apply`` on every replica."""


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` encoded as the log and the state store it (msgpack)."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return len(data)


def request_id_error(what: str, value: str) -> str:
    """ "" if ``value`` is a usable request id ("" means "choose one for me"), else what is wrong.

    A request id is kept in the replicated dedup table and echoed in errors and logs, so
    it is bounded and printable (idempotency keys follow this rule too).
    """
    if len(value) > MAX_REQUEST_ID_CHARS:
        return f"{what} is {len(value)} characters long; the limit is {MAX_REQUEST_ID_CHARS}"
    if not printable(value):
        return f"{what} {value[:40]!r} may not contain control characters"
    return ""


UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories that move a terminal's cursor, reorder or hide text (e.g. ESC, U+202E)."""


def printable(text: str) -> bool:
    """True if ``text`` has no control, format or line-separator characters (spaces are fine)."""
    return (text.isascii() and text.isprintable()) or not any(
        unicodedata.category(c) in UNPRINTABLE_CATEGORIES for c in text
    )


def address_error(what: str, value: str) -> str:
    """ "" if ``value`` is an actor address ``TYPE/KEY`` (TYPE an id, KEY a name), else what is wrong."""
    kind, slash, key = value.partition("/")
    if not slash:
        return f"{what} {value[:40]!r} must be TYPE/KEY (an actor type, a slash, a key)"
    if len(value) > MAX_ADDRESS_CHARS:
        return f"{what} {value[:40]!r}... is longer than {MAX_ADDRESS_CHARS} characters"
    return id_error(f"{what}'s type", kind) or name_error(f"{what}'s key", key, MAX_ADDRESS_CHARS)


# ---- operations and security (issue 11) -------------------------------------------------

MAX_NAMESPACE_CHARS = 64
"""A namespace name: a letter or digit, then letters, digits, ``_ . -`` ("" is the default one)."""

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def namespace_error(value: str) -> str:
    """ "" if ``value`` is a namespace ("" the default one), else what is wrong with it."""
    if not value:
        return ""
    if len(value) > MAX_NAMESPACE_CHARS:
        return f"namespace {value[:40]!r}... is longer than {MAX_NAMESPACE_CHARS} characters"
    if not _NAMESPACE_RE.fullmatch(value):
        return (
            f"namespace {value[:40]!r} may contain only letters, digits and _ . - "
            "(and must start with a letter or digit)"
        )
    return ""
