"""``raftmesh certs init DIR --nodes n1,n2,n3``: a development CA and certificates (``security.certs``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InvalidArgument


def _list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise InvalidArgument(f"{flag} must be a comma-separated list, e.g. {flag} a,b")
    return items


def cmd_certs_init(args: argparse.Namespace) -> int:
    from ..security import certs

    issued = certs.init(
        args.dir,
        _list(args.nodes, "--nodes"),
        hosts=_list(args.hosts, "--hosts"),
        days=args.days,
        force=args.force,
    )
    if args.json:
        print(json.dumps(issued.as_json(), indent=2))
    else:
        print(f"CA {issued.ca} (key {issued.ca_key}: keep it private)")
        for node, (cert, key) in issued.nodes.items():
            print(f"node {node}: --tls-cert {cert} --tls-key {key} --tls-ca {issued.ca}")
        print(f"client: --ca {issued.ca} --cert {issued.client[0]} --key {issued.client[1]}")
    return 0


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("certs", help="TLS certificates for a cluster (a development CA)")
    cs = c.add_subparsers(dest="certs_cmd", required=True)
    i = cs.add_parser(
        "init",
        help="write a CA, a certificate per node and a client certificate into DIR",
    )
    i.add_argument("dir", help="directory for ca.pem, ca-key.pem, NODE.pem, NODE-key.pem, client.pem, ...")
    i.add_argument("--nodes", required=True, help="node ids, comma-separated (each is its certificate's CN)")
    i.add_argument(
        "--hosts",
        default="127.0.0.1,localhost",
        help="host names / IPs every node certificate is valid for: the hosts of the nodes' gRPC "
        "addresses (default 127.0.0.1,localhost)",
    )
    i.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    i.add_argument("--force", action="store_true", help="replace existing files (a new CA)")
    i.add_argument("--json", action="store_true", help="print the paths as JSON")
    i.set_defaults(func=cmd_certs_init)
