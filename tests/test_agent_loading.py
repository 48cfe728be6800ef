"""Deploying agents: ``@raftmesh.agent``, loading modules and entry points, class agents'
setup/teardown, and ``raftmesh node --agents-module`` / ``LocalCluster(agents_modules=...)``.

Unit tests load real files and real installed-distribution layouts (a ``*.dist-info`` on
sys.path); the e2e tests start real node processes on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import raftmesh
from raftmesh import DAG
from raftmesh.agents import (
    AgentDefinitionError,
    AgentLoadError,
    AgentNode,
    AgentRegistry,
    AgentSetupError,
    DuplicateAgentError,
    load_agents,
)
from raftmesh.agents._setup import set_up, tear_down
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from tests.test_cli import _free_base

ROOT = pathlib.Path(__file__).resolve().parent.parent
USER_AGENTS = str(ROOT / "tests" / "data" / "user_agents.py")


def write(path: pathlib.Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


@pytest.fixture
def modname() -> Iterator[Callable[[str], str]]:
    """Unique importable module names for this test; the modules are forgotten afterwards."""
    made: list[str] = []

    def make(stem: str) -> str:
        made.append(f"{stem}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for name in made:
        for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[m]


# ---- the decorator ------------------------------------------------------------------


def test_raftmesh_agent_is_loaded_on_first_use() -> None:
    """A program that only uses the client does not import the agents package."""
    code = (
        "import sys, raftmesh\n"
        "assert 'raftmesh.agents' not in sys.modules\n"
        "from raftmesh import agent\n"
        "assert agent is sys.modules['raftmesh.agents'].agent\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_decorated_async_def_takes_the_defaults_and_is_returned_unchanged() -> None:
    @raftmesh.agent("t_async")
    async def fn(ctx: Any) -> Any:
        return ctx

    reg = AgentRegistry()
    d = reg.add(fn)
    assert d.fn is fn and d.name == "t_async"
    assert (d.isolation, d.concurrency, d.timeout_ms, d.retries) == ("async", 0, 0, 0)
    assert (d.memory_mb, d.cpu_seconds, d.breaker_failures, d.breaker_cooldown_ms) == (0, 0, 5, 30_000)
    assert d.capabilities == frozenset() and d.setup is None and d.teardown is None
    assert d.source == __name__  # an importable module: a process worker imports it by name
    line = fn.__code__.co_firstlineno  # the decorator's line
    assert reg.origins["t_async"] == f"{__file__}:{line}"
    assert asyncio.run(fn(42)) == 42  # still the user's function


def test_decorated_plain_def_defaults_to_thread_and_arguments_are_kept() -> None:
    @raftmesh.agent(
        "t_def",
        capabilities=["gpu", "search", "gpu"],
        concurrency=3,
        timeout_ms=2500,
        retries=4,
        breaker_failures=0,
        breaker_cooldown_ms=100,
    )
    def fn(ctx: Any) -> Any:
        return ctx

    d = AgentRegistry().add(fn)
    assert d.isolation == "thread" and d.fn is fn
    assert d.capabilities == frozenset({"gpu", "search"})
    assert (d.concurrency, d.timeout_ms, d.retries, d.breaker_failures, d.breaker_cooldown_ms) == (
        3,
        2500,
        4,
        0,
        100,
    )
    p = raftmesh.agent("t_proc", isolation="process", memory_mb=256, cpu_seconds=10)(fn)
    assert p is fn  # the last decoration is the one the object carries
    dp = AgentRegistry().add(p)
    assert (dp.isolation, dp.memory_mb, dp.cpu_seconds) == ("process", 256, 10)


def test_class_agent_runs_on_one_instance_set_up_once_and_torn_down(tmp_path: pathlib.Path) -> None:
    events: list[str] = []

    @raftmesh.agent("t_class", concurrency=1)
    class Greeter:
        def __init__(self) -> None:
            events.append("init")
            self.prefix = ""

        async def setup(self, node: AgentNode) -> None:
            events.append(f"setup {node.node_id} {os.path.isdir(node.data_dir)}")
            self.prefix = f"hi from {node.node_id}: "

        async def run(self, ctx: Any) -> Any:
            return self.prefix + str(ctx)

        def teardown(self) -> None:
            events.append("teardown")

    @raftmesh.agent("t_class_sync")
    class Plain:
        def run(self, ctx: Any) -> Any:
            return ctx * 2

    reg = AgentRegistry()
    d, dp = reg.add(Greeter), reg.add(Plain)
    assert d.isolation == "async" and dp.isolation == "thread"  # from run: async / plain
    assert d.setup is not None and d.teardown is not None
    assert d.concurrency == 1 and d.fn.__qualname__.endswith("Greeter.run")
    assert events == []  # nothing is made at import

    async def life() -> list[Any]:
        done = await set_up(reg, lambda name: AgentNode("n9", name, str(tmp_path / name), "x:1", ()))
        out = [await d.fn("a"), await d.fn("b")]
        await tear_down(done)
        return out

    assert asyncio.run(life()) == ["hi from n9: a", "hi from n9: b"]
    assert events == ["init", "setup n9 True", "teardown"]
    assert dp.fn(21) == 42  # type: ignore[misc]


def test_a_setup_that_raises_names_the_agent_and_tears_down_the_others(tmp_path: pathlib.Path) -> None:
    torn: list[str] = []

    @raftmesh.agent("a_first")
    class First:
        def setup(self, node: AgentNode) -> None:
            pass

        async def run(self, ctx: Any) -> Any:
            return None

        def teardown(self) -> None:
            torn.append("a_first")

    @raftmesh.agent("b_broken")
    class Broken:
        def setup(self, node: AgentNode) -> None:
            raise ConnectionError("database unreachable")

        async def run(self, ctx: Any) -> Any:
            return None

    reg = AgentRegistry()
    reg.add(First)
    reg.add(Broken)

    def node_for(name: str) -> AgentNode:
        return AgentNode("n1", name, str(tmp_path / name), "x:1", ())

    with pytest.raises(AgentSetupError) as err:
        asyncio.run(set_up(reg, node_for))
    assert "agent 'b_broken': setup(node) failed: ConnectionError: database unreachable" in str(err.value)
    assert f"{__file__}:" in str(err.value)
    assert torn == ["a_first"]
    assert (tmp_path / "a_first").is_dir()  # each agent gets its own directory


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"isolation": "threads"}, "isolation must be one of 'async', 'thread', 'process', not 'threads'"),
        ({"concurrency": -1}, "concurrency must be >= 0, got -1"),
        ({"timeout_ms": -5}, "timeout_ms must be >= 0"),
        ({"retries": 101}, "retries must be at most 100"),
        ({"retries": True}, "retries must be an integer, not bool"),
        ({"timeout_ms": 1.5}, "timeout_ms must be an integer, not float"),
        ({"breaker_failures": -1}, "breaker_failures must be >= 0"),
        ({"breaker_cooldown_ms": -1}, "breaker_cooldown_ms must be >= 0"),
        ({"memory_mb": -1, "isolation": "process"}, "memory_mb must be >= 0"),
        ({"cpu_seconds": -2, "isolation": "process"}, "cpu_seconds must be >= 0"),
        ({"memory_mb": 100}, "memory_mb and cpu_seconds limit a worker process: add isolation='process'"),
        ({"capabilities": "gpu"}, "capabilities must be a list of names"),
        ({"capabilities": ["has space"]}, "capability 'has space' may contain only"),
        ({"capabilities": [3]}, "capability 3 must be a string"),
        # the limits a node's registration is checked against (limits.py): refused here, not at start
        ({"concurrency": 100_001}, "concurrency must be at most 100000"),
        ({"breaker_failures": 1001}, "breaker_failures must be at most 1000"),
        ({"breaker_cooldown_ms": 86_400_001}, "breaker_cooldown_ms must be at most 86400000"),
        ({"capabilities": [f"c{i}" for i in range(65)]}, "65 capabilities; the limit is 64"),
        ({"memory_mb": 2**21, "isolation": "process"}, "memory_mb must be at most 1048576"),
        ({"cpu_seconds": 10**7, "isolation": "process"}, "cpu_seconds must be at most 604800"),
    ],
)
def test_bad_arguments_fail_at_decoration_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentDefinitionError) as err:
        raftmesh.agent("ok_name", **kwargs)
    assert message in str(err.value) and "@raftmesh.agent('ok_name')" in str(err.value)


def test_bad_names_and_bad_targets_fail_at_decoration() -> None:
    for bad in ("", "white space", "-dash", "x" * 200):
        with pytest.raises(AgentDefinitionError, match="agent type"):
            raftmesh.agent(bad)
    with pytest.raises(AgentDefinitionError, match="the agent type must be a string"):
        raftmesh.agent(7)  # type: ignore[arg-type]

    def plain(ctx: Any) -> Any:
        return ctx

    with pytest.raises(AgentDefinitionError, match="plain \\(non-async\\) code would block"):
        raftmesh.agent("t1", isolation="async")(plain)

    def no_args() -> None:
        return None

    with pytest.raises(AgentDefinitionError, match="must take one argument, ctx"):
        raftmesh.agent("t2")(no_args)

    async def gen(ctx: Any) -> Any:
        yield ctx

    with pytest.raises(AgentDefinitionError, match="generator"):
        raftmesh.agent("t3")(gen)

    class NoRun:
        pass

    with pytest.raises(AgentDefinitionError, match=r"must define run\(self, ctx\)"):
        raftmesh.agent("t4")(NoRun)

    class NeedsArgs:
        def __init__(self, db: str) -> None:
            self.db = db

        def run(self, ctx: Any) -> Any:
            return ctx

    with pytest.raises(AgentDefinitionError, match="constructible with no arguments"):
        raftmesh.agent("t5")(NeedsArgs)

    class BadSetup:
        def setup(self) -> None:
            pass

        def run(self, ctx: Any) -> Any:
            return ctx

    with pytest.raises(AgentDefinitionError, match=r"BadSetup.setup must be a method taking \(self, node\)"):
        raftmesh.agent("t6")(BadSetup)
    with pytest.raises(AgentDefinitionError, match="decorate an async def, a def or a class"):
        raftmesh.agent("t7")(42)


def test_registry_add_rejects_a_second_agent_under_a_name_and_keeps_the_same_one() -> None:
    async def a(ctx: Any) -> Any:
        return 1

    async def b(ctx: Any) -> Any:
        return 2

    reg = AgentRegistry()
    first = reg.register("x", a)
    assert reg.register("x", a) is first  # the same code again: nothing changes
    with pytest.raises(DuplicateAgentError) as err:
        reg.register("x", b)
    assert f"{__file__}:{a.__code__.co_firstlineno}" in str(err.value)
    assert f"{__file__}:{b.__code__.co_firstlineno}" in str(err.value)
    with pytest.raises(TypeError, match="neither an AgentDef nor decorated"):
        reg.add(b)


# ---- loading modules ------------------------------------------------------------------


def test_load_a_file_builtins_first_with_sources_and_origins() -> None:
    reg = load_agents([USER_AGENTS], entry_points=False)
    assert reg.names() == sorted(
        [
            "echo",
            "sum",
            "sleep",
            "fail",
            "kv_put",
            "http",
            "llm",
            "planner",
            "greet",
            "add_sync",
            "counter",
            "shout",
        ]
    )
    assert reg.origins["echo"] == "built-in" and reg.agents["echo"].source == ""
    for name, line in (("greet", '@raftmesh.agent("greet"'), ("counter", '@raftmesh.agent("counter")')):
        d = reg.agents[name]
        assert d.source == USER_AGENTS
        n = next(
            i
            for i, ln in enumerate(pathlib.Path(USER_AGENTS).read_text().splitlines(), 1)
            if ln.startswith(line)
        )
        assert reg.origins[name] == f"{USER_AGENTS}:{n}"
    assert reg.agents["greet"].capabilities == frozenset({"text"})
    assert reg.agents["add_sync"].isolation == "thread" and reg.agents["add_sync"].concurrency == 2
    again = load_agents([USER_AGENTS], entry_points=False)  # deterministic: the same agents
    assert all(again.agents[n].fn is reg.agents[n].fn for n in reg.names())


def test_relative_file_path_is_resolved_and_recorded_absolute(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "rel_agents.py", '@__import__("raftmesh").agent("rel_x")\nasync def x(ctx): return 1\n')
    monkeypatch.chdir(tmp_path)
    reg = load_agents(["rel_agents.py"], entry_points=False)
    assert reg.agents["rel_x"].source == str(tmp_path / "rel_agents.py")


@pytest.mark.parametrize(
    ("body", "line", "expect"),
    [
        ("import raftmesh\n\ndef broken(:\n    pass\n", 3, "SyntaxError: "),
        (
            "import raftmesh\nx = 1\n\nraise RuntimeError('boom at import')\n",
            4,
            "RuntimeError: boom at import",
        ),
        ("import os\nimport no_such_dependency_xyz\n", 2, "ModuleNotFoundError: No module named"),
        ("import json\n\n\nCONFIG = json.loads('{not json')\n", 4, "JSONDecodeError"),
        ("import sys\nsys.exit(3)\n", 2, "SystemExit: 3"),
    ],
    ids=["syntax", "raises", "missing-dependency", "raised-in-a-library", "exit"],
)
def test_a_file_that_fails_to_import_names_the_file_and_line(
    tmp_path: pathlib.Path, body: str, line: int, expect: str
) -> None:
    path = tmp_path / "bad_agents.py"
    path.write_text(body)
    with pytest.raises(AgentLoadError) as err:
        load_agents([str(path)], entry_points=False)
    msg = str(err.value)
    assert msg.startswith(f"agents module {str(path)!r}: "), msg
    assert expect in msg and f"{path}:{line}" in msg, msg
    if "library" in expect or "JSONDecodeError" in expect:
        assert "(raised in " in msg and "json" in msg.split("(raised in ")[1], msg


def test_a_syntax_error_in_a_module_it_imports_names_both_places(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = modname("helper")
    write(tmp_path / f"{helper}.py", "x = (\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    main = write(tmp_path / "uses_helper.py", f"import raftmesh\nimport {helper}\n")
    with pytest.raises(AgentLoadError) as err:
        load_agents([main], entry_points=False)
    msg = str(err.value)
    assert f"{tmp_path / helper}.py:1" in msg and f"(imported at {main}:2)" in msg, msg


def test_a_name_declared_twice_names_both_decorations(tmp_path: pathlib.Path) -> None:
    one = write(
        tmp_path / "dup_one.py",
        """
        import raftmesh

        @raftmesh.agent("dup_x")
        async def a(ctx):
            return 1


        @raftmesh.agent("dup_x")
        async def b(ctx):
            return 2
        """,
    )
    with pytest.raises(AgentLoadError) as err:
        load_agents([one], entry_points=False)
    assert f"agent type 'dup_x' is declared twice: at {one}:3 and at {one}:8" in str(err.value)

    a = write(
        tmp_path / "dup_a.py", 'import raftmesh\n@raftmesh.agent("dup_y")\nasync def a(ctx): return 1\n'
    )
    b = write(tmp_path / "dup_b.py", 'import raftmesh\n\n@raftmesh.agent("dup_y")\ndef b(ctx): return 2\n')
    with pytest.raises(AgentLoadError) as err:
        load_agents([a, b], entry_points=False)
    assert str(err.value).startswith(f"agents module {b!r}: ")
    assert f"at {a}:2 and at {b}:3" in str(err.value)

    clash = write(
        tmp_path / "clash.py", 'import raftmesh\n@raftmesh.agent("echo")\nasync def e(ctx): return 1\n'
    )
    with pytest.raises(AgentLoadError) as err:
        load_agents([clash], entry_points=False)
    assert f"agent type 'echo' is declared twice: at built-in and at {clash}:2" in str(err.value)


def test_missing_file_unknown_module_bad_source_and_empty_module(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = {
        str(tmp_path / "nope.py"): f"no such file {tmp_path / 'nope.py'}",
        "no_such_module_xyz": "no module named 'no_such_module_xyz' (install it or add its directory to PYTHONPATH",
        "no_such_pkg_xyz.agents": "no module named 'no_such_pkg_xyz'",
        "not a module!": "not a file path ending in .py nor a module name",
        "  ": "must be a file path or a module name",
    }
    for source, message in cases.items():
        with pytest.raises(AgentLoadError) as err:
            load_agents([source], entry_points=False)
        assert message in str(err.value), (source, str(err.value))
    empty = modname("empty")
    write(tmp_path / f"{empty}.py", "X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AgentLoadError, match="declares no agent"):
        load_agents([empty], entry_points=False)
    with pytest.raises(AgentLoadError, match="has no attribute 'nothing'"):
        load_agents([f"{empty}:nothing"], entry_points=False)
    with pytest.raises(AgentLoadError, match="is not a module, an agent or a callable"):
        load_agents([f"{empty}:X"], entry_points=False)


def test_a_package_by_name_its_submodules_and_a_module_imported_before_the_loader(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = modname("userpkg")
    (tmp_path / pkg).mkdir()
    write(tmp_path / pkg / "__init__.py", "from . import tools\n")
    write(
        tmp_path / pkg / "tools.py",
        """
        import raftmesh

        @raftmesh.agent("pkg_tool", isolation="process")
        def tool(ctx):
            return "tool"
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module(pkg)  # a plain import first: the declarations are not lost
    reg = load_agents([pkg], entry_points=False)
    d = reg.agents["pkg_tool"]
    assert d.source == f"{pkg}.tools" and d.isolation == "process"
    assert load_agents([f"{pkg}.tools"], entry_points=False).agents["pkg_tool"].fn is d.fn
    assert load_agents([f"{pkg}:tools"], entry_points=False).agents["pkg_tool"].fn is d.fn
    assert load_agents([f"{pkg}.tools:tool"], entry_points=False).agents["pkg_tool"].fn is d.fn
    # one source reached twice (directly and through its package) is loaded once
    assert load_agents([pkg, f"{pkg}.tools"], entry_points=False).agents["pkg_tool"] is d


