"""
Registry entries, placement policies, local consent and the decision to run.

Pure and free of Twisted: :func:`parse_entry` turns the JSON of
``/services/{service_id}/config`` into a :class:`ServiceEntry` (or every reason it is
invalid), and :func:`should_run` combines the entry, this node's consent and tags into a
:class:`Decision` that says why.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from lattice.registry._descriptor import KERNEL_SERVICES, IServiceDescriptor, full_schema
from lattice.registry._schema import validate

__all__ = [
    "Consent",
    "Decision",
    "EntryInvalid",
    "Policy",
    "ServiceEntry",
    "parse_entry",
    "parse_policy",
    "should_run",
]

REGISTRY_PREFIX = "/services/"
_TAGGED = re.compile(r"^TaggedNodes\(([^()]+)\)$")


class Consent(enum.Enum):
    """This node's answer to what the mesh suggests, per service."""

    ALWAYS_ALLOW = "AlwaysAllow"
    BLOCK = "Block"
    FOLLOW_MESH = "FollowMesh"
    MANUAL = "Manual"

    @classmethod
    def parse(cls, text: str) -> Consent:
        """The consent named ``text`` (case-insensitive, ``-``/``_`` ignored)."""
        wanted = text.replace("-", "").replace("_", "").lower()
        for consent in cls:
            if consent.value.lower() == wanted:
                return consent
        names = ", ".join(c.value for c in cls)
        raise ValueError(f"unknown consent {text!r} (one of {names})")


@dataclass(frozen=True)
class Policy:
    """Where the mesh wants a service: ``Global``, ``LocalOnly`` or ``TaggedNodes(tag)``."""

    kind: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"TaggedNodes({self.tag})" if self.kind == "TaggedNodes" else self.kind

    def matches(self, tags: Collection[str]) -> tuple[bool, str]:
        """Whether a node with ``tags`` is one the mesh wants it on, and why."""
        if self.kind == "Global":
            return True, "policy Global matches every node"
        if self.kind == "TaggedNodes":
            if self.tag in tags:
                return True, f"policy {self} matches this node's tag {self.tag!r}"
            return False, f"policy {self}: this node lacks tag {self.tag!r}"
        return False, "policy LocalOnly: the mesh cannot place it; only AlwaysAllow runs it"


def parse_policy(text: str) -> Policy:
    """Parse a policy string; raises ``ValueError``."""
    text = text.strip()
    if text in ("Global", "LocalOnly"):
        return Policy(text)
    match = _TAGGED.match(text)
    if match:
        return Policy("TaggedNodes", match.group(1).strip())
    raise ValueError(f"unknown policy {text!r} (Global, LocalOnly or TaggedNodes(tag))")


@dataclass(frozen=True)
class ServiceEntry:
    """A valid registry entry."""

    service_id: str
    enabled: bool
    policy: Policy
    port: int | None
    settings: Mapping[str, Any]
    raw: bytes

    def daemon_config(self, port: int | None) -> dict[str, Any]:
        """The configuration handed to the daemon (settings plus the port it must use)."""
        config = dict(self.settings)
        config["port"] = port
        return config


class EntryInvalid(ValueError):
    """A registry entry that cannot be applied; ``errors`` lists every reason."""

    def __init__(self, service_id: str, errors: list[str]) -> None:
        super().__init__(f"/services/{service_id}/config: " + "; ".join(errors))
        self.service_id = service_id
        self.errors = errors


def parse_entry(
    service_id: str, raw: bytes, descriptors: Mapping[str, IServiceDescriptor]
) -> ServiceEntry:
    """
    Validate ``raw`` (the JSON at ``/services/{service_id}/config``) against the service's
    descriptor.  All or nothing: raises :class:`EntryInvalid` listing every problem.
    """
    if service_id in KERNEL_SERVICES:
        raise EntryInvalid(service_id, ["kernel service: never managed by the registry"])
    descriptor = descriptors.get(service_id)
    if descriptor is None:
        known = ", ".join(sorted(descriptors)) or "none installed"
        raise EntryInvalid(service_id, [f"unknown service (no descriptor; known: {known})"])
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise EntryInvalid(service_id, [f"not JSON: {e}"]) from None
    errors = validate(document, full_schema(descriptor))
    if errors:
        raise EntryInvalid(service_id, errors)
    assert isinstance(document, dict)
    policy = parse_policy(document.get("policy", "LocalOnly"))
    port = document.get("port", descriptor.default_port)
    settings = {
        key: value for key, value in document.items() if key not in ("enabled", "policy", "port")
    }
    return ServiceEntry(
        service_id=service_id,
        enabled=bool(document.get("enabled", True)),
        policy=policy,
        port=port,
        settings=settings,
        raw=raw,
    )


@dataclass(frozen=True)
class Decision:
    """Whether an instance should run here, and the reason, in words."""

    run: bool
    reason: str


def should_run(entry: ServiceEntry, consent: Consent, tags: Collection[str]) -> Decision:
    """
    The consent firewall.  ``Block`` and ``Manual`` (the default) never run what the mesh
    suggests; ``AlwaysAllow`` runs any enabled entry; ``FollowMesh`` runs it where the policy
    places it.  A disabled entry never runs (stopping is always safe).
    """
    if consent is Consent.BLOCK:
        return Decision(False, "consent Block: this node refuses the service")
    if not entry.enabled:
        return Decision(False, "disabled in the registry (enabled: false)")
    if consent is Consent.MANUAL:
        return Decision(
            False,
            f"consent Manual (default): not running until the operator opts in "
            f"(lattice service consent {entry.service_id} AlwaysAllow|FollowMesh)",
        )
    if consent is Consent.ALWAYS_ALLOW:
        return Decision(True, f"consent AlwaysAllow (policy {entry.policy} not consulted)")
    matched, why = entry.policy.matches(tags)
    return Decision(matched, f"consent FollowMesh; {why}")
