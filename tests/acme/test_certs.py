"""
Certificate helpers: bundles, schedules, atomic files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.acme._certs import (
    CertificateError,
    generate_key_pem,
    parse_bundle,
    renewal_time,
    retry_delay,
    self_signed_bundle,
)
from lattice.acme._store import StoreError, load_or_create_key, write_atomically
from lattice.tls import TlsServerOptions, load_server_context


class BundleTests(SynchronousTestCase):
    """
    The served bundle: certificate, chain and key in one file.
    """

    def test_self_signed(self) -> None:
        """
        A self-signed bundle parses, covers its names and is self-issued.
        """
        info = parse_bundle(self_signed_bundle(["a.example", "192.0.2.1"], 1_800_000_000, 3600))
        self.assertTrue(info.covers(["A.example.", "192.0.2.1"]))
        self.assertTrue(info.self_issued)
        self.assertEqual(info.not_after, 1_800_003_600)

    def test_wrong_key(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        bundle = self_signed_bundle(["a.example"], 1_800_000_000, 3600)
        certificate = bundle[: bundle.index(b"-----BEGIN PRIVATE KEY")]
        with self.assertRaises(CertificateError):
            parse_bundle(certificate + generate_key_pem())
        with self.assertRaises(CertificateError):
            parse_bundle(certificate)

    def test_tls_loads_bundle(self) -> None:
        """
        lattice.tls loads one bundle file given as both certificate and key.
        """
        path = Path(self.mktemp())
        path.write_bytes(self_signed_bundle(["a.example"], 1_800_000_000, 3600))
        load_server_context(TlsServerOptions(certificate=str(path), private_key=str(path)))


class ScheduleTests(SynchronousTestCase):
    """
    Renewal time and retry backoff.
    """

    @given(st.floats(min_value=0, max_value=0.999999))
    def test_renewal_window(self, r: float) -> None:
        """
        Renewal falls between 61.7% and 66.7% of the lifetime.
        """
        info = parse_bundle(self_signed_bundle(["a"], 1_800_000_000, 90 * 86400))
        when = renewal_time(info, lambda: r)
        self.assertLessEqual(info.not_before + info.lifetime * (2 / 3 - 0.05), when + 1e-6)
        self.assertLessEqual(when, info.not_before + info.lifetime * 2 / 3)

    @given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=0.999))
    def test_backoff_bounds(self, failures: int, r: float) -> None:
        """
        The retry delay grows from the minimum, never exceeds the maximum, and the
        jitter takes at most a quarter off.
        """
        delay = retry_delay(failures, 60, 3600, lambda: r)
        base = min(3600, 60 * 2 ** min(failures - 1, 40))
        self.assertLessEqual(delay, base)
        self.assertGreaterEqual(delay, base * 0.75)


class StoreTests(SynchronousTestCase):
    """
    Files under <state_dir>/tls.
    """

    def test_write_atomically(self) -> None:
        """
        The file is replaced whole, with the requested mode, and no temporary is left.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "x.pem"
        write_atomically(path, b"one")
        write_atomically(path, b"two")
        self.assertEqual(path.read_bytes(), b"two")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(os.listdir(directory), ["x.pem"])

    def test_account_key(self) -> None:
        """
        The key is created 0600 once, then reused; a group-readable key is refused.
        """
        path = Path(self.mktemp())
        key, created = load_or_create_key(path)
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(load_or_create_key(path), (key, False))
        path.chmod(0o640)
        with self.assertRaises(StoreError) as caught:
            load_or_create_key(path)
        self.assertIn("chmod 600", str(caught.exception))