def test_a_callable_source_registers_into_the_registry(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = modname("regfn")
    write(
        tmp_path / f"{mod}.py",
        """
        async def upper(ctx):
            return str(ctx.input).upper()


        def register(registry):
            registry.register("cb_upper", upper, capabilities=["text"])


        def broken(registry):
            raise ValueError("cannot register")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_agents([f"{mod}:register"], entry_points=False)
    assert reg.agents["cb_upper"].source == f"{mod}:register"
    assert reg.origins["cb_upper"] == f"{tmp_path / mod}.py:1"
    with pytest.raises(AgentLoadError) as err:
        load_agents([f"{mod}:broken"], entry_points=False)
    assert f"ValueError: cannot register at {tmp_path / mod}.py:10" in str(err.value)


def test_a_fresh_process_loads_the_same_agent_from_its_source(
    tmp_path: pathlib.Path, modname: Callable[[str], str]
) -> None:
    """What a spawned process worker does: ``load_agent(AgentDef.source, name)``."""
    mod = modname("freshmod")
    write(tmp_path / f"{mod}.py", "def register(reg):\n    reg.register('fresh_fn', lambda ctx: 1)\n")
    code = (
        "import sys; from raftmesh.agents import load_agent\n"
        "d = load_agent(sys.argv[1], sys.argv[2])\n"
        "print(repr((d.name, d.isolation, d.source, d.setup is not None)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def in_fresh_process(source: str, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, source, name], capture_output=True, text=True, env=env, timeout=60
        )

    reg = load_agents([USER_AGENTS], entry_points=False)
    for name in ("greet", "add_sync", "counter", "echo"):
        d = reg.agents[name]
        out = in_fresh_process(d.source, name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == repr((name, d.isolation, d.source, d.setup is not None))
    out = in_fresh_process(f"{mod}:register", "fresh_fn")
    assert out.stdout.strip() == repr(("fresh_fn", "async", f"{mod}:register", False)), out.stderr
    out = in_fresh_process(USER_AGENTS, "nope")
    assert out.returncode != 0 and "declares no agent 'nope'" in out.stderr


# ---- entry points, through a real installed-distribution layout --------------------------------


def install_fake_distribution(
    root: pathlib.Path, name: str, entry_points: str, modules: dict[str, str]
) -> None:
    """What pip leaves in site-packages: the modules and ``NAME-1.0.dist-info``."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip("\n"))
    for mod, text in modules.items():
        write(root / f"{mod}.py", text)


def test_entry_points_name_a_module_or_a_callable(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mod, regmod = modname("epmod"), modname("epreg")
    install_fake_distribution(
        tmp_path,
        "raftmesh_test_dist",
        f"""
        [raftmesh.agents]
        translate = {mod}
        summarise = {regmod}:register

        [console_scripts]
        unrelated = {mod}:main
        """,
        {
            mod: """
            import raftmesh

            @raftmesh.agent("ep_translate", capabilities=["text"])
            async def translate(ctx):
                return ctx.input
            """,
            regmod: """
            async def summarise(ctx):
                return "short"


            def register(registry):
                registry.register("ep_summarise", summarise)
            """,
        },
    )
    assert "ep_translate" not in load_agents([], entry_points=False).agents
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_agents([])
    assert reg.agents["ep_translate"].source == mod
    assert reg.agents["ep_summarise"].source == f"{regmod}:register"
    assert "ep_translate" not in load_agents([], entry_points=False).agents
    # a source that declares a name an entry point took is a duplicate naming both places
    dup = write(
        tmp_path / "dup_ep.py", 'import raftmesh\n@raftmesh.agent("ep_translate")\nasync def t(c): pass\n'
    )
    with pytest.raises(AgentLoadError) as err:
        load_agents([dup])
    assert f"at {tmp_path / mod}.py:3 and at {dup}:2" in str(err.value)


def test_an_entry_point_that_fails_to_import_names_it_and_the_line(
    tmp_path: pathlib.Path, modname: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = modname("epbad")
    install_fake_distribution(
        tmp_path,
        "raftmesh_broken_dist",
        f"[raftmesh.agents]\nbroken = {mod}\n",
        {mod: "import raftmesh\n\nraise ImportError('needs a GPU driver')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AgentLoadError) as err:
        load_agents([])
    msg = str(err.value)
    assert msg.startswith(f"entry point 'broken' = {mod!r} (group raftmesh.agents, raftmesh_broken_dist 1.0)")
    assert f"ImportError: needs a GPU driver at {tmp_path / mod}.py:3" in msg, msg
    assert load_agents([], entry_points=False).names()  # the node's choice: builtins still load


# ---- the node ------------------------------------------------------------------------


def node_argv(tmp_path: pathlib.Path, *extra: str) -> tuple[list[str], list[socket.socket]]:
    """``raftmesh node`` argv on two ports this test holds bound (so a node that got as far
    as binding them would fail differently)."""
    socks = []
    for port in free_ports(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        socks.append(s)
    raft, grpc_addr = (f"127.0.0.1:{s.getsockname()[1]}" for s in socks)
    argv = [
        sys.executable,
        "-m",
        "raftmesh.cli.main",
        "node",
        "--id",
        "n1",
        "--raft",
        raft,
        "--grpc",
        grpc_addr,
        "--data-dir",
        str(tmp_path / "data"),
        *extra,
    ]
    return argv, socks


def run_node(tmp_path: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv, socks = node_argv(tmp_path, *extra)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        for s in socks:
            s.close()


@pytest.mark.e2e
def test_node_with_a_bad_module_exits_2_naming_file_and_line_before_starting(tmp_path: pathlib.Path) -> None:
    bad = write(tmp_path / "bad.py", "import raftmesh\n\n\nraise KeyError('OPENAI_API_KEY')\n")
    res = run_node(tmp_path, "--agents-module", USER_AGENTS, "--agents-module", bad)
    assert res.returncode == 2, res
    assert (
        f"raftmesh: invalid argument: agents module {bad!r}: KeyError: 'OPENAI_API_KEY' at {bad}:4"
        in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists()  # no Raft journal, no snapshot: nothing was started
    dup = write(tmp_path / "dup.py", 'import raftmesh\n@raftmesh.agent("greet")\nasync def g(c): pass\n')
    res = run_node(tmp_path, "--agents-module", USER_AGENTS, "--agents-module", dup)
    assert res.returncode == 2 and f"declared twice: at {USER_AGENTS}:14 and at {dup}:2" in res.stderr, res
    res = run_node(tmp_path, "--agents-module", str(tmp_path / "missing.py"))
    assert res.returncode == 2 and f"no such file {tmp_path / 'missing.py'}" in res.stderr, res
    assert not (tmp_path / "data").exists()


@pytest.mark.e2e
def test_node_agents_unknown_and_the_config_key(tmp_path: pathlib.Path) -> None:
    res = run_node(tmp_path, "--agents", "echo,nope")
    assert res.returncode == 2, res
    assert (
        "--agents names 'nope', which no loaded module declares; loaded: echo, fail, http, kv_put, llm"
        in res.stderr
    )
    assert "Traceback" not in res.stderr
    # agents_modules in --config, as a list and as a comma-separated string
    bad = write(tmp_path / "bad.py", "import raftmesh\nraise RuntimeError('x')\n")
    for value in ([USER_AGENTS], f"{USER_AGENTS}, {bad}"):
        cfg = tmp_path / "node.json"
        cfg.write_text(json.dumps({"agents_modules": value}))
        res = run_node(tmp_path, "--config", str(cfg), "--agents", "greet,nope")
        assert res.returncode == 2, res
        if isinstance(value, list):
            assert (
                "loaded: add_sync, counter, echo, fail, greet, http, kv_put, llm, planner, shout, sleep, sum"
                in res.stderr
            ), res
        else:
            assert f"agents module {bad!r}: RuntimeError: x at {bad}:2" in res.stderr, res
    cfg.write_text(json.dumps({"agents_modules": 7}))
    res = run_node(tmp_path, "--config", str(cfg))
    assert res.returncode == 2 and "agents_modules must be a list of strings" in res.stderr, res
    assert not (tmp_path / "data").exists()


@pytest.mark.e2e
def test_node_whose_class_agent_setup_raises_stops_at_start_naming_it(tmp_path: pathlib.Path) -> None:
    mod = write(
        tmp_path / "failing_setup.py",
        """
        import raftmesh


        @raftmesh.agent("needs_db")
        class NeedsDb:
            def setup(self, node):
                raise ConnectionError(f"no database for {node.node_id}")

            async def run(self, ctx):
                return None
        """,
    )
    res = run_node(tmp_path, "--agents-module", mod)
    assert res.returncode == 5, res
    assert (
        f"agent 'needs_db': setup(node) failed: ConnectionError: no database for n1 at {mod}:7" in res.stderr
    )
    assert not (tmp_path / "data" / "raft.journal").exists()


@pytest.mark.e2e
def test_local_cluster_runs_the_users_async_def_and_class_agents(
    make_cluster: Callable[..., LocalCluster], tmp_path: pathlib.Path, modname: Callable[[str], str]
) -> None:
    pkg = modname("named_agents")
    write(
        tmp_path / f"{pkg}.py",
        """
        import raftmesh


        @raftmesh.agent("by_name")
        async def by_name(ctx):
            return {"via": "module name", "input": ctx.input}
        """,
    )
    c: LocalCluster = make_cluster(
        1, agents_modules=[os.path.relpath(USER_AGENTS), pkg], env={"PYTHONPATH": str(tmp_path)}
    )
    members = c.client().status().members
    offered = set(members[0].agents)
    assert {"greet", "add_sync", "counter", "shout", "by_name", "echo", "sum"} <= offered, offered
    dag = DAG("user-agents")
    g = dag.task("g", "greet", input={"name": "ada"})
    s = dag.task("s", "sum", input={"value": 3})
    n = dag.task("n", "add_sync", input={"value": 2}, deps=[s])
    k1 = dag.task("k1", "counter", input=1, deps=[g])
    dag.task("k2", "counter", input=2, deps=[k1])
    dag.task("sh", "shout", input="quiet", deps=[n])
    dag.task("m", "by_name", input=[1])
    run = c.client().run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run
    out = {t: run.tasks[t].output for t in run.tasks}
    assert out["g"] == {"hello": "ada", "node": "n1"}
    assert out["n"] == {"sum": 5, "off_loop": True}  # a plain def succeeded, off the event loop
    assert out["k1"] == {"setups": 1, "node": "n1", "input": 1}
    assert out["k2"] == {"setups": 1, "node": "n1", "input": 2}  # one instance, set up once
    assert out["sh"] == "QUIET"
    assert out["m"] == {"via": "module name", "input": [1]}
    agent_dir = pathlib.Path(c.nodes["n1"].data_dir, "agents", "counter")
    pid = c.nodes["n1"].pid
    assert (agent_dir / "setup.log").read_text() == f"n1 pid {pid}\n"
    c.stop_node("n1")  # SIGTERM: teardown runs in the node as it stops
    assert (agent_dir / "teardown.log").read_text() == f"n1 pid {pid}\n"
    c.start_node("n1")  # a restart sets the agent up again in its new process
    c.wait_ready()
    wait_until(lambda: len((agent_dir / "setup.log").read_text().splitlines()) == 2, 30, "setup again")


@pytest.mark.e2e
def test_cluster_script_passes_agents_modules_to_every_node_and_restart_keeps_them(
    tmp_path: pathlib.Path,
) -> None:
    script = str(ROOT / "scripts" / "cluster.sh")
    d = str(tmp_path / "c")
    env = {**os.environ, "RAFTMESH_BIN": f"{sys.executable} -m raftmesh.cli.main"}
    base = _free_base()

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args, "--dir", d], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
        )

    bad = write(tmp_path / "bad.py", "import raftmesh\nraise RuntimeError('no')\n")
    try:
        up = sh("up", "2", "--base-port", str(base), "--agents-module", bad)
        assert up.returncode == 1 and "exited at start" in up.stderr, up
        assert f"agents module {bad!r}: RuntimeError: no at {bad}:2" in up.stderr, up.stderr
    finally:
        sh("down")
    try:
        rel = os.path.relpath(USER_AGENTS, ROOT)
        up = sh("up", "3", "--base-port", str(base), "--agents-module", rel)
        assert up.returncode == 0, up.stderr
        addrs = [ln for ln in up.stdout.splitlines() if ln.startswith("RAFTMESH_ADDRESSES=")][-1].split("=")[
            1
        ]
        with raftmesh.Client(addrs.split(",")) as client:
            for m in client.status().members:
                assert {"greet", "counter", "add_sync"} <= set(m.agents), m
            assert sh("restart", "n2", "--agents-module", rel).returncode == 1  # a flag of up only
            assert sh("kill", "n2").returncode == 0
            rs = subprocess.run(
                [script, "restart", "n2", "--wait", "--dir", d],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd="/",
            )
            assert rs.returncode == 0, rs.stderr  # from another directory: the path was made absolute
            for m in client.status().members:
                assert {"greet", "counter", "add_sync"} <= set(m.agents), m
            dag = DAG("script")
            for i in range(6):
                dag.task(f"g{i}", "greet", input={"name": str(i)})
            run = client.run(dag, timeout_s=60)
            assert run.status == "SUCCEEDED", run
    finally:
        down = sh("down")
        assert down.returncode == 0, down.stderr
