"""
Discovery and federation: servers find each other by gossip and deliver
messages addressed C{user@server} across server boundaries.

The HTTP surface keeps the predecessor's paths and field names (see
C{docs/discovery.rst}); the protocol underneath is signed end to end.
"""

from lattice.discovery._auth import AuthError, NonceCache, sign_request, verify_request
from lattice.discovery._canonical import canonical_json, sign_object, signing_bytes
from lattice.discovery._http import AdminApp, PublicApp
from lattice.discovery._limits import CircuitBreaker, RateLimiter
from lattice.discovery._netpolicy import ForwardedPolicy, PolicyError, address_allowed, parse_target
from lattice.discovery._node import ApiError, DiscoveryNode, Settings, TransportError, WebhookError
from lattice.discovery._openapi import openapi_document
from lattice.discovery._records import PeerTable, make_peer_record
from lattice.discovery._store import SQLStore, open_store
from lattice.discovery.service import DiscoveryService

__all__ = [
    "AdminApp",
    "ApiError",
    "AuthError",
    "CircuitBreaker",
    "DiscoveryNode",
    "DiscoveryService",
    "ForwardedPolicy",
    "NonceCache",
    "PeerTable",
    "PolicyError",
    "PublicApp",
    "RateLimiter",
    "SQLStore",
    "Settings",
    "TransportError",
    "WebhookError",
    "address_allowed",
    "canonical_json",
    "make_peer_record",
    "open_store",
    "openapi_document",
    "parse_target",
    "sign_object",
    "sign_request",
    "signing_bytes",
    "verify_request",
]
