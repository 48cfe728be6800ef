"""The rules for what a client may store (values.py, limits.request_id_error) and the status-message clip. Pure.

Hypothesis generates JSON values of every shape: whatever the rules accept must survive
every encoding a reader uses (msgpack in the log and snapshots, strict JSON on the wire).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmesh.consensus import limits, values
from raftmesh.consensus.codes import Code
from raftmesh.consensus.dag import DagError, describe_cycle, validate
from raftmesh.consensus.limits import printable, request_id_error
from raftmesh.errors import clip_message
from raftmesh.node.convert import dump_json

from .coord import Coord
from .test_machine import spec


@pytest.fixture
def c() -> Coord:
    coord = Coord()
    coord.ok(coord.register("n1"))
    return coord


def nested(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def readable(value: Any) -> None:
    """What every reader does with a stored value; raises if any of them cannot."""
    assert msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False) == value
    text = dump_json(value) or "null"
    assert json.loads(text) == value
    text.encode("utf-8")


POISON_TEXTS = {
    "NaN": "NaN",
    "Infinity": '{"a": [1, Infinity]}',
    "-Infinity": "-Infinity",
    "1e400 (parses as inf)": '{"x": 1e400}',
    "2**64": str(2**64),
    "-2**63 - 1": str(-(2**63) - 1),
    "5000 digits": "9" * 5000,
    "depth 65": json.dumps(nested(65)),
    "depth 100000": "[" * 100_000 + "]" * 100_000,
    "lone surrogate": '"\\ud800"',
    "lone surrogate key": '{"\\udfff": 1}',
    "not JSON": "{x: 1}",
}


@pytest.mark.parametrize("text", POISON_TEXTS.values(), ids=POISON_TEXTS.keys())
def test_parse_rejects_what_a_reader_could_not_encode(text: str) -> None:
    with pytest.raises(values.BadValue) as err:
        values.parse(text)
    assert 0 < len(str(err.value)) < 400


@pytest.mark.parametrize(
    "value",
    [None, 0, 2**64 - 1, -(2**63), 1.5e308, "é\u202e", nested(limits.MAX_JSON_DEPTH), {"": []}],
)
def test_values_at_the_limits_are_accepted_and_readable(value: Any) -> None:
    assert values.problem(value) == ""
    assert values.parse(json.dumps(value)) == value
    readable(value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.nan, "not a JSON number"),
        ([1, {"a": math.inf}], "$[1].a: inf"),
        (2**64, "out of range"),
        (b"x", "bytes is not a JSON value"),
        ({(1, 2): "tuple key"}, "not a string"),
        ({2**64: "huge key"}, "out of range"),
        ({1, 2}, "set is not a JSON value"),
        (nested(limits.MAX_JSON_DEPTH + 1), "nested more than"),
        (nested(1_000_000), "nested more than"),  # iterative: no RecursionError
    ],
)
def test_problem_names_what_is_wrong(value: Any, says: str) -> None:
    why = values.problem(value)
    assert says in why and len(why) < 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_every_accepted_value_is_readable_by_every_reader(value: Any) -> None:
    if values.problem(value) == "":
        readable(value)
        assert values.parse(dump_json(value)) == value


keyed_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.floats() | st.booleans(), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(keyed_values)
def test_the_fast_check_and_the_walk_agree(value: Any) -> None:
    assert (values.problem(value) == "") == (values._walk(value) == ""), values._walk(value)


@settings(max_examples=300, deadline=None)
@given(keyed_values)
def test_the_plain_path_accepts_only_what_the_encodings_accept(value: Any) -> None:
    """``problem`` decides small flat values without encoding them: never a value the
    encodings (or the walk) would refuse, and the same answer as the walk for all."""
    if values._plainly_storable(value):
        readable(value)
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        assert values._walk(value) == ""
    assert (values.problem(value) == "") == (values._walk(value) == "")


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**63), 2**64 - 1, 1.5, "", "é", [1, "a"], (1, 2), {"value": 3}, {"a": None, "b": [1]}],
)
def test_plain_values_take_the_plain_path(value: Any) -> None:
    assert values.problem(value) == ""
    assert values._plainly_storable(value) == (not isinstance(value, dict) or "b" not in value)


@pytest.mark.parametrize(
    "value", [2**64, math.nan, "\ud800", [math.inf], {"\udfff": 1}, {1: 2}, [[1]], list(range(17))]
)
def test_the_plain_path_leaves_the_rest_to_the_encodings(value: Any) -> None:
    assert not values._plainly_storable(value)


@pytest.mark.parametrize("depth", [1, 2, 63, 64, 65, 66, 200])
@pytest.mark.parametrize("noise", ['"]]]]"', '"[[["', '"a\\\\"', '"\\"[{"', '{"k]": "{"}'])
def test_depth_is_measured_on_structure_not_on_brackets_in_strings(depth: int, noise: str) -> None:
    text = "[" * (depth - 1) + f"[{noise}, 1]" + "]" * (depth - 1)
    value = json.loads(text)
    assert (values.problem(value) == "") == (depth <= limits.MAX_JSON_DEPTH - (noise.startswith("{")))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_fails_other_than_with_bad_value(text: str) -> None:
    try:
        values.parse(text)
    except values.BadValue:
        pass


def test_apply_rejects_poison_even_if_the_boundary_is_bypassed(c: Coord) -> None:
    c.unchanged(c.submit("r1", [spec("a", input={"x": math.nan})]), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r1", [spec("a", input=2**64)]), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r1", [spec("a", input=nested(100))]), Code.INVALID_ARGUMENT)
    c.unchanged(c.put("k", math.inf), Code.INVALID_ARGUMENT)
    c.unchanged(c.put("k", "\ud800"), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r1", [spec("a")], rid="x" * 1_000_000), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r1", [spec("a")], rid="\x1b[2J"), Code.INVALID_ARGUMENT)
    assert c.st.dedup == {} or all(len(r) <= limits.MAX_REQUEST_ID_CHARS for r in c.st.dedup)


def test_a_non_json_output_fails_the_attempt_and_the_run_stays_readable(c: Coord) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.complete("r1", "a", output={"score": math.nan}))
    t = c.task("r1", "a")
    assert t.output is None and "not a JSON number" in t.error
    readable(t.output)


def test_request_id_rule() -> None:
    assert request_id_error("request_id", "") == ""  # the node chooses one
    assert request_id_error("request_id", "x" * limits.MAX_REQUEST_ID_CHARS) == ""
    assert request_id_error("request_id", "with space and é") == ""
    assert "limit" in request_id_error("request_id", "x" * (limits.MAX_REQUEST_ID_CHARS + 1))
    for bad in ("\x1b[31m", "a\nb", "rtl\u202e", "\x00"):
        assert "control characters" in request_id_error("request_id", bad)
    assert printable("plain name") and not printable("\x1b]0;title\x07")


def test_clip_message_bounds_bytes_and_says_how_much_is_left() -> None:
    assert clip_message("short") == "short"
    long = "é" * 10_000
    clipped = clip_message(long)
    assert len(clipped.encode()) <= limits.MAX_STATUS_MESSAGE_BYTES + 40
    assert clipped.endswith(f"…({10_000 - limits.MAX_STATUS_MESSAGE_BYTES // 2} more characters)")
    assert clip_message("a\ud800b") == "a?b"  # grpc could not encode a lone surrogate


def test_a_long_cycle_is_described_briefly() -> None:
    n = 10_000
    tasks = [spec(f"t{i:0120d}", f"t{(i + 1) % n:0120d}") for i in range(n)]
    with pytest.raises(DagError) as err:
        validate(tasks, {"echo"})
    assert err.value.kind == "cycle"
    assert len(str(err.value)) < 800 and "more) ->" in str(err.value)
    assert describe_cycle(["a", "b", "a"]) == "a -> b -> a"
