"""Agent registration: a type name -> an async function (and its limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._context import TaskContext

AgentFn = Callable[[TaskContext], Awaitable[Any]]


@dataclass(frozen=True)
class AgentDef:
    name: str
    fn: AgentFn
    capabilities: frozenset[str] = frozenset()
    concurrency: int = 0
    """Attempts of this agent running at once on one node (0: bounded by the node's slots only)."""


@dataclass
class AgentRegistry:
    agents: dict[str, AgentDef] = field(default_factory=dict)

    def register(
        self, name: str, fn: AgentFn, *, capabilities: frozenset[str] = frozenset(), concurrency: int = 0
    ) -> AgentDef:
        if name in self.agents:
            raise ValueError(f"agent type {name!r} is already registered")
        d = AgentDef(name, fn, capabilities, concurrency)
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
