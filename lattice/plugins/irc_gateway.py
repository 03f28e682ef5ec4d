"""The ``lattice.irc-gateway`` descriptor: an IRC server whose channels live in a chat store."""

from lattice.registry import ServiceDescriptor

irc_gateway = ServiceDescriptor(
    id="lattice.irc-gateway",
    description="IRC server (lattice-irc) whose channels are a chat store in Lattice",
    prefixes=("/chat/",),
    module="lattice.irc",
    default_port=6667,
    schema={
        "type": "object",
        "properties": {
            "channels": {
                "type": "array",
                "items": {"type": "string", "pattern": r"^#[^\s,:]{1,49}$"},
                "maxItems": 256,
            },
            "bind": {"type": "string", "minLength": 1, "maxLength": 255},
            "server_name": {"type": "string", "pattern": r"^[A-Za-z0-9.-]{1,63}$"},
            "history": {"type": "integer", "minimum": 0, "maximum": 10000},
        },
    },
)
