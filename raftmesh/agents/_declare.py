"""``@raftmesh.agent`` and ``@raftmesh.actor``: declare an agent or actor type in a Python module.

How a declaration reaches a registry: the decorator needs none. It checks its arguments
(a mistake fails the import of the module, at the decorator's line), builds the
``AgentDef``, attaches it to the decorated object (``__raftmesh_agent__``) and records it
in this process's table of declarations, under the module that executed the decorator.
The loader (``_loader.load_agents``) imports a source and collects the declarations of
that module, of its submodules and of every module first imported during that import.

So a module that was imported before the loader came to it (a plain ``import``) loses
no agent; a fresh process that loads the same sources builds the same registry (what a
process worker relies on); and importing raftmesh starts nothing. ``AgentRegistry.add``
takes a decorated object directly (a node built in-process, a test).

A module executed again (imported afresh after a failed import) replaces its earlier
declarations; a reloaded one replaces each declaration made at the same line.

An actor declaration (``ActorDef``) travels the same way and lands in ``AgentRegistry.actors``
(a namespace of its own: an agent and an actor may share a name).
"""

from __future__ import annotations

import inspect
import itertools
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..consensus import limits
from ..errors import InvalidArgument
from ._registry import ISOLATIONS, ActorDef, AgentDef

T = TypeVar("T")

ATTRIBUTE = "__raftmesh_agent__"
FILE_MODULE_PREFIX = "_raftmesh_agents_file_"
"""Module names the loader gives to agent modules it loads from a file path."""


class AgentDefinitionError(InvalidArgument, ValueError):
    """``@raftmesh.agent`` was given arguments or an object it cannot make an agent of."""


@dataclass(frozen=True)
class Declaration:
    agent: AgentDef | ActorDef
    module: str
    """The module that executed the decorator."""
    file: str
    line: int
    seq: int
    """Order of declaration in this process (collections are returned in it)."""

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


_lock = threading.Lock()
_seq = itertools.count()
_by_module: dict[str, tuple[int, list[Declaration]]] = {}
"""module name -> (id of the globals that declared, its declarations in order)."""


def declaration_of(obj: Any) -> Declaration | None:
    d = getattr(obj, ATTRIBUTE, None)
    return d if isinstance(d, Declaration) else None


def declared_in(modules: Iterable[str]) -> list[Declaration]:
    """The declarations made by these modules, in the order they were made."""
    with _lock:
        out = [d for m in set(modules) for d in _by_module.get(m, (0, []))[1]]
    return sorted(out, key=lambda d: d.seq)


def _record(decl: Declaration, globals_id: int) -> None:
    with _lock:
        gid, decls = _by_module.get(decl.module, (globals_id, []))
        if gid != globals_id:  # the module was executed afresh: its old declarations are gone
            decls = []
        decls = [d for d in decls if (d.agent.name, d.line) != (decl.agent.name, decl.line)]
        decls.append(decl)
        _by_module[decl.module] = (globals_id, decls)


MAX_MEMORY_MB = 1024 * 1024
"""``memory_mb`` at most 1 TiB (a larger value would overflow setrlimit in the worker)."""
MAX_CPU_SECONDS = 7 * 24 * 3600
"""``cpu_seconds`` at most 7 days (the longest task timeout)."""


def _fail(name: str, why: str) -> AgentDefinitionError:
    return AgentDefinitionError(f"@raftmesh.agent({name!r}): {why}")


