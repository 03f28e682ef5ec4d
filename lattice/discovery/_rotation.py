"""
Rotating the running node's key (C{POST /api/v1/identity/rotate}).

The order makes a crash at any step recoverable: the new key is generated
and stored first (the old one kept as C{<path>.previous}), then the discovery
core signs the rotation with the old key, persists it and re-signs its record
with the new key, then the node service switches to the new key, and last the
rotation is pushed to every usable peer (it also travels with every later
gossip exchange, so peers that miss the push learn it later).

The server uuid does not change: it is the node id of the server's first key.
The node id, derived from the current key, does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

from lattice.discovery._node import ApiError, DiscoveryNode, Runner
from lattice.identity import (
    IdentityError,
    IdentityReadOnlyError,
    NodeIdentity,
    previous_key_path,
    rotate_identity_file,
)

__all__ = ["IdentityHolder", "KeyRotator"]


class IdentityHolder(Protocol):
    """
    What holds the node's identity: L{lattice.node.NodeService}.
    """

    @property
    def identity(self) -> NodeIdentity: ...

    def swap_identity(self, identity: NodeIdentity) -> None: ...


class KeyRotator:
    """
    Rotates the key of the running node, one rotation at a time.
    """

    _log = Logger()

    def __init__(self, holder: IdentityHolder, node: DiscoveryNode, key_path: Path, run: Runner):
        """
        @param run: runs the blocking file writes off the reactor thread.
        """
        self._holder = holder
        self._node = node
        self._key_path = key_path
        self._run = run
        self._rotating = False

    async def rotate(self) -> dict[str, Any]:
        """
        Rotate now; the answer says what changed.

        @raise ApiError: 409 when the key is read-only (a systemd credential)
            or a rotation is running; 500 when the key cannot be written.
        """
        if self._rotating:
            raise ApiError(409, "a key rotation is already running")
        self._rotating = True
        try:
            return await self._rotate()
        finally:
            self._rotating = False

    async def _rotate(self) -> dict[str, Any]:
        old = self._holder.identity
        node = self._node
        if node.signer.key_id != old.key_id:
            raise ApiError(
                409,
                f"discovery signs with {node.signer.key_id}, the node with {old.key_id}; "
                "restart the node before rotating",
            )
        path = self._key_path
        self._log.info(
            "Rotating identity key {key_id} (node {node_id}) in {path}",
            key_id=old.key_id,
            node_id=old.node_id,
            path=path,
        )
        try:
            new = await self._run(rotate_identity_file, path, old)
        except IdentityReadOnlyError as e:
            self._log.warn("Key rotation refused: {error}", error=str(e))
            raise ApiError(409, str(e)) from None
        except IdentityError as e:
            self._log.error("Key rotation failed, the key is unchanged: {error}", error=str(e))
            raise ApiError(500, f"cannot rotate the key: {e}") from None
        previous = previous_key_path(path)
        self._log.info(
            "New identity key {key_id} stored in {path}; the old key is kept in {previous}",
            key_id=new.key_id,
            path=path,
            previous=previous,
        )
        try:
            rotation = await node.rotate(new, new.public_key)
        except Exception as e:
            self._log.failure(
                "Key rotation not recorded by discovery: {path} holds the new key but the "
                "node still signs with the old one; to go back: mv {previous} {path}",
                path=path,
                previous=previous,
            )
            raise ApiError(500, f"the rotation could not be recorded: {e}") from None
        self._log.info(
            "Rotation of server {uuid} from {old} to {new} signed by the old key and stored",
            uuid=node.server_uuid,
            old=old.key_id,
            new=new.key_id,
        )
        self._holder.swap_identity(new)
        peers = len(node.usable_peers())
        sent = await node.broadcast_events()
        self._log.info(
            "Rotation of server {uuid} pushed to {sent} of {peers} peers "
            "(the others learn it by gossip)",
            uuid=node.server_uuid,
            sent=sent,
            peers=peers,
        )
        return {
            "status": "rotated",
            "server_uuid": node.server_uuid,
            "old_key_id": old.key_id,
            "new_key_id": new.key_id,
            "old_node_id": old.node_id,
            "node_id": new.node_id,
            "fingerprint": new.fingerprint,
            "key_path": str(path),
            "previous_key_path": str(previous),
            "peers": peers,
            "broadcast_to": sent,
            "rotation": rotation,
        }
