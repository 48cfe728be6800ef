"""Secrets in task inputs, and keeping them (and the node's own keys) out of what others see.

A task input declares a value secret by wrapping it: ``{"$secret": VALUE}`` (anywhere in the
input, e.g. ``{"url": "...", "password": {"$secret": "hunter2"}}``). The agent receives
``VALUE`` itself (``reveal``); a caller with role ``reader`` sees ``"***"`` in its place
(GetRun, WatchRun, ListApprovals: ``redact``), and a failed attempt's error text has the
values masked (``scrub``) before it is reported, so they never reach the replicated error,
events or logs. The audit timeline never holds inputs, outputs or error texts at all.

A secret is still replicated in the Raft log and snapshots (it is part of the task): it is hidden
from readers and logs, not encrypted at rest. The ``llm`` agent's API keys are never inputs
(``input_secret_error``): they are node environment variables, which ``SecretsFilter`` masks
in the node's log lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

SECRET_KEY = "$secret"
MASK = "***"
MIN_SECRET_CHARS = 4
"""Shorter values are not masked in free text (masking "a" would garble every message)."""
SECRET_ENV = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
"""Node environment variables whose values never appear in the node's logs."""


def _is_secret(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and SECRET_KEY in v


def reveal(v: Any) -> Any:
    """``v`` with every ``{"$secret": x}`` replaced by ``x`` (what the agent receives)."""
    if _is_secret(v):
        return v[SECRET_KEY]
    if isinstance(v, dict):
        return {k: reveal(x) for k, x in v.items()}
    if isinstance(v, list):
        return [reveal(x) for x in v]
    return v


def redact(v: Any) -> Any:
    """``v`` with every ``{"$secret": x}`` replaced by ``"***"`` (what a reader sees)."""
    if _is_secret(v):
        return MASK
    if isinstance(v, dict):
        return {k: redact(x) for k, x in v.items()}
    if isinstance(v, list):
        return [redact(x) for x in v]
    return v


def secret_values(v: Any) -> list[str]:
    """The text of every secret in ``v`` (the strings inside; numbers as written)."""
    out: list[str] = []

    def walk(x: Any, inside: bool) -> None:
        if _is_secret(x):
            walk(x[SECRET_KEY], True)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y, inside)
        elif isinstance(x, list):
            for y in x:
                walk(y, inside)
        elif inside and x is not None and not isinstance(x, bool):
            s = str(x)
            if len(s) >= MIN_SECRET_CHARS:
                out.append(s)

    walk(v, False)
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value masked (longest first, so one inside another goes whole)."""
    for s in sorted(set(secrets), key=len, reverse=True):
        if s and s in text:
            text = text.replace(s, MASK)
    return text


def redact_json(text: str) -> str:
    """A JSON document (an ``input_json`` / ``output_json``) as a reader sees it."""
    if SECRET_KEY not in text:  # the common case: nothing to parse
        return text
    try:
        return json.dumps(redact(json.loads(text)))
    except ValueError:
        return text


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the node's environment variables named like keys, secrets, tokens, passwords."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if SECRET_ENV.search(k) and len(v) >= 8]


class SecretsFilter(logging.Filter):
    """Masks the given values in every record's message and arguments (a node's log handler)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:
            return True
        clean = msg
        for secret in self.secrets:  # sorted once, longest first (as scrub does on every call)
            if secret in clean:
                clean = clean.replace(secret, MASK)
        if record.exc_info:
            tb = logging.Formatter().formatException(record.exc_info)
            masked = scrub(tb, self.secrets)
            if masked != tb:  # formatters format exc_info themselves: carry the masked text instead
                clean, record.exc_info, record.exc_text = f"{clean}\n{masked}", None, None
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def redact_message(msg: Any) -> Any:
    """A protobuf message (a ``Run``, a ``RunEvent``) with every secret in its ``*_json`` fields,
    at any depth, shown as ``"***"``: a copy if anything changed, else ``msg`` itself (which may be
    a shared cached encoding and is never changed in place)."""
    if SECRET_KEY.encode() not in msg.SerializeToString():
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    _redact_fields(out)
    return out


def _redact_fields(msg: Any) -> None:
    # A task that echoes its input returns the revealed values: mask them in its output too.
    shown = getattr(msg, "input_json", "") if hasattr(msg, "output_json") else ""
    if shown and SECRET_KEY in shown:
        try:
            values = secret_values(json.loads(shown))
        except ValueError:
            values = []
        if values and msg.output_json:
            msg.output_json = scrub(msg.output_json, values)
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                continue
            for m in (value,) if hasattr(value, "ListFields") else value:
                _redact_fields(m)
        elif isinstance(value, str) and fd.name.endswith("_json"):
            setattr(msg, fd.name, redact_json(value))


def filter_for_env(raft_secret: str | None = None) -> SecretsFilter:
    """The node's log filter: its environment's keys and tokens, and the cluster secret."""
    return SecretsFilter([*env_secrets(), *([raft_secret] if raft_secret else [])])


def secret(value: Any) -> dict[str, Any]:
    """Mark a task input value secret: ``dag.task("t", "http", input={"token": secret(tok)})``."""
    return {SECRET_KEY: value}


class ScrubbingAdapter(logging.LoggerAdapter[logging.Logger]):
    """An attempt's ``ctx.logger``: its input's secret values are masked in every line it logs."""

    def __init__(self, logger: logging.Logger, extra: dict[str, Any], secrets: Iterable[str]) -> None:
        super().__init__(logger, extra)
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except Exception:
            text = f"{msg} {args!r}"
        line, kw = self.process(scrub(text, self.secrets), kwargs)
        self.logger.log(level, line, **kw)
