"""
A real etcd cluster on loopback for integration tests: three ``etcd`` members (Debian's
``etcd-server``, etcd 3.4), each restartable with its data directory.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SkipTest

__all__ = ["EtcdCluster", "EtcdTls", "free_port"]


def free_port() -> int:
    """
    A loopback port that was free a moment ago.  etcd needs its peer URLs (and so its ports)
    in ``--initial-cluster`` before any member starts and cannot report a port it chose
    itself, so binding port 0 and releasing it is the only way to pick them.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class EtcdTls:
    """
    PEM files for members that serve clients over TLS and require a client certificate
    signed by ``ca`` (``certificate``/``key`` are the members' server certificate).
    """

    ca: str
    certificate: str
    key: str
    client_certificate: str
    client_key: str


class EtcdCluster:
    """Three ``etcd`` members on loopback, each restartable with its data directory."""

    def __init__(self, directory: Path, size: int = 3, tls: EtcdTls | None = None) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise SkipTest("etcd is not installed (Debian package etcd-server)")
        self.etcd = etcd
        self.directory = directory
        self.names = [f"m{i}" for i in range(size)]
        self.client = {name: free_port() for name in self.names}
        self.peer = {name: free_port() for name in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.scheme}://127.0.0.1:{self.client[n]}" for n in self.names]

    def start(self, name: str) -> None:
        client = f"{self.scheme}://127.0.0.1:{self.client[name]}"
        peer = f"http://127.0.0.1:{self.peer[name]}"
        log = (self.directory / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [
                self.etcd,
                f"--name={name}",
                f"--data-dir={self.directory / name}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={self.initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=lattice-test",
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--logger=zap",
                "--log-level=warn",
                *self._tls_arguments(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def _tls_arguments(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.certificate}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _health_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_certificate, self.tls.client_key)
        return context

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        for name in self.names:
            self.wait_healthy(name)

    def wait_healthy(self, name: str, timeout: float = 20.0) -> None:
        """Wait until the member answers ``/health`` with a leader."""
        deadline = time.monotonic() + timeout
        url = f"{self.scheme}://127.0.0.1:{self.client[name]}/health"
        context = self._health_context()
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as response:
                    if b'"true"' in response.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"etcd member {name} not healthy: {self.log(name)}")

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name)
