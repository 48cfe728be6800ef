"""``raftmesh tokens add|list``: the tokens file a node loads with ``--tokens-file``.

``add`` prints the new token once (only its SHA-256 is stored); ``list`` never shows secrets.
Both work on the file directly: an admin edits it and sends the nodes SIGHUP to reload.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..security.tokens import add_token, format_time, read_tokens_file


def cmd_tokens(args: argparse.Namespace) -> int:
    if args.tokens_cmd == "add":
        entry, token = add_token(args.file, args.subject, args.role, args.namespaces, args.expires)
        if args.json:
            out: dict[str, Any] = {
                "subject": entry.subject,
                "role": entry.role.label,
                "token": token,
                "namespaces": list(entry.namespaces),
            }
            if entry.expires_ms:
                out["expires"] = format_time(entry.expires_ms)
            print(json.dumps(out, indent=2))
        else:
            print(token)
        return 0
    entries = read_tokens_file(args.file)
    rows: list[dict[str, Any]] = [
        {
            "subject": e.subject,
            "role": e.role.label,
            "namespaces": list(e.namespaces),
            "expires": format_time(e.expires_ms) if e.expires_ms else None,
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps({"tokens": rows}, indent=2))
    else:
        for r in rows:
            exp = f" expires={r['expires']}" if r["expires"] else ""
            print(f"{r['subject']}  {r['role']:<9} namespaces={','.join(r['namespaces'])}{exp}")
    return 0


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("tokens", help="bearer tokens and roles (the file a node's --tokens-file names)")
    ts = t.add_subparsers(dest="tokens_cmd", required=True)
    a = ts.add_parser(
        "add", help="make a token, store its hash in FILE (made 0600 if missing), print it once"
    )
    a.add_argument("--file", required=True)
    a.add_argument("--subject", required=True, help="who the token is for (the principal is token:SUBJECT)")
    a.add_argument("--role", required=True, choices=["reader", "submitter", "operator", "admin"])
    a.add_argument(
        "--namespaces", default=None, help="comma-separated namespaces it may touch (default: all)"
    )
    a.add_argument("--expires", default=None, help="ISO-8601 time it stops working (default: never)")
    a.add_argument("--json", action="store_true")
    li = ts.add_parser("list", help="the tokens in FILE (subjects, roles, namespaces; no secrets)")
    li.add_argument("--file", required=True)
    li.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tokens)
