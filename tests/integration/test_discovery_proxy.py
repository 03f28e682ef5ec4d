"""
One Lattice daemon behind a real nginx under C{/discovery/} (the
predecessor's documented reverse proxy), and schemathesis fuzzing both
discovery listeners from C{/openapi.json}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lattice._unixhttp import UnixHTTPConnection
from lattice.discovery._auth import sign_request
from lattice.discovery._records import make_peer_record
from lattice.identity import NodeIdentity
from tests.integration.test_discovery_cluster import (
    ClusterHarness,
    Daemon,
    request,
)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
ADMIN_PATHS = [
    ("GET", "/health"),
    ("GET", "/api/v1/peers"),
    ("POST", "/api/v1/announce"),
    ("POST", "/api/v1/route/P"),
    ("POST", "/api/v1/messages/send"),
    ("POST", "/api/v1/domain/verify"),
    ("POST", "/api/v1/domain/register"),
    ("POST", "/api/v1/maintenance/cleanup"),
    ("POST", "/api/v1/maintenance/update_neighbors"),
    ("POST", "/api/v1/maintenance/process_messages"),
]


def port_of(listener: str) -> int:
    return int(listener.rsplit(":", 1)[1])


class ProxyTests(SynchronousTestCase):
    """
    The public listener behind nginx, and fuzzing.
    """

    def setUp(self) -> None:
        self.harness = ClusterHarness(
            self,
            ["P"],
            extra={"P": "trusted_proxies = 127.0.0.1\nadmin_listen = tcp:0:interface=127.0.0.1\n"},
        )
        self.daemon: Daemon = self.harness.daemons["P"]
        self.daemon.start()
        self.health = self.daemon.wait_ready()
        self.public_port = port_of(self.health["listeners"]["public"])
        self.admin_port = port_of(self.health["listeners"]["admin"])

    def start_nginx(self) -> Path:
        if NGINX is None:
            raise SkipTest("nginx is not installed")
        directory = self.harness.directory / "nginx"
        directory.mkdir()
        socket_path = directory / "nginx.sock"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log;\nevents {{}}\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {directory}/body;\n  proxy_temp_path {directory}/proxy;\n"
            f"  fastcgi_temp_path {directory}/f;\n  uwsgi_temp_path {directory}/u;\n"
            f"  scgi_temp_path {directory}/s;\n"
            f"  server {{\n    listen unix:{socket_path};\n"
            "    location /discovery/ {\n"
            f"      proxy_pass http://127.0.0.1:{self.public_port}/;\n"
            "      proxy_http_version 1.1;\n"
            "      proxy_set_header Host $host;\n"
            "      proxy_set_header X-Real-IP $remote_addr;\n"
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "      proxy_set_header X-Forwarded-Proto $scheme;\n"
            "    }\n  }\n}\n"
        )
        process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            process.terminate()
            process.wait(10)

        self.addCleanup(stop)
        end = time.monotonic() + 10
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > end:
                output = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"nginx did not start: {output}")
            time.sleep(0.05)
        return socket_path

    def test_behind_nginx(self) -> None:
        """
        Through nginx, public routes answer, signed peer requests verify
        despite the path prefix, and no admin route is reachable.
        """
        socket_path = str(self.start_nginx())
        status, body = request(UnixHTTPConnection(socket_path), "GET", "/discovery/status")
        self.assertEqual(status, 200)
        self.assertEqual(
            set(body), {"alive", "accepting_messages", "peer_count", "saturation", "version"}
        )
        for method, path in ADMIN_PATHS:
            status, _ = request(
                UnixHTTPConnection(socket_path),
                method,
                "/discovery" + path,
                {} if method == "POST" else None,
            )
            self.assertIn(status, (404, 405), path)
        _, identity = request(UnixHTTPConnection(socket_path), "GET", "/discovery/api/v1/identity")
        stranger = NodeIdentity.generate()
        record = make_peer_record(
            stranger,
            stranger.public_key,
            stranger.node_id,
            "stranger",
            ["http://127.0.0.1:9/"],
            1,
            int(time.time() * 1000),
        )
        data = json.dumps({"type": "digest", "digest": {}, "record": record}).encode()
        headers = sign_request(
            stranger,
            "POST",
            "/api/v1/gossip/receive",
            data,
            stranger.node_id,
            identity["server_uuid"],
            int(time.time() * 1000),
            os.urandom(16),
        )
        connection = UnixHTTPConnection(socket_path)
        connection.request(
            "POST",
            "/discovery/api/v1/gossip/receive",
            body=data,
            headers={**headers, "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        self.assertEqual((response.status, answer["type"]), (200, "digest_reply"))
        # the same request replayed is refused
        connection = UnixHTTPConnection(socket_path)
        connection.request(
            "POST",
            "/discovery/api/v1/gossip/receive",
            body=data,
            headers={**headers, "Content-Type": "application/json"},
        )
        self.assertEqual(connection.getresponse().status, 401)

    def test_schemathesis(self) -> None:
        """
        Schemathesis finds no server error on the public or the admin listener.
        """
        binary = Path(sys.executable).parent / "schemathesis"
        if not binary.exists():
            raise SkipTest("schemathesis is not installed")
        for port in (self.public_port, self.admin_port):
            result = subprocess.run(
                [
                    str(binary),
                    "run",
                    f"http://127.0.0.1:{port}/openapi.json",
                    "--checks",
                    "not_a_server_error",
                    "--max-examples",
                    "25",
                    "--workers",
                    "1",
                    "--seed",
                    "1",
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=str(self.harness.directory),
            )
            self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
