"""In-process fuzzing of the two parsers a stranger's bytes reach without a network hop.

- The command decoder (``consensus/commands.py``): random msgpack structures, maps that carry a
  real command tag with random fields, and mutated encodings of valid commands (a corpus drawn
  from the seeded simulation's generator) either decode or become ``Undecodable``, never raise;
  whatever decodes is applied by a real ``StateMachine`` that never raises nor answers
  ``INTERNAL`` (apply's catch-all: a bug), and leaves indexes equal to a rebuild; two replicas
  fed the same entry end with the same digest.
- The DAG spec parser (``client/_dag.py`` ``DAG.from_dict``/``from_file`` for YAML and JSON, the
  wire conversion on both sides and ``consensus/dag.validate``): any input either loads or fails
  with ``InvalidArgument``/``DagError`` carrying a message, never another exception.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftmesh.client._client import task_pb
from raftmesh.client._dag import DAG
from raftmesh.consensus import commands
from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import Command, Undecodable, decode_batch, decode_command, encode_batch
from raftmesh.consensus.dag import DagError, validate
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.results import Rejected
from raftmesh.consensus.state import ClusterState
from raftmesh.errors import InvalidArgument
from raftmesh.node import convert
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from tests.test_simulation import Generator

EXAMPLES = int(os.environ.get("RAFTMESH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _corpus() -> tuple[list[dict[str, Any]], bytes]:
    """Valid command maps from the simulation's generator, and the state they lead to."""
    sm = StateMachine()
    gen = Generator(random.Random(11), sm)
    maps: list[dict[str, Any]] = []

    def append(cmds: list[Command]) -> None:
        payload = encode_batch(cmds)
        maps.extend(msgpack.unpackb(payload, raw=False, strict_map_key=False))
        sm.apply_batch(payload)
        gen.proposed.extend(cmds)

    for i in range(3):
        append([gen.register(f"n{i}", new_incarnation=True)])
    for _ in range(100):
        batch = gen.next_batch()
        if batch:
            append(batch)
    return maps, sm.snapshot()


CORPUS, SNAPSHOT = _corpus()
TAGS = sorted({m["t"] for m in CORPUS} | set(commands._MESSAGING_DECODERS))
KEYS = sorted({k for m in CORPUS for k in m})

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(["", "n1", "r1", "a", "echo", "x" * 129, "x" * 513]),
    st.integers(-3, 40),
)
packable = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)), kids, max_size=5),
    ),
    max_leaves=30,
)


@st.composite
def tagged_maps(draw: Any) -> dict[Any, Any]:
    """A map with a real tag and version and random (mostly real) keys: reaches every decoder."""
    m: dict[Any, Any] = {
        "t": draw(st.sampled_from(TAGS)),
        "v": commands.VERSION,
        "rid": draw(st.text(max_size=6)),
        "ts": draw(st.integers(0, 2**40)),
    }
    for k in draw(st.lists(st.sampled_from(KEYS), max_size=12)):
        m[k] = draw(packable)
    return m


def _mutate_value(draw: Any, v: Any, depth: int = 0) -> Any:
    """``v`` with one node somewhere inside replaced, dropped or retyped."""
    if isinstance(v, dict) and v and depth < 6 and draw(st.booleans()):
        k = draw(st.sampled_from(sorted(v, key=repr)))
        out = dict(v)
        op = draw(st.sampled_from(["replace", "drop", "descend", "add"]))
        if op == "replace":
            out[k] = draw(packable)
        elif op == "drop":
            del out[k]
        elif op == "add":
            out[draw(st.sampled_from(KEYS))] = draw(packable)
        else:
            out[k] = _mutate_value(draw, v[k], depth + 1)
        return out
    if isinstance(v, list) and v and depth < 6 and draw(st.booleans()):
        i = draw(st.integers(0, len(v) - 1))
        out_l = list(v)
        op = draw(st.sampled_from(["replace", "drop", "descend", "repeat"]))
        if op == "replace":
            out_l[i] = draw(packable)
        elif op == "drop":
            del out_l[i]
        elif op == "repeat":
            out_l.extend([v[i]] * draw(st.integers(1, 300)))
        else:
            out_l[i] = _mutate_value(draw, v[i], depth + 1)
        return out_l
    return draw(packable)


@st.composite
def mutated_commands(draw: Any) -> dict[Any, Any]:
    return _mutate_value(draw, draw(st.sampled_from(CORPUS)))


@st.composite
def entries(draw: Any) -> bytes:
    """One log entry's bytes: a batch of valid, mutated, tagged-random or random elements, or
    the msgpack bytes of such a batch with bytes flipped or cut."""
    elems = draw(
        st.lists(
            st.one_of(st.sampled_from(CORPUS), mutated_commands(), tagged_maps(), packable),
            min_size=1,
            max_size=6,
        )
    )
    payload = msgpack.packb(elems, use_bin_type=True)
    how = draw(st.sampled_from(["as is", "as is", "flip", "cut", "random"]))
    if how == "flip" and payload:
        b = bytearray(payload)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        payload = bytes(b)
    elif how == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif how == "random":
        payload = draw(st.binary(max_size=200))
    return payload


def _machine() -> StateMachine:
    sm = StateMachine()
    sm.restore(SNAPSHOT)
    return sm


