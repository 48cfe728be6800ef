"""Every limit the state machine enforces, in one place (README "Limits" lists them)."""

from __future__ import annotations

MAX_ID_CHARS = 128
"""Run ids, task ids, node ids, agent type names and idempotency keys."""

MAX_TASKS_PER_RUN = 10_000
MAX_DEPS_PER_TASK = 10_000
MAX_TASK_INPUT_BYTES = 256 * 1024
"""Encoded (msgpack) size of one task's input."""

MAX_RUN_SPEC_BYTES = 8 * 1024 * 1024
"""Encoded size of a whole submitted run."""

MAX_TASK_OUTPUT_BYTES = 1024 * 1024
"""Encoded size of one task's output; a larger output fails the attempt."""

MAX_ERROR_CHARS = 4096
"""Error messages are truncated to this length."""

MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_BACKOFF_MS = 3600 * 1000

DEDUP_MAX_ENTRIES = 100_000
"""Request ids remembered for exactly-once retries (oldest forgotten first)."""

DEDUP_RETENTION_MS = 15 * 60 * 1000
"""A request id is remembered at least this long (state time), unless evicted by count."""

FINISHED_RUNS_RETAINED = 10_000
"""Finished runs kept in the state (oldest finished evicted first, with their idempotency keys)."""
