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

A key from a systemd credential (C{$CREDENTIALS_DIRECTORY/private_key}) cannot
be replaced in place: its successor is written (0600, like every key file)
to C{<state_dir>/rotated_key.pem}, and the rotation, signed by the old key, is
appended to C{<state_dir>/key_rotations.json}.  At start-up the successor
wins over the credential only when that chain of signed rotations leads from
the credential's key to it (the credential then holds a rotated-out key and
the operator is told to update it); a credential holding any other key (a new
one installed by the operator) wins over the successor.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
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

from lattice._files import fsync_directory

__all__ = [
    "IdentityError",
    "IdentityReadOnlyError",
    "NodeIdentity",
    "PublicIdentity",
    "create_identity_file",
    "fingerprint_of",
    "is_credential",
    "is_signed_successor",
    "load_identity",
    "load_or_create_identity",
    "node_id_of",
    "previous_key_path",
    "read_rotation_chain",
    "rotate_identity_file",
    "rotate_to_successor",
    "rotation_chain_path",
    "rotation_link",
    "successor_key_path",
]

CREDENTIAL_NAME = "private_key"
SUCCESSOR_NAME = "rotated_key.pem"
CHAIN_NAME = "key_rotations.json"
MAX_CHAIN = 256
_CHAIN_CONTEXT = b"lattice-key-rotation\n"


class IdentityError(Exception):
    """
    The identity key cannot be used; the message names the file and the reason.
    """


class IdentityReadOnlyError(IdentityError):
    """
    The running identity does not come from the key file (a systemd
    credential, or memory): it cannot be rotated in place.
    """


@functools.lru_cache(maxsize=65536)
def node_id_of(public_key: bytes) -> str:
    """
    The node id of a raw Ed25519 public key (recent answers are cached).
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
        # what the operator must fix, when the key was chosen over another
        # one (a credential holding a rotated-out key, say)
        self.warning: str | None = None
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
    fsync_directory(directory)
    return identity


def successor_key_path(state_dir: Path) -> Path:
    """
    Where a rotation of a key that cannot be replaced in place (a systemd
    credential) stores the new key: C{<state_dir>/rotated_key.pem}.
    """
    return state_dir / SUCCESSOR_NAME


def rotation_chain_path(state_dir: Path) -> Path:
    """
    Where those rotations are recorded, each signed by the key it retired:
    C{<state_dir>/key_rotations.json}.
    """
    return state_dir / CHAIN_NAME


def _chain_bytes(old: bytes, new: bytes) -> bytes:
    # binary and prefixed: never mistaken for a canonical JSON object the
    # same key signs in the discovery protocol
    return _CHAIN_CONTEXT + old + new


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rotation_link(old: NodeIdentity, new_public_key: bytes) -> dict[str, str]:
    """
    A link of the rotation chain: C{old} hands over to C{new_public_key}.
    """
    return {
        "kind": "lattice-key-rotation",
        "old_key_id": old.key_id,
        "new_key_id": PublicIdentity(new_public_key).key_id,
        "old_public_key": _b64(old.public_key),
        "new_public_key": _b64(new_public_key),
        "signature": _b64(old.sign(_chain_bytes(old.public_key, new_public_key))),
    }


def read_rotation_chain(path: Path) -> list[dict[str, str]]:
    """
    The links stored at C{path} (none when it does not exist).

    @raise IdentityError: it exists but is not a chain.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise IdentityError(f"{path}: cannot read key rotations: {e.strerror}") from None
    try:
        chain = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise IdentityError(f"{path}: key rotations are not JSON") from None
    if not isinstance(chain, list) or not all(isinstance(link, dict) for link in chain):
        raise IdentityError(f"{path}: key rotations are not a list of objects")
    return chain


