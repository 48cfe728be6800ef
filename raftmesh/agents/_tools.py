"""``@raftmesh.tool``: Python functions an ``llm`` task may call, with a JSON schema from their hints.

A tool is declared in an agent module (loaded by every node that offers it)::

    @raftmesh.tool
    def search_logs(service: str, pattern: str, limit: int = 20) -> list[str]:
        \"\"\"Log lines of ``service`` that contain ``pattern``.\"\"\"

The schema the model sees is derived from the signature: ``str``/``int``/``float``/``bool``,
``list[X]``, ``dict[str, X]``, ``Literal[...]`` and ``X | None``; a parameter without a default
is required. A parameter named ``ctx`` is not shown to the model: it receives the calling
attempt's ``TaskContext``. The description is the docstring's first paragraph.

Tools live in one table per process (they are code, like agent types, not replicated state).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

from ._pools import THREAD_POOL_SIZE, ThreadPool

TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What OpenAI-compatible APIs accept as a function name."""
MAX_TOOL_DESCRIPTION_CHARS = 1024
"""A tool's description as sent to the model (the docstring's first paragraph, clipped)."""


class ToolInputError(ValueError):
    """The model called a tool with arguments that do not fit its schema (told back to the model)."""


@dataclass(frozen=True)
class ToolDef:
    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments (an ``object``)."""
    wants_ctx: bool

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this function."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def call(self, args: dict[str, Any], ctx: Any) -> Any:
        check_args(self.parameters, args)
        kw = dict(args)
        if self.wants_ctx:
            kw["ctx"] = ctx
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kw)
        # A plain def may block: keep the node's event loop (and its heartbeats) free.
        return await TOOL_THREADS.run(functools.partial(self.fn, **kw))


TOOL_THREADS = ThreadPool(THREAD_POOL_SIZE)
"""Where plain-``def`` tools run (agent types called as tools too): daemon threads, like the
host's pool, so a tool stuck in a call never keeps a stopping node alive (the loop's default
executor would: its threads are joined at exit)."""

_TOOLS: dict[str, ToolDef] = {}


def get_tool(name: str) -> ToolDef | None:
    return _TOOLS.get(name)


def tool_names() -> list[str]:
    return sorted(_TOOLS)


F = typing.TypeVar("F", bound=Callable[..., Any])


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...
def tool(
    fn: F | None = None, /, *, name: str | None = None, description: str | None = None
) -> F | Callable[[F], F]:
    """Declare ``fn`` as a tool that ``llm`` tasks may name in their ``tools`` list.

    ``@raftmesh.tool`` or ``@raftmesh.tool(name="...", description="...")``.
    """

    def deco(f: F) -> F:
        register_tool(f, name=name, description=description)
        return f

    return deco(fn) if fn is not None else deco


def register_tool(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> ToolDef:
    tname = name or fn.__name__
    if not TOOL_NAME_RE.fullmatch(tname):
        raise ValueError(f"tool name {tname[:80]!r}: 1-64 letters, digits, _ or - (what chat APIs accept)")
    old = _TOOLS.get(tname)
    if old is not None and _origin(old.fn) != _origin(fn):
        raise ValueError(f"tool {tname!r} is already declared by {_origin(old.fn)}")
    params, wants_ctx = _schema_of(fn)
    doc = description if description is not None else (inspect.getdoc(fn) or "").split("\n\n")[0]
    d = ToolDef(tname, fn, " ".join(doc.split())[:MAX_TOOL_DESCRIPTION_CHARS], params, wants_ctx)
    _TOOLS[tname] = d  # the same function declared again (its module re-imported) replaces itself
    return d


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def _schema_of(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    wants_ctx = False
    for p in inspect.signature(fn).parameters.values():
        if p.name == "ctx":
            wants_ctx = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(f"tool {fn.__name__}: parameter {p.name!r} must be passable by keyword")
        if p.name not in hints:
            raise ValueError(
                f"tool {fn.__name__}: parameter {p.name!r} needs a type hint (the model sees it)"
            )
        props[p.name] = json_schema(hints[p.name], f"tool {fn.__name__}: parameter {p.name!r}")
        if p.default is p.empty:
            required.append(p.name)
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }, wants_ctx


_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of a type hint (the subset a model can fill in)."""
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if hint is Any:
        return {}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = (
            json_schema(rest[0], where)
            if len(rest) == 1
            else {"anyOf": [json_schema(a, where) for a in rest]}
        )
        return {"anyOf": [inner, {"type": "null"}]} if len(rest) < len(args) else inner
    if hint is list or origin is list:
        return {"type": "array", "items": json_schema(args[0], where)} if args else {"type": "array"}
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise ValueError(f"{where}: JSON object keys are strings (dict[str, ...])")
        out: dict[str, Any] = {"type": "object"}
        if args:
            out["additionalProperties"] = json_schema(args[1], where)
        return out
    raise ValueError(
        f"{where}: type {hint!r} has no JSON schema (use str, int, float, bool, list, dict, Literal)"
    )


def check_args(schema: dict[str, Any], args: Any) -> None:
    """Raise ``ToolInputError`` saying what is wrong if ``args`` do not fit ``schema`` (top level)."""
    if not isinstance(args, dict):
        raise ToolInputError("arguments must be a JSON object")
    props: dict[str, Any] = schema.get("properties", {})
    missing = [r for r in schema.get("required", []) if r not in args]
    if missing:
        raise ToolInputError(f"missing required argument(s) {missing}")
    unknown = [k for k in args if k not in props]
    if unknown and schema.get("additionalProperties") is False:
        raise ToolInputError(f"unknown argument(s) {unknown}; expected {sorted(props)}")
    for k, v in args.items():
        if k in props and not _fits(props[k], v):
            raise ToolInputError(f"argument {k!r}={v!r:.80} does not fit {props[k]}")


def _fits(s: dict[str, Any], v: Any) -> bool:
    if "enum" in s:
        return v in s["enum"]
    if "anyOf" in s:
        return any(_fits(x, v) for x in s["anyOf"])
    t = s.get("type")
    if t is None:
        return True
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list) and all(_fits(s.get("items", {}), x) for x in v)
    if t == "object":
        return isinstance(v, dict)
    return True
