"""
Rotating the running node's key (C{POST /api/v1/identity/rotate}).

The order makes a crash at any step recoverable: the new key is generated
and stored first (the old one kept as C{<path>.previous}), then the discovery
core signs the rotation with the old key, persists it and re-signs its record
with the new key, then the node service switches to the new key, and last the
rotation is pushed to every usable peer (it also travels with every later
gossip exchange, so peers that miss the push learn it later).

A key from a systemd credential is rotated into the state directory (see
L{lattice.identity.rotate_to_successor}): the credential then holds a
rotated-out key, which the node says until the operator updates it.

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
    is_credential,
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

    def __init__(
        self,
        holder: IdentityHolder,
        node: DiscoveryNode,
        key_path: Path,
        run: Runner,
        state_dir: Path | None = None,
    ):
        """
        @param run: runs the blocking file writes off the reactor thread.
        @param state_dir: where a key from a systemd credential is rotated
            to (default: the directory of C{key_path}).
        """
        self._holder = holder
        self._node = node
        self._key_path = key_path
        self._state_dir = key_path.parent if state_dir is None else state_dir
        self._run = run
        self._rotating = False

    async def revoke(self, key_id: object, reason: object = "") -> dict[str, Any]:
        """
        Revoke one of this server's rotated-out keys and push the revocation
        (signed by the current key) to every usable peer.

        @raise ApiError: 400, 404 or 409 from L{DiscoveryNode.revoke}; 409
            while a rotation is running.
        """
        if self._rotating:
            raise ApiError(409, "a key rotation is running; revoke once it has ended")
        self._rotating = True
        try:
            node = self._node
            revocation = await node.revoke(key_id, reason)
            self._log.warn(
                "Key {key_id} of server {uuid} revoked ({reason}); signed by {current}",
                key_id=key_id,
                uuid=node.server_uuid,
                reason=reason or "no reason given",
                current=node.signer.key_id,
            )
            peers = len(node.usable_peers())
            sent = await node.broadcast_events()
            self._log.info(
                "Revocation of {key_id} pushed to {sent} of {peers} peers "
                "(the others learn it by gossip)",
                key_id=key_id,
                sent=sent,
                peers=peers,
            )
        finally:
            self._rotating = False
        return {
            "status": "revoked",
            "server_uuid": node.server_uuid,
            "key_id": key_id,
            "reason": revocation["reason"],
            "current_key_id": node.signer.key_id,
            "peers": peers,
            "broadcast_to": sent,
            "revocation": revocation,
        }

    async def rotate(self) -> dict[str, Any]:
        """
        Rotate now; the answer says what changed.

        @raise ApiError: 409 when the key is read-only (a systemd credential)
            or a rotation is running; 500 when the key cannot be written.
        """
        if self._rotating:
            raise ApiError(409, "a key rotation or revocation is already running")
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
        self._log.info(
            "Rotating identity key {key_id} (node {node_id}) from {source}",
            key_id=old.key_id,
            node_id=old.node_id,
            source=old.source,
        )
        try:
            new = await self._run(rotate_identity_file, self._key_path, old, self._state_dir)
        except IdentityReadOnlyError as e:
            self._log.warn("Key rotation refused: {error}", error=str(e))
            raise ApiError(409, str(e)) from None
        except IdentityError as e:
            self._log.error("Key rotation failed, the key is unchanged: {error}", error=str(e))
            raise ApiError(500, f"cannot rotate the key: {e}") from None
        path = Path(new.source)
        previous = previous_key_path(path)
        from_credential = is_credential(old)
        if from_credential:
            kept = f"the old key stays in the {old.source}"
            undo = f"rm {path}"
        else:
            kept = f"the old key is kept in {previous}"
            undo = f"mv {previous} {path}"
        self._log.info(
            "New identity key {key_id} stored in {path}; {kept}",
            key_id=new.key_id,
            path=path,
            kept=kept,
        )
        try:
            rotation = await node.rotate(new, new.public_key)
        except Exception as e:
            self._log.failure(
                "Key rotation not recorded by discovery: {path} holds the new key but the "
                "node still signs with the old one; to go back: {undo}",
                path=path,
                undo=undo,
            )
            raise ApiError(500, f"the rotation could not be recorded: {e}") from None
        self._log.info(
            "Rotation of server {uuid} from {old} to {new} signed by the old key and stored",
            uuid=node.server_uuid,
            old=old.key_id,
            new=new.key_id,
        )
        self._holder.swap_identity(new)
        if new.warning:
            self._log.warn("{problem}", problem=new.warning)
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
            "previous_key_path": None if from_credential else str(previous),
            "old_key_source": old.source,
            "warning": new.warning,
            "peers": peers,
            "broadcast_to": sent,
            "rotation": rotation,
        }
