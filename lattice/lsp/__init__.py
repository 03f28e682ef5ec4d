"""
The Lattice Store Protocol: how registry-managed daemons reach state.

See ``docs/registry.rst``.  Daemon authors use :mod:`lattice.lsp.client`.
"""

from lattice.lsp._server import PROTOCOL_VERSION, LspServer, add_lsp_services
from lattice.lsp._tokens import Grant, TokenBook

__all__ = ["PROTOCOL_VERSION", "Grant", "LspServer", "TokenBook", "add_lsp_services"]
