"""
The HTTP-01 challenge resource.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from lattice.acme import ChallengeStore
from lattice.acme._http01 import challenge_site_root


class ChallengeResourceTests(SynchronousTestCase):
    """
    /.well-known/acme-challenge/<token> answers published tokens only.
    """

    def setUp(self) -> None:
        self.store = ChallengeStore()
        self.client: Any = StubTreq(challenge_site_root(self.store))

    def get(self, path: str) -> tuple[int, bytes]:
        response = self.successResultOf(self.client.get("http://node.example" + path))
        return response.code, self.successResultOf(response.content())

    def test_published(self) -> None:
        """
        A published token answers 200 with its key authorization.
        """
        self.store.publish("tok-EN_1", "tok-EN_1.thumb")
        self.assertEqual(self.get("/.well-known/acme-challenge/tok-EN_1"), (200, b"tok-EN_1.thumb"))

    def test_unknown_and_withdrawn(self) -> None:
        """
        Unknown, withdrawn and malformed tokens, and other paths, are 404s.
        """
        self.store.publish("abc", "abc.x")
        self.store.withdraw("abc")
        for path in (
            "/.well-known/acme-challenge/abc",
            "/.well-known/acme-challenge/nope",
            "/.well-known/acme-challenge/a.b",
            "/.well-known/acme-challenge/",
            "/.well-known/other",
            "/",
        ):
            self.assertEqual(self.get(path)[0], 404, path)
