"""
The Lattice Store Protocol: how registry-managed daemons reach state.

See ``docs/registry.rst``.  Daemon authors use :mod:`lattice.lsp.client`; the server side
below is imported on first use, so that a daemon importing the client does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lattice._lazy import lazy_attributes

if TYPE_CHECKING:
    from lattice.lsp._server import PROTOCOL_VERSION, LspServer, add_lsp_services
    from lattice.lsp._tokens import Grant, TokenBook

_HOMES = {
    "PROTOCOL_VERSION": "_server",
    "LspServer": "_server",
    "add_lsp_services": "_server",
    "Grant": "_tokens",
    "TokenBook": "_tokens",
}

__all__ = ["PROTOCOL_VERSION", "Grant", "LspServer", "TokenBook", "add_lsp_services"]


__getattr__, __dir__ = lazy_attributes(__name__, _HOMES, globals())
