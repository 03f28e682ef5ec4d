"""
A real etcd cluster on loopback for integration tests: three ``etcd`` members (Debian's
``etcd-server``, etcd 3.4), each restartable with its data directory.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from twisted.trial.unittest import SkipTest

__all__ = ["EtcdCluster", "free_port"]


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


class EtcdCluster:
    """Three ``etcd`` members on loopback, each restartable with its data directory."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise SkipTest("etcd is not installed (Debian package etcd-server)")
        self.etcd = etcd
        self.directory = directory
        self.names = [f"m{i}" for i in range(size)]
        self.client = {name: free_port() for name in self.names}
        self.peer = {name: free_port() for name in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client[n]}" for n in self.names]

    def start(self, name: str) -> None:
        client = f"http://127.0.0.1:{self.client[name]}"
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
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        for name in self.names:
            self.wait_healthy(name)

    def wait_healthy(self, name: str, timeout: float = 20.0) -> None:
        """Wait until the member answers ``/health`` with a leader."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.client[name]}/health"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
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
