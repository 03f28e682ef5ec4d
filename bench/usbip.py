"""
USB/IP benchmark: Lattice's emulated echo device against the PyPI ``usbip``
package's own virtual-device server, through the same client.

Each server runs in its own child process (``--serve lattice`` /
``--serve reference``) on a loopback port it picks itself and prints; this
process is the client: the PyPI ``usbip`` host API with TCP_NODELAY set on
its socket (the package leaves it off), the same code for both servers.

The measurements alternate between the two servers in short slices, so that
both see the same load on this shared machine, and which server goes first
alternates from slice to slice.  Each server gets the same number of URBs
per slice (and the same time for bulk); each reported figure is the median
over the slices, so that a burst of load from other processes during a few
slices does not decide the result.  The line before the last compares the
round trips slice by slice (each pair measured back to back): in how many
slices Lattice was at least as fast, and the median difference.

On a small virtual machine the round trip is bimodal: when the scheduler
runs the client and the server on the same CPU a URB takes about half as
long as when they run on two (a cross-CPU wake-up is expensive there), and
which of the two happens depends on the load from other processes.  The
default leaves placement to the scheduler, as in real use; ``--pin same``
runs the client and both servers on one CPU and ``--pin split`` the client
on one CPU and the servers on another, to compare the two cases on their own.

* rtt: interrupt OUT (64 bytes) and interrupt IN (the echo) URBs, one at a
  time, submit to completion: a slice's elapsed time / its number of URBs.
* bulk: 64 KiB bulk OUT then 64 KiB bulk IN (the echo); MB/s (10^6 bytes)
  of payload echoed, counting each byte once.

The last line reads
``usbip rtt_us=<lattice> ref_rtt_us=<reference> bulk_mbps=<lattice> ref_bulk_mbps=<reference>``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
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
#: URBs per server over all slices (half OUT, half IN).
RTT_URBS = 60000
#: Bulk seconds per server over all slices.
BULK_SECONDS = 4.5
SLICES = 60


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
    """One server's imported echo device and its per-slice results."""

    def __init__(self, port: int):
        self.handle = _usbip().open(VID, PID, busid="1-1", transport=client_transport(port))
        self.urbs = 0
        self.rtt_slices: list[float] = []
        self.bulk_slices: list[float] = []
        payload = b"\xa5" * 64
        for _ in range(200):  # warm up
            self.handle.interrupt_out(0x02, payload)
            self.handle.interrupt_in(0x82, 64)

    def round_trips(self, pairs: int) -> None:
        """Interrupt OUT then IN, one URB at a time; records microseconds per URB."""
        handle = self.handle
        payload = b"\xa5" * 64
        clock = time.perf_counter
        start = clock()
        for _ in range(pairs):
            handle.interrupt_out(0x02, payload)
            data = handle.interrupt_in(0x82, 64)
        self.rtt_slices.append((clock() - start) / (2 * pairs) * 1e6)
        self.urbs += 2 * pairs
        assert bytes(data) == payload

    def bulk(self, seconds: float) -> None:
        """64 KiB bulk OUT and its echo, for about C{seconds}; records MB/s."""
        handle = self.handle
        block = bytes(range(256)) * (BULK_SIZE // 256)
        clock = time.perf_counter
        echoed_bytes = 0
        start = clock()
        while clock() - start < seconds:
            handle.bulk_out(0x01, block)
            echoed = handle.bulk_in(0x81, BULK_SIZE)
            assert len(echoed) == BULK_SIZE
            echoed_bytes += BULK_SIZE
        self.bulk_slices.append(echoed_bytes / (clock() - start) / 1e6)

    @property
    def rtt_us(self) -> float:
        return statistics.median(self.rtt_slices)

    @property
    def bulk_mbps(self) -> float:
        return statistics.median(self.bulk_slices)

    def spread(self) -> str:
        """The quartiles of the per-slice results, to judge the noise."""
        rtt = statistics.quantiles(self.rtt_slices, n=4)
        bulk = statistics.quantiles(self.bulk_slices, n=4)
        return f"rtt_q1-q3={rtt[0]:.1f}-{rtt[2]:.1f} bulk_q1-q3={bulk[0]:.0f}-{bulk[2]:.0f}"


#: CPUs for (the client, the servers) with each C{--pin} choice.
PINNING = {"same": (0, 0), "split": (0, 1)}


def pin(cpu: int | None) -> None:
    """Run this process on C{cpu} only (C{None}: wherever the scheduler likes)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def start(kind: str, cpu: int | None) -> tuple[subprocess.Popen[str], int]:
    """Start a server child (on C{cpu}, if given); returns it and its port."""
    pinning = [] if cpu is None else ["--cpu", str(cpu)]
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, *pinning],
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
    parser.add_argument("--serve", choices=["lattice", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pin",
        choices=sorted(PINNING),
        help="same: client and servers on CPU 0; split: client on CPU 0, servers on CPU 1",
    )
    args = parser.parse_args()
    pin(args.cpu)
    if args.serve == "lattice":
        serve_lattice()
        return 0
    if args.serve == "reference":
        serve_reference()
        return 0
    client_cpu, server_cpu = PINNING[args.pin] if args.pin else (None, None)
    pin(client_cpu)
    servers = {kind: start(kind, server_cpu) for kind in ("lattice", "reference")}
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
            print(
                f"{kind:<9} urbs={m.urbs} slices={len(m.rtt_slices)} rtt_us={m.rtt_us:.1f} "
                f"bulk_mbps={m.bulk_mbps:.1f} {m.spread()}"
            )
        # Paired per slice (both servers measured back to back): how often
        # Lattice's round trip was the shorter one, and by how much.  With a
        # bimodal round trip (see above) this says more than the medians.
        differences = [
            ours - theirs
            for ours, theirs in zip(
                measured["lattice"].rtt_slices, measured["reference"].rtt_slices, strict=True
            )
        ]
        wins = sum(1 for difference in differences if difference <= 0)
        print(
            f"rtt slices where lattice <= reference: {wins}/{SLICES}; "
            f"median difference (lattice - reference): {statistics.median(differences):+.1f} us"
        )
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
