"""
Tests for L{lattice._files}.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lattice import _files


class WriteAtomicallyTests(SynchronousTestCase):
    """
    Private files are replaced whole, with their mode from the start.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "secret.json"

    def test_create_and_replace(self) -> None:
        """
        The file holds the new data with mode 0600 and no temporary file remains.
        """
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)
        _files.write_atomically(self.path, b"one")
        _files.write_atomically(self.path, b"two" * 100_000)
        self.assertEqual(self.path.read_bytes(), b"two" * 100_000)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), ["secret.json"])

    def test_mode(self) -> None:
        """
        Another mode can be asked for.
        """
        _files.write_atomically(self.path, b"x", mode=0o640)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)

    def test_failure_keeps_old_contents(self) -> None:
        """
        A failed write leaves the old file and no temporary file behind.
        """
        _files.write_atomically(self.path, b"old")

        def refuse(source: str, target: object) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", refuse)
        with self.assertRaises(OSError):
            _files.write_atomically(self.path, b"new")
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.directory), ["secret.json"])

    def test_missing_directory(self) -> None:
        """
        A missing directory is an OSError, not a partial file.
        """
        with self.assertRaises(OSError):
            _files.write_atomically(self.directory / "nope" / "f", b"x")
