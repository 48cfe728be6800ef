"""Loading agent modules: built-ins, then the ``raftmesh.agents`` entry points, then each source.

A source is a file path ending in ``.py`` (``./agents.py``), an importable module name
(``mycompany.agents``), or ``module:attr`` (as an entry point's value) where ``attr`` is a
module, an object decorated with ``@raftmesh.agent``, or a callable that takes the registry
and registers agents into it. A module's agents are the declarations made by it, its
submodules and the modules first imported while it was imported (see ``_declare``).

Any failure is an ``AgentLoadError`` (usage error, exit code 2 for a node) naming the source
and the line: for an import that raised, the source's own statement from the traceback
(and where the exception came from, if elsewhere); for a syntax error, its file and line;
for a duplicate type name, the place of both declarations.

Deterministic and free of side effects beyond imports: a spawned process worker calls
``load_agent(AgentDef.source, name)`` to find, in its own process, the agent the node loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..errors import InvalidArgument
from ._declare import FILE_MODULE_PREFIX, declaration_of, declared_in
from ._registry import AgentDef, AgentRegistry, DuplicateAgentError, default_registry

T = TypeVar("T")

ENTRY_POINT_GROUP = "raftmesh.agents"
MAX_ERROR_CHARS = 1000
"""An exception's own message as quoted in a load error (the place is always kept)."""

_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_lock = threading.RLock()  # loads compare sys.modules around an import; a module may load others


class AgentLoadError(InvalidArgument):
    """An agent module could not be loaded (what, and at which file and line)."""


def load_agents(sources: Sequence[str], *, entry_points: bool = True) -> AgentRegistry:
    """The built-in agents, then every ``raftmesh.agents`` entry point of the installed
    distributions (if ``entry_points``), then each source in order."""
    reg = default_registry()
    with _lock:
        if entry_points:
            # A distribution seen twice on sys.path lists its entry points twice: load each once.
            eps = {(e.name, e.value): e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
            for _, ep in sorted(eps.items()):
                value = ep.module + (f":{ep.attr}" if ep.attr else "")
                dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
                _load(
                    reg, value, f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}, {dist})"
                )
        for source in sources:
            _load(reg, source, f"agents module {source!r}")
    return reg


def load_agent(source: str, name: str) -> AgentDef:
    """Agent ``name`` as loaded from ``source`` alone ("" : a built-in), in this process.

    What a spawned process worker calls with the ``AgentDef.source`` the node gave it. A
    source is loaded into an empty registry: the built-ins (``http``, ``llm``, ``planner``
    import httpx and the client, hence grpcio) would cost every worker's start, and the node
    already refused a source whose names clash with them.
    """
    if source:
        reg = AgentRegistry()
        with _lock:
            _load(reg, source, f"agents module {source!r}")
    else:
        reg = load_agents([], entry_points=False)
    d = reg.get(name)
    if d is None:
        raise AgentLoadError(f"agents module {source!r} declares no agent {name!r}; it has {reg.names()}")
    return d


