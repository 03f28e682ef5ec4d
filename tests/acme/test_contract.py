"""
The fake ACME client keeps the contract the real one keeps against pebble.
"""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import TestCase

from lattice.acme import ChallengeStore
from lattice.acme.testing import FakeAcmeCA
from tests.acme._contract import AcmeClientContract


class FakeAcmeClientContractTests(AcmeClientContract, TestCase):
    """
    L{FakeAcmeCA}'s clients against the ACME client contract.
    """

    def setUp(self) -> None:
        self.store = ChallengeStore()
        self.ca = FakeAcmeCA(
            now=lambda: 1_800_000_000.0,
            validate=lambda challenge: self.store.get(challenge.token),
        )
        self.client = self.ca.client()
        self.names = ("a.example", "b.example")
        self.call = maybeDeferred
