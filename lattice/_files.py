"""
Durable, atomic replacement of small private files (keys, certificates,
approvals, consent).  Blocking: call from a thread pool, never the reactor.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data}: write a temporary file in the same directory
    with C{mode} from the start, fsync it, rename it over C{path}, and fsync
    the directory.  Readers see the old or the new contents, never a mixture;
    after a crash, one of the two.  The directory must exist.

    @raise OSError: the file could not be written; C{path} is unchanged.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """
    Make a rename or link in C{directory} durable (best effort: some file
    systems refuse to fsync a directory).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