def _decode_key(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return key if len(key) == 32 else None


def is_signed_successor(chain: list[dict[str, str]], old: bytes, new: bytes) -> bool:
    """
    Whether links of C{chain}, each signed by the key it retires, lead from
    key C{old} to key C{new}.
    """
    reached = {old}
    frontier = [old]
    while frontier:
        current = frontier.pop()
        for link in chain:
            if _decode_key(link.get("old_public_key")) != current:
                continue
            successor = _decode_key(link.get("new_public_key"))
            signature = link.get("signature")
            if successor is None or successor in reached or not isinstance(signature, str):
                continue
            try:
                raw = base64.b64decode(signature, validate=True)
            except ValueError:
                continue
            if PublicIdentity(current).verify(raw, _chain_bytes(current, successor)):
                if successor == new:
                    return True
                reached.add(successor)
                frontier.append(successor)
    return False


def _read_credential(environ: Mapping[str, str]) -> NodeIdentity | None:
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if not credentials:
        return None
    credential = Path(credentials) / CREDENTIAL_NAME
    if not credential.exists():
        return None
    try:
        data = credential.read_bytes()
    except OSError as e:
        raise IdentityError(f"{credential}: cannot read credential: {e.strerror}") from None
    return _parse_private_key(data, f"credential {CREDENTIAL_NAME} ({credential})")


def is_credential(identity: NodeIdentity) -> bool:
    """
    Whether C{identity} was read from a systemd credential.
    """
    return identity.source.startswith("credential ")


def load_or_create_identity(
    path: Path, environ: Mapping[str, str] | None = None, state_dir: Path | None = None
) -> tuple[NodeIdentity, bool]:
    """
    The node's identity: C{$CREDENTIALS_DIRECTORY/private_key} when systemd
    provides it, else the key at C{path}, generated there if it does not exist.

    That key (the I{base}) is replaced by a rotated successor in
    C{<state_dir>/rotated_key.pem} when the signed rotations in
    C{<state_dir>/key_rotations.json} lead from the base to it; the identity's
    C{warning} then says that the base holds a rotated-out key.  A base that
    is not a predecessor of the successor (a new credential) wins, with a
    warning about the ignored successor.

    @param state_dir: where rotations of read-only keys are kept (default:
        the directory of C{path}).
    @return: the identity and whether it was created now.
    @raise IdentityError: a key exists but cannot be used.
    """
    if environ is None:
        environ = os.environ
    successor_path = successor_key_path(path.parent if state_dir is None else state_dir)
    base = _read_credential(environ)
    if (
        base is None
        and successor_path != path
        and os.path.lexists(successor_path)
        and not os.path.lexists(path)
    ):
        successor = load_identity(successor_path)
        successor.warning = (
            f"no credential and no key at {path}: using the rotated key in {successor_path}"
        )
        return successor, False
    if base is None:
        if not os.path.lexists(path):
            return create_identity_file(path), True
        base = load_identity(path)
        if Path(base.source) == successor_path:
            return base, False
    if not os.path.lexists(successor_path):
        return base, False
    try:
        successor = load_identity(successor_path)
    except IdentityError as e:
        raise IdentityError(
            f"{e} (the key a rotation stored because the {base.source} key cannot be "
            f"replaced in place; fix it, or remove it to use the {base.source} key)"
        ) from None
    if successor.public_key == base.public_key:
        return base, False
    chain = read_rotation_chain(rotation_chain_path(successor_path.parent))
    if is_signed_successor(chain, base.public_key, successor.public_key):
        successor.warning = _rotated_out(base, successor)
        return successor, False
    base.warning = (
        f"{successor_path} holds key {successor.key_id}, which is not a signed successor of "
        f"the {base.source} key {base.key_id}: the {base.source} key is used (a new key "
        f"was installed); remove {successor_path} once you no longer need it"
    )
    return base, False


def _rotated_out(base: NodeIdentity, successor: NodeIdentity) -> str:
    what = "credential" if is_credential(base) else base.source
    return (
        f"{what} holds a rotated-out key; update it: {base.key_id} in the {base.source} "
        f"was rotated to {successor.key_id}, kept in {successor.source}"
    )


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


def rotate_identity_file(
    path: Path, current: NodeIdentity, state_dir: Path | None = None
) -> NodeIdentity:
    """
    Replace the key at C{path} (which must hold C{current}) by a new one.

    The old key is first stored as C{<path>.previous} (0600, replacing an
    older one), then the new key is renamed over C{path}; both files are
    created 0600 by C{open} and synced before the rename, so at every moment
    C{path} holds either the old or the new key, complete, and the old key is
    never lost.

    A key from a systemd credential (or its successor) is rotated into
    C{<state_dir>/rotated_key.pem} instead, see L{rotate_to_successor}.

    @param state_dir: where successors of credential keys go (default: the
        directory of C{path}).
    @return: the new identity (its C{source} is the file it was written to).
    @raise IdentityReadOnlyError: C{current} comes from neither C{path}, a
        credential nor the successor file.
    @raise IdentityError: C{path} holds another key, or cannot be written.
    """
    successor = successor_key_path(path.parent if state_dir is None else state_dir)
    if current.source != str(path):
        if is_credential(current) or current.source == str(successor):
            return rotate_to_successor(successor, current)
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
    fsync_directory(path.parent)
    return new


def rotate_to_successor(successor: Path, current: NodeIdentity) -> NodeIdentity:
    """
    Rotate a key that cannot be replaced in place (a systemd credential), or
    the successor already written for one, into the file C{successor}.

    The rotation, signed by C{current}, is appended to the chain next to
    C{successor} first, then the new key is written; a key already at
    C{successor} is kept as C{<successor>.previous}.  Every file is created
    0600 by C{open} under a temporary name, synced and renamed into place, so
    a crash leaves either the old state (the chain link names a key that is
    not there: ignored) or the new one.

    @return: the new identity (its C{source} is C{successor}), with a
        C{warning} that the credential now holds a rotated-out key.
    @raise IdentityError: the files cannot be read or written, or
        C{successor} holds a key other than the running one although the
        running one comes from it.
    """
    directory = successor.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise IdentityError(f"{directory}: cannot create directory: {e.strerror}") from None
    on_disk = load_identity(successor) if os.path.lexists(successor) else None
    if current.source == str(successor) and (
        on_disk is None or on_disk.public_key != current.public_key
    ):
        found = "nothing" if on_disk is None else f"key {on_disk.key_id}"
        raise IdentityError(
            f"{successor}: holds {found}, not the running key {current.key_id}; "
            "refusing to overwrite it"
        )
    chain_path = rotation_chain_path(directory)
    chain = read_rotation_chain(chain_path)
    new = NodeIdentity(Ed25519PrivateKey.generate(), str(successor))
    chain = [*chain, rotation_link(current, new.public_key)][-MAX_CHAIN:]
    _replace_private_file(chain_path, json.dumps(chain, indent=1).encode("ascii") + b"\n")
    if on_disk is not None:
        _replace_private_file(previous_key_path(successor), on_disk.private_pem())
    _replace_private_file(successor, new.private_pem())
    fsync_directory(directory)
    if is_credential(current) or current.warning:
        new.warning = (
            "credential holds a rotated-out key; update it: the running key "
            f"{new.key_id} is kept in {successor}"
        )
    return new
