"""
Tests for the C{lattice} command (L{lattice.cli}).
"""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lattice.cli import main
from lattice.identity import NodeIdentity, load_or_create_identity, rotate_identity_file


class _CLITestCase(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def write_config(self, text: str) -> Path:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        path = directory / "lattice.ini"
        path.write_text(text)
        return path


class ConfigCheckTests(_CLITestCase):
    """
    lattice config check validates a file.
    """

    def test_valid(self) -> None:
        """
        A valid file prints ok and exits 0.
        """
        path = self.write_config("[log]\nlevel = warn\n")
        code, out, err = self.run_cli("config", "check", "--config", str(path))
        self.assertEqual((code, err), (0, ""))
        self.assertIn(": ok", out)

    def test_invalid(self) -> None:
        """
        An invalid file prints every error and exits 1.
        """
        path = self.write_config("[log]\nlevel = loud\nformat = xml\n[x]\n")
        code, out, err = self.run_cli("config", "check", "--config", str(path))
        self.assertEqual(code, 1)
        lines = err.splitlines()
        self.assertEqual(len(lines), 4, lines)
        self.assertTrue(lines[0].startswith(f"{path}: [x]: unknown section"), lines)
        self.assertIn("3 error(s)", lines[-1])
        self.assertNotIn("Traceback", out + err)

    def test_parent_option(self) -> None:
        """
        --config may also come before the command.
        """
        path = self.write_config("")
        code, out, _ = self.run_cli("--config", str(path), "config", "check")
        self.assertEqual(code, 0)
        self.assertIn(str(path), out)


class IdentityTests(_CLITestCase):
    """
    lattice identity init and show.
    """

    def test_init_then_show(self) -> None:
        """
        init creates a 0600 key once and is idempotent; show prints the same id.
        """
        key = Path(self.mktemp()).absolute() / "k.pem"
        code, out, err = self.run_cli("identity", "init", "--key", str(key))
        self.assertEqual(code, 0, err)
        self.assertIn("created", err)
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        node_id = out.splitlines()[0]
        code, out, err = self.run_cli("identity", "init", "--key", str(key))
        self.assertEqual(code, 0)
        self.assertIn("exists, kept", err)
        self.assertEqual(out.splitlines()[0], node_id)
        code, out, _ = self.run_cli("identity", "show", "--key", str(key))
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], node_id)
        self.assertTrue(node_id.startswith("node_id: "))

    def test_show_configured(self) -> None:
        """
        show reads the key configured in the INI file.
        """
        path = self.write_config("[node]\nstate_dir = state\n")
        identity = NodeIdentity.generate()
        key = path.parent / "state" / "private_key.pem"
        key.parent.mkdir()
        key.write_bytes(identity.private_pem())
        key.chmod(0o600)
        code, out, _ = self.run_cli("identity", "show", "--config", str(path))
        self.assertEqual(code, 0)
        self.assertIn(f"node_id: {identity.node_id}", out)

    def test_show_missing(self) -> None:
        """
        show without a key explains how one is made, and exits 1.
        """
        path = self.write_config("[node]\nstate_dir = state\n")
        code, _, err = self.run_cli("identity", "show", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("no identity key yet", err)

    def test_show_open_key(self) -> None:
        """
        show refuses a key readable by others, like the daemon.
        """
        key = Path(self.mktemp()).absolute()
        key.write_bytes(NodeIdentity.generate().private_pem())
        key.chmod(0o644)
        code, _, err = self.run_cli("identity", "show", "--key", str(key))
        self.assertEqual(code, 1)
        self.assertIn("accessible by group or others", err)

    def test_show_rotated_credential(self) -> None:
        """
        show prints the key the node uses (the rotated successor of its
        credential's key) and warns that the credential must be updated.
        """
        path = self.write_config("[node]\nstate_dir = state\n")
        state = path.parent / "state"
        state.mkdir()
        credentials = path.parent / "credentials"
        credentials.mkdir()
        old = NodeIdentity.generate()
        (credentials / "private_key").write_bytes(old.private_pem())
        self.patch(os, "environ", dict(os.environ, CREDENTIALS_DIRECTORY=str(credentials)))
        current, _ = load_or_create_identity(state / "private_key.pem", state_dir=state)
        new = rotate_identity_file(state / "private_key.pem", current, state)
        code, out, err = self.run_cli("identity", "show", "--config", str(path))
        self.assertEqual(code, 0, err)
        self.assertIn(f"node_id: {new.node_id}", out)
        self.assertIn("warning: credential holds a rotated-out key; update it", err)


class StatusTests(_CLITestCase):
    """
    lattice status without a running node.
    """

    def test_unreachable(self) -> None:
        """
        A node that does not answer gives a clear error and exit 1.
        """
        path = self.write_config("[telemetry]\nlisten = unix:nothing.sock\n")
        code, _, err = self.run_cli("status", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("cannot reach the node at [telemetry] listen = unix:", err)

    def test_bad_config(self) -> None:
        """
        An invalid configuration is reported, not a traceback.
        """
        path = self.write_config("[telemetry]\nlisten = nope\n")
        code, _, err = self.run_cli("status", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("[telemetry] listen: unknown endpoint type", err)
