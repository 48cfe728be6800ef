"""``when``: a condition on upstream outputs that decides whether a task runs or is SKIPPED.

A condition is a map, one of::

    {"path": "fetch.count", "op": ">", "value": 3}   # a comparison
    {"all": [cond, ...]}  {"any": [cond, ...]}  {"not": cond}

``path`` is an upstream task id (one of the task's ``deps``), then keys (or list indices)
into that task's output, joined by dots. Ids may contain dots: the longest dependency id
that prefixes the path wins. Ops: ``== != > >= < <= in not_in exists``.

Checked at submit (``check``): the shape, the ops, the path's task, the size. Evaluated in
``apply`` (``evaluate``), so it is pure and never raises: a path that does not resolve (a
missing key, a skipped task) makes every comparison false, ``exists`` included, and an
ordering between values of different kinds is false too. Equality is JSON equality: ``1``
equals ``1.0``, but ``true`` is not ``1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import limits

OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "exists")
_COMBINATORS = ("all", "any", "not")
_MISSING = object()


class ConditionError(ValueError):
    """The condition cannot be accepted; the message says what to fix."""


def check(cond: Any, deps: Sequence[str], where: str = "when") -> None:
    """Raise ``ConditionError`` unless ``cond`` is a valid condition over ``deps``."""
    nodes = [0]
    _check(cond, deps, where, 1, nodes)


def _check(cond: Any, deps: Sequence[str], where: str, depth: int, nodes: list[int]) -> None:
    nodes[0] += 1
    if nodes[0] > limits.MAX_CONDITION_NODES:
        raise ConditionError(f"{where}: a condition may have at most {limits.MAX_CONDITION_NODES} parts")
    if depth > limits.MAX_CONDITION_DEPTH:
        raise ConditionError(f"{where}: conditions nest at most {limits.MAX_CONDITION_DEPTH} deep")
    if not isinstance(cond, dict):
        raise ConditionError(f"{where} must be a map such as {{path: TASK.key, op: '>', value: 3}}")
    combinators = [k for k in _COMBINATORS if k in cond]
    if combinators:
        key = combinators[0]
        if len(cond) != 1:
            raise ConditionError(f"{where}: {key!r} must be the only key of its map (got {sorted(cond)})")
        sub = cond[key]
        if key == "not":
            _check(sub, deps, f"{where}.not", depth + 1, nodes)
            return
        if not isinstance(sub, list) or not sub:
            raise ConditionError(f"{where}.{key} must be a non-empty list of conditions")
        for i, c in enumerate(sub):
            _check(c, deps, f"{where}.{key}[{i}]", depth + 1, nodes)
        return
    unknown = sorted(set(cond) - {"path", "op", "value"})
    if unknown:
        raise ConditionError(
            f"{where}: unknown key(s) {unknown}; a condition has path, op and value, or all/any/not"
        )
    path, op = cond.get("path"), cond.get("op")
    if not isinstance(path, str) or not path:
        raise ConditionError(f"{where}: path must be a string like 'TASK_ID.key'")
    if len(path) > limits.MAX_CONDITION_PATH_CHARS:
        raise ConditionError(f"{where}: path is longer than {limits.MAX_CONDITION_PATH_CHARS} characters")
    if op not in OPS:
        raise ConditionError(f"{where}: op {op!r} is not one of {' '.join(OPS)}")
    task, keys = split_path(path, deps)
    if task is None:
        shown = ", ".join(map(repr, list(deps)[:8])) or "none"
        raise ConditionError(
            f"{where}: path {path!r} must start with a dependency's id (this task's deps: {shown}); "
            "add the task to deps"
        )
    if any(not k for k in keys):
        raise ConditionError(f"{where}: path {path!r} has an empty key")
    if op == "exists":
        if "value" in cond:
            raise ConditionError(f"{where}: exists takes no value (negate it with not: {{...}})")
        return
    if "value" not in cond:
        raise ConditionError(f"{where}: op {op!r} needs a value")
    value = cond["value"]
    if op in ("in", "not_in") and not isinstance(value, (list, str)):
        raise ConditionError(f"{where}: {op} needs a list (or a string to search) as its value")
    if op in (">", ">=", "<", "<=") and not (_number(value) or isinstance(value, str)):
        raise ConditionError(f"{where}: {op} compares numbers or strings; value is {type(value).__name__}")


def split_path(path: str, deps: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the dependency the path starts with, the keys after it); (None, []) if none matches."""
    best: str | None = None
    for d in deps:
        if (path == d or path.startswith(d + ".")) and (best is None or len(d) > len(best)):
            best = d
    if best is None:
        return None, []
    rest = path[len(best) + 1 :]
    return best, rest.split(".") if rest else []


def paths(cond: Any) -> list[str]:
    """Every path a (valid) condition reads."""
    if not isinstance(cond, dict):
        return []
    for key in _COMBINATORS:
        if key in cond:
            sub = cond[key]
            return paths(sub) if key == "not" else [p for c in sub for p in paths(c)]
    return [cond["path"]] if isinstance(cond.get("path"), str) else []


def evaluate(cond: Any, deps: Sequence[str], output_of: Callable[[str], Any]) -> bool:
    """Whether the (valid) condition holds; ``output_of(task_id)`` is the output, or ``MISSING``
    (``conditions.MISSING``) for a dependency that did not succeed. Never raises."""
    if not isinstance(cond, dict):
        return False
    if "all" in cond:
        return all(evaluate(c, deps, output_of) for c in cond["all"])
    if "any" in cond:
        return any(evaluate(c, deps, output_of) for c in cond["any"])
    if "not" in cond:
        return not evaluate(cond["not"], deps, output_of)
    task, keys = split_path(str(cond.get("path", "")), deps)
    if task is None:
        return False
    got = _resolve(output_of(task), keys)
    if got is _MISSING:
        return False
    op = cond.get("op")
    if op == "exists":
        return True
    return _compare(got, op, cond.get("value"))


MISSING: Any = _MISSING
"""What ``output_of`` returns for a dependency without an output (skipped)."""


def _resolve(value: Any, keys: list[str]) -> Any:
    for k in keys:
        if isinstance(value, Mapping):
            value = value.get(k, _MISSING)
        elif isinstance(value, list) and k.isascii() and k.isdigit():  # "²".isdigit(), but int() refuses it
            i = int(k)
            value = value[i] if i < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, ``true`` is not ``1``, maps and lists element-wise."""
    if _number(a) and _number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _compare(got: Any, op: Any, value: Any) -> bool:
    if op == "==":
        return json_equal(got, value)
    if op == "!=":
        return not json_equal(got, value)
    if op in ("in", "not_in"):
        if isinstance(value, list):
            found = any(json_equal(got, v) for v in value)
        elif isinstance(value, str) and isinstance(got, str):
            found = got in value
        else:
            return False
        return found if op == "in" else not found
    comparable = (_number(got) and _number(value)) or (isinstance(got, str) and isinstance(value, str))
    if not comparable:
        return False
    if op == ">":
        return bool(got > value)
    if op == ">=":
        return bool(got >= value)
    if op == "<":
        return bool(got < value)
    if op == "<=":
        return bool(got <= value)
    return False
