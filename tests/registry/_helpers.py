"""Shared fixtures for the registry tests."""

from __future__ import annotations

import json
from typing import Any

from lattice.registry import ServiceDescriptor

ECHO = ServiceDescriptor(
    id="test.echo",
    description="a test daemon",
    prefixes=("/echo/",),
    module="tests.registry.echo_daemon",
    default_port=7000,
    schema={
        "type": "object",
        "properties": {"greeting": {"type": "string"}},
    },
)
OTHER = ServiceDescriptor(
    id="test.other",
    description="another test daemon",
    prefixes=("/other/",),
    module="tests.registry.echo_daemon",
    default_port=7000,
)
DESCRIPTORS = {ECHO.id: ECHO, OTHER.id: OTHER}


def entry(**fields: Any) -> bytes:
    """The JSON of a registry entry."""
    document: dict[str, Any] = {"enabled": True, "policy": "Global"}
    document.update(fields)
    return json.dumps(document).encode()
