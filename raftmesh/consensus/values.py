"""What a JSON value from a client must be before it may enter the replicated state. Pure.

A value stored in the state is read back by every client (``GetRun``, ``KvGet``,
``Kv.List``, watches) and encoded into every snapshot, so one value that a reader cannot
encode poisons that read for everybody, forever. The rules are those of the two
encodings a value goes through (msgpack in the log and snapshots, strict JSON on the
wire), plus a depth bound so that no reader or writer recurses without limit:

- JSON only: null, booleans, numbers, strings, arrays, objects (whose keys are strings,
  or numbers, booleans or null, which JSON readers see as their text);
- numbers finite (no ``NaN``, ``Infinity``, nor ``1e400``, which parses as infinity);
- integers within what msgpack round-trips, ``-2**63 .. 2**64 - 1``;
- strings valid Unicode (no lone surrogates such as ``"\\ud800"``: they have no UTF-8);
- nesting at most ``limits.MAX_JSON_DEPTH`` arrays/objects deep.

The same rules run at the gRPC boundary (``parse``: a clear INVALID_ARGUMENT) and in
``apply`` (``problem``: the state machine never trusts its input). Both are
O(size of the value) and never raise on any input.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack

from . import limits

MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
"""The integers msgpack encodes (int64 and uint64)."""


class BadValue(ValueError):
    """A JSON text or value that must not be stored; the message says what to fix.

    ``syntax`` is true when the text is not JSON at all (the message is then the parser's).
    """

    def __init__(self, message: str, syntax: bool = False) -> None:
        super().__init__(message)
        self.syntax = syntax


def _reject_constant(name: str) -> Any:
    raise BadValue(f"{name} is not a JSON number (JSON has no NaN or Infinity); send a finite number or null")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse(text: str) -> Any:
    """Decode strict JSON text into a storable value; ``BadValue`` says what is wrong.

    ``""`` means no value (None), as it always has on the wire.
    """
    if not text:
        return None
    try:
        # One decoder for every call: ``json.loads`` with a keyword builds a new one each time
        # (a third of a small value's decode); it alone rejects a BOM, with its own message.
        value = (
            _DECODER.decode(text)
            if text[0] != "\ufeff"
            else json.loads(text, parse_constant=_reject_constant)
        )
    except BadValue:
        raise
    except RecursionError:
        raise BadValue(f"nested more than {limits.MAX_JSON_DEPTH} arrays/objects deep") from None
    except ValueError as exc:  # JSONDecodeError, and int() of a number with too many digits
        raise BadValue(str(exc), syntax=True) from None
    why = problem(value)
    if why:
        raise BadValue(why)
    return value


def problem(value: Any) -> str:
    """ "" if ``value`` may be stored, else what is wrong with it (bounded, never raises).

    Runs in ``apply`` on every replica, so the decision is made by C code, in about the time
    of one encoding: the value must encode as strict JSON (finite numbers, JSON types) in
    valid UTF-8 (no lone surrogates) and as msgpack (integers in range), and the JSON text
    must nest at most ``MAX_JSON_DEPTH`` deep. Only a value that fails runs the walk that
    says where the problem is.
    """
    if _plainly_storable(value):
        return ""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        ok = _depth_within(text.encode("utf-8"), limits.MAX_JSON_DEPTH)
        msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError, RecursionError):  # UnicodeEncodeError is a ValueError
        ok = False
    if ok:
        return ""
    return _walk(value) or "the value cannot be encoded as strict JSON and msgpack"


_PLAIN_ITEMS = 16
"""A container of up to this many storable scalars is decided by ``_scalar_problem`` per item,
with no encoding: a task's input and output usually are such a value (a fan-out's
``{"value": 3}`` and its numbers), and the encodings allocate an encoder, a text and a packer
per call (``problem`` in ``complete``'s apply was ~13% of apply's samples in the fan-out
profile). Beyond that size the C encoders are the cheaper check."""


def _plainly_storable(value: Any) -> bool:
    """True only for what the encodings accept too: a storable scalar, or a small flat list or
    string-keyed dict of them (depth 1). False means "not decided here", never "bad"."""
    why = _scalar_problem(value)
    if why is not None:
        return not why
    t = type(value)
    if len(value) > _PLAIN_ITEMS:
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not _is_unicode(k) or _scalar_problem(v) != "":
                return False
        return True
    return all(_scalar_problem(v) == "" for v in value)


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def _depth_within(text: bytes, max_depth: int) -> bool:
    """Whether JSON text nests at most ``max_depth`` arrays/objects deep (C-speed passes).

    Escaped backslashes and quotes are dropped first, so every quote left delimits a string;
    then all but brackets and quotes, then the strings (the odd pieces between quotes: they
    may hold brackets). Each pass then deletes the innermost arrays/objects: the text is
    empty after ``max_depth`` passes exactly when nothing is nested deeper.
    """
    s = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    if b'"' in s:
        s = b"".join(s.split(b'"')[::2])
    s = s.replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(max_depth):
        if not s:
            return True
        s = s.replace(b"[]", b"")
    return not s


def _walk(value: Any) -> str:
    """The exact rules, value by value (iterative); "" or the first problem with its path."""
    why = _scalar_problem(value)
    if why is not None:
        return f"$: {why}" if why else ""
    # Iterative, so a hostile depth costs a list, not the interpreter's stack. Scalars are
    # checked in place; only containers are pushed, with a link to build the path on error.
    stack: list[tuple[Any, int, _Path]] = [(value, 1, None)]
    while stack:
        container, depth, path = stack.pop()
        if depth > limits.MAX_JSON_DEPTH:
            return f"{_render(path)}: nested more than {limits.MAX_JSON_DEPTH} arrays/objects deep"
        items: Any
        if type(container) is dict:
            for k in container:
                # JSON readers see a number, boolean or null key as its text, as json.dumps writes it.
                why = _scalar_problem(k)
                if why is None:
                    return f"{_render(path)}: object key {k!r:.40} is not a string"
                if why:
                    return f"{_render(path)}: object key {k!r:.40}: {why}"
            # A path names object members by their text, array items by their index.
            items = ((k if type(k) is str else json.dumps(k), v) for k, v in container.items())
        else:
            items = enumerate(container)
        for key, item in items:
            why = _scalar_problem(item)
            if why is None:
                stack.append((item, depth + 1, (path, key)))
            elif why:
                return f"{_render((path, key))}: {why}"
    return ""


_Path = tuple[Any, str | int] | None
"""(parent path, key or index): built per container, rendered only for an error message."""


def _scalar_problem(v: Any) -> str | None:
    """ "" for a storable scalar, None for a container (to walk), else what is wrong."""
    t = type(v)
    if v is None or t is bool:
        return ""
    if t is str:
        return "" if _is_unicode(v) else "the string has a lone surrogate (not valid Unicode)"
    if t is int:
        if MIN_INT <= v <= MAX_INT:
            return ""
        return f"integer out of range ({MIN_INT} .. {MAX_INT}); send it as a string"
    if t is float:
        return "" if math.isfinite(v) else f"{v} is not a JSON number; send a finite number or null"
    if t is list or t is tuple or t is dict:
        return None
    return f"a {t.__name__} is not a JSON value"


def _render(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else "." + key[:40])
    text = "$" + "".join(reversed(parts))
    return text if len(text) <= 200 else text[:100] + "…" + text[-100:]


def _is_unicode(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["MAX_INT", "MIN_INT", "BadValue", "parse", "problem"]
