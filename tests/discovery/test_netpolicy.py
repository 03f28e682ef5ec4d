"""
Tests for L{lattice.discovery._netpolicy}: outbound targets and client addresses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._netpolicy import ForwardedPolicy, PolicyError, address_allowed, parse_target


class TargetTests(SynchronousTestCase):
    """
    Strict URL splitting.
    """

    def test_user_info_refused(self) -> None:
        """
        The predecessor's SSRF bypass URL is refused (flaw 8).
        """
        self.assertRaises(PolicyError, parse_target, "http://good.com:x@127.0.0.1/")
        self.assertRaises(PolicyError, parse_target, "http://user@good.com/")

    def test_schemes(self) -> None:
        """
        Only http and https are contacted.
        """
        self.assertRaises(PolicyError, parse_target, "file:///etc/passwd")
        self.assertRaises(PolicyError, parse_target, "gopher://a.test/")
        self.assertRaises(PolicyError, parse_target, "http:///nohost")
        self.assertRaises(PolicyError, parse_target, "http://a.test:99999/")

    def test_parts(self) -> None:
        """
        Host, default port and base path are extracted.
        """
        target = parse_target("https://peer.example/discovery/")
        self.assertEqual(
            (target.host, target.port, target.base_path), ("peer.example", 443, "/discovery")
        )


class AddressTests(SynchronousTestCase):
    """
    Resolved addresses are checked before connecting.
    """

    def test_private_refused(self) -> None:
        """
        Loopback, private, link-local and mapped loopback are refused by default.
        """
        for address in (
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "fc00::1",
            "0.0.0.0",
        ):
            self.assertFalse(address_allowed(address, False), address)
        self.assertTrue(address_allowed("93.184.216.34", False))

    def test_private_allowed_when_configured(self) -> None:
        """
        With allow_private_addresses, loopback and private targets pass, the
        unspecified address never does.
        """
        self.assertTrue(address_allowed("127.0.0.1", True))
        self.assertTrue(address_allowed("10.0.0.1", True))
        self.assertFalse(address_allowed("0.0.0.0", True))


class ForwardedTests(SynchronousTestCase):
    """
    Forwarding headers are believed only from trusted proxies (flaw 9).
    """

    def test_untrusted_peer(self) -> None:
        """
        A direct client cannot choose its address with a header.
        """
        policy = ForwardedPolicy(["127.0.0.1/32"])
        self.assertEqual(policy.client_address("203.0.113.9", "127.0.0.1", None), "203.0.113.9")

    def test_trusted_proxy(self) -> None:
        """
        Behind a trusted proxy, the right-most untrusted hop is the client.
        """
        policy = ForwardedPolicy(["127.0.0.1", "10.0.0.0/8"])
        self.assertEqual(
            policy.client_address("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2", None),
            "198.51.100.7",
        )
        self.assertEqual(
            policy.client_address("127.0.0.1", None, 'for="[2001:db8::1]:4711";proto=https'),
            "2001:db8::1",
        )

    def test_no_proxies(self) -> None:
        """
        Without trusted proxies, the socket peer is the client, whatever the headers.
        """
        self.assertEqual(
            ForwardedPolicy().client_address("127.0.0.1", "8.8.8.8", "for=8.8.8.8"), "127.0.0.1"
        )
