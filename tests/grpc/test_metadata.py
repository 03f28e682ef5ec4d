"""Tests for ``lattice.grpc._metadata``: metadata, status messages and timeouts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import Metadata
from lattice.grpc._metadata import (
    decode_metadata,
    encode_metadata,
    format_timeout,
    parse_timeout,
    percent_decode,
    percent_encode,
)


class MetadataTests(SynchronousTestCase):
    """Conversion between metadata and headers."""

    def test_decode(self) -> None:
        """Pseudo-headers and gRPC headers are dropped, -bin values are decoded."""
        md = decode_metadata(
            [
                (b":path", b"/x"),
                (b"content-type", b"application/grpc"),
                (b"grpc-timeout", b"1S"),
                (b"key", b"value"),
                (b"k-bin", b"AAE"),
                (b"k-bin", b"AAE=,Ag"),
                (b"bad-bin", b"!!!"),
            ]
        )
        self.assertEqual(
            md,
            [("key", "value"), ("k-bin", b"\x00\x01"), ("k-bin", b"\x00\x01"), ("k-bin", b"\x02")],
        )
        self.assertEqual(md.get("key"), "value")
        self.assertEqual(md.get_all("k-bin"), [b"\x00\x01", b"\x00\x01", b"\x02"])
        self.assertIsNone(md.get("missing"))

    def test_encode(self) -> None:
        """Binary values are base64 without padding; text is kept."""
        self.assertEqual(
            encode_metadata([("a", "b"), ("c-bin", b"\x00\x01")]),
            [(b"a", b"b"), (b"c-bin", b"AAE")],
        )

    def test_encode_rejects(self) -> None:
        """Bad keys, reserved keys and mistyped values are refused."""
        for item in [
            ("Upper", "x"),
            ("grpc-status", "0"),
            ("a-bin", "text"),
            ("a", b"bytes"),
            ("a", "é"),
        ]:
            self.assertRaises(ValueError, encode_metadata, [item])

    def test_metadata_sequence(self) -> None:
        """Metadata is an immutable sequence comparable to lists of pairs."""
        md = Metadata([("a", "1")])
        self.assertEqual(len(md), 1)
        self.assertEqual(md[0], ("a", "1"))
        self.assertEqual(md, Metadata([("a", "1")]))


class StatusMessageTests(SynchronousTestCase):
    """Percent-encoding of grpc-message."""

    def test_encode(self) -> None:
        """Non-ASCII and percent signs are escaped, the rest is kept."""
        self.assertEqual(percent_encode("a b%ü"), b"a b%25%C3%BC")

    def test_decode_malformed(self) -> None:
        """Malformed escapes are kept literally."""
        self.assertEqual(percent_decode(b"100%zz%4"), "100%zz%4")

    @settings(derandomize=True)
    @given(st.text())
    def test_round_trip(self, text: str) -> None:
        """Any text survives encoding and decoding."""
        self.assertEqual(
            percent_decode(percent_encode(text)),
            text.encode("utf-8", "replace").decode("utf-8", "replace"),
        )


class TimeoutTests(SynchronousTestCase):
    """grpc-timeout values."""

    def test_parse(self) -> None:
        """Each unit is understood; malformed values are None."""
        self.assertEqual(parse_timeout(b"2S"), 2.0)
        self.assertEqual(parse_timeout(b"1500m"), 1.5)
        self.assertEqual(parse_timeout(b"1H"), 3600.0)
        for bad in (b"", b"S", b"123456789S", b"1x", b"-1S", b"1.5S"):
            self.assertIsNone(parse_timeout(bad), bad)

    @settings(derandomize=True)
    @given(st.floats(min_value=1e-6, max_value=1e7))
    def test_format_round_trip(self, seconds: float) -> None:
        """Formatted timeouts parse back to at least the requested time, within 1%."""
        value = parse_timeout(format_timeout(seconds))
        assert value is not None
        self.assertGreaterEqual(value, seconds * 0.999999)
        self.assertLessEqual(value, seconds * 1.01 + 1e-9)
