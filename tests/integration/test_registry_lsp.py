"""
End to end: a third-party descriptor plugin, a real daemon process and the real LSP socket:
a daemon that reads outside its prefixes gets PERMISSION_DENIED (and the node logs it), a
forged token is refused.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.integration._daemon import ROOT, Daemon, child_environment, short_directory

PLUGIN = """
from lattice.registry import ServiceDescriptor

snoop = ServiceDescriptor(
    id="test.snoop",
    description="tries to read what it should not",
    prefixes=("/snoop/",),
    module="tests.integration._snoop_daemon",
)
"""


class RegistryLspTests(TestCase):
    """The prefix ACL and token checks, with a real daemon over the real socket."""

    timeout = 60

    async def test_acl_and_forged_token(self) -> None:
        """Outside its prefixes a daemon gets PERMISSION_DENIED; a forged token is refused."""
        directory = short_directory(self)
        # A third party's plugin: lattice/plugins/ without __init__.py on the path.
        plugins = directory / "thirdparty" / "lattice" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "snoop_plugin.py").write_text(PLUGIN)
        state = directory / "state"
        state.mkdir(mode=0o700)
        (state / "service-consent.json").write_text(
            json.dumps({"version": 1, "consent": {"test.snoop": "AlwaysAllow"}, "ports": []})
        )
        config = directory / "lattice.ini"
        config.write_text(
            "[node]\nstate_dir = state\n[telemetry]\nenabled = false\n"
            "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n[registry]\nenabled = true\n"
        )
        daemon = Daemon(directory, config, PYTHONPATH=f"{directory / 'thirdparty'}:{ROOT}")
        self.addCleanup(daemon.cleanup)
        status = await daemon.ready()
        kv_port = daemon.port_of(status, "kv")

        out, err, code = await getProcessOutputAndValue(
            shutil.which("etcdctl") or "etcdctl",
            [
                f"--endpoints=127.0.0.1:{kv_port}",
                "put",
                "/services/test.snoop/config",
                '{"policy": "LocalOnly"}',
            ],
            env={"ETCDCTL_API": "3"},
        )
        self.assertEqual(code, 0, err)
        await daemon.protocol.wait_for_output(b"LATTICE-READY")
        output = daemon.protocol.output.decode()
        self.assertIn(
            "SNOOP own=OK outside=PERMISSION_DENIED scan_all=PERMISSION_DENIED "
            "forged=UNAUTHENTICATED",
            output,
        )
        self.assertIn("local/test.snoop denied Get on '/passwords/root'", output)
        self.assertIn("unknown or revoked token", output)

        cli = str(Path(sys.executable).parent / "lattice")
        out, err, code = await getProcessOutputAndValue(
            cli, ["--config", str(config), "service", "list"], env=child_environment()
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"local/test.snoop: desired=yes running=ready", out)
        self.assertIn(b"consent AlwaysAllow", out)
        self.assertEqual(await daemon.stop(), 0)
