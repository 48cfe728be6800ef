"""Network faults for chaos runs: real partitions (netns + nftables) and a userspace proxy.

``NetnsLab`` needs root and gives each node process its own network namespace, so
partitions drop real packets. ``ProxyMesh`` needs nothing special: every directed
node-to-node link goes through a ``TcpProxy`` that can cut, hold or delay it (the
only way to inject delay here, as this kernel has no ``tc netem``). See each module's
docstring for what the two modes can and cannot express.
"""

from .netns import (
    NetnsError,
    NetnsLab,
    NetnsUnsupported,
    Reachability,
    bridge,
    cleanup_stale,
    groups_reachability,
    is_supported,
    majorities_ring,
    resolve_reachability,
)
from .proxy import BlockMode, ProxyClosedError, ProxyMesh, ProxyStats, TcpProxy

__all__ = [
    "BlockMode",
    "NetnsError",
    "NetnsLab",
    "NetnsUnsupported",
    "ProxyClosedError",
    "ProxyMesh",
    "ProxyStats",
    "Reachability",
    "TcpProxy",
    "bridge",
    "cleanup_stale",
    "groups_reachability",
    "is_supported",
    "majorities_ring",
    "resolve_reachability",
]