def _load(reg: AgentRegistry, source: str, what: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise AgentLoadError(f"{what}: an agents module must be a file path or a module name")
    source = source.strip()
    if source.endswith(".py"):
        path = os.path.abspath(source)
        _, modules = _import(what, path, lambda: _import_file(what, path))
        return _collect(reg, what, modules)
    module, _, attr = source.partition(":")
    if not _MODULE_RE.match(module) or (attr and not _MODULE_RE.match(attr)):
        raise AgentLoadError(
            f"{what}: not a file path ending in .py nor a module name like mypackage.agents[:attr]"
        )
    own = _own_root(module)
    obj, modules = _import(what, own, lambda: _import_module(what, module))
    if not attr:
        return _collect(reg, what, modules)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AgentLoadError(f"{what}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, types.ModuleType):
        prefix = obj.__name__ + "."
        return _collect(reg, what, [m for m in sys.modules if m == obj.__name__ or m.startswith(prefix)])
    if declaration_of(obj) is not None:
        return _add(reg, what, obj)
    if not callable(obj):
        raise AgentLoadError(f"{what}: {attr!r} is not a module, an agent or a callable taking the registry")
    scratch = AgentRegistry()
    _guard(what, own, lambda: obj(scratch))
    if not scratch.agents and not scratch.actors:
        raise AgentLoadError(f"{what}: {attr}(registry) registered no agent")
    for name in scratch.names():
        d = scratch.agents[name]
        if not d.source:  # a process worker calls the same callable to find it again
            d = dataclasses.replace(d, source=source)
        _add(reg, what, d, scratch.origins.get(name, ""))
    for name in sorted(scratch.actors):
        _add(reg, what, scratch.actors[name], scratch.actor_origins.get(name, ""))


def _collect(reg: AgentRegistry, what: str, modules: Iterable[str]) -> None:
    decls = declared_in(modules)
    if not decls:
        raise AgentLoadError(
            f"{what} declares no agent (decorate an async def, a def or a class with @raftmesh.agent,"
            " or a class with @raftmesh.actor)"
        )
    for decl in decls:
        _add(reg, what, decl.agent, decl.origin)


def _add(reg: AgentRegistry, what: str, d: Any, origin: str = "") -> None:
    try:
        reg.add(d, origin)
    except DuplicateAgentError as exc:
        raise AgentLoadError(f"{what}: {exc.message}") from None


def _import_file(what: str, path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise AgentLoadError(f"{what}: no such file {path}")
    stem = re.sub(r"\W", "_", os.path.basename(path)[:-3])
    # One name per file, the same in every process: loading it twice imports it once.
    name = f"{FILE_MODULE_PREFIX}{stem}_{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) == path:
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AgentLoadError(f"{what}: {path} cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as the import system does: visible to its own code while it runs
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _import_module(what: str, module: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise AgentLoadError(
                f"{what}: no module named {exc.name!r} (install it or add its directory to "
                "PYTHONPATH; a file path must end in .py)"
            ) from None
        raise  # a module it imports is missing: reported with the line that imports it


def _own_root(module: str) -> str:
    """The file or package directory of ``module`` (frames there are the user's own code)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    if spec.submodule_search_locations:
        return os.path.join(next(iter(spec.submodule_search_locations), ""), "")
    return spec.origin or ""


def _guard(what: str, own: str, do: Callable[[], T]) -> T:
    """``do()``, its exception (any, even SystemExit) told as a load error with its place."""
    try:
        return do()
    except AgentLoadError:
        raise
    except (Exception, SystemExit) as exc:
        raise AgentLoadError(f"{what}: {_describe(exc, own)}") from exc


def _import(what: str, own: str, do: Callable[[], types.ModuleType]) -> tuple[types.ModuleType, set[str]]:
    """Import through ``do``: the module, and the modules whose declarations are its agents
    (itself, its submodules, and the modules first imported meanwhile)."""
    before = set(sys.modules)
    mod = _guard(what, own, do)
    prefix = mod.__name__ + "."
    return mod, {m for m in sys.modules if m not in before or m == mod.__name__ or m.startswith(prefix)}


def _internal(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or filename in (__file__, importlib.__file__)


def _describe(exc: BaseException, own: str) -> str:
    """``Type: message at FILE:LINE``, the line being the user's own failing statement."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _internal(f.filename)]
    mine = [f for f in frames if own and (f.filename == own or f.filename.startswith(own))]
    message = str(exc)
    if isinstance(exc, SyntaxError):
        message = exc.msg or message
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    text = f"{type(exc).__name__}: {message}"
    if isinstance(exc, SyntaxError) and exc.filename:
        text += f" at {exc.filename}:{exc.lineno}"
        if mine:
            text += f" (imported at {mine[-1].filename}:{mine[-1].lineno})"
        elif frames:
            text += f" (imported at {frames[-1].filename}:{frames[-1].lineno})"
        return text
    at = mine[-1] if mine else (frames[-1] if frames else None)
    if at is None:
        return text
    text += f" at {at.filename}:{at.lineno}"
    if frames and frames[-1] is not at:
        text += f" (raised in {frames[-1].filename}:{frames[-1].lineno})"
    return text
