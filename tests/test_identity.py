"""
Tests for L{lattice.identity}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from twisted.trial.unittest import SynchronousTestCase

from lattice.identity import (
    IdentityError,
    IdentityReadOnlyError,
    NodeIdentity,
    PublicIdentity,
    create_identity_file,
    is_signed_successor,
    load_identity,
    load_or_create_identity,
    node_id_of,
    previous_key_path,
    read_rotation_chain,
    rotate_identity_file,
    rotation_chain_path,
    rotation_link,
    successor_key_path,
)


class DerivationTests(SynchronousTestCase):
    """
    The node id and fingerprint are derived from the raw public key.
    """

    def test_vector(self) -> None:
        """
        A fixed key gives a fixed node id, fingerprint and key id.
        """
        public = bytes(range(32))
        digest = hashlib.sha256(public).digest()
        self.assertEqual(
            node_id_of(public), base64.b32encode(digest[:16]).decode().rstrip("=").lower()
        )
        identity = PublicIdentity(public)
        self.assertEqual(identity.node_id, "mmg42klgyqzwneiskrelxms3j4")
        self.assertEqual(identity.fingerprint, digest.hex())
        self.assertEqual(identity.key_id, "ed25519:" + digest.hex()[:16])

    def test_sign_verify(self) -> None:
        """
        A signature verifies with the public key and fails for other data.
        """
        identity = NodeIdentity.generate()
        signature = identity.sign(b"hello")
        self.assertTrue(identity.public.verify(signature, b"hello"))
        self.assertFalse(identity.public.verify(signature, b"hellO"))
        self.assertFalse(identity.public.verify(b"short", b"hello"))


class FileTests(SynchronousTestCase):
    """
    The key file is created safely and refused when unsafe or invalid.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.path = self.directory / "private_key.pem"

    def test_created_0600_whatever_the_umask(self) -> None:
        """
        The key is created with mode 0600 even under a permissive umask.
        """
        previous = os.umask(0)
        try:
            identity = create_identity_file(self.path)
        finally:
            os.umask(previous)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(self.directory.stat().st_mode), 0o700)
        self.assertEqual(load_identity(self.path).node_id, identity.node_id)
        self.assertEqual(os.listdir(self.directory), ["private_key.pem"])

    def test_never_overwrites(self) -> None:
        """
        Creating a key where one exists fails and keeps the existing key.
        """
        first = create_identity_file(self.path)
        with self.assertRaises(IdentityError) as raised:
            create_identity_file(self.path)
        self.assertIn("already exists", str(raised.exception))
        self.assertEqual(load_identity(self.path).node_id, first.node_id)

    def test_group_readable_refused(self) -> None:
        """
        A key readable by group or others stops loading with the fix in the message.
        """
        create_identity_file(self.path)
        self.path.chmod(0o640)
        with self.assertRaises(IdentityError) as raised:
            load_identity(self.path)
        self.assertIn("accessible by group or others (mode 0640)", str(raised.exception))
        self.assertIn("chmod 600", str(raised.exception))

    def test_garbage_refused(self) -> None:
        """
        A file that is not a PEM key gives a clear error naming the file.
        """
        self.directory.mkdir()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"not a key\n")
        os.close(fd)
        with self.assertRaises(IdentityError) as raised:
            load_identity(self.path)
        self.assertIn(str(self.path), str(raised.exception))
        self.assertIn("not an unencrypted PEM private key", str(raised.exception))

    def test_other_algorithm_refused(self) -> None:
        """
        A valid PEM key of another algorithm is refused.
        """
        self.directory.mkdir()
        pem = generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, pem)
        os.close(fd)
        with self.assertRaises(IdentityError) as raised:
            load_identity(self.path)
        self.assertIn("not an Ed25519 key", str(raised.exception))

    def test_load_or_create(self) -> None:
        """
        The first call creates the key, the second loads the same one.
        """
        first, created = load_or_create_identity(self.path, environ={})
        self.assertTrue(created)
        second, created = load_or_create_identity(self.path, environ={})
        self.assertFalse(created)
        self.assertEqual(first.node_id, second.node_id)

    def test_credential_wins(self) -> None:
        """
        $CREDENTIALS_DIRECTORY/private_key is used instead of the key file.
        """
        credentials = Path(self.mktemp())
        credentials.mkdir()
        expected = NodeIdentity.generate()
        (credentials / "private_key").write_bytes(expected.private_pem())
        identity, created = load_or_create_identity(
            self.path, environ={"CREDENTIALS_DIRECTORY": str(credentials)}
        )
        self.assertFalse(created)
        self.assertEqual(identity.node_id, expected.node_id)
        self.assertFalse(self.path.exists())

    def test_bad_credential(self) -> None:
        """
        A credential that does not parse is an error naming the credential.
        """
        credentials = Path(self.mktemp())
        credentials.mkdir()
        (credentials / "private_key").write_bytes(b"junk")
        with self.assertRaises(IdentityError) as raised:
            load_or_create_identity(self.path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
        self.assertIn("credential private_key", str(raised.exception))


class RotationFileTests(SynchronousTestCase):
    """
    L{rotate_identity_file} swaps the key file atomically and keeps the old key.
    """

    def setUp(self) -> None:
        self.path = Path(self.mktemp()).absolute() / "private_key.pem"
        self.old = create_identity_file(self.path)

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    def test_rotate(self) -> None:
        """
        The new key replaces the file (0600) and the old one is kept in
        C{<path>.previous} (0600); no temporary file is left behind.
        """
        new = rotate_identity_file(self.path, self.old)
        self.assertNotEqual(new.public_key, self.old.public_key)
        self.assertEqual(new.source, str(self.path))
        self.assertNotEqual(new.node_id, self.old.node_id)
        previous = previous_key_path(self.path)
        self.assertEqual(previous, self.path.with_name("private_key.pem.previous"))
        self.assertEqual(load_identity(self.path).public_key, new.public_key)
        self.assertEqual(load_identity(previous).public_key, self.old.public_key)
        self.assertEqual((self.mode(self.path), self.mode(previous)), (0o600, 0o600))
        self.assertEqual(
            sorted(p.name for p in self.path.parent.iterdir()),
            ["private_key.pem", "private_key.pem.previous"],
        )

    def test_rotate_twice(self) -> None:
        """
        A second rotation keeps the key it replaced, not the first one.
        """
        second = rotate_identity_file(self.path, self.old)
        third = rotate_identity_file(self.path, second)
        self.assertEqual(load_identity(self.path).public_key, third.public_key)
        previous = previous_key_path(self.path)
        self.assertEqual(load_identity(previous).public_key, second.public_key)

    def test_memory_identity_refused(self) -> None:
        """
        An identity not loaded from the key file is not rotated into it.
        """
        self.assertRaises(
            IdentityReadOnlyError, rotate_identity_file, self.path, NodeIdentity.generate()
        )

    def test_replaced_file_refused(self) -> None:
        """
        When the file no longer holds the running key, it is not overwritten.
        """
        other = self.path.with_name("other.pem")
        intruder = create_identity_file(other)
        os.replace(other, self.path)
        with self.assertRaises(IdentityError) as raised:
            rotate_identity_file(self.path, self.old)
        self.assertIn("refusing to overwrite", str(raised.exception))
        self.assertEqual(load_identity(self.path).public_key, intruder.public_key)
        self.assertFalse(previous_key_path(self.path).exists())


class CredentialRotationTests(SynchronousTestCase):
    """
    A key from C{$CREDENTIALS_DIRECTORY} is rotated into the state directory,
    and at start-up a signed successor of the credential's key wins over it,
    any other credential wins over the successor.
    """

    def setUp(self) -> None:
        base = Path(self.mktemp()).absolute()
        self.state = base / "state"
        self.state.mkdir(parents=True)
        self.path = self.state / "private_key.pem"
        self.credentials = base / "credentials"
        self.credentials.mkdir()
        self.credential = NodeIdentity.generate()
        self.install(self.credential)
        self.environ = {"CREDENTIALS_DIRECTORY": str(self.credentials)}

    def install(self, identity: NodeIdentity) -> None:
        (self.credentials / "private_key").write_bytes(identity.private_pem())

    def load(self) -> NodeIdentity:
        identity, created = load_or_create_identity(self.path, self.environ, self.state)
        self.assertFalse(created)
        return identity

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    def test_rotate_credential(self) -> None:
        """
        The new key goes to C{<state_dir>/rotated_key.pem} (0600) with the
        rotation, signed by the credential's key, in
        C{key_rotations.json} (0600); the credential's key is not copied
        anywhere and C{identity_key} is not created.
        """
        current = self.load()
        self.assertIsNone(current.warning)
        new = rotate_identity_file(self.path, current, self.state)
        successor = successor_key_path(self.state)
        chain = rotation_chain_path(self.state)
        self.assertEqual(new.source, str(successor))
        self.assertEqual(load_identity(successor).public_key, new.public_key)
        self.assertEqual((self.mode(successor), self.mode(chain)), (0o600, 0o600))
        self.assertEqual(
            sorted(p.name for p in self.state.iterdir()), ["key_rotations.json", "rotated_key.pem"]
        )
        self.assertTrue(
            is_signed_successor(read_rotation_chain(chain), current.public_key, new.public_key)
        )
        self.assertIn("credential holds a rotated-out key; update it", str(new.warning))

    def test_successor_wins_over_rotated_out_credential(self) -> None:
        """
        At the next start the successor is used, with the warning that the
        credential holds a rotated-out key.
        """
        new = rotate_identity_file(self.path, self.load(), self.state)
        loaded = self.load()
        self.assertEqual(loaded.public_key, new.public_key)
        self.assertEqual(loaded.source, str(successor_key_path(self.state)))
        assert loaded.warning is not None
        self.assertTrue(loaded.warning.startswith("credential holds a rotated-out key; update it"))
        self.assertIn(self.credential.key_id, loaded.warning)

    def test_rotate_twice(self) -> None:
        """
        Rotating the successor again keeps the chain from the credential:
        the third key wins at start-up; the second is kept as C{.previous}.
        """
        second = rotate_identity_file(self.path, self.load(), self.state)
        running = self.load()
        third = rotate_identity_file(self.path, running, self.state)
        self.assertEqual(self.load().public_key, third.public_key)
        previous = previous_key_path(successor_key_path(self.state))
        self.assertEqual(load_identity(previous).public_key, second.public_key)
        self.assertEqual(self.mode(previous), 0o600)
        self.assertEqual(len(read_rotation_chain(rotation_chain_path(self.state))), 2)

    def test_credential_updated(self) -> None:
        """
        Once the operator put the successor into the credential, the
        credential is used again, without a warning.
        """
        new = rotate_identity_file(self.path, self.load(), self.state)
        self.install(new)
        loaded = self.load()
        self.assertEqual(loaded.public_key, new.public_key)
        self.assertTrue(loaded.source.startswith("credential "))
        self.assertIsNone(loaded.warning)

    def test_new_credential_wins(self) -> None:
        """
        A credential holding a key that is not a rotated-out predecessor of
        the successor (the operator installed a new key) wins, with a
        warning about the ignored successor.
        """
        rotate_identity_file(self.path, self.load(), self.state)
        replacement = NodeIdentity.generate()
        self.install(replacement)
        loaded = self.load()
        self.assertEqual(loaded.public_key, replacement.public_key)
        self.assertIn("not a signed successor", str(loaded.warning))

    def test_forged_chain_refused(self) -> None:
        """
        A key planted in the state directory with a rotation record that the
        credential's key did not sign does not win.
        """
        planted = create_identity_file(successor_key_path(self.state))
        attacker = NodeIdentity.generate()
        link = rotation_link(attacker, planted.public_key)
        link["old_public_key"] = rotation_link(self.credential, planted.public_key)[
            "old_public_key"
        ]
        rotation_chain_path(self.state).write_text(json.dumps([link]))
        loaded = self.load()
        self.assertEqual(loaded.public_key, self.credential.public_key)
        self.assertIn("not a signed successor", str(loaded.warning))

    def test_open_successor_refused(self) -> None:
        """
        A successor readable by others stops the start with a message, rather
        than using it or silently falling back to the rotated-out credential.
        """
        rotate_identity_file(self.path, self.load(), self.state)
        os.chmod(successor_key_path(self.state), 0o644)
        with self.assertRaises(IdentityError) as raised:
            self.load()
        self.assertIn("accessible by group or others", str(raised.exception))

    def test_successor_without_credential(self) -> None:
        """
        Without the credential and without a key file, the successor is used
        (no new identity is minted).
        """
        new = rotate_identity_file(self.path, self.load(), self.state)
        identity, created = load_or_create_identity(self.path, {}, self.state)
        self.assertFalse(created)
        self.assertEqual(identity.public_key, new.public_key)
        self.assertFalse(self.path.exists())

    def test_changed_successor_refused(self) -> None:
        """
        A successor file that no longer holds the running key is not overwritten.
        """
        rotate_identity_file(self.path, self.load(), self.state)
        running = self.load()
        os.unlink(successor_key_path(self.state))
        intruder = create_identity_file(successor_key_path(self.state))
        with self.assertRaises(IdentityError) as raised:
            rotate_identity_file(self.path, running, self.state)
        self.assertIn("refusing to overwrite", str(raised.exception))
        self.assertEqual(
            load_identity(successor_key_path(self.state)).public_key, intruder.public_key
        )

    def test_crash_before_key_written(self) -> None:
        """
        A chain link whose key never reached the disk changes nothing: the
        credential is used.
        """
        orphan = NodeIdentity.generate()
        link = rotation_link(self.credential, orphan.public_key)
        rotation_chain_path(self.state).write_text(json.dumps([link]))
        loaded = self.load()
        self.assertEqual(loaded.public_key, self.credential.public_key)
        self.assertIsNone(loaded.warning)
