"""
The node's identity: an Ed25519 key pair.

The private key is kept as PKCS#8 PEM.  It is created with mode 0600 from the
first byte (written to a temporary file opened C{O_EXCL} with that mode, then
renamed into place), never written and chmod'ed afterwards.  A key readable by
group or others is refused.

The node id is derived from the raw 32-byte public key: the lowercase base32
form of the first 16 bytes of its SHA-256 digest (26 characters).  The
fingerprint is the full SHA-256 digest in hex; the key id names the key for
signatures and rotation (C{ed25519:} and the first 16 hex digits).

L{rotate_identity_file} replaces the key of a running node in place (the old
key is kept as C{<path>.previous}); the node id follows the new key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "IdentityError",
    "IdentityReadOnlyError",
    "NodeIdentity",
    "PublicIdentity",
    "create_identity_file",
    "fingerprint_of",
    "load_identity",
    "load_or_create_identity",
    "node_id_of",
    "previous_key_path",
    "rotate_identity_file",
]

CREDENTIAL_NAME = "private_key"


class IdentityError(Exception):
    """
    The identity key cannot be used; the message names the file and the reason.
    """


class IdentityReadOnlyError(IdentityError):
    """
    The running identity does not come from the key file (a systemd
    credential, or memory): it cannot be rotated in place.
    """


def node_id_of(public_key: bytes) -> str:
    """
    The node id of a raw Ed25519 public key.
    """
    digest = hashlib.sha256(public_key).digest()[:16]
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def fingerprint_of(public_key: bytes) -> str:
    """
    The SHA-256 fingerprint (hex) of a raw Ed25519 public key.
    """
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class PublicIdentity:
    """
    Someone's public key, with the names derived from it.
    """

    public_key: bytes

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_key)

    @property
    def key_id(self) -> str:
        return "ed25519:" + self.fingerprint[:16]

    def verify(self, signature: bytes, data: bytes) -> bool:
        """
        Whether C{signature} is this key's signature over C{data}.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class NodeIdentity:
    """
    This node's key pair.
    """

    def __init__(self, private_key: Ed25519PrivateKey, source: str):
        self._private_key = private_key
        self.source = source
        self.public = PublicIdentity(
            private_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> NodeIdentity:
        """
        A fresh identity held only in memory (tests, benchmarks).
        """
        return cls(Ed25519PrivateKey.generate(), "<memory>")

    @property
    def public_key(self) -> bytes:
        return self.public.public_key

    @property
    def node_id(self) -> str:
        return self.public.node_id

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """
        Sign C{data} with the private key.
        """
        return self._private_key.sign(data)

    def private_pem(self) -> bytes:
        """
        The private key as unencrypted PKCS#8 PEM.
        """
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _parse_private_key(data: bytes, source: str) -> NodeIdentity:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IdentityError(f"{source}: not an unencrypted PEM private key ({reason})") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm et al.
        raise IdentityError(f"{source}: cannot load private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{source}: not an Ed25519 key ({type(key).__name__})")
    return NodeIdentity(key, source)


def load_identity(path: Path) -> NodeIdentity:
    """
    Load the key at C{path}, refusing one that group or others can read.

    @raise IdentityError: the file is missing, unreadable, too open, or not
        an Ed25519 PEM key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise IdentityError(f"{path}: cannot open identity key: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"{path}: identity key is not a regular file")
        if info.st_mode & 0o077:
            raise IdentityError(
                f"{path}: identity key is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(64 * 1024)
    finally:
        os.close(fd)
    return _parse_private_key(data, str(path))


def create_identity_file(path: Path) -> NodeIdentity:
    """
    Generate a key and store it at C{path}, which must not exist yet.

    The file is created with mode 0600 by C{open}, filled and synced under a
    temporary name, then linked into place, so a crash never leaves a partial
    key at C{path} and the key is never readable by others.

    @raise IdentityError: C{path} exists or cannot be written.
    """
    identity = NodeIdentity(Ed25519PrivateKey.generate(), str(path))
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise IdentityError(f"{directory}: cannot create directory: {e.strerror}") from None
    temporary = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError as e:
        raise IdentityError(f"{temporary}: cannot create identity key: {e.strerror}") from None
    try:
        try:
            os.write(fd, identity.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() refuses to replace an existing file, unlike rename().
        os.link(temporary, path)
    except FileExistsError:
        raise IdentityError(f"{path}: already exists") from None
    except OSError as e:
        raise IdentityError(f"{path}: cannot write identity key: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_directory(directory)
    return identity


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_or_create_identity(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[NodeIdentity, bool]:
    """
    The node's identity: C{$CREDENTIALS_DIRECTORY/private_key} when systemd
    provides it, else the key at C{path}, generated there if it does not exist.

    @return: the identity and whether it was created now.
    @raise IdentityError: the key exists but cannot be used.
    """
    if environ is None:
        environ = os.environ
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        credential = Path(credentials) / CREDENTIAL_NAME
        if credential.exists():
            try:
                data = credential.read_bytes()
            except OSError as e:
                raise IdentityError(f"{credential}: cannot read credential: {e.strerror}") from None
            return _parse_private_key(data, f"credential {CREDENTIAL_NAME} ({credential})"), False
    if not os.path.lexists(path):
        return create_identity_file(path), True
    return load_identity(path), False


def previous_key_path(path: Path) -> Path:
    """
    Where L{rotate_identity_file} keeps the key it replaced: C{<path>.previous}.
    """
    return path.with_name(path.name + ".previous")


def _replace_private_file(path: Path, data: bytes) -> None:
    """
    Atomically make C{path} a 0600 file holding C{data}: a temporary file
    opened C{O_EXCL} with mode 0600, written and synced, renamed over C{path}.
    """
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError as e:
        raise IdentityError(f"{temporary}: cannot create key file: {e.strerror}") from None
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as e:
        raise IdentityError(f"{path}: cannot write key file: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def rotate_identity_file(path: Path, current: NodeIdentity) -> NodeIdentity:
    """
    Replace the key at C{path} (which must hold C{current}) by a new one.

    The old key is first stored as C{<path>.previous} (0600, replacing an
    older one), then the new key is renamed over C{path}; both files are
    created 0600 by C{open} and synced before the rename, so at every moment
    C{path} holds either the old or the new key, complete, and the old key is
    never lost.

    @return: the new identity (its C{source} is C{path}).
    @raise IdentityReadOnlyError: C{current} was not loaded from C{path}
        (it comes from C{$CREDENTIALS_DIRECTORY}): rotate the credential.
    @raise IdentityError: C{path} holds another key, or cannot be written.
    """
    if current.source != str(path):
        if current.source.startswith("credential "):
            raise IdentityReadOnlyError(
                f"the identity key comes from the systemd {current.source}, which is "
                "read-only: rotate the credential instead (and restart the node)"
            )
        raise IdentityReadOnlyError(
            f"the identity key comes from {current.source}, not from {path}: "
            "it cannot be rotated there"
        )
    on_disk = load_identity(path)
    if on_disk.public_key != current.public_key:
        raise IdentityError(
            f"{path}: holds key {on_disk.key_id}, not the running key {current.key_id}; "
            "refusing to overwrite it"
        )
    new = NodeIdentity(Ed25519PrivateKey.generate(), str(path))
    _replace_private_file(previous_key_path(path), current.private_pem())
    _replace_private_file(path, new.private_pem())
    _fsync_directory(path.parent)
    return new
