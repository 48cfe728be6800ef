"""``raftmesh.aio.Client`` and ``raftmesh.Client``: one set of scenarios, run against both.

Each scenario is an async function over a client; the ``flavor`` fixture runs it with a
``raftmesh.aio.Client``, or with a ``raftmesh.Client`` behind ``Blocking`` (every call a real
blocking call on a thread, iterators pulled on a thread), so the same assertions hold both
drivers of the shared operations (``raftmesh/client/_core.py``) to the same behaviour. Real
node processes on loopback, one module cluster (the failover scenarios restart the node
they kill).
"""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import raftmesh
from raftmesh import aio
from raftmesh.client import DAG
from raftmesh.client._security import Credentials
from raftmesh.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from raftmesh.localcluster import LocalCluster
from raftmesh.security import certs
from raftmesh.security.tokens import add_token

ROOT = pathlib.Path(__file__).resolve().parent.parent
Scenario = Callable[[Callable[..., Any]], Awaitable[None]]


# ---- the parity of the two surfaces ----------------------------------------------------------


def _public(obj: object) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in dir(obj) if not n.startswith("_")}


def _params(fn: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_public_name_of_the_sync_client_is_on_the_aio_one_with_the_same_parameters() -> None:
    sync, asyn = raftmesh.Client("127.0.0.1:1"), aio.Client("127.0.0.1:1")
    pairs: list[tuple[str, object, object]] = [("Client", sync, asyn)]
    pairs += [(name, getattr(sync, name), getattr(asyn, name)) for name in ("kv", "locks", "messages")]
    checked = 0
    for where, s, a in pairs:
        for name, value in _public(s).items():
            assert hasattr(a, name), f"raftmesh.aio {where}.{name} is missing (raftmesh.Client has it)"
            if callable(value) and not isinstance(value, type):
                assert _params(value) == _params(getattr(a, name)), f"{where}.{name}: parameters differ"
                want_async = name not in ("watch", "watch_runs", "lock", "subscribe", "lease_of")
                assert inspect.iscoroutinefunction(getattr(a, name)) == want_async, f"{where}.{name}"
                checked += 1
        assert not set(_public(a)) - set(_public(s)), f"{where}: aio-only names"
    assert checked >= 40
    # the lease and the subscription each driver hands out
    from raftmesh.client import _coord, _messages

    for s_cls, a_cls in ((_coord.Lease, aio.Lease), (_messages.Subscription, aio.Subscription)):
        for name, value in _public(s_cls).items():
            assert hasattr(a_cls, name), f"raftmesh.aio {a_cls.__name__}.{name} is missing"
            if callable(value):
                assert _params(value) == _params(getattr(a_cls, name)), f"{a_cls.__name__}.{name}"
    sync.close()


# ---- running one scenario against both ----------------------------------------------------------


class Blocking:
    """A sync client (or sub-client) that looks like the aio one: each call really blocks, on a
    thread (``asyncio.to_thread``); iterators are pulled there; ``lock`` is an async context."""

    def __init__(self, obj: Any) -> None:
        self.raw = obj

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if name in ("kv", "locks", "messages"):
            return Blocking(value)
        if not callable(value):
            return value
        if name == "lease_of":
            return value
        if name in ("watch", "watch_runs", "subscribe"):
            return lambda *a, **kw: Pulled(value(*a, **kw))
        if name == "lock":
            return lambda *a, **kw: Held(value(*a, **kw))
        return lambda *a, **kw: asyncio.to_thread(value, *a, **kw)


class Pulled:
    """A sync iterator (or ``Subscription``) as an async one."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._it: Iterator[Any] = iter(source)

    def __aiter__(self) -> Pulled:
        return self

    async def __anext__(self) -> Any:
        done = object()
        item = await asyncio.to_thread(next, self._it, done)
        if item is done:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        await asyncio.to_thread(getattr(self._it, "close", lambda: None))

    def close(self) -> None:
        self._source.close()

    async def __aenter__(self) -> Pulled:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Held:
    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    async def __aenter__(self) -> Any:
        return await asyncio.to_thread(self._ctx.__enter__)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._ctx.__exit__, *exc)


def raw(client: Any) -> Any:
    """The client itself (its ``_current``, ``_last_watch_addr``), whichever the flavor."""
    return client.raw if isinstance(client, Blocking) else client


@pytest.fixture(params=["sync", "aio"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_both(flavor: str, scenario: Scenario, addresses: list[str], **kw: Any) -> None:
    """Run ``scenario(make)``; ``make(**more)`` opens a client of the flavor (closed after)."""

    async def main() -> None:
        opened: list[Any] = []

        def make(**more: Any) -> Any:
            args = {"retry_deadline_s": 60.0, **kw, **more}
            c = aio.Client(addresses, **args) if flavor == "aio" else raftmesh.Client(addresses, **args)
            opened.append(c)
            return c if flavor == "aio" else Blocking(c)

        try:
            await scenario(make)
        finally:
            for c in opened:
                if flavor == "aio":
                    await c.close()
                else:
                    c.close()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy, with a deadline."""
    end = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from tests import messaging_actors
    from tests.conftest import shared_cluster

    c = LocalCluster(
        3,
        base_dir=str(tmp_path_factory.mktemp("aio-mesh")),
        agents_modules=[messaging_actors.SOURCE],
        env={"PYTHONPATH": str(ROOT)},
    )
    with shared_cluster(request, c):
        yield c


def one(name: str, agent: str = "echo", inp: Any = None, **kw: Any) -> DAG:
    dag = DAG(name)
    dag.task("t", agent, input={"x": 1} if inp is None else inp, **kw)
    return dag


# ---- scenarios ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_submit_twice_with_a_key_is_one_run_watched_to_its_end(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        c = make()
        key = f"k-{uuid.uuid4().hex}"
        dag = one("twice", "sleep", {"seconds": 0.5})
        first = await c.submit(dag, idempotency_key=key)
        assert await c.submit(dag, idempotency_key=key) == first
        events = [e async for e in c.watch(first)]
        assert events[0].kind == "snapshot" and events[-1].status == "SUCCEEDED"
        assert events[-1].kind in ("run", "snapshot")
        done = await c.wait(first, timeout_s=30)
        assert done.status == "SUCCEEDED" and done.tasks["t"].output == {"seconds": 0.5}
        runs = await c.list_runs(limit=1000)
        assert [r["run_id"] for r in runs if r["idempotency_key"] == key] == [first]
        assert (await c.get(first)).status == "SUCCEEDED"
        trail = await c.audit(first)
        assert trail.complete and trail.events[0].kind and trail.run_id == first
        ran = await c.run(one("run"), timeout_s=30)
        assert ran.status == "SUCCEEDED" and ran.tasks["t"].output == {"x": 1}
        st = await c.status()
        assert st.leader and len(st.members) == 3
        assert (await c.status_of(mesh.addresses[0])).node_id == "n1"
        with pytest.raises(DeadlineExceeded):
            async for _ in c.watch(await c.submit(one("slow", "sleep", {"seconds": 30})), timeout_s=0.5):
                pass

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_whoami_and_watch_runs_see_a_run_to_its_end(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        c = make()
        me = await c.whoami()
        assert me["node_id"] in {"n1", "n2", "n3"} and not me["auth"]
        assert "/raftmesh.v1.Cluster/SubmitRun" in me["methods"]
        stream = c.watch_runs(limit=5, timeout_s=30)
        first = await anext(aiter(stream))  # the snapshot comes first
        assert set(first) == {"snapshot"} and len(first["snapshot"]) <= 5
        run_id = await c.submit(one("watched", "sleep", {"seconds": 0.3}))
        seen: list[str] = []
        async for change in stream:
            run = change.get("run") or next(
                (r for r in change.get("snapshot", []) if r["run_id"] == run_id), None
            )
            if run is not None and run["run_id"] == run_id:
                seen.append(run["status"])
                if run["status"] == "SUCCEEDED":
                    break
        assert seen and seen[-1] == "SUCCEEDED", f"watch_runs ended without the run's end: {seen}"
        await stream.aclose()
        with pytest.raises(InvalidArgument):
            async for _ in c.watch_runs(limit=-1):
                pass

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_kv_put_get_cas_txn_watch_and_leases(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        kv = make().kv
        p = f"kv-{flavor}-{uuid.uuid4().hex[:8]}/"
        r1 = await kv.put(p + "a", {"n": 1})
        entry = await kv.get(p + "a")
        assert entry.value == {"n": 1} and entry.mod_revision == r1
        assert await kv.get(p + "missing") is None
        assert not await kv.cas(p + "a", r1 - 1, "no")
        assert await kv.cas(p + "a", r1, "yes")
        assert await kv.cas(p + "new", 0, "created")
        res = await kv.txn([(p + "a", "value", "=", "yes")], [("put", p + "b", 2), ("get", p + "a")], [])
        assert res.succeeded and res.results[1]["entry"]["value"] == "yes"
        assert [e.key for e in await kv.list(p)] == [p + "a", p + "b", p + "new"]
        seen = []
        async for ev in kv.watch(prefix=p, from_revision=r1, timeout_s=20):
            seen.append((ev.kind, ev.key))
            if len(seen) == 3:
                break
        assert seen == [("put", p + "a"), ("put", p + "new"), ("put", p + "b")]
        # a watch that ends at its timeout, quietly
        assert [ev async for ev in kv.watch(p + "quiet", timeout_s=1.0)] == []
        lease = await kv.lease_grant(30)
        await kv.put(p + "leased", 1, lease=lease)
        await kv.lease_keep_alive(lease)
        assert await kv.lease_revoke(lease) == [p + "leased"]
        assert await kv.get(p + "leased") is None
        assert await kv.delete(p + "b") and not await kv.delete(p + "b")

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_a_lock_excludes_a_second_holder_until_its_block_ends(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        a, b = make(), make()
        name = f"lock-{flavor}-{uuid.uuid4().hex[:8]}"
        async with a.lock(name, ttl_s=1.0) as lease:
            assert lease.token > 0 and lease.handle
            with pytest.raises(DeadlineExceeded):
                async with b.lock(name, wait_s=0.3):
                    pytest.fail("a second holder got an exclusive lock")
            await asyncio.sleep(2.5)  # held past its TTL (what is tested): the keepalive renews it
            (row,) = [lk for lk in await b.locks.list(name) if lk["name"] == name]
            assert [h["owner"] for h in row["holders"]] == [lease.owner]
            assert not lease.lost.is_set()
            await a.kv.put(f"{name}/fenced", 1, fence=lease.fence())
        assert not [h for lk in await b.locks.list(name) for h in lk["holders"]]
        async with b.lock(name, wait_s=5) as second:
            assert second.token > lease.token
        # the raw API: acquire, keep alive, release by the remembered lease handle
        granted, token, _ = await b.locks.acquire(name, owner="raw", wait_s=5)
        assert granted and b.locks.lease_of("raw", token)
        assert await b.locks.keep_alive("raw", name, token) > 0
        await b.locks.release("raw", name, token)

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_messages_send_request_publish_subscribe(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        m = make().messages
        key = f"tally/{flavor}-{uuid.uuid4().hex[:8]}"
        sent = await m.send(key, {"seq": 1})
        assert sent.id
        durable = await m.send(key, {"seq": 2}, durable=True, id="fixed-" + key[-8:])
        assert durable.seq > 0
        assert (await m.send(key, {"seq": 2}, durable=True, id="fixed-" + key[-8:])).seq == durable.seq

        async def counted() -> bool:
            reply = await m.request(key, {"get": True}, timeout_s=20)
            return bool(reply.payload["state"].get("n") == 2)

        await eventually(counted, what="both messages handled, the durable one once")
        assert any(a.address == key for a in await m.activations(prefix="tally/"))
        assert isinstance(await m.dead_letters(), list)
        topic = f"news-{flavor}-{uuid.uuid4().hex[:8]}"
        async with m.subscribe(topic) as sub:
            got = asyncio.ensure_future(anext(aiter(sub)))
            end = time.monotonic() + 30
            while not got.done():
                assert time.monotonic() < end, "the subscription received no publish"
                await m.publish(topic, {"hello": flavor})
                await asyncio.wait({got}, timeout=0.3)
            assert got.result().payload == {"hello": flavor} and got.result().topic == topic
            # close() from elsewhere ends an iteration that is waiting for the next publish
            rest = asyncio.ensure_future(anext(aiter(sub), None))
            await asyncio.wait({rest}, timeout=0.3)  # it is reading meanwhile
            sub.close()
            async with asyncio.timeout(20):
                assert await rest is None

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_approvals_pause_resume_and_cancel(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        c = make()
        run_id = await c.submit(one("gated", approval={"prompt": "ship?"}))

        async def gate() -> Any:
            return [a for a in await c.approvals(run_id) if a.task_id == "t"]

        (open_gate,) = await eventually(gate, what="the approval gate")
        assert open_gate.prompt == "ship?"
        paused = await c.pause(run_id)
        assert paused.status == "PAUSED" and paused.changed
        assert not (await c.pause(run_id)).changed
        resumed = await c.resume(run_id)
        assert resumed.status == "RUNNING" and resumed.changed
        decision = await c.approve(run_id, "t", comment="fine", by="tester")
        assert decision.applied and decision.by == "tester" and decision.decision == "approved"
        assert (await c.wait(run_id, timeout_s=30)).status == "SUCCEEDED"
        rerun = await c.rerun(run_id, "t")
        assert rerun.reopened
        assert await c.cancel(run_id) == "CANCELLED"
        other = await c.submit(one("cancelled", "sleep", {"seconds": 30}))
        assert await c.cancel(other, "test") == "CANCELLED"

    run_both(flavor, scenario, mesh.addresses)


@pytest.mark.e2e
def test_errors_are_the_same_raftmesh_errors(mesh: LocalCluster, flavor: str) -> None:
    async def scenario(make: Callable[..., Any]) -> None:
        c = make(retry_deadline_s=1.0)
        with pytest.raises(NotFound):
            await c.get("no-such-run")
        with pytest.raises(NotFound, match="no-such-run"):
            await c.audit("no-such-run")
        with pytest.raises(InvalidArgument, match="trace_id"):
            await c.submit(one("bad"), trace_id="nope")
        with pytest.raises(InvalidArgument, match="JSON"):
            await c.kv.put("k", {1, 2})
        with pytest.raises(InvalidArgument, match="timeout_s"):
            await c.messages.request("tally/x", {}, timeout_s=0)
        done = await c.run(one("done"), timeout_s=30)
        with pytest.raises(FailedPrecondition, match="no approval gate"):
            await c.approve(done.run_id, "t")
        with pytest.raises(Unavailable):
            await c.status_of("127.0.0.1:1", timeout_s=1.0)

    run_both(flavor, scenario, mesh.addresses)


def _node_at(cluster: LocalCluster, addr: str) -> str:
    return next(i for i, n in cluster.nodes.items() if n.grpc == addr)


def _revive(cluster: LocalCluster, node_id: str) -> None:
    cluster.start_node(node_id)
    cluster.wait_ready()
    end = time.monotonic() + 60
    while not cluster.serving(node_id):
        assert time.monotonic() < end, f"{node_id} did not come back"
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_watch_fails_over_when_its_node_is_killed(mesh: LocalCluster, flavor: str) -> None:
    killed: list[str] = []

    async def scenario(make: Callable[..., Any]) -> None:
        c = make()
        run_id = await c.submit(one("failover-watch", "sleep", {"seconds": 4}))
        events = c.watch(run_id, timeout_s=90)
        first = await anext(events)
        assert first.kind == "snapshot"
        on = raw(c)._last_watch_addr
        killed.append(_node_at(mesh, on))
        await asyncio.to_thread(mesh.kill, killed[0])
        rest = [e async for e in events]
        assert rest and rest[-1].status == "SUCCEEDED"
        assert any(e.kind == "snapshot" for e in rest)  # a reconnection starts with a snapshot
        assert raw(c)._last_watch_addr != on

    try:
        run_both(flavor, scenario, mesh.addresses)
    finally:
        for node_id in killed:
            _revive(mesh, node_id)


@pytest.mark.e2e
def test_a_submit_in_flight_when_its_node_dies_fails_over_and_is_not_duplicated(
    mesh: LocalCluster, flavor: str
) -> None:
    killed: list[str] = []

    async def scenario(make: Callable[..., Any]) -> None:
        c = make(timeout_s=3.0)
        await c.status()  # the channel to the current node is open
        on = raw(c).addresses[raw(c)._current]
        killed.append(_node_at(mesh, on))
        await asyncio.to_thread(mesh.pause, killed[0])  # it takes the request and never answers
        key = f"failover-{uuid.uuid4().hex}"
        submit = asyncio.ensure_future(c.submit(one("failover-submit"), idempotency_key=key))
        await asyncio.wait({submit}, timeout=1.0)  # its request is sent to the paused node meanwhile
        await asyncio.to_thread(mesh.kill, killed[0])
        run_id = await submit
        assert raw(c).addresses[raw(c)._current] != on
        assert await c.submit(one("failover-submit"), idempotency_key=key) == run_id
        assert [r["run_id"] for r in await c.list_runs(limit=1000) if r["idempotency_key"] == key] == [run_id]
        assert (await c.wait(run_id, timeout_s=60)).status == "SUCCEEDED"

    try:
        run_both(flavor, scenario, mesh.addresses)
    finally:
        for node_id in killed:
            _revive(mesh, node_id)


PAUSED_NODE_BUDGET_S = 3.5
"""How long a call may take when the node it goes to is frozen (SIGSTOP: its kernel still accepts
and keeps connections, nothing answers); ~0.6 s (a new connection) to ~1.6 s (an open one), and
the call's whole deadline (10 s) before ``channel_options``."""


@pytest.mark.e2e
def test_a_paused_node_costs_a_call_about_a_second_not_its_deadline(mesh: LocalCluster, flavor: str) -> None:
    """A follower is SIGSTOPped under a client connected to it and a client about to connect to it:
    each call fails over to another node within ``PAUSED_NODE_BUDGET_S`` (keepalive pings, the
    connect timeout), not after its 10 s deadline; a long ``wait`` on a live node is not cut short."""
    paused: list[str] = []

    async def scenario(make: Callable[..., Any]) -> None:
        leader = await asyncio.to_thread(mesh.wait_ready)
        victim = next(i for i in mesh.nodes if i != leader)
        at = mesh.addresses.index(mesh.nodes[victim].grpc)
        key = f"paused-{uuid.uuid4().hex}"
        connected = make(timeout_s=10.0)
        raw(connected)._current = at
        await connected.kv.put(key, 0)  # its connection to the victim is open
        assert raw(connected)._current == at
        fresh = make(timeout_s=10.0)
        raw(fresh)._current = at
        # a connection of its own, not one shared with ``connected`` (grpc shares subchannels)
        opts = getattr(raw(fresh), "channel_options", [])
        raw(fresh).channel_options = [*opts, ("grpc.use_local_subchannel_pool", 1)]
        long = make(timeout_s=10.0)
        raw(long)._current = (at + 1) % len(mesh.addresses)
        run_id = await long.submit(one("paused-long", "sleep", {"seconds": 4}))
        waiting = asyncio.ensure_future(long.wait(run_id, timeout_s=60))

        await asyncio.to_thread(mesh.pause, victim)
        paused.append(victim)
        t0 = time.monotonic()
        assert await connected.kv.put(key, 1) > 0
        t_put = time.monotonic() - t0
        t0 = time.monotonic()
        got = await fresh.kv.get(key)
        t_get = time.monotonic() - t0
        assert got is not None and got.value == 1
        assert t_put < PAUSED_NODE_BUDGET_S and t_get < PAUSED_NODE_BUDGET_S, (t_put, t_get)
        assert raw(connected)._current != at and raw(fresh)._current != at
        # the long wait on a live node, across the pings, ends with its run, not a reconnection
        assert (await waiting).status == "SUCCEEDED"
        assert raw(long)._current == (at + 1) % len(mesh.addresses)

    try:
        run_both(flavor, scenario, mesh.addresses)
    finally:
        for node_id in paused:
            mesh.resume(node_id)
            mesh.wait_ready()


# ---- TLS and tokens ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, certs.Issued, dict[str, str]]]:
    base = tmp_path_factory.mktemp("aio-secure")
    issued = certs.init(str(base / "tls"), ["n1"])
    path = str(base / "tokens.yaml")
    tokens = {
        who: add_token(path, who, role, None)[1] for who, role in (("admin", "admin"), ("reader", "reader"))
    }
    creds = Credentials(token=tokens["admin"], ca=issued.ca, cert=issued.client[0], key=issued.client[1])
    c = LocalCluster(1, base_dir=str(base / "cluster"), extra_args=["--tokens-file", path], credentials=creds)
    cert, key = issued.nodes["n1"]
    c.nodes["n1"].argv += [
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        issued.ca,
        "--tls-client-auth",
        "require",
    ]
    try:
        c.start()
        yield c, issued, tokens
    finally:
        c.close()


@pytest.mark.e2e
def test_tls_mutual_auth_tokens_and_the_trace_reach_the_node(
    secure: tuple[LocalCluster, certs.Issued, dict[str, str]], flavor: str
) -> None:
    cluster, issued, tokens = secure
    tls = {"ca": issued.ca, "cert": issued.client[0], "key": issued.client[1]}

    async def scenario(make: Callable[..., Any]) -> None:
        admin = make(token=tokens["admin"], **tls)
        trace = uuid.uuid4().hex
        done = await admin.run(one("secure"), timeout_s=30, trace_id=trace)
        assert done.status == "SUCCEEDED" and done.trace_id == trace
        assert (await admin.kv.put("secure/k", 1)) > 0
        reader = make(token=tokens["reader"], **tls)
        assert (await reader.get(done.run_id)).status == "SUCCEEDED"
        with pytest.raises(PermissionDenied):
            await reader.submit(one("nope"))
        with pytest.raises(Unauthenticated):
            await make(token="rmt_not-a-token", **tls).status()
        with pytest.raises(Unavailable):  # plaintext to a TLS node
            await make(token=tokens["admin"], retry_deadline_s=0.5, timeout_s=2.0).status()

    run_both(flavor, scenario, cluster.addresses)
