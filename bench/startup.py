"""
Start-up benchmark: time from exec to READY=1, and idle RSS, for a node on
the embedded defaults: the shipped etc/lattice.ini (node, telemetry, KV,
discovery and registry), with a fresh state directory and every TCP listener
moved to port 0 through LATTICE_* overrides.  --minimal measures the node
and telemetry alone.

    .venv/bin/python bench/startup.py [--runs N]

Last line: ``startup runs=N ready_ms_p50=... ready_ms_max=... rss_mb_p50=... rss_mb_max=...``
(aims: ready in under 1500 ms, idle RSS under 80 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


PORT_ZERO = "tcp:0:interface=127.0.0.1"


def one_run(minimal: bool, idle: float) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(prefix="lattice-bench-"))
    try:
        if minimal:
            config = directory / "lattice.ini"
            config.write_text(f"[node]\nstate_dir = state\n[telemetry]\nlisten = {PORT_ZERO}\n")
        else:
            config = ROOT / "etc" / "lattice.ini"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(directory / "notify")
        notify.bind(notify_path)
        notify.settimeout(30)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
        environ.update(
            NOTIFY_SOCKET=notify_path,
            PYTHONPATH=str(ROOT),
            LATTICE_NODE_STATE_DIR=str(directory / "state"),
            LATTICE_TELEMETRY_LISTEN=PORT_ZERO,
            LATTICE_KV_LISTEN=PORT_ZERO,
            LATTICE_DISCOVERY_LISTEN=PORT_ZERO,
        )
        started = time.perf_counter()
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "lattice", "--config", str(config)],
            cwd=directory,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                message = notify.recv(65536).decode()
                if "READY=1" in message.split("\n"):
                    ready = time.perf_counter() - started
                    break
            time.sleep(idle)
            rss = _rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            notify.close()
        return ready * 1000, rss
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--idle", type=float, default=1.0, help="seconds idle before RSS")
    parser.add_argument("--minimal", action="store_true", help="node and telemetry only")
    args = parser.parse_args()
    readies, rsses = [], []
    print(f"{'run':>4} {'ready_ms':>9} {'rss_mb':>7}")
    for run in range(args.runs):
        ready, rss = one_run(args.minimal, args.idle)
        readies.append(ready)
        rsses.append(rss)
        print(f"{run + 1:>4} {ready:>9.0f} {rss:>7.1f}")
    print(
        f"startup config={'minimal' if args.minimal else 'shipped'} runs={args.runs} "
        f"ready_ms_p50={statistics.median(readies):.0f} "
        f"ready_ms_max={max(readies):.0f} rss_mb_p50={statistics.median(rsses):.1f} "
        f"rss_mb_max={max(rsses):.1f}"
    )


if __name__ == "__main__":
    main()
