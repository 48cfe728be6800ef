"""``ctx.spawn``: tasks an attempt adds to its own run, carried with its completion.

An agent calls ``ctx.spawn(fragment)`` any number of times; the fragments accumulate in
the attempt (``Spawns``) and travel with its success in ``Completion.spawn``: the state
machine adds them atomically with that completion (``consensus/spawn.py``). A failed,
cancelled or fenced attempt spawns nothing.

A fragment is a ``raftmesh.DAG``, a list of ``raftmesh.Task`` or a list of task spec maps
(the keys of a task in a YAML/JSON spec file). Every form goes through ``DAG.from_dict``,
the spec loader's own checks, and is kept as those maps: they are what a ``process``
worker sends back over its pipe. What can be checked without the run (shape, ids, count,
cycles within the fragment, inputs) is checked at the call, which raises ``SpawnError``;
the rest (ids unused in the run, dependencies outside the fragment, agent types, depth,
budget) is the state machine's, and a violation fails the attempt with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..consensus import limits, values
from ..consensus.commands import AgentOffer, TaskSpec
from ..errors import InvalidArgument


class SpawnError(InvalidArgument):
    """A fragment ``ctx.spawn`` cannot accept; the message says what to fix. Not retried."""

    retryable = False


def fragment_maps(fragment: Any) -> list[dict[str, Any]]:
    """The fragment's tasks as spec maps, in order, after the spec loader's checks."""
    from ..client._dag import DAG, Task  # the client package loads grpc: only when spawning

    if isinstance(fragment, DAG):
        items: list[Any] = list(fragment.tasks.values())
    elif isinstance(fragment, (list, tuple)):
        items = list(fragment)
    else:
        raise SpawnError(
            "ctx.spawn takes a raftmesh.DAG, a list of raftmesh.Task or a list of task spec maps, "
            f"not {type(fragment).__name__}"
        )
    maps: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, Task):
            maps.append(item.to_dict())
        elif isinstance(item, Mapping):
            maps.append(dict(item))
        else:
            raise SpawnError(
                f"ctx.spawn: task #{i + 1} is a {type(item).__name__}; give a raftmesh.Task or a task spec map"
            )
    try:
        dag = DAG.from_dict({"tasks": maps}, source="ctx.spawn")
    except InvalidArgument as exc:
        raise SpawnError(str(exc)) from None
    return [t.to_dict() for t in dag.tasks.values()]


class Spawns:
    """What one attempt has spawned so far (every ``ctx.spawn`` call of it)."""

    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.wait: bool | None = None
        """None until the first call; one attempt's spawns are all waited for, or none."""
        self.size = 0
        """Encoded bytes of ``tasks`` (bounded like a run's spawned tasks)."""

    def add(self, spawner_id: str, fragment: Any, wait: bool) -> list[str]:
        if not isinstance(wait, bool):
            raise SpawnError(f"ctx.spawn: wait must be True or False, not {wait!r}")
        maps = fragment_maps(fragment)
        if not maps:
            raise SpawnError("ctx.spawn: the fragment has no tasks")
        if self.wait is not None and wait != self.wait:
            raise SpawnError(
                f"ctx.spawn: wait={wait} after an earlier ctx.spawn of this attempt with wait={self.wait}; "
                "an attempt's spawned tasks are all waited for or none are"
            )
        total = len(self.tasks) + len(maps)
        if total > limits.MAX_SPAWN_TASKS:
            raise SpawnError(
                f"ctx.spawn: this attempt would spawn {total} tasks; the limit is {limits.MAX_SPAWN_TASKS}"
            )
        seen = {str(t["id"]) for t in self.tasks}
        size = self.size
        for m in maps:
            tid = str(m["id"])
            why = limits.id_error("ctx.spawn: task id", tid)
            if why:
                raise SpawnError(why)
            if tid == spawner_id:
                raise SpawnError(f"ctx.spawn: task id {tid!r} is the spawning task's own id")
            if tid in seen:
                raise SpawnError(f"ctx.spawn: task id {tid!r} was already spawned by this attempt")
            seen.add(tid)
            why = values.problem(m.get("input"))
            if why:
                raise SpawnError(f"ctx.spawn: task {tid!r}: input {why}")
            input_size = limits.encoded_size(m.get("input"))
            if input_size > limits.MAX_TASK_INPUT_BYTES:
                raise SpawnError(
                    f"ctx.spawn: task {tid!r}: input is {input_size} bytes encoded; the limit is "
                    f"{limits.MAX_TASK_INPUT_BYTES}"
                )
            size += limits.encoded_size(m)
            if size > limits.MAX_SPAWNED_BYTES_PER_RUN:
                raise SpawnError(
                    f"ctx.spawn: this attempt's spawned tasks are over {limits.MAX_SPAWNED_BYTES_PER_RUN} "
                    "bytes encoded (a run's limit); store large inputs elsewhere and pass references"
                )
        shapes = [TaskSpec(str(m["id"]), str(m["agent"]), deps=tuple(m["deps"])) for m in self.tasks + maps]
        from ..consensus.dag import describe_cycle, find_cycle  # its processors: only when spawning

        cycle = find_cycle(shapes)
        if cycle:
            raise SpawnError("ctx.spawn: the spawned tasks have a cycle: " + describe_cycle(cycle))
        self.tasks.extend(maps)
        self.wait = wait
        self.size = size
        return [str(m["id"]) for m in maps]


def task_specs(
    maps: list[dict[str, Any]], run_priority: int, defaults: Mapping[str, AgentOffer]
) -> tuple[TaskSpec, ...]:
    """The spawned tasks as the state machine takes them, through the conversion a submit uses
    (SDK -> protobuf -> ``node.convert``): every key a submitted task may have, the run's
    priority for a task without one, and the agent type's retries/timeout where unset."""
    from ..client._client import task_pb
    from ..client._dag import DAG
    from ..node import convert
    from ..proto.raftmesh.v1 import cluster_pb2 as pb
    from ._llm import input_secret_error

    try:
        dag = DAG.from_dict({"tasks": maps}, source="ctx.spawn")
        req = pb.SubmitRunRequest(priority=run_priority, tasks=[task_pb(t) for t in dag.tasks.values()])
        specs = convert.task_specs_from_pb(req, defaults)
    except InvalidArgument as exc:
        raise SpawnError(str(exc)) from None
    except (ValueError, TypeError) as exc:  # a value the checks above let through: still the fragment's fault
        raise SpawnError(f"ctx.spawn: {exc}") from None
    for t in specs:  # a secret in an input would be replicated to every log and snapshot
        why = input_secret_error(t.agent, t.input)
        if why:
            raise SpawnError(f"ctx.spawn: task {t.id!r}: {why}")
    return specs
