"""
Contract tests for L{lattice.acme.AcmeClientLike}: the same cases run against the
in-memory fake (tests/acme) and against the real client talking to pebble
(tests/integration/test_acme_pebble.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from lattice.acme import AcmeClientLike, AcmeError, ChallengeStore
from lattice.acme._certs import generate_key_pem, make_csr_pem, parse_bundle


class AcmeClientContract:
    """
    Mixed into a trial C{TestCase} whose C{setUp} provides C{client}, C{store} (what
    the CA's HTTP-01 validation sees), C{names} and C{call} (runs a blocking call).
    """

    client: AcmeClientLike
    store: ChallengeStore
    names: tuple[str, ...]
    call: Callable[..., Deferred[Any]]

    # Provided by TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertRaises: Any

    async def _order(self, publish: bool) -> tuple[bytes, str]:
        key = generate_key_pem()
        order = await self.call(self.client.begin_order, make_csr_pem(key, self.names))
        if publish:
            for challenge in order.challenges:
                self.store.publish(challenge.token, challenge.key_authorization)
        chain: str = await self.call(self.client.finish_order, order)
        return key, chain

    def test_account(self) -> Deferred[None]:
        """
        A connected client has an account URL.
        """

        async def check() -> None:
            self.assertTrue(self.client.account_url)

        return Deferred.fromCoroutine(check())

    def test_challenges(self) -> Deferred[None]:
        """
        A new order has one HTTP-01 challenge per name, with a key authorization that
        starts with its token.
        """

        async def check() -> None:
            key = generate_key_pem()
            order = await self.call(self.client.begin_order, make_csr_pem(key, self.names))
            self.assertEqual(sorted(order.names), sorted(self.names))
            self.assertEqual(sorted(c.domain for c in order.challenges), sorted(self.names))
            for challenge in order.challenges:
                self.assertTrue(challenge.key_authorization.startswith(challenge.token + "."))

        return Deferred.fromCoroutine(check())

    def test_issue(self) -> Deferred[None]:
        """
        With the challenges served, the order ends with a chain whose certificate is for
        the names and the CSR's key.
        """

        async def check() -> None:
            key, chain = await self._order(publish=True)
            info = parse_bundle(chain.encode() + key)
            self.assertTrue(info.covers(self.names))
            self.assertFalse(info.self_issued)

        return Deferred.fromCoroutine(check())

    def test_unanswered(self) -> Deferred[None]:
        """
        With the challenges not served, the order fails with an error naming the names.
        """

        async def check() -> None:
            try:
                await self._order(publish=False)
            except AcmeError as e:
                message = str(e)
            else:
                raise AssertionError("the order succeeded without its challenges")
            self.assertIn("validation failed", message)
            for name in self.names:
                self.assertIn(name, message)

        return Deferred.fromCoroutine(check())
