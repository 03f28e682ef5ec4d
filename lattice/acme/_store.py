"""
The certificate service's files under ``<state_dir>/tls/``.  Blocking (run in the
thread pool once the node runs); no Twisted.

::

    tls/self-signed.pem        [tls] mode = self-signed: certificate + key, 0600
    tls/acme/certificate.pem   [tls] mode = acme: chain + key, 0600 (a temporary
                               self-signed certificate until the first issuance)
    tls/acme/account.key       the ACME account key, 0600, created once
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lattice import _files
from lattice.acme._certs import generate_key_pem

__all__ = ["StoreError", "ensure_directory", "load_or_create_key", "read_file", "write_atomically"]


class StoreError(Exception):
    """
    A file of the certificate service cannot be read or written; the message names it.
    """


def ensure_directory(path: Path) -> None:
    """
    Create C{path} (mode 0700) and its parents if missing.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{path}: cannot create directory: {e.strerror}") from None


def read_file(path: Path) -> bytes | None:
    """
    The contents of C{path}, or C{None} if it does not exist.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror}") from None


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data} atomically and durably (see
    L{lattice._files.write_atomically}).

    @raise StoreError: naming the file and the reason.
    """
    try:
        _files.write_atomically(path, data, mode)
    except OSError as e:
        raise StoreError(f"{path}: cannot write: {e.strerror}") from None


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """
    Read the private key at C{path}, or create a new ECDSA P-256 key there (mode
    0600, never overwriting).  Returns the PEM and whether it was created.

    @raise StoreError: unreadable, or readable by group or others.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_private(path), False
    except OSError as e:
        raise StoreError(f"{path}: cannot create: {e.strerror}") from None
    key = generate_key_pem()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StoreError(f"{path}: cannot write: {e.strerror}") from None
    _files.fsync_directory(path.parent)
    return key, True


def _read_private(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(
            f"{path}: key is accessible by group or others (mode {stat.S_IMODE(mode):04o});"
            f" run: chmod 600 {path}"
        )
    data = read_file(path)
    if data is None:
        raise StoreError(f"{path}: disappeared while reading")
    return data
