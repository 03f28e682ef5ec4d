"""
Start-up benchmark: time from exec to READY=1, and idle RSS, for a node on
the embedded defaults (every listener on loopback, port 0).

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


def one_run(config_extra: str, idle: float) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(prefix="lattice-bench-"))
    try:
        config = directory / "lattice.ini"
        config.write_text(
            "[node]\nstate_dir = state\n[telemetry]\nlisten = tcp:0:interface=127.0.0.1\n"
            + config_extra
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(directory / "notify")
        notify.bind(notify_path)
        notify.settimeout(30)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
        environ.update(NOTIFY_SOCKET=notify_path, PYTHONPATH=str(ROOT))
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
    parser.add_argument("--extra", default="", help="INI text appended to the config")
    args = parser.parse_args()
    readies, rsses = [], []
    print(f"{'run':>4} {'ready_ms':>9} {'rss_mb':>7}")
    for run in range(args.runs):
        ready, rss = one_run(args.extra, args.idle)
        readies.append(ready)
        rsses.append(rss)
        print(f"{run + 1:>4} {ready:>9.0f} {rss:>7.1f}")
    print(
        f"startup runs={args.runs} ready_ms_p50={statistics.median(readies):.0f} "
        f"ready_ms_max={max(readies):.0f} rss_mb_p50={statistics.median(rsses):.1f} "
        f"rss_mb_max={max(rsses):.1f}"
    )


if __name__ == "__main__":
    main()
