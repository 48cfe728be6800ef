"""Agent registration: a type name -> an ``AgentDef`` (the code that runs an attempt, and its policy)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument
from ._context import TaskContext

AgentFn = Callable[[TaskContext], Awaitable[Any]]


ISOLATIONS = ("async", "thread", "process")


class DuplicateAgentError(InvalidArgument, ValueError):
    """Two different agents were registered under one type name."""


@dataclass(frozen=True)
class AgentDef:
    name: str
    fn: AgentFn
    """Runs one attempt: ``async def fn(ctx)``, or a plain ``def fn(ctx)`` (isolation ``thread`` or
    ``process``); for a class agent, ``run`` of the process's one instance."""
    capabilities: frozenset[str] = frozenset()
    concurrency: int = 0
    """Attempts of this agent running at once on one node (0: bounded by the node's slots only)."""
    isolation: str = "async"
    """``async``: on the node's event loop; ``thread``: in the node's bounded thread pool;
    ``process``: in a spawned worker process (killed on timeout or cancellation)."""
    timeout_ms: int = 0
    """Default attempt timeout for tasks of this type that do not set one (0: none)."""
    retries: int = 0
    """Default retries for tasks of this type that do not set them."""
    memory_mb: int = 0
    """``process`` isolation: address-space limit of the worker per attempt (0: none)."""
    cpu_seconds: int = 0
    """``process`` isolation: CPU-time limit per attempt (0: none)."""
    breaker_failures: int = 5
    """Consecutive failed attempts on one node that open this type's breaker there."""
    breaker_cooldown_ms: int = 30_000
    """How long an open breaker keeps placement away before one probe attempt decides."""
    source: str = ""
    """The module (path or importable name) that registered it; a process worker loads it
    again to find the agent by name ("": a built-in)."""
    setup: Callable[[Any], Any] | None = None
    """A class agent's ``setup(node)``: once per process that runs it, before its first attempt."""
    teardown: Callable[[], Any] | None = None
    """A class agent's ``teardown()``: when that process stops."""


@dataclass(frozen=True)
class ActorDef:
    """An addressable agent type (``@raftmesh.actor``): a class with ``on_message(self, ctx, msg)``.

    One instance per activation (``TYPE/KEY``), made with no arguments when the key is
    activated on a node (``raftmesh.agents._actors``).
    """

    name: str
    cls: type
    topics: tuple[str, ...] = ()
    """Topics the node subscribes this type to at start (a publish reaches ``TYPE/<source>``)."""
    capabilities: frozenset[str] = frozenset()
    idle_s: float = 300.0
    """An activation with no message for this long gives its lease up (0: never)."""
    max_activations: int = 0
    """Activations of this type one node hosts at once (0: ``limits.MAX_ACTIVATIONS_PER_NODE``)."""
    timeout_s: float = 60.0
    """A turn (``on_message``, ``on_activate``) cancelled after this long counts as a handler
    failure (0: no limit), so a hung handler does not hold its activation forever."""
    source: str = ""


def code_origin(obj: Any) -> str:
    """``file:line`` where a function was defined ("" if it has no code object)."""
    code = getattr(obj, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""


@dataclass
class AgentRegistry:
    agents: dict[str, AgentDef] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    """Where each agent was declared (``file:line``, or ``built-in``): duplicate errors name both."""
    actors: dict[str, ActorDef] = field(default_factory=dict)
    """Actor types (``@raftmesh.actor``), by type name (a namespace of their own)."""
    actor_origins: dict[str, str] = field(default_factory=dict)

    def add(self, d: AgentDef | ActorDef | Any, origin: str = "") -> Any:
        """Register an ``AgentDef`` or ``ActorDef``, or an object decorated with ``@raftmesh.agent``
        or ``@raftmesh.actor``; returns the definition registered.

        Adding the same agent again (the same code, e.g. a module reached through two sources)
        changes nothing; a different agent under a taken name raises ``DuplicateAgentError``.
        """
        if not isinstance(d, (AgentDef, ActorDef)):
            from ._declare import declaration_of

            decl = declaration_of(d)
            if decl is None:
                raise TypeError(
                    f"{d!r} is neither an AgentDef nor decorated with @raftmesh.agent or @raftmesh.actor"
                )
            d, origin = decl.agent, origin or decl.origin
        if isinstance(d, ActorDef):
            return self._add_actor(d, origin)
        cur = self.agents.get(d.name)
        if cur is not None and cur.fn is d.fn:
            return cur
        origin = origin or code_origin(d.fn) or "(unknown place)"
        if cur is not None:
            raise DuplicateAgentError(
                f"agent type {d.name!r} is declared twice: at {self.origins.get(d.name) or '(unknown place)'}"
                f" and at {origin} (rename one of them)"
            )
        self.agents[d.name] = d
        self.origins[d.name] = origin
        return d

    def _add_actor(self, d: ActorDef, origin: str) -> ActorDef:
        cur = self.actors.get(d.name)
        if cur is not None and cur.cls is d.cls:
            return cur
        origin = origin or code_origin(getattr(d.cls, "on_message", None)) or "(unknown place)"
        if cur is not None:
            raise DuplicateAgentError(
                f"actor type {d.name!r} is declared twice: at "
                f"{self.actor_origins.get(d.name) or '(unknown place)'} and at {origin} (rename one of them)"
            )
        self.actors[d.name] = d
        self.actor_origins[d.name] = origin
        return d

    def register(self, name: str, fn: AgentFn, **options: Any) -> AgentDef:
        """Register ``fn`` as agent type ``name``; ``options`` are ``AgentDef`` fields."""
        if "capabilities" in options:
            options["capabilities"] = frozenset(options["capabilities"])
        return self.add(AgentDef(name, fn, **options))

    def agent(self, name: str, **kw: Any) -> Callable[[Any], Any]:
        """Decorator form of ``register``, with the arguments and checks of ``@raftmesh.agent``."""
        from ._declare import agent

        declare = agent(name, **kw)

        def deco(obj: Any) -> Any:
            self.add(declare(obj))
            return obj

        return deco

    def get(self, name: str) -> AgentDef | None:
        return self.agents.get(name)

    def names(self) -> list[str]:
        return sorted(self.agents)

    def subset(self, names: list[str]) -> AgentRegistry:
        missing = [n for n in names if n not in self.agents]
        if missing:
            raise ValueError(f"unknown agent type(s) {missing}; known: {self.names()}")
        # ``--agents`` picks task agents; a node offers every actor type it loaded.
        return AgentRegistry(
            {n: self.agents[n] for n in names},
            {n: self.origins.get(n, "") for n in names},
            dict(self.actors),
            dict(self.actor_origins),
        )


def default_registry() -> AgentRegistry:
    """A registry with the built-in agents."""
    from . import _builtin

    reg = AgentRegistry()
    _builtin.register_builtins(reg)
    for name in reg.agents:
        reg.origins[name] = "built-in"
    return reg
