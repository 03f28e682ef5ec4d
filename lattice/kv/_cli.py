"""
``lattice kv status``: the KV store's state, through the running node's admin surface.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["add_kv_commands", "format_status"]

Request = Callable[[Any, str, str, object], tuple[int, object]]


def format_status(state: dict[str, Any]) -> str:
    """The text ``lattice kv status`` prints."""
    return "\n".join(
        [
            f"listening:          {state.get('listening') or 'no'}",
            f"database:           {state.get('path')} ({state.get('db_size', 0)} bytes)",
            f"durability:         {state.get('durability')}",
            f"revision:           {state.get('revision')}",
            f"compacted revision: {state.get('compact_revision')}",
            f"keys:               {state.get('keys')}",
            f"leases:             {state.get('leases')}",
            f"watchers:           {state.get('watchers')}",
            f"auth enabled:       {'yes' if state.get('auth_enabled') else 'no'}",
        ]
    )


def add_kv_commands(
    commands: Any,
    load: Callable[[argparse.Namespace], Any],
    request: Request,
    error: type[Exception],
) -> None:
    """Add ``lattice kv status`` to an argparse subparsers object."""

    def status(args: argparse.Namespace) -> int:
        config = load(args)
        if not config.kv.enabled:
            raise error("[kv] enabled = false: this node runs no KV store")
        code, body = request(config, "GET", "/kv/status", None)
        if code != 200 or not isinstance(body, dict):
            raise error(f"unexpected answer from the node's admin surface (HTTP {code})")
        if args.json:
            print(json.dumps(body, indent=2, sort_keys=True))
        else:
            print(format_status(body))
        return 0

    kv = commands.add_parser("kv", help="the etcd-compatible KV store")
    kv_commands = kv.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    show = kv_commands.add_parser("status", help="revision, keys, leases, watchers, database")
    show.add_argument("--json", action="store_true", help="print the raw JSON")
    show.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    show.set_defaults(handler=status)
