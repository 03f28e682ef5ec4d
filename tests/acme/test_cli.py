"""
``lattice tls status``.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lattice.acme._certs import parse_bundle, self_signed_bundle
from lattice.acme._cli import format_status
from lattice.acme._store import write_atomically
from lattice.cli import main


class StatusTests(SynchronousTestCase):
    """
    The status text and the offline fallback.
    """

    def test_format(self) -> None:
        """
        The text shows the names, expiry, next renewal and the last error.
        """
        info = parse_bundle(self_signed_bundle(["a.example"], 1_800_000_000, 90 * 86400))
        text = format_status(
            {
                "mode": "acme",
                "source": "acme",
                "path": "/var/lib/lattice/tls/acme/certificate.pem",
                "certificate": info.as_json(),
                "acme_directory": "https://ca.example/dir",
                "next_renewal": 1_800_000_000 + 60 * 86400,
                "renewing": False,
                "failures": 2,
                "last_error": "validation failed: a.example: refused",
                "last_error_at": 1_800_000_000,
            },
            now=1_800_000_000,
        )
        self.assertIn("names: a.example", text)
        self.assertIn("expires: 2027-", text)
        self.assertIn("(in 90 days)", text)
        self.assertIn("next renewal: 2027-", text)
        self.assertIn("(in 60 days)", text)
        self.assertIn("failed attempts in a row: 2", text)
        self.assertIn("validation failed: a.example: refused", text)

    def test_node_not_running(self) -> None:
        """
        Without a running node, the certificate file is shown and the renewal is unknown.
        """
        root = Path(self.mktemp()).absolute()
        (root / "tls").mkdir(parents=True)
        write_atomically(
            root / "tls" / "self-signed.pem", self_signed_bundle(["dev.example"], 1_800_000_000, 1)
        )
        ini = root / "lattice.ini"
        ini.write_text(
            f"[node]\nstate_dir = {root}\nadmin_listen = unix:{root}/none.sock\n"
            "[tls]\nenabled = true\nmode = self-signed\n"
        )
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["--config", str(ini), "tls", "status"])
        self.assertEqual(code, 0)
        self.assertIn("node not reachable", out.getvalue())
        self.assertIn("names: dev.example", out.getvalue())
        self.assertIn("next renewal: unknown (the node is not running)", out.getvalue())
