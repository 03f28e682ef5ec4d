"""
The C{lattice} command: operator tools beside the daemon.

Each command reads the same configuration as the daemon (C{--config},
default C{etc/lattice.ini}, or C{$LATTICE_CONFIG}).  Errors are printed as
one clear line each, never as a traceback, and give exit status 1 (2 for
usage errors).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lattice._unixhttp import UnixHTTPConnection
from lattice.acme._cli import add_tls_commands
from lattice.config import ConfigError, LatticeConfig, load_config
from lattice.identity import (
    IdentityError,
    NodeIdentity,
    create_identity_file,
    load_identity,
    load_or_create_identity,
    successor_key_path,
)
from lattice.kv._cli import add_kv_commands
from lattice.registry._cli import add_service_commands
from lattice.usb._cli import add_usb_commands

__all__ = ["main"]

DEFAULT_CONFIG = "etc/lattice.ini"


class CommandError(Exception):
    """
    A command failed; the message is shown to the operator as is.
    """


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("LATTICE_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> LatticeConfig:
    try:
        return load_config(_config_path(args))
    except ConfigError as e:
        raise CommandError("\n".join(e.errors)) from None


def _config_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"{path}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _print_identity(identity: NodeIdentity) -> None:
    print(f"node_id: {identity.node_id}")
    print(f"fingerprint: {identity.fingerprint}")
    print(f"key_id: {identity.key_id}")
    print(f"source: {identity.source}")


def _identity_show(args: argparse.Namespace) -> int:
    try:
        if args.key:
            identity = load_identity(Path(args.key))
        else:
            config = _load(args)
            path = config.node.identity_key_path
            credentials = os.environ.get("CREDENTIALS_DIRECTORY")
            if (
                not (credentials and (Path(credentials) / "private_key").exists())
                and not path.exists()
                and not successor_key_path(config.node.state_dir).exists()
            ):
                raise CommandError(
                    f"{path}: no identity key yet; it is created when the node first "
                    f"starts, or by: lattice identity init --key {path}"
                )
            identity, _ = load_or_create_identity(path, state_dir=config.node.state_dir)
    except IdentityError as e:
        raise CommandError(str(e)) from None
    _print_identity(identity)
    if identity.warning:
        print(f"warning: {identity.warning}", file=sys.stderr)
    return 0


def _identity_init(args: argparse.Namespace) -> int:
    path = Path(args.key) if args.key else _load(args).node.identity_key_path
    try:
        if path.exists():
            identity = load_identity(path)
            print(f"{path}: exists, kept", file=sys.stderr)
        else:
            identity = create_identity_file(path)
            print(f"{path}: created", file=sys.stderr)
    except IdentityError as e:
        raise CommandError(str(e)) from None
    _print_identity(identity)
    return 0


def _identity_rotate(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.discovery.enabled:
        raise CommandError(
            "identity rotate: the running node rotates its key through discovery, which "
            "broadcasts the rotation, and [discovery] enabled = false; with no peers to tell, "
            "stop the node and replace the key file instead"
        )
    body = _identity_post(config, "rotate", {})
    print(f"node_id: {body.get('node_id')} (was {body.get('old_node_id')})")
    print(f"key_id: {body.get('new_key_id')} (was {body.get('old_key_id')})")
    print(f"fingerprint: {body.get('fingerprint')}")
    print(f"server_uuid: {body.get('server_uuid')} (unchanged)")
    if body.get("previous_key_path"):
        print(f"key file: {body.get('key_path')} (old key kept in {body.get('previous_key_path')})")
    else:
        print(f"key file: {body.get('key_path')} (old key: {body.get('old_key_source')})")
    if body.get("warning"):
        print(f"warning: {body.get('warning')}", file=sys.stderr)
    print(f"rotation sent to {body.get('broadcast_to')} of {body.get('peers')} peers")
    return 0


def _identity_post(config: LatticeConfig, action: str, request: dict[str, Any]) -> dict[str, Any]:
    """
    POST C{request} to the running node's C{/api/v1/identity/<action>}; its JSON answer.

    @raise CommandError: the node refused (with its error) or answered something else.
    """
    status, body = admin_request(config, "POST", f"/api/v1/identity/{action}", request)
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        raise CommandError(f"identity {action}: HTTP {status}: {error or body}")
    if not isinstance(body, dict):
        raise CommandError(f"identity {action}: unexpected answer (HTTP {status})")
    return body


def _identity_revoke(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.discovery.enabled:
        raise CommandError(
            "identity revoke: revocations are signed and sent to peers by discovery, and "
            "[discovery] enabled = false"
        )
    body = _identity_post(config, "revoke", {"key_id": args.key_id, "reason": args.reason})
    print(f"revoked: {body.get('key_id')} ({body.get('reason') or 'no reason given'})")
    print(f"signed by: {body.get('current_key_id')} (the current key)")
    print(f"server_uuid: {body.get('server_uuid')}")
    print(f"revocation sent to {body.get('broadcast_to')} of {body.get('peers')} peers")
    return 0


def telemetry_request(config: LatticeConfig, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """
    GET C{path} from the node's telemetry listener; returns status and body.
    """
    if not config.telemetry.enabled:
        raise CommandError("[telemetry] enabled = false: the node has no status endpoint")
    connection = _connect(config.telemetry.listen, timeout)
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise CommandError(
            f"cannot reach the node at [telemetry] listen = {config.telemetry.listen}: {e}"
        ) from None
    finally:
        connection.close()


def _connect(
    description: str, timeout: float, setting: str = "[telemetry] listen"
) -> http.client.HTTPConnection:
    kind, _, rest = description.partition(":")
    parts = rest.split(":")
    options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    if kind in ("tcp", "tcp6"):
        host = options.get("interface", "127.0.0.1")
        if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind is reached on loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return http.client.HTTPConnection(host, int(parts[0]), timeout=timeout)
    if kind == "unix":
        address = parts[0].removeprefix("address=")
        return UnixHTTPConnection(address, timeout=timeout)
    raise CommandError(
        f"{setting} = {description}: cannot connect to a {kind!r} endpoint from the CLI"
    )


def admin_request(
    config: LatticeConfig,
    method: str,
    path: str,
    body: object = None,
    timeout: float = 10.0,
) -> tuple[int, object]:
    """
    Call the running node's admin surface (C{[node] admin_listen}) with an
    optional JSON body; returns the HTTP status and the decoded JSON answer.
    """
    description = config.node.admin_endpoint
    connection = _connect(description, timeout, "[node] admin_listen")
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise CommandError(
            f"cannot reach the node's admin surface at {description}: {e} "
            "(is the node running, and may this user open its socket?)"
        ) from None
    finally:
        connection.close()
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        raise CommandError(f"unexpected answer from {path} (HTTP {status})") from None


def _status(args: argparse.Namespace) -> int:
    config = _load(args)
    status, body = telemetry_request(config, "/readyz")
    try:
        report = json.loads(body)
        subsystems = report["subsystems"]
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"unexpected answer from /readyz (HTTP {status})") from None
    ready = status == 200 and report.get("ready") is True
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"node {report.get('node_id') or '?'}: {'ready' if ready else 'NOT READY'}")
        for name, state in subsystems.items():
            mark = "ok " if state.get("ready") else "-- "
            print(f"  {mark}{name:<10} {state.get('detail', '')}")
    return 0 if ready else 1


def _discovery(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.discovery.enabled:
        raise CommandError("[discovery] enabled = false: discovery is not running")
    command = args.subcommand
    if command == "health":
        status, body = admin_request(config, "GET", "/health")
    elif command == "peers":
        query = "?include_blocked=true" if args.all else ""
        status, body = admin_request(config, "GET", "/api/v1/peers" + query)
    elif command == "announce":
        status, body = admin_request(config, "POST", "/api/v1/announce", {"force": args.force})
    elif command == "route":
        status, body = admin_request(config, "POST", f"/api/v1/route/{args.domain}", {})
    elif command == "send":
        message = {"to_address": args.to, "from_address": args.sender, "content": args.content}
        status, body = admin_request(config, "POST", "/api/v1/messages/send", message)
    else:
        status, body = admin_request(config, "POST", f"/api/v1/maintenance/{command}", {})
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        raise CommandError(f"{command}: HTTP {status}: {error or body}")
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """
    The argument parser of every C{lattice} subcommand.
    """
    parser = argparse.ArgumentParser(
        prog="lattice", description="Operator tools for a Lattice node."
    )
    parser.add_argument(
        "--config",
        "-c",
        help=f"INI configuration file (default: $LATTICE_CONFIG or {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser("check", help="validate the configuration file")
    check.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file to check")
    check.set_defaults(handler=_config_check)

    identity = commands.add_parser("identity", help="the node's Ed25519 identity")
    identity_commands = identity.add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    show = identity_commands.add_parser("show", help="print the node id and fingerprint")
    show.add_argument("--key", help="read this key file instead of the configured one")
    show.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    show.set_defaults(handler=_identity_show)
    init = identity_commands.add_parser(
        "init", help="create the identity key (0600) if it does not exist, and print it"
    )
    init.add_argument("--key", help="create this key file instead of the configured one")
    init.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    init.set_defaults(handler=_identity_init)
    rotate = identity_commands.add_parser(
        "rotate",
        help="give the running node a new key; the rotation, signed by the old key, "
        "is sent to its peers",
    )
    rotate.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    rotate.set_defaults(handler=_identity_rotate)
    revoke = identity_commands.add_parser(
        "revoke",
        help="revoke a rotated-out key of the running node; the revocation, signed by the "
        "current key, is sent to its peers, which refuse that key from then on",
    )
    revoke.add_argument("key_id", help="the old key id (ed25519:...), as printed by rotate")
    revoke.add_argument("--reason", default="", help="why (at most 200 characters)")
    revoke.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    revoke.set_defaults(handler=_identity_revoke)

    status = commands.add_parser("status", help="show readiness; exit 1 when not ready")
    status.add_argument("--json", action="store_true", help="print the raw /readyz document")
    status.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    status.set_defaults(handler=_status)

    discovery = commands.add_parser("discovery", help="federation: peers, gossip, messages")
    discovery_commands = discovery.add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    for name, text in (
        ("health", "health of the discovery subsystem"),
        ("peers", "known peers"),
        ("announce", "run a gossip round now"),
        ("route", "resolve a server name"),
        ("send", "queue a message to user@server"),
        ("update_neighbors", "probe peers and choose neighbors now"),
        ("process_messages", "deliver due messages now"),
        ("cleanup", "expire old state now"),
    ):
        sub = discovery_commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
        sub.set_defaults(handler=_discovery)
        if name == "peers":
            sub.add_argument("--all", action="store_true", help="include unproven and revoked")
        elif name == "announce":
            sub.add_argument("--force", action="store_true", help="ignore the once-a-minute limit")
        elif name == "route":
            sub.add_argument("domain")
        elif name == "send":
            sub.add_argument("--to", required=True, help="user@server")
            sub.add_argument("--from", dest="sender", required=True, help="user@this-server")
            sub.add_argument("content")

    add_usb_commands(commands, _load, admin_request, CommandError)
    add_kv_commands(commands, _load, admin_request, CommandError)
    add_service_commands(commands, _load, admin_request, CommandError)
    add_tls_commands(commands, _load, admin_request, CommandError)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one C{lattice} command; returns the exit status.
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as e:
        print(f"lattice: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
