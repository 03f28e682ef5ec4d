"""
USB/IP benchmark: Lattice's emulated echo device against the PyPI ``usbip``
package's own virtual-device server, through the same client.

Each server runs in its own child process (``--serve lattice`` /
``--serve reference``) on a loopback port it picks itself and prints; this
process is the client: the PyPI ``usbip`` host API with TCP_NODELAY set on
its socket (the package leaves it off).  The measurements alternate between the two
servers in short slices, so that both see the same load on this shared
machine, and each measure is totalled over all slices.

* rtt: interrupt OUT (64 bytes) and interrupt IN (the echo) URBs, one at a
  time, submit to completion: elapsed time / number of URBs.
* bulk: 64 KiB bulk OUT then 64 KiB bulk IN (the echo); MB/s (10^6 bytes)
  of payload echoed, counting each byte once.

The last line reads
``usbip rtt_us=<lattice> ref_rtt_us=<reference> bulk_mbps=<lattice> ref_bulk_mbps=<reference>``.
"""

from __future__ import annotations

import argparse
import importlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path and this
# module would shadow the PyPI package of the same name.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_ROOT = str(_HERE.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

VID, PID = 0x1209, 0x0001


def _usbip() -> Any:
    """The PyPI usbip package (imported by name: this file has the same one)."""
    return importlib.import_module("usbip")


BULK_SIZE = 64 * 1024
RTT_URBS = 40000
BULK_SECONDS = 4.0
SLICES = 20


def serve_lattice() -> None:
    """Serve Lattice's emulated devices on a loopback port; print it; run until stdin closes."""
    import tempfile

    from prometheus_client import CollectorRegistry
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol
    from twisted.internet.stdio import StandardIO

    from lattice.config import UsbConfig
    from lattice.readiness import Readiness
    from lattice.usb import UsbService

    config = UsbConfig(
        enabled=True,
        listen="tcp:0:interface=127.0.0.1",
        backend="emulated",
        auto_share=True,
        require_approval=True,
        approved_clients=("127.0.0.1",),
    )
    service = UsbService(
        config,
        reactor,
        state_dir=Path(tempfile.mkdtemp(prefix="lattice-bench-")),
        readiness=Readiness(),
        fail=lambda reason: print(reason, file=sys.stderr),
        metrics=CollectorRegistry(),
    )

    class Stop(Protocol):
        def connectionLost(self, reason: object = None) -> None:
            reactor.stop()

    def ready(_: object) -> None:
        assert service.listener.port is not None
        address: Any = service.listener.port.getHost()
        print(address.port, flush=True)

    service.startService()
    service._readiness.when_ready().addCallback(ready)
    StandardIO(Stop())
    reactor.run()


def serve_reference() -> None:
    """Serve an echo device built with the PyPI usbip package until stdin closes."""
    usbip = _usbip()
    In, Out, USBDevice = usbip.In, usbip.Out, usbip.USBDevice
    Interface = importlib.import_module("usbip.function").Interface

    class Echo(Interface):  # type: ignore[misc,valid-type]
        bInterfaceClass = 0xFF
        bulk_out = Out(0x01, "bulk", mps=512)
        bulk_in = In(0x01, "bulk", mps=512)
        int_out = Out(0x02, "interrupt", mps=64, interval=1)
        int_in = In(0x02, "interrupt", mps=64, interval=1)

        def on_out(self, ep: Any, data: bytes) -> None:
            (self.bulk_in if ep is self.bulk_out else self.int_in).write(data)

    device = USBDevice(VID, PID, product="reference echo")
    device.add(Echo())
    device.set_speed(usbip.SPEED_HIGH)
    transport = usbip.USBIP("127.0.0.1", 0)
    with device.plug(via=transport):
        # The package binds port 0 but keeps the socket to itself.
        print(transport._listener.socks[0].getsockname()[1], flush=True)
        sys.stdin.read()


def client_transport(port: int) -> Any:
    """The PyPI usbip client transport, with TCP_NODELAY on."""
    USBIP = _usbip().USBIP

    class NoDelayUSBIP(USBIP):  # type: ignore[misc,valid-type]
        def connect(self) -> socket.socket:
            sock: socket.socket = super().connect()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

    return NoDelayUSBIP("127.0.0.1", port)


class Measured:
    """One server's imported echo device and the time and work spent on it."""

    def __init__(self, port: int):
        self.handle = _usbip().open(VID, PID, busid="1-1", transport=client_transport(port))
        self.rtt_seconds = 0.0
        self.urbs = 0
        self.bulk_seconds = 0.0
        self.bulk_bytes = 0
        payload = b"\xa5" * 64
        for _ in range(200):  # warm up
            self.handle.interrupt_out(0x02, payload)
            self.handle.interrupt_in(0x82, 64)

    def round_trips(self, pairs: int) -> None:
        """Interrupt OUT then IN, one URB at a time."""
        handle = self.handle
        payload = b"\xa5" * 64
        clock = time.perf_counter
        start = clock()
        for _ in range(pairs):
            handle.interrupt_out(0x02, payload)
            data = handle.interrupt_in(0x82, 64)
        self.rtt_seconds += clock() - start
        self.urbs += 2 * pairs
        assert bytes(data) == payload

    def bulk(self, seconds: float) -> None:
        """64 KiB bulk OUT and its echo, for about C{seconds}."""
        handle = self.handle
        block = bytes(range(256)) * (BULK_SIZE // 256)
        clock = time.perf_counter
        start = clock()
        while clock() - start < seconds:
            handle.bulk_out(0x01, block)
            echoed = handle.bulk_in(0x81, BULK_SIZE)
            assert len(echoed) == BULK_SIZE
            self.bulk_bytes += BULK_SIZE
        self.bulk_seconds += clock() - start

    @property
    def rtt_us(self) -> float:
        return self.rtt_seconds / self.urbs * 1e6

    @property
    def bulk_mbps(self) -> float:
        return self.bulk_bytes / self.bulk_seconds / 1e6


def start(kind: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server child; returns it and its port."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip().isdigit():
        child.kill()
        raise SystemExit(f"{kind} server did not start: {line!r}")
    return child, int(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["lattice", "reference"])
    args = parser.parse_args()
    if args.serve == "lattice":
        serve_lattice()
        return 0
    if args.serve == "reference":
        serve_reference()
        return 0
    servers = {kind: start(kind) for kind in ("lattice", "reference")}
    try:
        measured = {kind: Measured(port) for kind, (_, port) in servers.items()}
        # Slices alternate between the two servers so that both see the
        # same machine load (this host is shared and noisy), and which one
        # goes first alternates too, so that neither always follows the other.
        for index in range(SLICES):
            order = ("lattice", "reference") if index % 2 == 0 else ("reference", "lattice")
            for kind in order:
                measured[kind].round_trips(RTT_URBS // SLICES // 2)
            for kind in order:
                measured[kind].bulk(BULK_SECONDS / SLICES)
        for kind, m in measured.items():
            m.handle.close()
            print(f"{kind:<9} urbs={m.urbs} rtt_us={m.rtt_us:.1f} bulk_mbps={m.bulk_mbps:.1f}")
    finally:
        for child, _ in servers.values():
            assert child.stdin is not None
            child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    lattice, reference = measured["lattice"], measured["reference"]
    print(
        f"usbip rtt_us={lattice.rtt_us:.1f} ref_rtt_us={reference.rtt_us:.1f} "
        f"bulk_mbps={lattice.bulk_mbps:.1f} ref_bulk_mbps={reference.bulk_mbps:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
