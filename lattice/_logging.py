"""
Log output for the node: text or JSON lines on standard output, filtered by a
level that can change at run time (SIGHUP).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
)
from zope.interface import implementer

__all__ = ["LogControl", "effective_level", "json_lines_observer"]

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def effective_level(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """
    The level to use: C{LATTICE_LOG_LEVEL} when set and valid, else the
    configured one.  (Configuration parsing already rejects invalid values
    of C{LATTICE_LOG_LEVEL}; this only applies precedence.)
    """
    if environ is None:
        environ = os.environ
    override = environ.get("LATTICE_LOG_LEVEL", "").lower()
    return override if override in _LEVELS else configured


@implementer(ILogObserver)
class _JSONLinesObserver:
    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": getattr(event.get("log_level"), "name", None),
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key.startswith("log_") or key in record or key == "format":
                continue
            if isinstance(value, (str, int, float, bool)) or value is None:
                record[key] = value
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """
    An observer writing one JSON object per line to C{stream}.
    """
    return _JSONLinesObserver(stream)


class LogControl:
    """
    Owns the node's log observer and its level.
    """

    def __init__(self, level: str = "info", format: str = "text"):
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
        self.level = level
        self.format = format

    def set_level(self, level: str) -> str:
        """
        Change the lowest level logged; returns the previous level.
        """
        previous = self.level
        self._predicate.setLogLevelForNamespace("", _LEVELS[level])
        self._predicate.defaultLogLevel = _LEVELS[level]
        self.level = level
        return previous

    def observer(self, stream: IO[str]) -> ILogObserver:
        """
        A filtered observer writing to C{stream} in the configured format.
        """
        inner = json_lines_observer(stream) if self.format == "json" else _TextLinesObserver(stream)
        return FilteringLogObserver(inner, [self._predicate])


@implementer(ILogObserver)
class _TextLinesObserver:
    """
    C{time [namespace#level] message}, one line per line of the message.
    """

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = getattr(event.get("log_level"), "name", "info")
        stamp = formatTime(event.get("log_time"), timeFormat="%Y-%m-%dT%H:%M:%S%z")
        namespace = event.get("log_namespace", "-")
        for line in text.rstrip("\n").split("\n"):
            self._stream.write(f"{stamp} [{namespace}#{level}] {line}\n")
        self._stream.flush()


# twistd resolves its --logger option by dotted name, before the service is
# made.  The plugin's Options hand over their LogControl through this slot,
# the one piece of process-wide state here, so that the observer twistd
# installs is the one the node later re-levels on SIGHUP.
_twistd_control: LogControl | None = None

TWISTD_OBSERVER = "lattice._logging.twistd_log_observer"


def use_for_twistd(control: LogControl) -> None:
    """
    Make L{twistd_log_observer} build its observer from C{control}.
    """
    global _twistd_control  # noqa: PLW0603
    _twistd_control = control


def twistd_log_observer() -> ILogObserver:
    """
    The observer factory named in twistd's C{logger} option.
    """
    control = _twistd_control if _twistd_control is not None else LogControl()
    return control.observer(sys.stdout)
