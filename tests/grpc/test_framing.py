"""Tests for ``lattice.grpc._framing``: message prefixes and compression."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import GrpcError, StatusCode
from lattice.grpc._framing import MessageDecoder, compress, decompress, frame_message


class MessageDecoderTests(SynchronousTestCase):
    """Splitting DATA bytes into messages."""

    def test_one_message(self) -> None:
        """A whole message is returned with its compressed flag."""
        decoder = MessageDecoder(100)
        self.assertEqual(decoder.feed(frame_message(b"abc")), [(False, b"abc")])
        self.assertEqual(decoder.pending, 0)

    def test_empty_message(self) -> None:
        """A zero-length message is a message."""
        self.assertEqual(MessageDecoder(100).feed(b"\x00\x00\x00\x00\x00"), [(False, b"")])

    def test_several_messages(self) -> None:
        """Several messages in one chunk all come out, in order."""
        data = frame_message(b"a") + frame_message(b"bb", True) + frame_message(b"")
        self.assertEqual(
            MessageDecoder(100).feed(data), [(False, b"a"), (True, b"bb"), (False, b"")]
        )

    def test_oversized(self) -> None:
        """A declared length over the limit is RESOURCE_EXHAUSTED before the body arrives."""
        with self.assertRaises(GrpcError) as e:
            MessageDecoder(10).feed(b"\x00\x00\x00\x00\x0b")
        self.assertEqual(e.exception.code, StatusCode.RESOURCE_EXHAUSTED)

    def test_bad_flag(self) -> None:
        """A flag byte other than 0 or 1 is INTERNAL."""
        with self.assertRaises(GrpcError) as e:
            MessageDecoder(10).feed(b"\x02\x00\x00\x00\x00")
        self.assertEqual(e.exception.code, StatusCode.INTERNAL)

    @settings(derandomize=True, max_examples=200)
    @given(
        st.lists(st.tuples(st.booleans(), st.binary(max_size=50)), max_size=10),
        st.lists(st.integers(min_value=1, max_value=30), min_size=1),
    )
    def test_any_split(self, messages: list[tuple[bool, bytes]], cuts: list[int]) -> None:
        """However the bytes are split, the same messages come out."""
        data = b"".join(frame_message(m, c) for c, m in messages)
        decoder = MessageDecoder(100)
        out: list[tuple[bool, bytes]] = []
        i = 0
        position = 0
        while position < len(data):
            step = cuts[i % len(cuts)]
            out += decoder.feed(data[position : position + step])
            position += step
            i += 1
        self.assertEqual(out, messages)
        self.assertEqual(decoder.pending, 0)


class CompressionTests(SynchronousTestCase):
    """gzip and deflate message compression."""

    def test_round_trip(self) -> None:
        """Compressed messages decompress to the original for each encoding."""
        for encoding in (b"gzip", b"deflate"):
            self.assertEqual(
                decompress(compress(b"hello" * 50, encoding), encoding, 1000), b"hello" * 50
            )

    def test_limit(self) -> None:
        """Decompressing beyond the limit is RESOURCE_EXHAUSTED."""
        with self.assertRaises(GrpcError) as e:
            decompress(compress(b"\x00" * 10_000, b"gzip"), b"gzip", 100)
        self.assertEqual(e.exception.code, StatusCode.RESOURCE_EXHAUSTED)

    def test_corrupt(self) -> None:
        """Corrupt or truncated compressed data is INTERNAL."""
        for data in (b"not gzip", compress(b"x" * 100, b"gzip")[:-5]):
            with self.assertRaises(GrpcError) as e:
                decompress(data, b"gzip", 1000)
            self.assertEqual(e.exception.code, StatusCode.INTERNAL)

    def test_no_encoding(self) -> None:
        """A compressed message without an encoding is INTERNAL."""
        with self.assertRaises(GrpcError) as e:
            decompress(b"", None, 1000)
        self.assertEqual(e.exception.code, StatusCode.INTERNAL)