def _count(name: str, what: str, v: Any, most: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _fail(name, f"{what} must be an integer, not {type(v).__name__}")
    if v < 0:
        raise _fail(name, f"{what} must be >= 0, got {v}")
    if most is not None and v > most:
        raise _fail(name, f"{what} must be at most {most}, got {v}")
    return v


def _capabilities(name: str, caps: Any) -> frozenset[str]:
    if isinstance(caps, str) or not isinstance(caps, Iterable):
        raise _fail(name, f'capabilities must be a list of names like ["gpu", "search"], not {caps!r}')
    out = []
    for c in caps:
        if not isinstance(c, str):
            raise _fail(name, f"capability {c!r} must be a string")
        why = limits.id_error("capability", c)
        if why:
            raise _fail(name, why)
        out.append(c)
    if len(set(out)) > limits.MAX_CAPABILITIES:
        raise _fail(name, f"{len(set(out))} capabilities; the limit is {limits.MAX_CAPABILITIES}")
    return frozenset(out)


def _accepts(fn: Callable[..., Any], n: int) -> bool:
    """``fn`` can be called with ``n`` positional arguments (unknown: assume so)."""
    try:
        inspect.signature(fn).bind(*([None] * n))
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): the first call will tell
        return True
    return True


class _ClassAgent:
    """The one instance per process of a class agent, made on first use (setup or run)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._instance: Any = None
        self._lock = threading.Lock()

    def instance(self) -> Any:
        with self._lock:  # thread-isolated attempts may ask at once
            if self._instance is None:
                self._instance = self.cls()
            return self._instance

    def setup(self, node: Any) -> Any:
        hook = getattr(self.instance(), "setup", None)
        return hook(node) if hook is not None else None

    def teardown(self) -> Any:
        with self._lock:
            inst = self._instance
        hook = getattr(inst, "teardown", None) if inst is not None else None
        return hook() if hook is not None else None


def _class_runner(name: str, cls: type) -> tuple[Callable[..., Any], _ClassAgent]:
    run = getattr(cls, "run", None)
    if not callable(run):
        raise _fail(name, f"class {cls.__qualname__} must define run(self, ctx)")
    for hook, args in (("run", "self, ctx"), ("setup", "self, node"), ("teardown", "self")):
        h = getattr(cls, hook, None)
        if h is None:
            continue
        if not callable(h) or (inspect.isfunction(h) and not _accepts(h, args.count(",") + 1)):
            raise _fail(name, f"{cls.__qualname__}.{hook} must be a method taking ({args})")
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise _fail(
            name, f"class {cls.__qualname__} must be constructible with no arguments (do the work in setup)"
        ) from None
    except ValueError:
        pass
    holder = _ClassAgent(cls)
    fn: Callable[..., Any]
    if inspect.iscoroutinefunction(run):

        async def run_async(ctx: Any) -> Any:
            return await holder.instance().run(ctx)

        fn = run_async
    else:

        def run_sync(ctx: Any) -> Any:
            return holder.instance().run(ctx)

        fn = run_sync
    fn.__module__, fn.__qualname__, fn.__name__ = cls.__module__, f"{cls.__qualname__}.run", "run"
    return fn, holder


def agent(
    name: str,
    *,
    capabilities: Iterable[str] = (),
    concurrency: int = 0,
    isolation: str | None = None,
    timeout_ms: int = 0,
    retries: int = 0,
    memory_mb: int = 0,
    cpu_seconds: int = 0,
    breaker_failures: int = 5,
    breaker_cooldown_ms: int = 30_000,
) -> Callable[[T], T]:
    """Declare agent type ``name``: on an ``async def fn(ctx)``, a plain ``def fn(ctx)`` or a class
    with ``run(self, ctx)`` (sync or async) and optional ``setup(self, node)`` / ``teardown(self)``.

    ``isolation`` defaults to ``async`` for coroutine code and ``thread`` for plain code;
    ``timeout_ms`` and ``retries`` are the defaults of tasks that do not set theirs;
    ``memory_mb`` and ``cpu_seconds`` limit each attempt of a ``process`` agent;
    ``breaker_failures`` consecutive failures on a node (0: never) keep placement away from
    it for ``breaker_cooldown_ms``. The decorated object is returned unchanged.
    """
    if not isinstance(name, str):
        raise AgentDefinitionError(f"@raftmesh.agent: the agent type must be a string, not {name!r}")
    why = limits.id_error("agent type", name)
    if why:
        raise _fail(name, why)
    if isolation is not None and isolation not in ISOLATIONS:
        raise _fail(name, f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, not {isolation!r}")
    caps = _capabilities(name, capabilities)
    numbers = {
        "concurrency": _count(name, "concurrency", concurrency, limits.MAX_AGENT_CONCURRENCY),
        "timeout_ms": _count(name, "timeout_ms", timeout_ms, limits.MAX_TIMEOUT_MS),
        "retries": _count(name, "retries", retries, limits.MAX_RETRIES),
        "memory_mb": _count(name, "memory_mb", memory_mb, MAX_MEMORY_MB),
        "cpu_seconds": _count(name, "cpu_seconds", cpu_seconds, MAX_CPU_SECONDS),
        "breaker_failures": _count(name, "breaker_failures", breaker_failures, limits.MAX_BREAKER_FAILURES),
        "breaker_cooldown_ms": _count(
            name, "breaker_cooldown_ms", breaker_cooldown_ms, limits.MAX_BREAKER_COOLDOWN_MS
        ),
    }
    if (memory_mb or cpu_seconds) and isolation != "process":
        raise _fail(name, "memory_mb and cpu_seconds limit a worker process: add isolation='process'")

    def deco(obj: T) -> T:
        frame = sys._getframe(1)  # the module (or function) applying the decorator
        module = str(frame.f_globals.get("__name__", ""))
        file, line = frame.f_code.co_filename, frame.f_lineno
        setup = teardown = None
        if inspect.isclass(obj):
            fn, holder = _class_runner(name, obj)
            setup, teardown = holder.setup, holder.teardown
        elif callable(obj):
            if inspect.isasyncgenfunction(obj) or inspect.isgeneratorfunction(obj):
                raise _fail(name, "an agent returns its output; a generator function cannot be one")
            if not _accepts(obj, 1):
                raise _fail(name, f"{getattr(obj, '__qualname__', obj)!r} must take one argument, ctx")
            fn = obj
        else:
            raise _fail(name, f"decorate an async def, a def or a class, not {type(obj).__name__}")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an instance whose __call__ is async
        )
        mode = isolation or ("async" if is_async else "thread")
        if mode == "async" and not is_async:
            raise _fail(
                name,
                "plain (non-async) code would block the node's event loop: "
                "use isolation='thread' or 'process', or make it async def",
            )
        # A process worker finds the agent again by importing its source: a module name,
        # or the file for code loaded from a path or run as a script.
        source = (
            str(frame.f_globals.get("__file__") or file)
            if module == "__main__" or module.startswith(FILE_MODULE_PREFIX)
            else module
        )
        d = AgentDef(
            name,
            fn,
            capabilities=caps,
            isolation=mode,
            source=source,
            setup=setup,
            teardown=teardown,
            **numbers,
        )
        decl = Declaration(d, module, file, line, next(_seq))
        try:
            setattr(obj, ATTRIBUTE, decl)
        except (AttributeError, TypeError):
            raise _fail(name, f"cannot mark {obj!r} as an agent (decorate a function or class)") from None
        _record(decl, id(frame.f_globals))
        return obj

    return deco


MAX_ACTOR_IDLE_S = 7 * 24 * 3600.0
MAX_ACTOR_TIMEOUT_S = 24 * 3600.0
"""``idle_s`` at most 7 days (an activation renews its lease meanwhile)."""


def actor(
    name: str,
    *,
    topics: Iterable[str] = (),
    capabilities: Iterable[str] = (),
    idle_s: float = 300.0,
    max_activations: int = 0,
    timeout_s: float = 60.0,
) -> Callable[[T], T]:
    """Declare actor type ``name`` (addresses ``name/KEY``) on a class with a no-argument
    constructor and ``async def on_message(self, ctx, msg)`` (optional ``async def
    on_activate(self, ctx)``, called once per activation before its first message).

    ``topics``: the node subscribes this type to them at start (a publish with source S
    reaches ``name/S``, ``name/default`` without one). ``capabilities``: placement puts
    activations on nodes whose offer has them. ``idle_s``: an activation with no message for
    that long gives its lease up (0: never). ``max_activations``: per node (0: the node's
    limit). ``timeout_s``: a turn running longer is cancelled and counts as a handler
    failure (0: no limit). The class is returned unchanged. See README "Messages".
    """

    def fail(why: str) -> AgentDefinitionError:
        return AgentDefinitionError(f"@raftmesh.actor({name!r}): {why}")

    if not isinstance(name, str):
        raise AgentDefinitionError(f"@raftmesh.actor: the actor type must be a string, not {name!r}")
    why = limits.id_error("actor type", name)
    if why:
        raise fail(why)
    if isinstance(topics, str) or not isinstance(topics, Iterable):
        raise fail(f'topics must be a list of topic names like ["prices"], not {topics!r}')
    tops: list[str] = []
    for t in topics:
        if not isinstance(t, str):
            raise fail(f"topic {t!r} must be a string")
        why = limits.name_error("topic", t, limits.MAX_TOPIC_CHARS)
        if why:
            raise fail(why)
        if t not in tops:
            tops.append(t)
    try:
        caps = _capabilities(name, capabilities)
    except AgentDefinitionError as exc:
        raise fail(exc.message.partition(": ")[2]) from None
    if (
        isinstance(idle_s, bool)
        or not isinstance(idle_s, (int, float))
        or not 0 <= idle_s <= MAX_ACTOR_IDLE_S
    ):
        raise fail(f"idle_s must be a number of seconds in 0..{MAX_ACTOR_IDLE_S:g}, not {idle_s!r}")
    if (
        not isinstance(max_activations, int)
        or isinstance(max_activations, bool)
        or not 0 <= max_activations <= limits.MAX_ACTIVATIONS_PER_NODE
    ):
        raise fail(f"max_activations must be an integer in 0..{limits.MAX_ACTIVATIONS_PER_NODE}")
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not 0 <= timeout_s <= MAX_ACTOR_TIMEOUT_S
    ):
        raise fail(
            f"timeout_s must be a number of seconds in 0..{MAX_ACTOR_TIMEOUT_S:g} (0: none), not {timeout_s!r}"
        )

    def deco(cls: T) -> T:
        frame = sys._getframe(1)
        module = str(frame.f_globals.get("__name__", ""))
        file, line = frame.f_code.co_filename, frame.f_lineno
        if not inspect.isclass(cls):
            raise fail(
                f"decorate a class with async def on_message(self, ctx, msg), not {type(cls).__name__}"
            )
        on_message = getattr(cls, "on_message", None)
        if not inspect.iscoroutinefunction(on_message) or not _accepts(on_message, 3):
            raise fail(f"class {cls.__qualname__} must define async def on_message(self, ctx, msg)")
        on_activate = getattr(cls, "on_activate", None)
        if on_activate is not None and (
            not inspect.iscoroutinefunction(on_activate) or not _accepts(on_activate, 2)
        ):
            raise fail(f"{cls.__qualname__}.on_activate must be async def on_activate(self, ctx)")
        try:
            inspect.signature(cls).bind()
        except TypeError:
            raise fail(f"class {cls.__qualname__} must be constructible with no arguments") from None
        except ValueError:
            pass
        source = (
            str(frame.f_globals.get("__file__") or file)
            if module == "__main__" or module.startswith(FILE_MODULE_PREFIX)
            else module
        )
        d = ActorDef(
            name,
            cls,
            topics=tuple(tops),
            capabilities=caps,
            idle_s=float(idle_s),
            max_activations=max_activations,
            timeout_s=float(timeout_s),
            source=source,
        )
        decl = Declaration(d, module, file, line, next(_seq))
        setattr(cls, ATTRIBUTE, decl)
        _record(decl, id(frame.f_globals))
        return cls

    return deco
