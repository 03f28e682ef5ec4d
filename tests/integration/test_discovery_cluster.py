"""
Five real Lattice processes federate on loopback: one bootstrap server,
gossip rounds forced through the admin socket, a message from C{alice@A} to
C{bob@E} handed to E's webhook (a real HTTP server in this test) exactly once
with a verified acknowledgement although the webhook fails the first time,
and a restarted sender that resumes its queue.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from lattice._unixhttp import UnixHTTPConnection
from lattice.config import section_classes
from lattice.discovery._auth import sign_request
from lattice.discovery._canonical import b64decode, signature_of, signing_bytes
from lattice.identity import NodeIdentity, PublicIdentity, load_identity

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = "webhook-shared-secret"


def request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    try:
        connection.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, json.loads(raw) if raw else None


class Webhook:
    """
    The application's webhook: records every call; the first C{failures} answer 500.
    """

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.calls: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = 200
                if hook.failures > 0 or self.headers.get("Authorization") != f"Bearer {SECRET}":
                    hook.failures -= 1
                    code = 500
                hook.calls.append((code, dict(self.headers), body))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lattice/messages"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        return [body for code, _, body in self.calls if code == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ini(directory: Path, name: str, webhook: str, extra: str = "") -> Path:
    """
    A configuration with only discovery enabled, listening on port 0.
    """
    lines = []
    for section, section_class in section_classes().items():
        if section != "discovery" and "enabled" in {f.name for f in fields(section_class)}:
            lines.append(f"[{section}]\nenabled = false\n")
    state = directory / name
    lines.append(f"[node]\nstate_dir = {state}\n")
    lines.append("[log]\nlevel = info\n")
    lines.append(
        "[discovery]\n"
        "enabled = true\n"
        f"server_name = {name}\n"
        "listen = tcp:0:interface=127.0.0.1\n"
        "allow_private_addresses = true\n"
        "gossip_interval = 1h\n"
        "delivery_interval = 1h\n"
        "retry_base = 100ms\n"
        "retry_max = 500ms\n"
        f"webhook_url = {webhook}\n"
        f"webhook_secret_file = {directory / 'secret'}\n"
        f"{extra}"
    )
    path = directory / f"{name}.ini"
    path.write_text("".join(lines))
    return path


class Daemon:
    """
    One C{twistd -n lattice} child.
    """

    def __init__(self, directory: Path, name: str, config: Path, bootstrap: str = ""):
        self.name = name
        self.state = directory / name
        self.log = directory / f"{name}.log"
        self.config = config
        self.bootstrap = bootstrap
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LATTICE_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))
        }
        env["PYTHONPATH"] = str(ROOT)
        env.update(self.env)
        return env

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{lattice ARGV --config <this daemon's INI>}.
        """
        return subprocess.run(
            [sys.executable, "-m", "lattice.cli", *argv, "--config", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
            env=self.environment(),
            cwd=str(ROOT),
            timeout=60,
        )

    def start(self) -> None:
        env = self.environment()
        if self.bootstrap:
            env["LATTICE_BOOTSTRAP_SERVERS"] = self.bootstrap
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twisted", "lattice", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
            )

    def admin(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        return request(UnixHTTPConnection(str(self.state / "admin.sock")), method, path, body)

    def wait_ready(self, deadline: float = 30.0) -> dict[str, Any]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.tail()}")
            try:
                status, body = self.admin("GET", "/health")
                if status == 200:
                    return dict(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready: {self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class ClusterHarness:
    def __init__(
        self,
        test: SynchronousTestCase,
        names: list[str],
        failures: int = 0,
        extra: dict[str, str] | None = None,
    ):
        self.directory = Path(tempfile.mkdtemp(prefix="lattice-fed-"))
        test.addCleanup(shutil.rmtree, self.directory, True)
        (self.directory / "secret").write_text(SECRET + "\n")
        self.webhook = Webhook(failures)
        test.addCleanup(self.webhook.close)
        self.daemons: dict[str, Daemon] = {}
        self.test = test
        for name in names:
            config = ini(self.directory, name, self.webhook.url, (extra or {}).get(name, ""))
            self.daemons[name] = Daemon(self.directory, name, config)
            test.addCleanup(self.daemons[name].stop)


def verify_ack(ack: dict[str, Any], public_key: bytes) -> bool:
    _, signature = signature_of(ack)
    return PublicIdentity(public_key).verify(signature, signing_bytes(ack))


class FederationClusterTests(SynchronousTestCase):
    """
    Five daemons, one bootstrap server.
    """

    def test_five_daemons(self) -> None:
        """
        Every daemon learns every other; a message from alice@A reaches bob@E
        exactly once with a verified acknowledgement although E's webhook
        fails first; a restarted sender resumes its queue.
        """
        names = ["A", "B", "C", "D", "E"]
        harness = ClusterHarness(self, names, failures=1)
        daemons = harness.daemons
        a = daemons["A"]
        a.start()
        health = a.wait_ready()
        _, identity = a.admin("GET", "/api/v1/identity")
        bootstrap = f"{health['endpoints'][0]}#{identity['fingerprint']}"
        for name in names[1:]:
            daemons[name].bootstrap = bootstrap
            daemons[name].start()
        identities = {}
        for name in names:
            daemons[name].wait_ready()
            identities[name] = daemons[name].admin("GET", "/api/v1/identity")[1]

        # gossip rounds, forced through the admin socket
        for _ in range(6):
            for name in names:
                status, _ = daemons[name].admin("POST", "/api/v1/announce", {"force": True})
                self.assertEqual(status, 200)
            counts = {name: len(daemons[name].admin("GET", "/api/v1/peers")[1]) for name in names}
            if all(count == 4 for count in counts.values()):
                break
        self.assertEqual(counts, {name: 4 for name in names})
        for name in names:
            peers = daemons[name].admin("GET", "/api/v1/peers")[1]
            self.assertEqual(sorted(p["server_id"] for p in peers), sorted(set(names) - {name}))

        # alice@A -> bob@E; E's webhook refuses the first hand-off
        status, queued = a.admin(
            "POST",
            "/api/v1/messages/send",
            {"to_address": "bob@E", "from_address": "alice@A", "content": "hello bob"},
        )
        self.assertEqual(status, 200, queued)
        message_id = queued["message_id"]
        state = self.wait_delivered(a, message_id)
        self.assertGreaterEqual(state["attempts"], 2)
        ack = state["acknowledgement"]
        self.assertEqual(
            (ack["message_id"], ack["to_server"], ack["status"]),
            (message_id, identities["E"]["server_uuid"], "accepted"),
        )
        self.assertTrue(verify_ack(ack, b64decode(identities["E"]["public_key"])))
        self.assertFalse(verify_ack(ack, b64decode(identities["D"]["public_key"])))
        codes = [
            code for code, _, body in harness.webhook.calls if body["message_id"] == message_id
        ]
        self.assertEqual(codes, [500, 200])
        (accepted,) = harness.webhook.accepted()
        self.assertEqual(
            (accepted["from_address"], accepted["to_address"], accepted["content"]),
            ("alice@A", "bob@E", "hello bob"),
        )
        headers = next(h for code, h, _ in harness.webhook.calls if code == 200)
        self.assertEqual(headers["Idempotency-Key"], message_id)

        # the queue survives a restart of the sender
        harness.webhook.failures = 10**6
        status, queued = a.admin(
            "POST",
            "/api/v1/messages/send",
            {"to_address": "bob@E", "from_address": "alice@A", "content": "after restart"},
        )
        second = queued["message_id"]
        self.wait_attempts(a, second)
        a.stop()
        harness.webhook.failures = 0
        a.start()
        a.wait_ready()
        self.wait_delivered(a, second, trigger=False)
        contents = [body["content"] for body in harness.webhook.accepted()]
        self.assertEqual(contents, ["hello bob", "after restart"])

    def wait_attempts(self, daemon: Daemon, message_id: str) -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            state = daemon.admin("GET", f"/api/v1/messages/{message_id}")[1]
            if state["attempts"] >= 1:
                return
            time.sleep(0.1)
        raise AssertionError(f"no attempt: {state}")

    def wait_delivered(
        self, daemon: Daemon, message_id: str, trigger: bool = True
    ) -> dict[str, Any]:
        end = time.monotonic() + 30
        state: dict[str, Any] = {}
        while time.monotonic() < end:
            state = daemon.admin("GET", f"/api/v1/messages/{message_id}")[1]
            if state["status"] == "delivered":
                return state
            self.assertEqual(state["status"], "pending", state)
            if trigger:
                daemon.admin("POST", "/api/v1/maintenance/process_messages", {})
            time.sleep(0.2)
        raise AssertionError(f"not delivered: {state}\n{daemon.tail()}")


class KeyLifecycleTests(SynchronousTestCase):
    """
    Rotation of a key that comes from a systemd credential and revocation of
    the rotated-out key, through the C{lattice} CLI against real daemons.
    """

    def test_credential_rotation_and_revocation(self) -> None:
        """
        B's key comes from C{$CREDENTIALS_DIRECTORY}: C{lattice identity
        rotate} writes its successor into the state directory and A follows;
        C{lattice identity revoke} makes A refuse requests signed by the old
        key, which it accepted during the grace period before; restarted, B
        runs with the successor under the same server uuid, warns that the
        credential holds a rotated-out key, and still gossips with A.  C, started
        afterwards with B (restarted, rotated) as its bootstrap server, learns B
        through B's key history, and A through B.
        """
        harness = ClusterHarness(self, ["A", "B", "C"])
        a, b, c = harness.daemons["A"], harness.daemons["B"], harness.daemons["C"]
        credentials = harness.directory / "credentials-B"
        credentials.mkdir(mode=0o700)
        old = NodeIdentity.generate()
        (credentials / "private_key").write_bytes(old.private_pem())
        b.env["CREDENTIALS_DIRECTORY"] = str(credentials)
        a.start()
        health = a.wait_ready()
        endpoint = health["endpoints"][0]
        b.bootstrap = endpoint
        b.start()
        b.wait_ready()
        uuid = b.admin("GET", "/api/v1/identity")[1]["server_uuid"]
        self.assertEqual(uuid, old.node_id)
        for _ in range(3):
            for daemon in (a, b):
                daemon.admin("POST", "/api/v1/announce", {"force": True})
        self.assertEqual([p["server_uuid"] for p in a.admin("GET", "/api/v1/peers")[1]], [uuid])

        rotated = b.cli("identity", "rotate")
        self.assertEqual(rotated.returncode, 0, rotated.stderr)
        self.assertIn("credential holds a rotated-out key; update it", rotated.stderr)
        new = load_identity(harness.directory / "B" / "rotated_key.pem")
        self.assertIn(f"key_id: {new.key_id} (was {old.key_id})", rotated.stdout)
        self.assertIn("rotation sent to 1 of 1 peers", rotated.stdout)
        a_uuid = a.admin("GET", "/api/v1/identity")[1]["server_uuid"]
        self.assertEqual(self.signed_status(endpoint, a_uuid, uuid, old), 200)

        refused = b.cli("identity", "revoke", new.key_id)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("rotate first", refused.stderr)
        revoked = b.cli("identity", "revoke", old.key_id, "--reason", "test")
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        self.assertIn("revocation sent to 1 of 1 peers", revoked.stdout)
        self.assertEqual(self.signed_status(endpoint, a_uuid, uuid, old), 401)
        self.assertEqual(self.signed_status(endpoint, a_uuid, uuid, new), 200)

        b.stop()
        b.start()
        b_health = b.wait_ready()
        identity = b.admin("GET", "/api/v1/identity")[1]
        self.assertEqual((identity["server_uuid"], identity["key_id"]), (uuid, new.key_id))
        self.assertIn("credential holds a rotated-out key; update it", b.log.read_text())
        status, result = b.admin("POST", "/api/v1/announce", {"force": True})
        self.assertEqual((status, result["succeeded"]), (200, 1), result)
        (peer,) = a.admin("GET", "/api/v1/peers")[1]
        self.assertEqual((peer["server_uuid"], peer["trust_status"]), (uuid, "verified"))

        c.bootstrap = b_health["endpoints"][0]
        c.start()
        c.wait_ready()
        c_uuid = c.admin("GET", "/api/v1/identity")[1]["server_uuid"]
        for _ in range(3):
            for daemon in (c, b, a):
                daemon.admin("POST", "/api/v1/announce", {"force": True})
        known = {p["server_uuid"]: p["trust_status"] for p in c.admin("GET", "/api/v1/peers")[1]}
        self.assertEqual(known, {uuid: "verified", a_uuid: "verified"}, c.tail())
        for daemon in (a, b):
            peers = [p["server_uuid"] for p in daemon.admin("GET", "/api/v1/peers")[1]]
            self.assertIn(c_uuid, peers)

    def signed_status(
        self, endpoint: str, destination: str, origin: str, signer: NodeIdentity
    ) -> int:
        """
        The status of an (empty) event push signed by C{signer} as C{origin}.
        """
        body = json.dumps({"type": "events", "events": []}).encode()
        path = "/api/v1/gossip/receive"
        headers = sign_request(
            signer,
            "POST",
            path,
            body,
            origin,
            destination,
            int(time.time() * 1000),
            os.urandom(16),
        )
        parts = urlsplit(endpoint)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            return connection.getresponse().status
        finally:
            connection.close()
