"""
The OpenAPI 3.1 document of both discovery listeners, served at C{/openapi.json}.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_OBJ: dict[str, Any] = {"type": "object"}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_SIGNED_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in (
        "X-Lattice-Origin",
        "X-Lattice-Destination",
        "X-Lattice-Key-Id",
        "X-Lattice-Timestamp",
        "X-Lattice-Nonce",
        "X-Lattice-Signature",
    )
]
_PUBLIC = [{"url": "/", "description": "public federation listener"}]
_ADMIN = [{"url": "/", "description": "admin listener (or the node's admin socket) only"}]


def _ok(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    tag: str,
    response: dict[str, Any],
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("400",),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {"200": response, **{code: _ERROR for code in errors}},
    }
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


_STATUS = {
    "type": "object",
    "properties": {
        "alive": {"type": "boolean"},
        "accepting_messages": {"type": "boolean"},
        "peer_count": {"type": "integer"},
        "saturation": {"type": "number"},
        "version": {"type": "string"},
    },
    "required": ["alive", "accepting_messages", "peer_count", "saturation", "version"],
}
_HEALTH = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "service": {"type": "string"},
        "server_id": {"type": "string"},
        "last_gossip": {"type": ["integer", "null"]},
        "maintenance_mode": {"type": "boolean"},
        "queues": {
            "type": "object",
            "properties": {n: {"type": "integer"} for n in ("pending", "sending", "failed")},
        },
        "circuit_breakers": {
            "type": "object",
            "properties": {"open": {"type": "integer"}, "total_peers": {"type": "integer"}},
        },
        "saturation": {"type": "number"},
        "uptime_seconds": {"type": "integer"},
    },
    "required": [
        "status",
        "service",
        "server_id",
        "last_gossip",
        "maintenance_mode",
        "queues",
        "circuit_breakers",
        "saturation",
        "uptime_seconds",
    ],
}
_IDENTITY = {
    "type": "object",
    "properties": {
        "server_id": {"type": "string"},
        "server_uuid": {"type": "string"},
        "fingerprint": {"type": "string"},
        "created_at": {"type": "integer", "description": "epoch milliseconds"},
        "public_key": {"type": "string"},
        "key_id": {"type": "string"},
    },
    "required": ["server_id", "server_uuid", "fingerprint", "created_at"],
}
_PEER = {
    "type": "object",
    "properties": {
        "server_id": {"type": "string"},
        "server_uuid": {"type": "string"},
        "is_neighbor": {"type": "boolean"},
        "trust_status": {"type": "string"},
        "last_seen": {"type": ["integer", "null"]},
        "endpoints": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["server_id", "is_neighbor", "trust_status", "last_seen", "endpoints"],
}
_ROUTE = {
    "type": "object",
    "properties": {
        "found": {"type": "boolean"},
        "domain": {"type": "string"},
        "server_id": {"type": ["string", "null"]},
        "endpoint_url": {"type": ["string", "null"]},
        "confidence": {"type": "number"},
        "from_cache": {"type": "boolean"},
    },
    "required": ["found", "domain", "server_id", "endpoint_url", "confidence", "from_cache"],
}
_SEND = {
    "type": "object",
    "properties": {
        "to_address": {"type": "string"},
        "from_address": {"type": "string"},
        "content": {"type": "string", "maxLength": 10000},
        "message_type": {"type": "string"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 2},
        "metadata": {"type": "object"},
    },
    "required": ["to_address", "from_address", "content"],
}
_DOMAIN = {
    "type": "object",
    "properties": {"domain": {"type": "string"}},
    "required": ["domain"],
}


def openapi_document() -> dict[str, Any]:
    """
    The document: public paths (tag C{public}) and admin paths (tag C{admin}).
    """
    peer_errors = ("400", "401", "403", "413", "429", "503")
    paths: dict[str, Any] = {
        "/status": {"get": _op("Liveness and capacity", "public", _ok(_STATUS), errors=())},
        "/api/v1/identity": {
            "get": _op("This server's identity", "public", _ok(_IDENTITY), errors=())
        },
        "/api/v1/announcement": {
            "get": _op(
                "This server's self-signed record, with an endpoint proof when challenged",
                "public",
                _ok(_OBJ),
                parameters=[
                    {
                        "name": "challenge",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/api/v1/gossip/receive": {
            "post": _op(
                "Anti-entropy exchange, key rotations and revocations (signed request)",
                "public",
                _ok(_OBJ),
                _body(_OBJ),
                _SIGNED_HEADERS,
                peer_errors,
            )
        },
        "/api/v1/domain/query": {
            "post": _op(
                "Resolve a server name through neighbors (signed request)",
                "public",
                _ok(_OBJ),
                _body(_OBJ),
                _SIGNED_HEADERS,
                peer_errors,
            )
        },
        "/api/v1/federation/messages/receive": {
            "post": _op(
                "Inbound federated messages; answers with signed acknowledgements (signed request)",
                "public",
                _ok(_OBJ),
                _body(_OBJ),
                _SIGNED_HEADERS,
                (*peer_errors, "502"),
            )
        },
        "/openapi.json": {"get": _op("This document", "public", _ok(_OBJ), errors=())},
        "/health": {"get": _op("Health of the subsystem", "admin", _ok(_HEALTH), errors=())},
        "/api/v1/identity/rotate": {
            "post": _op(
                "Rotate the node's key: the rotation is signed by the old key and broadcast",
                "admin",
                _ok(_OBJ),
                errors=("409", "500", "503"),
            )
        },
        "/api/v1/identity/revoke": {
            "post": _op(
                "Revoke one of this server's rotated-out keys: the revocation is signed by "
                "the current key and broadcast",
                "admin",
                _ok(_OBJ),
                _body(
                    {
                        "type": "object",
                        "properties": {
                            "key_id": {"type": "string", "pattern": "^ed25519:[0-9a-f]{16}$"},
                            "reason": {"type": "string", "maxLength": 200},
                        },
                        "required": ["key_id"],
                    }
                ),
                errors=("400", "404", "409", "503"),
            )
        },
        "/api/v1/announce": {
            "post": _op(
                "Run a gossip round (one per minute unless forced)",
                "admin",
                _ok(_OBJ),
                _body({"type": "object", "properties": {"force": {"type": "boolean"}}}, False),
            )
        },
        "/api/v1/peers": {
            "get": _op(
                "Known peers",
                "admin",
                _ok({"type": "array", "items": _PEER}),
                parameters=[
                    {"name": n, "in": "query", "required": False, "schema": {"type": "boolean"}}
                    for n in ("active_only", "include_blocked")
                ],
            )
        },
        "/api/v1/route/{domain}": {
            "post": _op(
                "Resolve a server name",
                "admin",
                _ok(_ROUTE),
                parameters=[
                    {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        "/api/v1/messages/send": {
            "post": _op(
                "Queue an outbound message", "admin", _ok(_OBJ), _body(_SEND), errors=("400", "503")
            )
        },
        "/api/v1/messages/{message_id}": {
            "get": _op(
                "Delivery state of an outbound message",
                "admin",
                _ok(_OBJ),
                parameters=[
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                errors=("404",),
            )
        },
        "/api/v1/domain/verify": {
            "post": _op("Is a server name free?", "admin", _ok(_OBJ), _body(_DOMAIN))
        },
        "/api/v1/domain/register": {
            "post": _op(
                "Take a server name", "admin", _ok(_OBJ), _body(_DOMAIN), errors=("400", "409")
            )
        },
    }
    for job in ("update_neighbors", "process_messages", "cleanup"):
        paths[f"/api/v1/maintenance/{job}"] = {
            "post": _op(f"Run the {job} job now", "admin", _ok(_OBJ), errors=())
        }
    for path, item in paths.items():
        tag = next(iter(item.values()))["tags"][0]
        item["servers"] = _PUBLIC if tag == "public" else _ADMIN
        del path
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lattice discovery and federation",
            "version": "1",
            "description": (
                "Paths tagged `public` are served on the public federation listener; "
                "paths tagged `admin` only on the admin listener."
            ),
        },
        "tags": [
            {"name": "public", "description": "public federation listener"},
            {"name": "admin", "description": "admin listener only"},
        ],
        "paths": paths,
    }
