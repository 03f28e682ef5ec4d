"""
``lattice-irc``: an IRC server whose channels are a chat store in Lattice (the
``lattice.irc-gateway`` service).  Run by the registry as ``python -m lattice.irc``.
"""

from lattice.irc._gateway import ChatStore, IrcConnection, IrcFactory, IrcGateway, message_key

__all__ = ["ChatStore", "IrcConnection", "IrcFactory", "IrcGateway", "message_key"]
