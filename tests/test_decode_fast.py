"""The fast decode paths of apply (issue 13) build exactly what the field-by-field checks build,
and refuse exactly what they refuse, with the same message."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from raftmesh.consensus.commands import (
    Approval,
    Assignment,
    CommandDecodeError,
    Compensation,
    Complete,
    Completion,
    TaskSpec,
    Usage,
    decode_batch,
    encode_batch,
)
from raftmesh.consensus.fast import fast_init
from raftmesh.consensus.results import RunChanged, TaskChanged
from raftmesh.consensus.state import RunStatus, TaskStatus


class _Str(str):
    pass


def _plain(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "id": "w1",
        "agent": "sum",
        "input": {"value": 1},
        "deps": ["root"],
        "retries": 2,
        "priority": -3,
        "timeout_ms": 5,
        "retry_backoff_ms": 7,
    }
    m.update(over)
    return m


MAPS: list[Any] = [
    _plain(),
    _plain(deps=[]),
    _plain(deps=("a", "b")),  # a tuple (not what msgpack gives): the checked path, same spec
    _plain(deps=["a", 1]),
    _plain(deps=["a", _Str("b")]),
    _plain(deps="ab"),
    _plain(id=_Str("w2")),
    _plain(id=1),
    _plain(agent=None),
    _plain(retries=True),
    _plain(retries=1.0),
    _plain(priority=False),
    _plain(timeout_ms="5"),
    _plain(retry_backoff_ms=None),
    _plain(input=None),
    _plain(input=[1, "x", {"y": 2.5}]),
    _plain(locks=[]),
    _plain(locks=[["L", "shared"]]),
    _plain(trigger=""),
    _plain(replicas=0),
    _plain(extra="ignored"),
    {k: v for k, v in _plain().items() if k != "deps"},
    {k: v for k, v in _plain().items() if k != "input"},
    "not a map",
    [],
]


def _outcome(f: Any, m: Any) -> Any:
    try:
        return ("ok", f(m))
    except CommandDecodeError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("m", MAPS, ids=range(len(MAPS)))
def test_task_spec_fast_decode_equals_the_checked_one(m: Any) -> None:
    fast, checked = _outcome(TaskSpec.from_map, m), _outcome(TaskSpec.from_map_checked, m)
    assert fast == checked
    if fast[0] == "ok":
        spec = fast[1]
        assert [getattr(spec, f.name) for f in dataclasses.fields(spec)] == [
            getattr(checked[1], f.name) for f in dataclasses.fields(spec)
        ]
        assert type(spec.deps) is tuple


def test_a_plain_spec_round_trips_through_a_log_entry() -> None:
    from raftmesh.consensus.commands import StageRun

    specs = tuple(TaskSpec(id=f"w{i}", agent="sum", input={"value": i}, deps=("root",)) for i in range(50))
    (cmd,) = decode_batch(encode_batch([StageRun("g", 1, run_id="r", seq=0, tasks=specs, node_id="n")]))
    assert isinstance(cmd, StageRun) and cmd.tasks == specs
    # and the bytes of the decoded specs are the submitted ones (what apply sizes and stores)
    assert [msgpack.packb(t.to_map()) for t in cmd.tasks] == [msgpack.packb(t.to_map()) for t in specs]


@pytest.mark.parametrize("cls", [TaskSpec, Completion, Assignment, Usage, TaskChanged, RunChanged, Complete])
def test_fast_init_sets_every_field_as_the_dataclass_init_does(cls: Any) -> None:
    assert getattr(cls.__init__, "fast_init", False) is (cls is not Complete)
    # the generated __init__ and the dataclass one agree on every field, positional and keyword
    names = [f.name for f in dataclasses.fields(cls)]
    sample = {
        TaskSpec: dict(id="a", agent="sum", deps=("x",), priority=3),
        Completion: dict(run_id="r", task_id="t", attempt=1, token=2, output={"v": 1}),
        Assignment: dict(run_id="r", task_id="t", node_id="n", attempt=1),
        Usage: dict(tokens_in=1, cost=0.5),
        TaskChanged: dict(revision=1, run_id="r", task_id="t", status=TaskStatus.READY, attempt=0, node=""),
        RunChanged: dict(revision=1, run_id="r", status=RunStatus.RUNNING),
        Complete: dict(request_id="c", ts_ms=1, node_id="n", items=()),
    }[cls]
    made = cls(**sample)
    # every field positionally (defaults spelled out), keyword-only ones by name
    positional = [sample.get(n, _default(cls, n)) for n in names if not _kw_only(cls, n)]
    keywords = {n: sample.get(n, _default(cls, n)) for n in names if _kw_only(cls, n)}
    assert cls(*positional, **keywords) == made
    for n in names:
        want = sample.get(n, _default(cls, n))
        assert getattr(made, n) == want, n
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], None)
    with pytest.raises(TypeError):
        cls(**sample, no_such_field=1)
    assert dataclasses.replace(made) == made


def _kw_only(cls: Any, name: str) -> bool:
    return next(f for f in dataclasses.fields(cls) if f.name == name).kw_only


def _default(cls: Any, name: str) -> Any:
    return next(f for f in dataclasses.fields(cls) if f.name == name).default


def test_fast_init_refuses_what_it_cannot_build() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        x: int = 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithPostInit:
        x: int = 0

        def __post_init__(self) -> None:
            pass

    for cls in (WithFactory, NotFrozen, WithPostInit):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_to_map_of_a_spec_with_any_optional_field_set_writes_that_field() -> None:
    # to_map's fast path (no optional field set) must know every optional field: one it missed
    # would be dropped from the log entry. Each field here gets a value that is "set".
    base = {"id", "agent", "input", "deps", "retries", "priority", "timeout_ms", "retry_backoff_ms"}
    values: dict[str, Any] = {
        "locks": (("L", "shared"),),
        "requires": ("gpu",),
        "when": {"eq": [1, 1]},
        "trigger": "all_done",
        "map": "root",
        "max_parallel": 2,
        "replicas": 2,
        "fusion": "vote",
        "quorum": 1,
        "weights": (1.0,),
        "agents": ("sum",),
        "judge": "sum",
        "approval": Approval(),
        "compensate": Compensation("sum"),
    }
    optional = [f.name for f in dataclasses.fields(TaskSpec) if f.name not in base]
    assert sorted(optional) == sorted(values), "a new TaskSpec field: add it here and to to_map's fast path"
    plain = TaskSpec(id="a", agent="sum", deps=("root",))
    assert list(plain.to_map()) == [
        "id",
        "agent",
        "input",
        "deps",
        "retries",
        "priority",
        "timeout_ms",
        "retry_backoff_ms",
    ]
    for name, value in values.items():
        spec = dataclasses.replace(plain, **{name: value})
        assert name in spec.to_map(), name
