"""
``lattice usb ...``: the operator's view of the USB proxy, through the
running node's admin surface.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

__all__ = ["add_usb_commands", "format_listing"]

Request = Callable[[Any, str, str, object], tuple[int, object]]


def _when(timestamp: object) -> str:
    if not isinstance(timestamp, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_listing(state: dict[str, Any]) -> str:
    """
    The text C{lattice usb list} prints for the admin surface's answer.
    """
    lines = [f"backend: {state.get('backend')}"]
    devices = state.get("devices") or []
    lines.append("devices:" if devices else "devices: none")
    for device in devices:
        holder = device.get("holder")
        if not device.get("exported"):
            use = "not exported"
        elif holder:
            use = (
                f"held by {holder['client']} (id {holder['id']}, {holder['address']}) "
                f"since {_when(holder.get('since'))}"
            )
        else:
            use = "free"
        line = (
            f"  {device['busid']:<8} {device['vid']}:{device['pid']}  "
            f"{device.get('description', '')}  [{use}]"
        )
        if device.get("allowed_clients"):
            line += f"  only for: {', '.join(device['allowed_clients'])}"
        lines.append(line)
    pending = state.get("pending") or []
    lines.append("pending approvals:" if pending else "pending approvals: none")
    for entry in pending:
        lines.append(
            f"  {entry['id']}  {entry['client']}  wants {entry['busid']}  "
            f"({entry['attempts']} attempt{'s' if entry['attempts'] != 1 else ''}, "
            f"last {_when(entry.get('last_seen'))})  -> lattice usb approve {entry['id']}"
        )
    if not state.get("require_approval", True):
        lines.append("approval: off (require_approval = false): every client is accepted")
    else:
        approved = state.get("approved") or []
        lines.append(f"approved clients: {', '.join(approved) if approved else 'none'}")
        denied = state.get("denied") or []
        if denied:
            lines.append(f"denied clients: {', '.join(denied)}")
    return "\n".join(lines)


def add_usb_commands(
    commands: Any,
    load: Callable[[argparse.Namespace], Any],
    request: Request,
    error: type[Exception],
) -> None:
    """
    Add C{lattice usb list|approve|deny|share|unshare} to an argparse subparsers object.
    """

    def call(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
        config = load(args)
        if not config.usb.enabled:
            raise error("[usb] enabled = false: this node runs no USB proxy")
        status, body = request(config, method, path, None)
        if status == 404 and isinstance(body, dict) and "error" in body:
            raise error(str(body["error"]))
        if status != 200 or not isinstance(body, dict):
            raise error(f"unexpected answer from the node's admin surface (HTTP {status})")
        return body

    def show(args: argparse.Namespace) -> int:
        state = call(args, "GET", "/usb/")
        if args.json:
            print(json.dumps(state, indent=2, sort_keys=True))
        else:
            print(format_listing(state))
        return 0

    def decide(verb: str) -> Callable[[argparse.Namespace], int]:
        def handler(args: argparse.Namespace) -> int:
            body = call(args, "POST", f"/usb/{verb}/{quote(args.id, safe='')}")
            print(f"{verb}d {body.get(verb + 'd')} (id {body.get('id')})")
            return 0

        return handler

    def share(verb: str) -> Callable[[argparse.Namespace], int]:
        def handler(args: argparse.Namespace) -> int:
            body = call(args, "POST", f"/usb/{verb}/{quote(args.busid, safe='')}")
            state = "exported" if body.get("exported") else "not exported"
            print(f"{args.busid}: {verb}d, now {state}", file=sys.stdout)
            return 0

        return handler

    usb = commands.add_parser("usb", help="the USB/IP proxy: devices, holders, approvals")
    usb_commands = usb.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    listing = usb_commands.add_parser(
        "list", help="show devices, who holds them, and pending approvals"
    )
    listing.add_argument("--json", action="store_true", help="print the raw JSON state")
    listing.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    listing.set_defaults(handler=show)
    for verb, text in (
        ("approve", "approve a pending client (its id, or a fingerprint or IP address)"),
        ("deny", "deny a client and disconnect it (its id, or a fingerprint or IP address)"),
    ):
        sub = usb_commands.add_parser(verb, help=text)
        sub.add_argument("id", help="approval id from `lattice usb list`, or the client identity")
        sub.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
        sub.set_defaults(handler=decide(verb))
    for verb, text in (
        ("share", "export a device by hand (with auto_share = false)"),
        ("unshare", "stop exporting a device shared by hand"),
    ):
        sub = usb_commands.add_parser(verb, help=text)
        sub.add_argument("busid", help="bus id from `lattice usb list`, e.g. 1-1.4")
        sub.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
        sub.set_defaults(handler=share(verb))
