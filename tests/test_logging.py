"""
Tests for L{lattice._logging}.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lattice._logging import LogControl, effective_level


class LevelTests(SynchronousTestCase):
    """
    The level filters events and can change at run time.
    """

    def test_filter_and_change(self) -> None:
        """
        Debug events are dropped at info and written after switching to debug.
        """
        stream = io.StringIO()
        control = LogControl("info")
        log = Logger(namespace="lattice.test", observer=control.observer(stream))
        log.debug("hidden {x}", x=1)
        log.info("shown {x}", x=2)
        self.assertNotIn("hidden", stream.getvalue())
        self.assertIn("[lattice.test#info] shown 2", stream.getvalue())
        self.assertEqual(control.set_level("debug"), "info")
        log.debug("now visible")
        self.assertIn("[lattice.test#debug] now visible", stream.getvalue())
        control.set_level("error")
        log.warn("dropped warning")
        self.assertNotIn("dropped warning", stream.getvalue())

    def test_precedence(self) -> None:
        """
        LATTICE_LOG_LEVEL beats the configured level when valid.
        """
        self.assertEqual(effective_level("info", {"LATTICE_LOG_LEVEL": "DEBUG"}), "debug")
        self.assertEqual(effective_level("warn", {}), "warn")
        self.assertEqual(effective_level("warn", {"LATTICE_LOG_LEVEL": "bogus"}), "warn")


class FormatTests(SynchronousTestCase):
    """
    Text and JSON lines.
    """

    def test_json_lines(self) -> None:
        """
        Each event is one JSON object on one line, with its simple fields.
        """
        stream = io.StringIO()
        log = Logger(namespace="ns", observer=LogControl("info", "json").observer(stream))
        log.info("listening on {port}", port=9090)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("boom {what}", Failure(), what="x")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(first["message"], "listening on 9090")
        self.assertEqual(first["port"], 9090)
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "ns")
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])

    def test_text_multiline(self) -> None:
        """
        A traceback is written as prefixed lines, never as one unparseable blob.
        """
        stream = io.StringIO()
        log = Logger(namespace="ns", observer=LogControl("info").observer(stream))
        try:
            raise ValueError("bad")
        except ValueError:
            log.failure("oops")
        lines = stream.getvalue().splitlines()
        self.assertGreater(len(lines), 2)
        for line in lines:
            self.assertIn("[ns#critical]", line)
