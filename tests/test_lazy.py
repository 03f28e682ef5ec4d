"""Tests for L{lattice._lazy}."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from lattice._lazy import lazy_attributes


class LazyAttributesTests(SynchronousTestCase):
    """Names read from their submodule on first use."""

    def test_first_use_imports_and_keeps(self) -> None:
        """A name comes from its submodule and is kept in the namespace."""
        namespace: dict[str, object] = {}
        getattr_, dir_ = lazy_attributes("lattice.grpc", {"GrpcError": "_status"}, namespace)
        from lattice.grpc._status import GrpcError

        self.assertIs(getattr_("GrpcError"), GrpcError)
        self.assertIs(namespace["GrpcError"], GrpcError)
        self.assertEqual(dir_(), ["GrpcError"])

    def test_unknown_name(self) -> None:
        """Other names are an AttributeError naming the package."""
        getattr_, _ = lazy_attributes("lattice.grpc", {}, {})
        with self.assertRaises(AttributeError) as caught:
            getattr_("nothing")
        self.assertIn("'lattice.grpc' has no attribute 'nothing'", str(caught.exception))

    def test_client_does_not_load_servers(self) -> None:
        """Importing the LSP client loads neither the gRPC server nor the LSP server."""
        probe = (
            "import sys, lattice.lsp.client; "
            "print(sorted(m for m in ('lattice.grpc._server', 'lattice.lsp._server') "
            "if m in sys.modules))"
        )
        output = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(output.strip(), "[]")
