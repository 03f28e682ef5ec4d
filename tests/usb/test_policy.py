"""Tests for ``lattice.usb._policy``: identities, export policy, the approval book."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.usb import ApprovalBook, EchoDevice, ExportPolicy, KeyboardDevice
from lattice.usb._policy import (
    Decision,
    PolicyError,
    approval_id,
    normalize_identity,
    write_atomically,
)

FINGERPRINT = "AB:" * 31 + "CD"


class IdentityTests(SynchronousTestCase):
    """Client identities in canonical form."""

    def test_fingerprint_forms(self) -> None:
        """Colons, case and the sha256: prefix do not matter."""
        canonical = "sha256:" + "ab" * 31 + "cd"
        self.assertEqual(normalize_identity(FINGERPRINT), canonical)
        self.assertEqual(
            normalize_identity(canonical.upper().replace("SHA256", "sha256")), canonical
        )

    def test_addresses(self) -> None:
        """IPv4, IPv6 and IPv4-mapped IPv6 addresses normalise."""
        self.assertEqual(normalize_identity(" 10.0.0.1 "), "10.0.0.1")
        self.assertEqual(normalize_identity("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normalize_identity("[2001:DB8::1]"), "2001:db8::1")

    def test_rejects_names(self) -> None:
        """A name is neither a fingerprint nor an address."""
        self.assertRaises(PolicyError, normalize_identity, "alice")

    def test_short_stable_id(self) -> None:
        """The approval id is 8 hex digits and depends only on the identity."""
        self.assertEqual(approval_id("10.0.0.1"), approval_id("10.0.0.1"))
        self.assertEqual(len(approval_id("10.0.0.1")), 8)
        self.assertNotEqual(approval_id("10.0.0.1"), approval_id("10.0.0.2"))


class ExportPolicyTests(SynchronousTestCase):
    """Which devices are exported and to whom."""

    echo = EchoDevice().info
    keyboard = KeyboardDevice().info

    def test_auto_share_all(self) -> None:
        """auto_share with no filters exports every non-hub device."""
        policy = ExportPolicy(auto_share=True)
        self.assertTrue(policy.exportable(self.echo))

    def test_filters_with_wildcards(self) -> None:
        """VID:PID patterns with wildcards select devices."""
        policy = ExportPolicy.from_settings(True, ["1209:0002"], [])
        self.assertEqual(
            [policy.exportable(self.echo), policy.exportable(self.keyboard)], [False, True]
        )
        policy = ExportPolicy.from_settings(True, ["0x1209:*"], [])
        self.assertTrue(policy.exportable(self.echo))
        self.assertFalse(ExportPolicy.from_settings(True, ["04f9:*"], []).exportable(self.echo))

    def test_not_auto_shared(self) -> None:
        """Without auto_share only devices shared by hand are exported."""
        policy = ExportPolicy(auto_share=False)
        self.assertFalse(policy.exportable(self.echo))
        self.assertTrue(policy.exportable(self.echo, shared={"1-1"}))

    def test_bad_pattern(self) -> None:
        """A filter that is not VID:PID is an error."""
        self.assertRaises(PolicyError, ExportPolicy.from_settings, True, ["printer"], [])

    def test_device_clients(self) -> None:
        """Per-device client lists, by VID:PID pattern or bus id."""
        policy = ExportPolicy.from_settings(
            True, [], ["1209:0001=10.0.0.5", "1-2=10.0.0.6", "1-2=10.0.0.7"]
        )
        self.assertTrue(policy.may_use(self.echo, "10.0.0.5"))
        self.assertFalse(policy.may_use(self.echo, "10.0.0.6"))
        self.assertEqual(policy.allowed_clients(self.keyboard), {"10.0.0.6", "10.0.0.7"})
        self.assertRaises(PolicyError, ExportPolicy.from_settings, True, [], ["1209:0001"])


class ApprovalBookTests(SynchronousTestCase):
    """Decisions and pending requests."""

    def test_fail_closed(self) -> None:
        """require_approval with nobody approved: everyone is unknown, nobody approved."""
        self.assertEqual(ApprovalBook(True).decide("10.0.0.1"), Decision.UNKNOWN)

    def test_off(self) -> None:
        """Without require_approval everyone is approved."""
        self.assertEqual(ApprovalBook(False).decide("10.0.0.1"), Decision.APPROVED)

    def test_pending_then_approved(self) -> None:
        """A request is pending until approved by its id; then it is gone from pending."""
        book = ApprovalBook(True)
        book.request("10.0.0.1", "1-1", 5.0)
        entry = book.request("10.0.0.1", "1-2", 6.0)
        self.assertEqual((entry.attempts, entry.busid, entry.first_seen), (2, "1-2", 5.0))
        book.approve(book.resolve(entry.id))
        self.assertEqual((book.decide("10.0.0.1"), book.pending), (Decision.APPROVED, {}))

    def test_deny_beats_configured(self) -> None:
        """An operator's deny overrides approved_clients from the configuration."""
        book = ApprovalBook(True, frozenset({"10.0.0.1"}))
        book.deny("10.0.0.1")
        self.assertEqual(book.decide("10.0.0.1"), Decision.DENIED)
        book.approve(book.resolve(approval_id("10.0.0.1")))
        self.assertEqual(book.decide("10.0.0.1"), Decision.APPROVED)

    def test_resolve_identity(self) -> None:
        """An identity not seen before can be pre-approved by itself."""
        self.assertEqual(ApprovalBook().resolve(FINGERPRINT), normalize_identity(FINGERPRINT))
        self.assertRaises(KeyError, ApprovalBook().resolve, "nothing")

    def test_pending_bounded(self) -> None:
        """At most 256 requests are kept; the oldest go first."""
        book = ApprovalBook(True)
        for i in range(300):
            book.request(f"10.0.{i // 256}.{i % 256}", "1-1", float(i))
        self.assertEqual(len(book.pending), 256)
        self.assertNotIn("10.0.0.0", book.pending)

    @settings(derandomize=True, max_examples=50)
    @given(
        st.sets(st.ip_addresses(v=4).map(str), max_size=5),
        st.sets(st.ip_addresses(v=4).map(str), max_size=5),
    )
    def test_json_round_trip(self, approved: set[str], denied: set[str]) -> None:
        """Persisted decisions load back unchanged."""
        book = ApprovalBook(True, approved=set(approved), denied=set(denied))
        again = ApprovalBook(True)
        again.load_json(json.loads(json.dumps(book.to_json())))
        self.assertEqual((again.approved, again.denied), (approved, denied))

    def test_rejects_foreign_json(self) -> None:
        """A document of another version is refused."""
        self.assertRaises(PolicyError, ApprovalBook().load_json, {"version": 2})


class WriteAtomicallyTests(SynchronousTestCase):
    """The approvals file write."""

    def test_write(self) -> None:
        """The file appears complete, mode 0600, with no temporary left behind."""
        directory = Path(self.mktemp())
        path = directory / "a.json"
        write_atomically(path, {"x": 1})
        write_atomically(path, {"x": 2})
        self.assertEqual(json.loads(path.read_text()), {"x": 2})
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual([p.name for p in directory.iterdir()], ["a.json"])
