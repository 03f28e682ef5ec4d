"""
The twistd plugin's options and service maker: C{twistd -n lattice --config FILE}.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from lattice._logging import TWISTD_OBSERVER, LogControl, effective_level, use_for_twistd
from lattice.config import ConfigError, LatticeConfig, load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """
    Command-line options of the C{lattice} twistd plugin.
    """

    optParameters = [
        ["config", "c", "etc/lattice.ini", "Path to the INI configuration file."],
    ]

    config: LatticeConfig
    log_control: LogControl

    def postOptions(self) -> None:
        path = Path(self["config"])
        try:
            self.config = load_config(path)
        except ConfigError as e:
            # twistd would print a traceback or the whole usage text for an
            # exception; a configuration error deserves just its lines.
            for line in e.errors:
                sys.stderr.write(line + "\n")
            sys.stderr.write(f"lattice: {len(e.errors)} configuration error(s), not starting\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        self.log_control = LogControl(
            effective_level(self.config.log.level), self.config.log.format
        )
        parent: Any = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger"):
            # twistd builds its log observer from this option before the
            # service exists; route it through our level filter and format.
            use_for_twistd(self.log_control)
            parent["logger"] = TWISTD_OBSERVER


def makeService(options: Options) -> IService:
    """
    Build the node for twistd.  The only place that touches the global reactor.
    """
    import signal

    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    from lattice.service import make_lattice_service

    service = make_lattice_service(options.config, reactor, log_control=options.log_control)

    def _exit_with_status() -> None:
        # The node decides its exit status: 1 after a fatal start-up error,
        # else 0, also after SIGTERM (twistd would otherwise re-raise the
        # signal and die by it, which systemd and the tests read as failure
        # to shut down cleanly).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(service.exit_code)

    reactor.addSystemEventTrigger("after", "shutdown", _exit_with_status)
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(service.reload))
    return service
