"""Tests for ``lattice.grpc._service`` and the generated code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import CallShape, method_path
from lattice.grpc._service import methods_for, snake_case
from lattice.grpc.testing import ECHO_SERVICE, EchoRequest, EchoResponse, EchoService

ROOT = Path(__file__).resolve().parent.parent.parent


class RegistrationTests(SynchronousTestCase):
    """Binding handlers to service descriptors."""

    def test_object(self) -> None:
        """Snake-case methods of an object are bound with their shapes and message types."""
        from twisted.internet.task import Clock

        infos = methods_for(ECHO_SERVICE, EchoService(Clock()))
        unary = infos[b"/lattice.grpc.testing.Echo/UnaryEcho"]
        self.assertEqual(unary.shape, CallShape.UNARY_UNARY)
        self.assertIs(unary.request_type, EchoRequest)
        self.assertIs(unary.response_type, EchoResponse)
        self.assertEqual(
            infos[b"/lattice.grpc.testing.Echo/BidiEcho"].shape, CallShape.STREAM_STREAM
        )
        self.assertTrue(infos[b"/lattice.grpc.testing.Echo/ServerStreamEcho"].handler_is_generator)

    def test_partial_mapping(self) -> None:
        """Methods without handlers are left out."""

        async def handler(request: object, context: object) -> EchoResponse:
            return EchoResponse()

        infos = methods_for(ECHO_SERVICE, {"UnaryEcho": handler})
        self.assertEqual(list(infos), [b"/lattice.grpc.testing.Echo/UnaryEcho"])

    def test_sync_handler_refused(self) -> None:
        """A handler that is not async def is refused at registration."""
        self.assertRaises(TypeError, methods_for, ECHO_SERVICE, {"UnaryEcho": lambda r, c: r})

    def test_generator_for_unary_refused(self) -> None:
        """An async generator cannot answer a unary-response method."""

        async def generator(request: object, context: object):
            yield EchoResponse()

        self.assertRaises(TypeError, methods_for, ECHO_SERVICE, {"UnaryEcho": generator})

    def test_names(self) -> None:
        """Method names map to snake_case and paths to /package.Service/Method."""
        self.assertEqual(snake_case("UnaryEcho"), "unary_echo")
        self.assertEqual(snake_case("LeaseTimeToLive"), "lease_time_to_live")
        self.assertEqual(snake_case("HTTPThing"), "http_thing")
        self.assertEqual(
            method_path(ECHO_SERVICE.methods_by_name["BidiEcho"]),
            "/lattice.grpc.testing.Echo/BidiEcho",
        )


class GeneratedCodeTests(SynchronousTestCase):
    """The committed protobuf modules match the .proto files."""

    def test_not_stale(self) -> None:
        """scripts/gen-protos --check finds nothing to regenerate."""
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "gen-protos"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
