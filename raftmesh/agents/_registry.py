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


def code_origin(obj: Any) -> str:
    """``file:line`` where a function was defined ("" if it has no code object)."""
    code = getattr(obj, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""


@dataclass
class AgentRegistry:
    agents: dict[str, AgentDef] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    """Where each agent was declared (``file:line``, or ``built-in``): duplicate errors name both."""

    def add(self, d: AgentDef | Any, origin: str = "") -> AgentDef:
        """Register an ``AgentDef``, or an object decorated with ``@raftmesh.agent``.

        Adding the same agent again (the same code, e.g. a module reached through two sources)
        changes nothing; a different agent under a taken name raises ``DuplicateAgentError``.
        """
        if not isinstance(d, AgentDef):
            from ._declare import declaration_of

            decl = declaration_of(d)
            if decl is None:
                raise TypeError(f"{d!r} is neither an AgentDef nor decorated with @raftmesh.agent")
            d, origin = decl.agent, origin or decl.origin
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
        return AgentRegistry({n: self.agents[n] for n in names}, {n: self.origins.get(n, "") for n in names})


def default_registry() -> AgentRegistry:
    """A registry with the built-in agents."""
    from . import _builtin

    reg = AgentRegistry()
    _builtin.register_builtins(reg)
    for name in reg.agents:
        reg.origins[name] = "built-in"
    return reg
