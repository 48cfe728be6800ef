"""Real network partitions: one Linux network namespace per node, nftables drop rules.

Layout of a lab for nodes ``n1..nN`` (``<run>`` is ``<prefix>-<pid>-<token>``)::

    root ns (the test host)          <run>.hub                     <run>-n1 ... <run>-nN
    rm<pid>x<token> 10.213.X.1 --veth-- host0 \\
                                           br0 (bridge, no address)
                                     p0 ---/  \\--- pN-1 --veth-- eth0 10.213.X.(10+i)

* Addresses come from one private /24 that exists only inside the lab: node
  namespaces have no default route, the hub has no address and does not route, so
  node traffic can reach only the other nodes and the host. ``X`` is derived from the
  pid and bumped past any /24 already routed in the root namespace.
* The host (root namespace) gets one veth on the bridge so tests and clients can reach
  every node at ``ip_of(node)``; partitions never list the host's address, so client
  traffic keeps flowing while nodes are cut from each other.
* A partition is an nftables table ``inet raftmesh_chaos`` in each node namespace
  whose input and output chains drop packets from and to unreachable peers. Packets
  are dropped, not rejected: connects time out and established TCP connections stall
  and resume after ``heal()``, like a real network fault. ARP is unaffected. Lab
  links carry IPv4 only (no IPv6 link-local addresses), so nothing can route around
  the rules.
* Everything created is removed by ``cleanup()``: on ``with`` exit (also on
  exceptions), on SIGINT/SIGTERM (the previous handlers are restored and then run) and
  at interpreter exit. ``cleanup_stale()`` removes what a killed run left behind.

Processes launched with ``exec_prefix(node)`` are the caller's to stop. Deleting a
namespace whose processes still run leaves them with loopback only (the hub, and with
it every veth pair, is gone).

The reachability helpers (``resolve_reachability``, ``groups_reachability``,
``bridge``, ``majorities_ring``) are pure and shared with the userspace proxy mode.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, TypeAlias

from raftmesh.errors import FailedPrecondition, Internal, InvalidArgument

__all__ = [
    "NetnsError",
    "NetnsLab",
    "NetnsUnsupported",
    "Reachability",
    "bridge",
    "cleanup_stale",
    "groups_reachability",
    "is_supported",
    "majorities_ring",
    "resolve_reachability",
]

NFT_TABLE = "raftmesh_chaos"
DEFAULT_PREFIX = "rm"
SUBNET_BASE = "10.213"
HOST_HOST_OCTET = 1
NODE_FIRST_OCTET = 10
NODES_MAX = 200
COMMAND_TIMEOUT_S = 30.0
LINK_UP_TIMEOUT_S = 10.0

_NODE_NAME = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,4}$")
# <prefix>-<pid>-<token> then "-<node>" or ".hub" / ".probe"
_RUN_NAME = re.compile(r"^(?P<prefix>[a-z][a-z0-9]{0,4})-(?P<pid>\d+)-(?P<token>[0-9a-f]{4})[.-]")
_HOST_ALIAS = re.compile(r"^(?P<prefix>[a-z][a-z0-9]{0,4})-(?P<pid>\d+)-(?P<token>[0-9a-f]{4})$")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")

# Either undirected pairs that may talk (both directions), or a directed adjacency
# ``src -> peers src may send to``. A node always reaches itself and the host.
Reachability: TypeAlias = Collection[frozenset[str]] | Mapping[str, Collection[str]]


class NetnsError(Internal):
    """A namespace, link or nftables command failed; the message carries its stderr."""


class NetnsUnsupported(FailedPrecondition):
    """This machine cannot run a netns lab (not root, ``ip``/``nft`` missing, ...)."""


# --- pure reachability helpers ---------------------------------------------------------


def resolve_reachability(nodes: Collection[str], allowed: Reachability) -> dict[str, frozenset[str]]:
    """Normalise ``allowed`` to ``src -> peers src may send to`` (self excluded).

    With undirected pairs, a pair lets both ends talk. With an adjacency mapping,
    ``b in allowed[a]`` lets ``a`` send to ``b`` only; a node missing from the
    mapping may send to nobody.
    """
    known = set(nodes)
    out: dict[str, set[str]] = {n: set() for n in known}
    if isinstance(allowed, Mapping):
        for src, dsts in allowed.items():
            _check_known(known, [src, *dsts])
            out[src].update(d for d in dsts if d != src)
    else:
        for pair in allowed:
            if len(pair) != 2:
                raise InvalidArgument(f"a reachability pair needs two distinct nodes, got {sorted(pair)}")
            _check_known(known, pair)
            a, b = sorted(pair)
            out[a].add(b)
            out[b].add(a)
    return {n: frozenset(peers) for n, peers in out.items()}


def groups_reachability(
    nodes: Collection[str], groups: Sequence[Collection[str]]
) -> frozenset[frozenset[str]]:
    """Pairs that may talk when ``groups`` are split apart.

    Nodes not named in any group form one more group together, so
    ``[{"n1"}]`` isolates n1 from the rest. A node may appear in one group only.
    """
    known = set(nodes)
    seen: set[str] = set()
    parts: list[set[str]] = []
    for group in groups:
        members = set(group)
        _check_known(known, members)
        if members & seen:
            raise InvalidArgument(f"nodes {sorted(members & seen)} appear in more than one group")
        seen |= members
        parts.append(members)
    if known - seen:
        parts.append(known - seen)
    return frozenset(frozenset((a, b)) for part in parts for a in part for b in part if a < b)


def bridge(left: Collection[str], right: Collection[str], via: str) -> frozenset[frozenset[str]]:
    """Two sides that cannot see each other, and one node ``via`` that sees both."""
    if via in left or via in right or set(left) & set(right):
        raise InvalidArgument("bridge sides must be disjoint and must not contain the bridge node")
    pairs: set[frozenset[str]] = set()
    for side in (set(left) | {via}, set(right) | {via}):
        pairs |= {frozenset((a, b)) for a in side for b in side if a < b}
    return frozenset(pairs)


def majorities_ring(nodes: Sequence[str]) -> frozenset[frozenset[str]]:
    """Every node sees a majority, but no two nodes see the same majority.

    Nodes sit on a ring in the given order and each one reaches its ``k`` nearest
    neighbours on both sides, the smallest ``k`` that makes a majority (for 5 nodes:
    itself and its two neighbours). Needs at least 5 nodes; with fewer every majority
    is the whole cluster.
    """
    n = len(nodes)
    if n < 5 or len(set(nodes)) != n:
        raise InvalidArgument(f"majorities_ring needs at least 5 distinct nodes, got {list(nodes)}")
    k = -(-(n // 2) // 2)  # ceil(others needed / 2): 2k + 1 >= n // 2 + 1
    return frozenset(frozenset((nodes[i], nodes[(i + d) % n])) for i in range(n) for d in range(1, k + 1))


def _check_known(known: set[str], names: Collection[str]) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidArgument(f"unknown nodes {unknown}; the lab has {sorted(known)}")


# --- commands ----------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    return shutil.which(name, path=path)


def _need_tool(name: str) -> str:
    found = _tool(name)
    if found is None:
        raise NetnsUnsupported(f"`{name}` not found; install it (apt-get install -y iproute2 nftables)")
    return found


def _run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        raise NetnsError(f"`{' '.join(argv)}` failed with exit {exc.returncode}: {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(argv)}` did not finish within {COMMAND_TIMEOUT_S} s") from exc


def _list_netns(ip: str) -> list[str]:
    out = _run([ip, "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_supported() -> tuple[bool, str]:
    """Whether a lab can run here, and why not: root, ``ip``, ``nft``, a creatable netns."""
    if os.geteuid() != 0:
        return False, "network namespaces need root (euid 0)"
    ip, nft = _tool("ip"), _tool("nft")
    if ip is None:
        return False, "`ip` (iproute2) not found"
    if nft is None:
        return False, "`nft` (nftables) not found"
    probe = f"{DEFAULT_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}.probe"
    try:
        _run([ip, "netns", "add", probe])
    except NetnsError as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _run([ip, "netns", "exec", probe, nft, "list", "ruleset"])
        _run([ip, "-n", probe, "link", "add", "br0", "type", "bridge"])
    except NetnsError as exc:
        return False, f"nftables or bridges do not work inside a namespace: {exc}"
    finally:
        _run([ip, "netns", "del", probe], check=False)
    return True, "ok"


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, include_live: bool = False) -> list[str]:
    """Delete namespaces and host veths left by earlier labs whose process is gone.

    ``prefix`` may be a lab prefix (``"rm"``) or a whole run name
    (``"rm-1234-ab12"``). Leftovers of a process that is still alive are kept unless
    ``include_live``. Returns the names removed.
    """
    ip = _need_tool("ip")

    def stale(match: re.Match[str] | None, name: str) -> bool:
        if match is None or not name.startswith(prefix):
            return False
        return include_live or not _pid_alive(int(match["pid"]))

    removed: list[str] = []
    for name in _list_netns(ip):
        if stale(_RUN_NAME.match(name), name):
            _run([ip, "netns", "del", name], check=False)
            removed.append(name)
    for link in json.loads(_run([ip, "-j", "link", "show"]).stdout or "[]"):
        alias = str(link.get("ifalias", ""))
        if stale(_HOST_ALIAS.match(alias), alias):
            _run([ip, "link", "del", str(link["ifname"])], check=False)
            removed.append(str(link["ifname"]))
    return removed


# --- the lab ---------------------------------------------------------------------------------


class NetnsLab:
    """One network namespace per node on a private bridge, with nftables partitions.

    Use as a context manager (``with NetnsLab(["n1", "n2", "n3"]) as lab:``) or call
    ``start()`` and ``cleanup()``. Not thread-safe: drive it from one thread.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        subnet_octet: int | None = None,
    ) -> None:
        """``subnet_octet`` forces the lab onto ``10.213.<octet>.0/24``; by default it is
        derived from the pid and moved past any /24 already routed on the host."""
        if not nodes or len(nodes) > NODES_MAX or len(set(nodes)) != len(nodes):
            raise InvalidArgument(f"a lab needs 1..{NODES_MAX} distinct node names, got {list(nodes)}")
        for node in nodes:
            if not _NODE_NAME.match(node):
                raise InvalidArgument(f"node name {node!r} must match {_NODE_NAME.pattern}")
        if not _PREFIX.match(prefix):
            raise InvalidArgument(f"prefix {prefix!r} must match {_PREFIX.pattern}")
        if subnet_octet is not None and not 0 <= subnet_octet <= 255:
            raise InvalidArgument(f"subnet_octet must be 0..255, got {subnet_octet}")
        self.nodes: tuple[str, ...] = tuple(nodes)
        self.run_name = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.hub_namespace = f"{self.run_name}.hub"
        # Root-namespace interface names are global and limited to 15 characters:
        # prefix (<= 5) + pid in hex (<= 6) + token (4).
        self.host_interface = f"{prefix}{os.getpid():x}{self.run_name[-4:]}"
        self._subnet_octet = subnet_octet
        self._subnet: ipaddress.IPv4Network | None = None
        self._ip = ""
        self._nft = ""
        self._created: list[str] = []  # namespaces, in creation order
        self._host_link = False
        self._allowed: dict[str, frozenset[str]] = {}
        self._prev_handlers: dict[int, Any] = {}
        self._cleaning = False
        self._deferred_signal: tuple[int, FrameType | None, Any] | None = None
        self._started = False

    # -- lifecycle --

    def __enter__(self) -> NetnsLab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def start(self) -> NetnsLab:
        """Create namespaces, bridge, veths and addresses; on any failure undo it all."""
        if self._started:
            raise FailedPrecondition(f"lab {self.run_name} was already started")
        if os.geteuid() != 0:
            raise NetnsUnsupported("network namespaces need root (euid 0)")
        self._ip, self._nft = _need_tool("ip"), _need_tool("nft")
        self._started = True
        atexit.register(self.cleanup)
        self._install_signal_handlers()
        try:
            with _allocation_lock():
                self._subnet = self._pick_subnet()
                self._build()
            self._wait_links_up()
        except BaseException:
            self.cleanup()
            raise
        self._allowed = {n: frozenset(self.nodes) - {n} for n in self.nodes}
        return self

    def cleanup(self) -> None:
        """Delete everything this lab created. Idempotent; safe from signal handlers."""
        if self._cleaning:
            return
        self._cleaning = True
        failures: list[str] = []
        try:
            if self._host_link:
                # Deleting one end of a veth deletes the pair.
                self._run_quiet([self._ip, "link", "del", self.host_interface], failures)
                self._host_link = False
            while self._created:
                self._run_quiet([self._ip, "netns", "del", self._created[-1]], failures)
                self._created.pop()
        finally:
            self._restore_signal_handlers()
            atexit.unregister(self.cleanup)
            self._started = False
            self._cleaning = False
        if failures:
            # Reported, not raised: this runs from atexit and signal handlers too.
            print(f"raftmesh.chaos.netns: cleanup of {self.run_name}: {'; '.join(failures)}", file=sys.stderr)
        deferred, self._deferred_signal = self._deferred_signal, None
        if deferred is not None:
            _chain_handler(*deferred)

    def _run_quiet(self, argv: list[str], failures: list[str]) -> None:
        result = _run(argv, check=False)
        gone = "No such" in result.stderr or "Cannot find" in result.stderr
        if result.returncode != 0 and not gone:
            failures.append(f"`{' '.join(argv)}`: {result.stderr.strip()}")

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        if self._subnet_octet is not None:
            candidates = [self._subnet_octet]
        else:
            start = os.getpid() % 250 + 1
            candidates = [(start + i - 1) % 250 + 1 for i in range(250)]
        used = self._routed_networks()
        for octet in candidates:
            net = ipaddress.IPv4Network(f"{SUBNET_BASE}.{octet}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
        raise NetnsError(f"no free {SUBNET_BASE}.X.0/24 on this host (tried {len(candidates)})")

    def _routed_networks(self) -> list[ipaddress.IPv4Network]:
        nets: list[ipaddress.IPv4Network] = []
        for route in json.loads(_run([self._ip, "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
            dst = str(route.get("dst", "default"))
            if dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.IPv4Network(dst, strict=False))
        for link in json.loads(_run([self._ip, "-j", "-4", "addr", "show"]).stdout or "[]"):
            for addr in link.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
        return nets

    def _add_netns(self, ns: str) -> None:
        _run([self._ip, "netns", "add", ns])
        self._created.append(ns)
        _run([self._ip, "-n", ns, "link", "set", "lo", "up"])

    def _build(self) -> None:
        ip, hub = self._ip, self.hub_namespace
        self._add_netns(hub)
        _run([ip, "-n", hub, "link", "add", "br0", "type", "bridge", "stp_state", "0"])
        self._up(hub, "br0")
        for i, node in enumerate(self.nodes):
            ns = self.namespace(node)
            self._add_netns(ns)
            port = f"p{i}"
            _run([ip, "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run([ip, "-n", hub, "link", "set", port, "master", "br0"])
            self._up(hub, port)
            _run([ip, "-n", ns, "addr", "add", f"{self.ip_of(node)}/24", "dev", "eth0"])
            self._up(ns, "eth0")
        _run([ip, "link", "add", self.host_interface, "type", "veth", "peer", "name", "host0", "netns", hub])
        self._host_link = True
        _run([ip, "link", "set", self.host_interface, "alias", self.run_name])
        _run([ip, "-n", hub, "link", "set", "host0", "master", "br0"])
        self._up(hub, "host0")
        _run([ip, "addr", "add", f"{self.host_ip}/24", "dev", self.host_interface])
        self._up("", self.host_interface)

    def _up(self, ns: str, dev: str) -> None:
        """Bring a lab link up, IPv4 only: partitions filter the lab's IPv4 addresses, so no
        IPv6 link-local address may give nodes (or the host) a way around them."""
        where = ["-n", ns] if ns else []
        if os.path.isdir("/proc/sys/net/ipv6"):
            _run([self._ip, *where, "link", "set", "dev", dev, "addrgenmode", "none"])
        _run([self._ip, *where, "link", "set", "dev", dev, "up"])

    def _wait_links_up(self) -> None:
        deadline = time.monotonic() + LINK_UP_TIMEOUT_S
        pending = [(ns, "eth0") for ns in map(self.namespace, self.nodes)] + [("", self.host_interface)]
        while pending:
            ns, dev = pending[0]
            argv = [self._ip, *(["-n", ns] if ns else []), "-j", "link", "show", dev]
            info = json.loads(_run(argv).stdout or "[]")
            if info and "LOWER_UP" in info[0].get("flags", []):
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise NetnsError(f"link {dev} in {ns or 'root ns'} not up after {LINK_UP_TIMEOUT_S} s")
            else:
                time.sleep(0.02)

    # -- signals --

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Only the main thread may set handlers; atexit still covers us.
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if previous is None or previous == signal.SIG_IGN:
                # Set outside Python, or ignored on purpose: the process outlives the
                # signal, so must the lab.
                continue
            self._prev_handlers[sig] = previous
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._prev_handlers.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._prev_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._prev_handlers.get(signum, signal.SIG_DFL)
        if self._cleaning:
            # Interrupting cleanup would leak; finish it, then run the previous handler.
            self._deferred_signal = (signum, frame, previous)
            return
        self.cleanup()
        _chain_handler(signum, frame, previous)

    # -- addressing --

    @property
    def subnet(self) -> str:
        """The lab's /24, e.g. ``"10.213.42.0/24"``."""
        return str(self._require_subnet())

    @property
    def host_ip(self) -> str:
        """The root namespace's address on the lab bridge (never blocked)."""
        return str(self._require_subnet().network_address + HOST_HOST_OCTET)

    def ip_of(self, node: str) -> str:
        """The node's address; reachable from the host and from unblocked peers."""
        self._check_node(node)
        return str(self._require_subnet().network_address + NODE_FIRST_OCTET + self.nodes.index(node))

    def namespace(self, node: str) -> str:
        self._check_node(node)
        return f"{self.run_name}-{node}"

    def exec_prefix(self, node: str) -> list[str]:
        """Prepend to an argv to run it inside the node's namespace."""
        self._require_started()
        return [self._ip, "netns", "exec", self.namespace(node)]

    def pids(self, node: str) -> list[int]:
        """Pids of processes currently running in the node's namespace."""
        self._require_started()
        out = _run([self._ip, "netns", "pids", self.namespace(node)]).stdout
        return [int(p) for p in out.split()]

    # -- faults --

    def set_reachability(self, allowed: Reachability) -> None:
        """Let each node send only to the peers ``allowed`` lists; replaces any earlier rules.

        See ``resolve_reachability`` for the two accepted shapes. The host is never
        blocked. Applied per namespace with one atomic ``nft -f`` each.
        """
        self._require_started()
        resolved = resolve_reachability(self.nodes, allowed)
        for node in self.nodes:
            blocked_out = [p for p in self.nodes if p != node and p not in resolved[node]]
            blocked_in = [p for p in self.nodes if p != node and node not in resolved[p]]
            self._nft_apply(node, self._ruleset(blocked_in, blocked_out))
        self._allowed = resolved

    def partition(self, groups: Sequence[Collection[str]]) -> None:
        """Split the nodes into ``groups`` that cannot exchange packets (both directions).

        Unlisted nodes form one more group. Replaces any earlier partition.
        """
        self.set_reachability(groups_reachability(self.nodes, groups))

    def heal(self) -> None:
        """Remove every drop rule: full connectivity again."""
        self._require_started()
        for node in self.nodes:
            self._nft_apply(node, self._ruleset([], []))
        self._allowed = {n: frozenset(self.nodes) - {n} for n in self.nodes}

    def blocked_links(self) -> frozenset[tuple[str, str]]:
        """The directed ``(src, dst)`` links currently dropped."""
        return frozenset(
            (a, b) for a in self.nodes for b in self.nodes if a != b and b not in self._allowed.get(a, ())
        )

    def _ruleset(self, blocked_in: list[str], blocked_out: list[str]) -> str:
        # Declaring then deleting the table makes the script idempotent, and `nft -f`
        # applies it as one transaction, so there is no window with no rules.
        lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        if blocked_in or blocked_out:
            lines.append(f"table inet {NFT_TABLE} {{")
            for chain, hook, field, peers in (
                ("input", "input", "saddr", blocked_in),
                ("output", "output", "daddr", blocked_out),
            ):
                lines.append(f"  chain {chain} {{")
                lines.append(f"    type filter hook {hook} priority 0; policy accept;")
                if peers:
                    addrs = ", ".join(self.ip_of(p) for p in peers)
                    lines.append(f"    ip {field} {{ {addrs} }} drop")
                lines.append("  }")
            lines.append("}")
        return "\n".join(lines) + "\n"

    def _nft_apply(self, node: str, script: str) -> None:
        _run([*self.exec_prefix(node), self._nft, "-f", "-"], stdin=script)

    # -- checks --

    def _check_node(self, node: str) -> None:
        if node not in self.nodes:
            raise InvalidArgument(f"unknown node {node!r}; the lab has {list(self.nodes)}")

    def _require_started(self) -> None:
        if not self._started:
            raise FailedPrecondition(f"lab {self.run_name} is not running (start() it or use `with`)")

    def _require_subnet(self) -> ipaddress.IPv4Network:
        if self._subnet is None:
            raise FailedPrecondition(f"lab {self.run_name} has no subnet yet (start() it first)")
        return self._subnet


def _chain_handler(signum: int, frame: FrameType | None, previous: Any) -> None:
    """Do what the signal would have done without us."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialise subnet choice and host-link setup across concurrent labs on the host."""
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir()
    with open(os.path.join(lock_dir, "raftmesh-netns.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
