"""Tests for registry entries, the schema validator, policies and the consent firewall."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.registry import (
    Consent,
    EntryInvalid,
    Policy,
    load_descriptors,
    parse_entry,
    parse_policy,
    should_run,
    validate,
)
from lattice.registry._descriptor import check_descriptor
from tests.registry._helpers import DESCRIPTORS, ECHO, entry


class SchemaTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """A document matching the schema has no errors."""
        schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}}
        self.assertEqual(validate({"a": 2}, schema), [])

    def test_every_error_collected(self) -> None:
        """Every problem is reported, each with its path."""
        schema = {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string", "enum": ["x"]}},
            "required": ["c"],
            "additionalProperties": False,
        }
        errors = validate({"a": "1", "b": "y", "d": 1}, schema)
        self.assertEqual(len(errors), 4, errors)
        self.assertTrue(any(e.startswith("/a:") for e in errors))
        self.assertTrue(any(e.startswith("/c:") for e in errors))
        self.assertTrue(any(e.startswith("/d: unknown setting") for e in errors))

    def test_bool_is_not_integer(self) -> None:
        """JSON true is not accepted where an integer is required."""
        self.assertTrue(validate(True, {"type": "integer"}))

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        )
    )
    def test_never_raises(self, value: object) -> None:
        """The validator answers any JSON value with a list of errors, never an exception."""
        self.assertIsInstance(validate(value, dict(ECHO.schema)), list)


class PolicyTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """The three policy forms parse; anything else is refused."""
        self.assertEqual(parse_policy("Global"), Policy("Global"))
        self.assertEqual(parse_policy("LocalOnly"), Policy("LocalOnly"))
        self.assertEqual(parse_policy("TaggedNodes(gateway)"), Policy("TaggedNodes", "gateway"))
        self.assertRaises(ValueError, parse_policy, "All Nodes")

    def test_consent_parse(self) -> None:
        """Consent names are accepted in any case and with separators."""
        self.assertIs(Consent.parse("always-allow"), Consent.ALWAYS_ALLOW)
        self.assertIs(Consent.parse("FollowMesh"), Consent.FOLLOW_MESH)
        self.assertRaises(ValueError, Consent.parse, "yes")


class EntryTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """A valid entry carries its policy, port and service settings."""
        parsed = parse_entry("test.echo", entry(port=7001, greeting="hi"), DESCRIPTORS)
        self.assertEqual(parsed.port, 7001)
        self.assertEqual(parsed.settings, {"greeting": "hi"})
        self.assertEqual(parsed.policy, Policy("Global"))

    def test_default_port(self) -> None:
        """Without a port, the descriptor's default is used."""
        self.assertEqual(parse_entry("test.echo", entry(), DESCRIPTORS).port, 7000)

    def test_unknown_service(self) -> None:
        """An entry for a service with no descriptor is rejected."""
        error = self.assertRaises(EntryInvalid, parse_entry, "evil.rootkit", entry(), DESCRIPTORS)
        self.assertIn("unknown service", error.errors[0])

    def test_kernel_service(self) -> None:
        """Kernel services are never registry-managed."""
        error = self.assertRaises(EntryInvalid, parse_entry, "lattice.kv", entry(), DESCRIPTORS)
        self.assertIn("kernel service", error.errors[0])

    def test_invalid_reports_everything(self) -> None:
        """Bad JSON values are all reported, and nothing is returned."""
        error = self.assertRaises(
            EntryInvalid,
            parse_entry,
            "test.echo",
            entry(policy="All Nodes", port=70000, greeting=3, shell="rm -rf /"),
            DESCRIPTORS,
        )
        self.assertEqual(len(error.errors), 4, error.errors)

    def test_not_json(self) -> None:
        """A value that is not JSON is rejected."""
        self.assertRaises(EntryInvalid, parse_entry, "test.echo", b"{enabled", DESCRIPTORS)


class ShouldRunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.global_ = parse_entry("test.echo", entry(policy="Global"), DESCRIPTORS)
        self.tagged = parse_entry("test.echo", entry(policy="TaggedNodes(gw)"), DESCRIPTORS)
        self.local = parse_entry("test.echo", entry(policy="LocalOnly"), DESCRIPTORS)
        self.disabled = parse_entry("test.echo", entry(enabled=False), DESCRIPTORS)

    def test_manual_default_runs_nothing(self) -> None:
        """Under Manual consent no policy starts anything."""
        for e in (self.global_, self.tagged, self.local):
            decision = should_run(e, Consent.MANUAL, {"gw"})
            self.assertFalse(decision.run)
            self.assertIn("Manual", decision.reason)

    def test_block_beats_every_policy(self) -> None:
        """Block refuses whatever the mesh says, tags or not."""
        for e in (self.global_, self.tagged, self.local):
            self.assertFalse(should_run(e, Consent.BLOCK, {"gw"}).run)

    def test_follow_mesh(self) -> None:
        """FollowMesh runs where the policy places the service."""
        self.assertTrue(should_run(self.global_, Consent.FOLLOW_MESH, ()).run)
        self.assertTrue(should_run(self.tagged, Consent.FOLLOW_MESH, {"gw"}).run)
        self.assertFalse(should_run(self.tagged, Consent.FOLLOW_MESH, {"db"}).run)
        self.assertFalse(should_run(self.local, Consent.FOLLOW_MESH, {"gw"}).run)

    def test_always_allow(self) -> None:
        """AlwaysAllow runs any enabled entry, even LocalOnly."""
        self.assertTrue(should_run(self.local, Consent.ALWAYS_ALLOW, ()).run)
        self.assertFalse(should_run(self.disabled, Consent.ALWAYS_ALLOW, ()).run)


class DescriptorTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """The IRC gateway descriptor is found as a plugin of lattice.plugins."""
        descriptors = load_descriptors()
        self.assertIn("lattice.irc-gateway", descriptors)
        self.assertEqual(descriptors["lattice.irc-gateway"].prefixes, ("/chat/",))

    def test_kernel_ids_refused(self) -> None:
        """A descriptor may not claim a kernel service id or cover the registry."""
        from lattice.registry import ServiceDescriptor

        bad = ServiceDescriptor(id="lattice.kv", description="", prefixes=("/",), module="x")
        self.assertEqual(len(check_descriptor(bad)), 2)
        self.assertNotIn("lattice.kv", load_descriptors(extra=[bad]))
        self.flushLoggedErrors()


_TAGS = st.sets(st.sampled_from(["gw", "db", "edge"]))
_POLICIES = st.sampled_from(["Global", "LocalOnly", "TaggedNodes(gw)", "TaggedNodes(db)"])


class FirewallPropertyTests(SynchronousTestCase):
    @given(_POLICIES, st.booleans(), _TAGS)
    def test_block_and_manual_never_run(self, policy: str, enabled: bool, tags: set[str]) -> None:
        """Whatever the mesh writes and whatever the tags, Block and Manual run nothing."""
        parsed = parse_entry("test.echo", entry(policy=policy, enabled=enabled), DESCRIPTORS)
        self.assertFalse(should_run(parsed, Consent.BLOCK, tags).run)
        self.assertFalse(should_run(parsed, Consent.MANUAL, tags).run)

    @given(_POLICIES, st.booleans(), _TAGS, st.sampled_from(list(Consent)))
    def test_disabled_never_runs(
        self, policy: str, enabled: bool, tags: set[str], consent: Consent
    ) -> None:
        """A disabled entry never runs, whatever the consent."""
        parsed = parse_entry("test.echo", entry(policy=policy, enabled=False), DESCRIPTORS)
        self.assertFalse(should_run(parsed, consent, tags).run)
