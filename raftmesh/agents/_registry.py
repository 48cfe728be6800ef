"""Agent registration: a type name -> an async function (and its limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._context import TaskContext

AgentFn = Callable[[TaskContext], Awaitable[Any]]


ISOLATIONS = ("async", "thread", "process")


@dataclass(frozen=True)
class AgentDef:
    name: str
    fn: AgentFn
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


@dataclass
class AgentRegistry:
    agents: dict[str, AgentDef] = field(default_factory=dict)

    def register(self, name: str, fn: AgentFn, **options: Any) -> AgentDef:
        """Register ``fn`` as agent type ``name``; ``options`` are ``AgentDef`` fields."""
        if name in self.agents:
            raise ValueError(f"agent type {name!r} is already registered")
        if "capabilities" in options:
            options["capabilities"] = frozenset(options["capabilities"])
        d = AgentDef(name, fn, **options)
        self.agents[name] = d
        return d

    def agent(self, name: str, **kw: Any) -> Callable[[AgentFn], AgentFn]:
        """Decorator form of ``register``."""

        def deco(fn: AgentFn) -> AgentFn:
            self.register(name, fn, **kw)
            return fn

        return deco

    def get(self, name: str) -> AgentDef | None:
        return self.agents.get(name)

    def names(self) -> list[str]:
        return sorted(self.agents)

    def subset(self, names: list[str]) -> AgentRegistry:
        missing = [n for n in names if n not in self.agents]
        if missing:
            raise ValueError(f"unknown agent type(s) {missing}; known: {self.names()}")
        return AgentRegistry({n: self.agents[n] for n in names})


def default_registry() -> AgentRegistry:
    """A registry with the built-in agents."""
    from . import _builtin

    reg = AgentRegistry()
    _builtin.register_builtins(reg)
    return reg
