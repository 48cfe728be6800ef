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


def contains_secret(v: Any) -> bool:
    """Whether ``v`` holds a ``{"$secret": x}`` anywhere (one walk, no copies: an attempt's
    input and upstream need ``reveal`` and ``secret_values`` only then)."""
    if isinstance(v, dict):
        return SECRET_KEY in v or any(contains_secret(x) for x in v.values())
    if isinstance(v, list):
        return any(contains_secret(x) for x in v)
    return False


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


def _forms(secret: str) -> set[str]:
    """``secret`` as written, and as it appears inside a JSON string (escaped quotes and
    backslashes, non-ASCII as ``\\uXXXX`` or kept): a value echoed in JSON text is masked too."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value masked (longest first, so one inside another goes whole)."""
    for form in sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True):
        if form in text:
            text = text.replace(form, MASK)
    return text


def scrub_value(v: Any, secrets: Iterable[str]) -> Any:
    """A decoded JSON value with every string that contains a secret masked (keys too), and a
    number written as a secret replaced by ``"***"``."""
    values = set(secrets)

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return scrub(x, values)
        if isinstance(x, dict):
            return {scrub(str(k), values): walk(y) for k, y in x.items()}
        if isinstance(x, list):
            return [walk(y) for y in x]
        if isinstance(x, int | float) and not isinstance(x, bool) and str(x) in values:
            return MASK
        return x

    return walk(v)


def scrub_json(text: str, secrets: Iterable[str]) -> str:
    """A JSON document with the secret values masked by value (parsed: escaped forms match);
    ``text`` itself when nothing matched. Text that does not parse is scrubbed as text."""
    values = [s for s in secrets if s]
    if not values:
        return text
    try:
        doc = json.loads(text)
    except ValueError:
        return scrub(text, values)
    clean = scrub_value(doc, values)
    return text if clean == doc else json.dumps(clean)


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
        # With their JSON-escaped forms (a value logged inside JSON text), as ``scrub`` masks.
        self.secrets = sorted({f for s in secrets if s for f in _forms(s)}, key=len, reverse=True)

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
    a shared cached encoding and is never changed in place). An output that echoes a secret of
    any input in ``msg`` (a run: every task's, so a downstream echo is masked too) is masked."""
    if SECRET_KEY.encode() not in msg.SerializeToString():
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    values: set[str] = set()
    _input_secrets(out, values)
    _redact_fields(out, sorted(values, key=len, reverse=True))
    return out


def _input_secrets(msg: Any, into: set[str]) -> None:
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                continue
            for m in (value,) if hasattr(value, "ListFields") else value:
                _input_secrets(m, into)
        elif fd.name == "input_json" and isinstance(value, str) and SECRET_KEY in value:
            try:
                into.update(secret_values(json.loads(value)))
            except ValueError:
                pass


def _redact_fields(msg: Any, values: list[str]) -> None:
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                continue
            for m in (value,) if hasattr(value, "ListFields") else value:
                _redact_fields(m, values)
        elif isinstance(value, str) and fd.name.endswith("_json"):
            if fd.name == "output_json" and values:  # an agent that echoes its input returns the values
                value = scrub_json(value, values)
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
