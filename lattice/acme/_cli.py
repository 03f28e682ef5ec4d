"""
``lattice tls status|renew``: the certificate of the public listeners, through the
running node's admin surface (or, for ``status`` when the node is not running, from
the certificate file itself).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lattice.acme._certs import CertificateError, parse_bundle

__all__ = ["add_tls_commands", "format_status"]

Request = Callable[..., tuple[int, object]]


def _when(timestamp: object, now: float) -> str:
    if not isinstance(timestamp, int | float):
        return "?"
    moment = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    delta = timestamp - now
    span = abs(delta)
    if span >= 2 * 86400:
        amount = f"{span / 86400:.0f} days"
    elif span >= 2 * 3600:
        amount = f"{span / 3600:.0f} hours"
    elif span >= 120:
        amount = f"{span / 60:.0f} minutes"
    else:
        amount = f"{span:.0f} seconds"
    return f"{moment} ({'in ' + amount if delta >= 0 else amount + ' ago'})"


def format_status(status: dict[str, Any], now: float) -> str:
    """
    The text C{lattice tls status} prints for the admin surface's answer.
    """
    lines = [f"mode: {status.get('mode')}"]
    if status.get("source"):
        lines.append(f"serving: {status['source']} certificate")
    lines.append(f"file: {status.get('path') or '?'}")
    certificate = status.get("certificate")
    if certificate:
        lines += [
            f"  subject: {certificate['subject']}",
            f"  names: {', '.join(certificate['names']) or '(none)'}",
            f"  issuer: {certificate['issuer']}",
            f"  serial: {certificate['serial']}",
            f"  sha256: {certificate['fingerprint_sha256']}",
            f"  valid from: {_when(certificate['not_before'], now)}",
            f"  expires: {_when(certificate['not_after'], now)}",
        ]
    else:
        lines.append("  no certificate")
    if status.get("mode") == "acme":
        lines.append(f"acme directory: {status.get('acme_directory')}")
        if status.get("account"):
            lines.append(f"acme account: {status['account']}")
    if "next_renewal" in status:
        if status.get("renewing"):
            lines.append("next renewal: under way")
        elif status.get("next_renewal") is None:
            reason = status.get("next_renewal_reason") or "none scheduled"
            lines.append(f"next renewal: {reason}")
        else:
            lines.append(f"next renewal: {_when(status['next_renewal'], now)}")
    if status.get("failures"):
        lines.append(
            f"failed attempts in a row: {status['failures']}, last "
            f"{_when(status.get('last_error_at'), now)}: {status.get('last_error')}"
        )
    return "\n".join(lines)


def _local_status(config: Any) -> dict[str, Any]:
    tls = config.tls
    state = config.node.state_dir / "tls"
    files: list[Path] = []
    if tls.mode == "files":
        if tls.certificate is not None:
            files.append(tls.certificate)
            if tls.private_key is not None and tls.private_key != tls.certificate:
                files.append(tls.private_key)
    elif tls.mode == "self-signed":
        files.append(state / "self-signed.pem")
    else:
        files.append(state / "acme" / "certificate.pem")
    status: dict[str, Any] = {
        "mode": tls.mode,
        "path": str(files[0]) if files else None,
        "acme_directory": tls.acme_directory or None,
        "next_renewal": None,
        "next_renewal_reason": "unknown (the node is not running)",
        "certificate": None,
    }
    try:
        data = b"\n".join(path.read_bytes() for path in files)
        info = parse_bundle(data)
    except (OSError, CertificateError) as e:
        status["last_error"] = str(e)
        return status
    status["certificate"] = info.as_json()
    if tls.mode == "acme":
        status["source"] = "temporary self-signed" if info.self_issued else "acme"
    else:
        status["source"] = tls.mode
    return status


def add_tls_commands(
    commands: Any,
    load: Callable[[argparse.Namespace], Any],
    request: Request,
    error: type[Exception],
) -> None:
    """
    Add C{lattice tls status|renew} to an argparse subparsers object.
    """

    def status(args: argparse.Namespace) -> int:
        config = load(args)
        if not config.tls.enabled:
            raise error("[tls] enabled = false: the node manages no certificate")
        try:
            code, body = request(config, "GET", "/tls/", None)
        except error as e:
            body = _local_status(config)
            print(f"(node not reachable: {e}; showing the file)")
        else:
            if code != 200 or not isinstance(body, dict):
                raise error(f"unexpected answer from /tls/ (HTTP {code})")
        assert isinstance(body, dict)
        if args.json:
            print(json.dumps(body, indent=2, sort_keys=True))
        else:
            print(format_status(body, time.time()))
        return 0

    def renew(args: argparse.Namespace) -> int:
        config = load(args)
        # Renewal answers when done: allow for a whole order plus its requests.
        wait = config.tls.acme_order_timeout + 4 * config.tls.acme_timeout + 30
        code, body = request(config, "POST", "/tls/renew", {}, timeout=wait)
        if not isinstance(body, dict):
            raise error(f"unexpected answer from /tls/renew (HTTP {code})")
        if code != 200:
            raise error(f"renewal failed: {body.get('error')}")
        print(format_status(body["status"], time.time()))
        return 0

    tls = commands.add_parser("tls", help="the certificate of the public TLS listeners")
    tls_commands = tls.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    show = tls_commands.add_parser(
        "status", help="show the certificate, its expiry and the next renewal"
    )
    show.add_argument("--json", action="store_true", help="print the raw status document")
    show.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    show.set_defaults(handler=status)
    again = tls_commands.add_parser(
        "renew", help="renew now (acme) or regenerate (self-signed), and wait for the result"
    )
    again.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    again.set_defaults(handler=renew)