def test_the_corpus_is_valid_and_broad() -> None:
    """The mutations start from real commands of many kinds, all of which decode."""
    for m in CORPUS:
        assert not isinstance(decode_command(msgpack.packb(m, use_bin_type=True)), Undecodable)
    assert len({m["t"] for m in CORPUS}) >= 8


# Each example restores two replicas and round-trips the state: half the examples keep it near 10 s.
@settings(FUZZ, max_examples=max(20, EXAMPLES // 2))
@given(entries())
def test_decoder_never_raises_and_apply_keeps_the_state_sound(payload: bytes) -> None:
    decoded = decode_batch(payload)
    assert decoded and all(isinstance(c, (Command, Undecodable)) for c in decoded)
    for c in decoded:
        if isinstance(c, Undecodable):
            assert c.reason  # says why
    a, b = _machine(), _machine()
    results, _ = a.apply_batch(payload)
    assert len(results) == len(decoded)
    for cmd, res in zip(decoded, results, strict=True):
        assert not (isinstance(res, Rejected) and res.code is Code.INTERNAL), (
            f"apply failed on {cmd!r}: {res}"
        )
        if isinstance(res, Rejected):
            assert res.message
    b.apply_batch(payload)
    assert a.digest() == b.digest(), "two replicas applying the same entry diverged"
    copy = ClusterState.decode(a.state.encode())
    assert copy.index_snapshot() == a.state.index_snapshot()
    assert copy.digest() == a.state.digest()


@FUZZ
@given(st.one_of(packable, tagged_maps(), mutated_commands()))
def test_decode_command_raises_only_decode_errors(m: Any) -> None:
    try:
        cmd = decode_command(msgpack.packb(m, use_bin_type=True))
    except commands.CommandDecodeError as exc:
        assert str(exc)
        return
    assert isinstance(cmd, Command)
    sm = _machine()
    res, _ = sm.apply(cmd)
    assert not (isinstance(res, Rejected) and res.code is Code.INTERNAL), f"apply failed on {cmd!r}: {res}"


# ---- the DAG spec parser -------------------------------------------------------------------

TASK_KEYS = [
    "id", "agent", "input", "deps", "retries", "priority", "timeout_ms", "retry_backoff_ms", "locks",
    "requires", "replicas", "fusion", "quorum", "weights", "agents", "judge", "approval", "when",
    "trigger", "map", "max_parallel", "compensate",
]  # fmt: skip
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.sampled_from(["a", "b", "echo", "nobody", "x" * 129, "{{a.output}}", "a.output.x"]),
        st.integers(-2, 20),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def task_dicts(draw: Any) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        t["id"] = draw(st.sampled_from(["a", "b", "c", "d"]) | st.text(max_size=6))
    if draw(st.integers(0, 9)):
        t["agent"] = draw(st.sampled_from(["echo", "nobody"]) | json_values)
    for k in draw(st.lists(st.sampled_from([*TASK_KEYS, "bogus"]), max_size=5)):
        if k == "deps":
            t[k] = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "zz"]), max_size=4) | json_values)
        else:
            t[k] = draw(json_values)
    return t


@st.composite
def spec_dicts(draw: Any) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    d: dict[str, Any] = {"tasks": draw(st.lists(task_dicts(), max_size=6))}
    for k in draw(st.lists(st.sampled_from(["name", "priority", "budget", "bogus"]), max_size=2)):
        d[k] = draw(json_values)
    return d


def _load_and_validate(data: Any) -> None:
    """Client parse, both sides of the wire, then the replicated validation."""
    dag = DAG.from_dict(data)
    req = pb.SubmitRunRequest(tasks=[task_pb(t) for t in dag.tasks.values()])
    specs = convert.task_specs_from_pb(req)
    validate(specs, {"echo": {()}})


def _expect_clean(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (InvalidArgument, DagError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"


@FUZZ
@given(spec_dicts())
def test_dag_specs_load_or_fail_with_a_message(data: Any) -> None:
    _expect_clean(_load_and_validate, data)


VALID_SPEC = {
    "name": "demo",
    "tasks": [
        {"id": "a", "agent": "echo", "input": {"x": 1}},
        {
            "id": "b",
            "agent": "echo",
            "deps": ["a"],
            "retries": 2,
            "when": {"path": "a.output.x", "op": "==", "value": 1},
        },
        {"id": "c", "agent": "echo", "deps": ["a"], "replicas": 3, "fusion": "vote"},
    ],
}


@FUZZ
@given(
    st.sampled_from([".json", ".yaml"]),
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.tuples(st.integers(0, 400), st.integers(0, 400), st.text(max_size=8)),
    ),
)
def test_dag_files_load_or_fail_with_a_message(suffix: str, text: Any) -> None:
    """Random text, and the valid spec's JSON/YAML text with a slice replaced by random text."""
    if isinstance(text, tuple):
        import yaml

        base = json.dumps(VALID_SPEC) if suffix == ".json" else yaml.safe_dump(VALID_SPEC)
        i, j, ins = text
        i, j = sorted((min(i, len(base)), min(j, len(base))))
        text = base[:i] + ins + base[j:]
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)

        def load() -> None:
            dag = DAG.from_file(path)
            _load_and_validate(dag.to_dict())

        _expect_clean(load)
    finally:
        os.unlink(path)


def test_the_valid_spec_loads() -> None:
    """The mutation base is itself accepted (so mutations start from a spec that passes)."""
    _load_and_validate(VALID_SPEC)
