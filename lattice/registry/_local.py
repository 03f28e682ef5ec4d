"""
Node-local registry state that never replicates: consent per service and port overrides per
``(store_id, service_id)``.  Changed only through the local admin surface; kept in a JSON
file (mode 0600) under the state directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lattice import _files
from lattice.registry._policy import Consent

__all__ = ["LocalState", "LocalStateError", "write_atomically"]


class LocalStateError(ValueError):
    """The consent file cannot be trusted; the message says why."""


@dataclass
class LocalState:
    """Consent (default ``Manual``) and port overrides."""

    consent: dict[str, Consent] = field(default_factory=dict)
    ports: dict[tuple[str, str], int] = field(default_factory=dict)

    def consent_for(self, service_id: str) -> Consent:
        """This node's consent for ``service_id`` (``Manual`` unless changed)."""
        return self.consent.get(service_id, Consent.MANUAL)

    def set_consent(self, service_id: str, consent: Consent) -> None:
        """Record a consent (``Manual`` is stored as the absence of one)."""
        if consent is Consent.MANUAL:
            self.consent.pop(service_id, None)
        else:
            self.consent[service_id] = consent

    def set_port(self, store_id: str, service_id: str, port: int | None) -> None:
        """Override (or with ``None`` stop overriding) the port of one instance."""
        if port is None:
            self.ports.pop((store_id, service_id), None)
        else:
            self.ports[(store_id, service_id)] = port

    def to_json(self) -> bytes:
        """The file's content."""
        document = {
            "version": 1,
            "consent": {name: c.value for name, c in sorted(self.consent.items())},
            "ports": [
                {"store": store, "service": service, "port": port}
                for (store, service), port in sorted(self.ports.items())
            ],
        }
        return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> LocalState:
        """Parse the file's content; raises :class:`LocalStateError`."""
        try:
            document = json.loads(data)
            state = cls()
            for name, value in document.get("consent", {}).items():
                state.set_consent(str(name), Consent.parse(value))
            for item in document.get("ports", []):
                port = item["port"]
                if not isinstance(port, int) or not 0 <= port <= 65535:
                    raise ValueError(f"bad port {port!r}")
                state.set_port(str(item["store"]), str(item["service"]), port)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LocalStateError(f"{source}: invalid consent file: {e}") from None
        return state

    @classmethod
    def load(cls, path: Path) -> LocalState:
        """Read ``path`` (a missing file is the default state: everything ``Manual``)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as e:
            raise LocalStateError(f"{path}: cannot read: {e.strerror}") from None
        return cls.from_json(data, str(path))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600), durably: temporary file, fsync, rename."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _files.write_atomically(path, data)
