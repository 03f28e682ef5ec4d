"""
``lattice service ...``: the operator's view of the registry, through the running node's
admin surface.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

__all__ = ["add_service_commands", "format_listing"]

Request = Callable[[Any, str, str, object], tuple[int, object]]


def format_listing(state: dict[str, Any]) -> str:
    """The text ``lattice service list`` prints."""
    lines = [
        f"node {state.get('node_id') or '?'}  tags: {', '.join(state.get('tags') or []) or 'none'}"
    ]
    instances = state.get("instances") or []
    if not instances:
        lines.append("no services in the registry")
    for row in instances:
        running = row.get("state", "stopped")
        if row.get("pid"):
            running += f" pid {row['pid']}"
        if row.get("bound_port"):
            running += f" port {row['bound_port']}"
        if row.get("restarts"):
            running += f" restarts {row['restarts']}"
        lines.append(
            f"{row['store']}/{row['service']}: desired={'yes' if row.get('desired') else 'no'} "
            f"running={running} consent={row.get('consent')}"
        )
        lines.append(f"    why: {row.get('why')}")
        if row.get("last_exit"):
            lines.append(f"    last exit: {row['last_exit']}")
        for error in row.get("errors") or []:
            lines.append(f"    invalid configuration: {error}")
    descriptors = state.get("descriptors") or []
    lines.append("installed services: " + (", ".join(d["id"] for d in descriptors) or "none"))
    return "\n".join(lines)


def add_service_commands(
    commands: Any,
    load: Callable[[argparse.Namespace], Any],
    request: Request,
    error: type[Exception],
) -> None:
    """Add ``lattice service list|consent|port`` to an argparse subparsers object."""

    def call(
        args: argparse.Namespace, method: str, path: str, body: object = None
    ) -> dict[str, Any]:
        config = load(args)
        if not config.registry.enabled:
            raise error("[registry] enabled = false: this node runs no service registry")
        status, answer = request(config, method, path, body)
        if isinstance(answer, dict) and "error" in answer:
            raise error(str(answer["error"]))
        if status != 200 or not isinstance(answer, dict):
            raise error(f"unexpected answer from the node's admin surface (HTTP {status})")
        return answer

    def show(args: argparse.Namespace) -> int:
        state = call(args, "GET", "/services/")
        print(json.dumps(state, indent=2, sort_keys=True) if args.json else format_listing(state))
        return 0

    def consent(args: argparse.Namespace) -> int:
        answer = call(
            args,
            "POST",
            f"/services/consent/{quote(args.service, safe='')}",
            {"consent": args.mode},
        )
        print(f"{answer['service']}: consent {answer['consent']}")
        return 0

    def port(args: argparse.Namespace) -> int:
        value: int | None
        if args.port.lower() in ("none", "-", "default"):
            value = None
        elif args.port.isdigit() and int(args.port) <= 65535:
            value = int(args.port)
        else:
            raise error(f"port must be 0..65535 or 'none', got {args.port!r}")
        path = f"/services/port/{quote(args.store, safe='')}/{quote(args.service, safe='')}"
        answer = call(args, "POST", path, {"port": value})
        shown = "the registry's port" if answer["port"] is None else f"port {answer['port']}"
        print(f"{answer['store']}/{answer['service']}: {shown}")
        return 0

    service = commands.add_parser("service", help="registry-managed services: list, consent, ports")
    sub = service.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", help="show each service: desired, running, and why")
    listing.add_argument("--json", action="store_true", help="print the raw JSON state")
    listing.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    listing.set_defaults(handler=show)
    give = sub.add_parser("consent", help="set this node's consent for a service")
    give.add_argument("service", help="service id, e.g. lattice.irc-gateway")
    give.add_argument("mode", help="AlwaysAllow, Block, FollowMesh or Manual")
    give.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    give.set_defaults(handler=consent)
    override = sub.add_parser("port", help="override the port of one (store, service) locally")
    override.add_argument("service", help="service id")
    override.add_argument("port", help="port (0: dynamic), or 'none' to remove the override")
    override.add_argument("--store", default="local", help="store id (default: local)")
    override.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    override.set_defaults(handler=port)
