"""
Who may see and import which device: export policy, client identities and
the approval book.  Pure Python; the service persists the book.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from lattice._files import write_atomically as write_private_file
from lattice.usb._protocol import DeviceInfo

__all__ = [
    "ApprovalBook",
    "Decision",
    "ExportPolicy",
    "PendingApproval",
    "PolicyError",
    "approval_id",
    "normalize_identity",
    "write_atomically",
]

HUB_CLASS = 0x09

_FINGERPRINT = re.compile(r"^(?:sha256:)?((?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2})$")
_VIDPID = re.compile(r"^[0-9a-fA-F*?\[\]x]{1,6}:[0-9a-fA-F*?\[\]x]{1,6}$")


class PolicyError(ValueError):
    """
    A policy setting cannot be understood.
    """


def normalize_identity(raw: str) -> str:
    """
    The canonical form of a client identity: C{sha256:<64 lowercase hex>}
    for a certificate fingerprint (colons allowed on input), or the IP address.

    @raise PolicyError: for anything else.
    """
    text = raw.strip()
    match = _FINGERPRINT.match(text)
    if match:
        return "sha256:" + match.group(1).replace(":", "").lower()
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise PolicyError(
            f"{raw!r} is neither a certificate SHA-256 fingerprint nor an IP address"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def approval_id(identity: str) -> str:
    """
    The short, stable id an operator uses for C{identity}.
    """
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:8]


def _pattern(raw: str) -> str:
    text = raw.strip().lower()
    if not _VIDPID.match(text):
        raise PolicyError(f"{raw!r} is not a VID:PID pattern such as 1209:* or 04f9:0042")
    vid, pid = text.split(":")
    return f"{vid.removeprefix('0x').zfill(4)}:{pid.removeprefix('0x').zfill(4)}"


def _matches(pattern: str, info: DeviceInfo) -> bool:
    if pattern == info.busid:
        return True
    return fnmatchcase(f"{info.vendor_id:04x}:{info.product_id:04x}", pattern)


def is_hub(info: DeviceInfo) -> bool:
    """
    Whether a device is a hub (never exported).
    """
    return info.device_class == HUB_CLASS or any(c == HUB_CLASS for c, _, _ in info.interfaces)


@dataclass(frozen=True)
class ExportPolicy:
    """
    Which devices are exported, and to whom.

    A device is exported when it is not a hub, matches C{filters} (empty
    matches everything) and is either auto-shared or shared by hand.
    C{device_clients} maps a VID:PID pattern or bus id to the identities that
    alone may see and import the devices it matches.
    """

    auto_share: bool = False
    filters: tuple[str, ...] = ()
    device_clients: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(
        cls, auto_share: bool, filters: Sequence[str], device_clients: Sequence[str]
    ) -> ExportPolicy:
        """
        Build from the C{[usb]} settings; C{device_clients} entries read
        C{PATTERN=IDENTITY}.

        @raise PolicyError: listing the first bad entry.
        """
        pairs = []
        for entry in device_clients:
            target, sep, who = entry.partition("=")
            if not sep or not target.strip() or not who.strip():
                raise PolicyError(f"{entry!r}: expected PATTERN=CLIENT, e.g. 1209:0001=10.0.0.5")
            target = target.strip()
            pattern = target if re.match(r"^\d+-[\d.]+$", target) else _pattern(target)
            pairs.append((pattern, normalize_identity(who)))
        return cls(auto_share, tuple(_pattern(f) for f in filters), tuple(pairs))

    def exportable(self, info: DeviceInfo, shared: Iterable[str] = ()) -> bool:
        """
        Whether C{info} is exported (C{shared}: bus ids shared by hand).
        """
        if is_hub(info):
            return False
        if self.filters and not any(_matches(p, info) for p in self.filters):
            return False
        return self.auto_share or info.busid in set(shared)

    def allowed_clients(self, info: DeviceInfo) -> frozenset[str] | None:
        """
        The only identities that may use C{info}, or C{None} for no restriction.
        """
        allowed = {who for pattern, who in self.device_clients if _matches(pattern, info)}
        return frozenset(allowed) if allowed else None

    def may_use(self, info: DeviceInfo, identity: str) -> bool:
        """
        Whether the device-specific client list admits C{identity}.
        """
        allowed = self.allowed_clients(info)
        return allowed is None or identity in allowed


class Decision(Enum):
    """
    What the approval book says about a client.
    """

    APPROVED = "approved"
    DENIED = "denied"
    UNKNOWN = "unknown"


@dataclass
class PendingApproval:
    """
    A client that asked to import a device and is not approved yet.
    """

    identity: str
    busid: str
    first_seen: float
    last_seen: float
    attempts: int = 1

    @property
    def id(self) -> str:
        """
        The short id to approve or deny it with.
        """
        return approval_id(self.identity)

    def as_json(self) -> dict[str, Any]:
        """
        The JSON form shown by the admin surface.
        """
        return {
            "id": self.id,
            "client": self.identity,
            "busid": self.busid,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "attempts": self.attempts,
        }


#: Pending requests kept at most (oldest are forgotten first).
MAX_PENDING = 256


@dataclass
class ApprovalBook:
    """
    Approved and denied clients, and pending requests.

    C{configured} (from C{[usb] approved_clients}) are always approved unless
    an operator denied them since.  With C{require_approval} off everyone is
    approved; with it on and nobody approved, nobody is (fail closed).
    """

    require_approval: bool = True
    configured: frozenset[str] = frozenset()
    approved: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    pending: dict[str, PendingApproval] = field(default_factory=dict)

    def decide(self, identity: str) -> Decision:
        """
        Whether C{identity} may see and import devices.
        """
        if not self.require_approval:
            return Decision.APPROVED
        if identity in self.denied:
            return Decision.DENIED
        if identity in self.approved or identity in self.configured:
            return Decision.APPROVED
        return Decision.UNKNOWN

    def request(self, identity: str, busid: str, now: float) -> PendingApproval:
        """
        Record that an unknown client asked for C{busid}.
        """
        entry = self.pending.get(identity)
        if entry is None:
            while len(self.pending) >= MAX_PENDING:
                oldest = min(self.pending.values(), key=lambda p: p.last_seen)
                del self.pending[oldest.identity]
            entry = self.pending[identity] = PendingApproval(identity, busid, now, now)
        else:
            entry.busid = busid
            entry.last_seen = now
            entry.attempts += 1
        return entry

    def resolve(self, key: str) -> str:
        """
        The identity an operator means by C{key}: a pending or known id, or
        an identity itself.

        @raise KeyError: when nothing matches.
        """
        key = key.strip()
        for identity in [*self.pending, *self.approved, *self.denied, *self.configured]:
            if approval_id(identity) == key.lower():
                return identity
        try:
            return normalize_identity(key)
        except PolicyError:
            raise KeyError(key) from None

    def approve(self, identity: str) -> None:
        """
        Approve C{identity} from now on.
        """
        self.denied.discard(identity)
        self.approved.add(identity)
        self.pending.pop(identity, None)

    def deny(self, identity: str) -> None:
        """
        Refuse C{identity} from now on (its requests are no longer recorded).
        """
        self.approved.discard(identity)
        self.denied.add(identity)
        self.pending.pop(identity, None)

    def to_json(self) -> dict[str, Any]:
        """
        What is persisted: decisions, not pending requests.
        """
        return {"version": 1, "approved": sorted(self.approved), "denied": sorted(self.denied)}

    def load_json(self, document: Any) -> None:
        """
        Restore persisted decisions.

        @raise PolicyError: when the document is not one L{to_json} wrote.
        """
        if not isinstance(document, dict) or document.get("version") != 1:
            raise PolicyError("not a lattice USB approvals file (version 1)")
        try:
            self.approved = {normalize_identity(i) for i in document.get("approved", [])}
            self.denied = {normalize_identity(i) for i in document.get("denied", [])}
        except (TypeError, AttributeError):
            raise PolicyError("approved and denied must be lists of identities") from None


def write_atomically(path: Path, document: Any) -> None:
    """
    Write C{document} as JSON to C{path} (mode 0600), atomically and durably
    (L{lattice._files.write_atomically}).  Blocking: call it from a thread.
    """
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, data)
