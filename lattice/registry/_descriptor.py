"""
Service descriptors ("passports"): what a registry-managed service is.

Descriptors are Twisted plugins providing :class:`IServiceDescriptor`, found with
``twisted.plugin.getPlugins`` over the ``lattice.plugins`` package, so that any installed
distribution can add its own ``lattice/plugins/<name>.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

from lattice.registry._schema import Schema

__all__ = [
    "KERNEL_SERVICES",
    "IServiceDescriptor",
    "ServiceDescriptor",
    "load_descriptors",
]

_log = Logger()

# In-process services of the node itself: never started, stopped or advertised by the
# registry (they must run before the registry can be read at all).
KERNEL_SERVICES = frozenset(
    {
        "lattice.node",
        "lattice.kv",
        "lattice.discovery",
        "lattice.usb",
        "lattice.registry",
        "lattice.telemetry",
    }
)

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")

# Keys every service configuration has; the descriptor's schema describes the others.
COMMON_PROPERTIES: dict[str, Any] = {
    "enabled": {"type": "boolean"},
    "policy": {"type": "string", "pattern": r"^(Global|LocalOnly|TaggedNodes\([^()]+\))$"},
    "port": {"type": "integer", "minimum": 0, "maximum": 65535},
}


class IServiceDescriptor(Interface):
    """A service the registry can run as an external daemon."""

    id = Attribute("The service id, e.g. ``lattice.irc-gateway``.")
    description = Attribute("One line saying what the service does.")
    schema = Attribute("JSON schema (an object schema) of the service's own settings.")
    prefixes = Attribute("Key prefixes the daemon may read and write through LSP.")
    default_port = Attribute("The port the daemon listens on by default, or None.")

    def command(python: str) -> list[str]:
        """The daemon's argv; ``python`` is the interpreter running the node."""


@implementer(IPlugin, IServiceDescriptor)
@dataclass(frozen=True)
class ServiceDescriptor:
    """
    The usual descriptor: a Python module run with ``python -m`` (or an explicit argv).

    :param prefixes: key prefixes (e.g. ``/chat/``) the daemon may use; every LSP call is
        checked against them.
    """

    id: str
    description: str
    prefixes: tuple[str, ...]
    module: str | None = None
    argv: tuple[str, ...] = ()
    schema: Schema = field(default_factory=lambda: {"type": "object"})
    default_port: int | None = None

    def command(self, python: str) -> list[str]:
        """``[python, "-m", module]``, or ``argv`` with ``{python}`` replaced."""
        if self.argv:
            return [part.replace("{python}", python) for part in self.argv]
        if self.module is None:
            raise ValueError(f"descriptor {self.id}: neither module nor argv")
        return [python, "-m", self.module]


def full_schema(descriptor: IServiceDescriptor) -> dict[str, Any]:
    """The schema of a whole registry entry: the common keys plus the service's settings."""
    own: Mapping[str, Any] = descriptor.schema
    properties = dict(own.get("properties", {}))
    properties.update(COMMON_PROPERTIES)
    return {
        "type": "object",
        "properties": properties,
        "required": list(own.get("required", ())),
        "additionalProperties": False,
    }


def check_descriptor(descriptor: IServiceDescriptor) -> list[str]:
    """What is wrong with a descriptor (empty: usable)."""
    problems = []
    ident = getattr(descriptor, "id", None)
    if not isinstance(ident, str) or not _ID.match(ident):
        problems.append(f"invalid service id {ident!r}")
    elif ident in KERNEL_SERVICES:
        problems.append(f"{ident} is a kernel service and cannot be registry-managed")
    prefixes = getattr(descriptor, "prefixes", ())
    if not prefixes or not all(isinstance(p, str) and p.startswith("/") for p in prefixes):
        problems.append(f"{ident}: prefixes must be non-empty and start with '/'")
    elif any(p in ("/", "/services/", "/nodes/") or "/services/".startswith(p) for p in prefixes):
        problems.append(f"{ident}: prefixes may not cover the registry or advertisements")
    schema = getattr(descriptor, "schema", None)
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
        problems.append(f"{ident}: schema must be an object schema")
    return problems


def load_descriptors(
    package: ModuleType | None = None,
    extra: Iterable[IServiceDescriptor] = (),
) -> dict[str, IServiceDescriptor]:
    """
    Every usable descriptor plugin in ``package`` (default ``lattice.plugins``) plus ``extra``.

    Unusable ones (bad id, kernel id, duplicate id) are logged and left out.
    """
    if package is None:
        import lattice.plugins as package  # noqa: PLC0415 - plugin discovery at call time

    found: dict[str, IServiceDescriptor] = {}
    candidates = [*getPlugins(IServiceDescriptor, package), *extra]
    for descriptor in candidates:
        problems = check_descriptor(descriptor)
        if not problems and descriptor.id in found:
            problems = [f"{descriptor.id}: declared twice; keeping the first"]
        if problems:
            for problem in problems:
                _log.error("Service descriptor ignored: {problem}", problem=problem)
            continue
        found[descriptor.id] = descriptor
    return found


def python_executable() -> str:
    """The interpreter daemons are started with: the node's own."""
    return sys.executable
