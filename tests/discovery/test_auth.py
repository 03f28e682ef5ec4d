"""
Tests for L{lattice.discovery._auth}: request signatures, skew and replays.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._auth import AuthError, NonceCache, sign_request, verify_request
from lattice.discovery._records import verify_signature
from lattice.identity import NodeIdentity

NOW = 1_800_000_000_000
PATH = "/api/v1/gossip/receive"


class RequestAuthTests(SynchronousTestCase):
    """
    Every element of a request is covered by its signature.
    """

    def setUp(self) -> None:
        self.sender = NodeIdentity.generate()
        self.receiver = NodeIdentity.generate()
        self.nonces = NonceCache()

    def headers(
        self,
        body: bytes = b"{}",
        timestamp: int = NOW,
        nonce: bytes = b"n" * 16,
        destination: str | None = None,
    ) -> dict[str, str]:
        raw = sign_request(
            self.sender,
            "POST",
            PATH,
            body,
            self.sender.node_id,
            destination or self.receiver.node_id,
            timestamp,
            nonce,
        )
        return {name.lower(): value for name, value in raw.items()}

    def verify(
        self,
        headers: dict[str, str],
        body: bytes = b"{}",
        method: str = "POST",
        path: str = PATH,
        now: int = NOW,
    ) -> str:
        def key_for(origin: str, key_id: str) -> bytes | None:
            if origin == self.sender.node_id and key_id == self.sender.key_id:
                return self.sender.public_key
            return None

        return verify_request(
            headers,
            method,
            path,
            body,
            self.receiver.node_id,
            now,
            key_for,
            verify_signature,
            self.nonces,
        ).origin

    def assertRejected(self, reason: str, *args: object, **kwargs: object) -> None:
        error = self.assertRaises(AuthError, self.verify, *args, **kwargs)
        self.assertEqual(error.reason, reason)

    def test_valid(self) -> None:
        """
        A correctly signed request verifies and names its origin.
        """
        self.assertEqual(self.verify(self.headers()), self.sender.node_id)

    def test_tampered_body_path_method(self) -> None:
        """
        Changing the body, the path or the method breaks the signature.
        """
        self.assertRejected("signature", self.headers(), body=b'{"x":1}')
        self.assertRejected("signature", self.headers(nonce=b"a" * 16), path="/api/v1/domain/query")
        self.assertRejected("signature", self.headers(nonce=b"b" * 16), method="PUT")

    def test_wrong_destination(self) -> None:
        """
        A request signed for another server is refused here.
        """
        other = NodeIdentity.generate()
        self.assertRejected("destination", self.headers(destination=other.node_id))

    def test_skew(self) -> None:
        """
        Timestamps more than five minutes off are refused, in both directions.
        """
        self.assertRejected("skew", self.headers(timestamp=NOW - 5 * 60_000 - 1))
        self.assertRejected("skew", self.headers(timestamp=NOW + 5 * 60_000 + 1))
        self.assertEqual(self.verify(self.headers(timestamp=NOW - 5 * 60_000)), self.sender.node_id)

    def test_replay(self) -> None:
        """
        The same request sent twice is refused the second time.
        """
        headers = self.headers()
        self.verify(headers)
        self.assertRejected("replay", headers)

    def test_unknown_key(self) -> None:
        """
        A request by a key we cannot attribute to its origin is refused.
        """
        headers = self.headers()
        headers["x-lattice-origin"] = NodeIdentity.generate().node_id
        self.assertRejected("unknown-key", headers)

    def test_unsigned(self) -> None:
        """
        A request without the headers is refused.
        """
        self.assertRejected("unsigned", {})

    def test_nonce_memory_bounded(self) -> None:
        """
        A full nonce memory refuses new requests instead of forgetting live
        nonces, and frees them once they can no longer be replayed.
        """
        cache = NonceCache(capacity=2, window_ms=1000)
        cache.check_and_add("a", 0)
        cache.check_and_add("b", 0)
        error = self.assertRaises(AuthError, cache.check_and_add, "c", 10)
        self.assertEqual(error.reason, "busy")
        cache.check_and_add("c", 1000)
        self.assertEqual(len(cache), 1)
