"""The messaging commands of the ``raftmesh`` CLI: send, request, publish, subscribe, actors and
``dead-letters --messages`` (README "Messages"; the contract's exit codes are ``main._run``'s:
2 bad input, 3 not found, 4 unavailable or deadline exceeded, 5 refused, e.g. a full mailbox)."""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from ..errors import DeadlineExceeded, InvalidArgument

EXIT_OK = 0


def _client(args: argparse.Namespace) -> Any:
    from .main import _client as make

    return make(args)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the payload must be JSON (quote a string: '\"hi\"'): {exc}") from None


def _sent(args: argparse.Namespace, sent: Any, what: str) -> int:
    out = {"id": sent.id, "seq": sent.seq, "targets": list(sent.targets)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        seq = f" seq={sent.seq}" if sent.seq else ""
        # targets are the actor subscribers (replicated subscriptions); a client stream
        # (`raftmesh subscribe`) gets a publish too but is not among them
        nobody = (
            "(no actor subscriber; client streams are not counted)"
            if what == "published"
            else "(no subscriber)"
        )
        print(f"{what} {sent.id}{seq} -> {', '.join(sent.targets) or nobody}")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    with _client(args) as c:
        sent = c.messages.send(
            args.target,
            _payload(args.payload),
            durable=args.durable,
            type=args.type,
            ttl_ms=args.ttl_ms,
            priority=args.priority,
            id=args.id,
        )
    return _sent(args, sent, "sent")


def cmd_publish(args: argparse.Namespace) -> int:
    with _client(args) as c:
        sent = c.messages.publish(
            args.topic, _payload(args.payload), durable=args.durable, source=args.source, type=args.type
        )
    return _sent(args, sent, "published")


def cmd_request(args: argparse.Namespace) -> int:
    from ..client._messages import message_json

    with _client(args) as c:
        reply = c.messages.request(
            args.target,
            _payload(args.payload),
            timeout_s=args.request_timeout,
            durable=args.durable,
            type=args.type,
        )
    if args.json:
        print(json.dumps(message_json(reply), indent=2))
    else:
        print(json.dumps(message_json(reply)["payload"]))
    return EXIT_OK


def cmd_subscribe(args: argparse.Namespace) -> int:
    """One line per message until ``--count`` messages or ``--wait-timeout`` (exit 4 if that passes
    before ``--count``) or the stream ends."""
    from ..client._messages import message_json

    if args.count is not None and args.count < 1:
        raise InvalidArgument("--count must be at least 1")
    got = 0
    with _client(args) as c, c.messages.subscribe(args.topic, from_start=args.from_start) as sub:
        timer = None
        timed_out = threading.Event()
        if args.wait_timeout is not None:

            def stop() -> None:
                timed_out.set()
                sub.close()

            timer = threading.Timer(args.wait_timeout, stop)
            timer.daemon = True
            timer.start()
        try:
            for m in sub:
                d = message_json(m)
                if args.json:
                    print(json.dumps(d), flush=True)
                else:
                    print(f"{m.sender} {m.type or '-'} {json.dumps(d['payload'])}", flush=True)
                got += 1
                if args.count is not None and got >= args.count:
                    break
        finally:
            if timer is not None:
                timer.cancel()
    if args.count is not None and got < args.count and timed_out.is_set():
        raise DeadlineExceeded(f"{got} of {args.count} messages within {args.wait_timeout:g} s")
    return EXIT_OK


def cmd_actors(args: argparse.Namespace) -> int:
    with _client(args) as c:
        acts = c.messages.activations(args.prefix, limit=args.limit)
    if args.json:
        print(json.dumps({"activations": [a.to_json() for a in acts]}, indent=2))
    else:
        for a in acts:
            print(f"{a.address:<32} node={a.node} epoch={a.epoch} queued={a.queued}")
    return EXIT_OK


def cmd_subscribe_actor(args: argparse.Namespace) -> int:
    with _client(args) as c:
        changed = c.messages.subscribe_actor(args.topic, args.subscriber, unsubscribe=args.unsubscribe)
    if args.json:
        print(json.dumps({"topic": args.topic, "subscriber": args.subscriber, "changed": changed}))
    else:
        verb = "unsubscribed from" if args.unsubscribe else "subscribed to"
        print(f"{args.subscriber} {verb} {args.topic}" + ("" if changed else " (already)"))
    return EXIT_OK


def print_dead_letters(args: argparse.Namespace) -> int:
    """``raftmesh dead-letters --messages``."""
    with _client(args) as c:
        dead = c.messages.dead_letters(limit=args.limit)
    if args.json:
        print(json.dumps({"dead_letters": [d.to_json() for d in dead]}, indent=2))
    else:
        for d in dead:
            m = d.message
            print(f"{m.id}  {m.sender} -> {m.target or 'topic ' + m.topic}  {d.reason}  node={d.node or '-'}")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("send", help="send a message to an actor TYPE/KEY (fast, or --durable)")
    s.add_argument("target", help="the actor address TYPE/KEY")
    s.add_argument("payload", help="a JSON value")
    s.add_argument("--durable", action="store_true", help="commit to the target's mailbox before returning")
    s.add_argument("--type", default="", help="the message type the handler dispatches on")
    s.add_argument("--ttl-ms", type=int, default=0, help="expire after this long (default 60000)")
    s.add_argument("--priority", type=int, default=0, help="-1000..1000, higher first")
    s.add_argument("--id", default=None, help="the message id (the same id sent again is one message)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_send)

    r = sub.add_parser("request", help="send a request to an actor and print its reply")
    r.add_argument("target")
    r.add_argument("payload", help="a JSON value")
    r.add_argument(
        "--timeout",
        dest="request_timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the reply (default 30; exit 4 when it passes)",
    )
    r.add_argument("--durable", action="store_true")
    r.add_argument("--type", default="")
    r.add_argument("--json", action="store_true", help="print the whole reply message")
    r.set_defaults(func=cmd_request)

    p = sub.add_parser("publish", help="publish to a topic's subscribers")
    p.add_argument("topic")
    p.add_argument("payload", help="a JSON value")
    p.add_argument("--durable", action="store_true", help="commit (and retain) before returning")
    p.add_argument("--source", default="", help="a type subscription delivers to TYPE/<source>")
    p.add_argument("--type", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)

    su = sub.add_parser("subscribe", help="print a topic's publishes as they come")
    su.add_argument("topic")
    su.add_argument("--from-start", action="store_true", help="the retained durable publishes first")
    su.add_argument("--count", type=int, default=None, help="stop after this many messages")
    su.add_argument("--wait-timeout", type=float, default=None, help="stop after this many seconds")
    su.add_argument("--json", action="store_true", help="one JSON object per line")
    su.set_defaults(func=cmd_subscribe)

    a = sub.add_parser("actors", help="current actor activations (node, epoch, queued) by address")
    a.add_argument("--prefix", default="", help="only addresses starting with this, e.g. TYPE/")
    a.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_actors)
    sa = sub.add_parser(
        "subscribe-actor",
        help="subscribe an actor type (TYPE: a publish reaches TYPE/<source>) or key to a topic",
    )
    sa.add_argument("topic")
    sa.add_argument("subscriber", help="TYPE or TYPE/KEY")
    sa.add_argument("--unsubscribe", action="store_true")
    sa.add_argument("--json", action="store_true")
    sa.set_defaults(func=cmd_subscribe_actor)
