"""
Tests for L{lattice.discovery._canonical}: one canonical form, test vectors.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._canonical import (
    SIGNING_DOMAIN,
    CanonicalError,
    b64decode,
    b64encode,
    canonical_json,
    sign_object,
    signature_of,
    signing_bytes,
)
from lattice.identity import NodeIdentity, PublicIdentity

# (value, canonical bytes): the vectors other implementations must match.
VECTORS = [
    ({}, b"{}"),
    ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
    ({"a": [3, 1, 2], "z": {"y": None, "x": True}}, b'{"a":[3,1,2],"z":{"x":true,"y":null}}'),
    ({"name": "caf\u00e9"}, b'{"name":"caf\xc3\xa9"}'),
    ({"t": 1795324742092, "n": -5}, b'{"n":-5,"t":1795324742092}'),
    ({"s": 'q"\\\n'}, b'{"s":"q\\"\\\\\\n"}'),
    ({"emoji": "\U0001f600"}, b'{"emoji":"\xf0\x9f\x98\x80"}'),
]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


class CanonicalJSONTests(SynchronousTestCase):
    """
    Canonical JSON bytes.
    """

    def test_vectors(self) -> None:
        """
        Each test vector encodes to exactly its canonical bytes.
        """
        for value, expected in VECTORS:
            self.assertEqual(canonical_json(value), expected)

    def test_floats_refused(self) -> None:
        """
        Floats have no canonical form across implementations and are refused.
        """
        self.assertRaises(CanonicalError, canonical_json, {"t": 1.5})

    def test_non_string_keys_refused(self) -> None:
        """
        Only string keys are allowed.
        """
        self.assertRaises(CanonicalError, canonical_json, {1: "a"})

    @settings(derandomize=True, max_examples=200)
    @given(JSON_VALUES)
    def test_reparse_is_stable(self, value: object) -> None:
        """
        Parsing canonical bytes and encoding again gives the same bytes.
        """
        encoded = canonical_json(value)
        self.assertEqual(canonical_json(json.loads(encoded)), encoded)

    @settings(derandomize=True, max_examples=100)
    @given(st.binary(max_size=100))
    def test_base64_roundtrip(self, data: bytes) -> None:
        """
        Unpadded URL-safe base64 round-trips.
        """
        self.assertEqual(b64decode(b64encode(data)), data)


class SignedObjectTests(SynchronousTestCase):
    """
    Signed objects survive transport.
    """

    def test_signature_survives_reserialisation(self) -> None:
        """
        An object signed, sent as ordinary JSON with another key order and
        spacing, and parsed again still verifies (predecessor flaw 1).
        """
        identity = NodeIdentity.generate()
        signed = sign_object(identity, {"sent_at": 1795324742092, "content": "hi", "b": [1]})
        wire = json.dumps(signed, indent=3, sort_keys=False)
        received = json.loads(wire)
        key_id, signature = signature_of(received)
        self.assertEqual(key_id, identity.key_id)
        self.assertTrue(
            PublicIdentity(identity.public_key).verify(signature, signing_bytes(received))
        )

    def test_signing_bytes_are_domain_separated(self) -> None:
        """
        The signed bytes start with the protocol's domain prefix and exclude the signature.
        """
        identity = NodeIdentity.generate()
        signed = sign_object(identity, {"a": 1})
        self.assertEqual(signing_bytes(signed), SIGNING_DOMAIN + b'{"a":1}')

    def test_tampering_breaks_signature(self) -> None:
        """
        Changing any member invalidates the signature.
        """
        identity = NodeIdentity.generate()
        signed = sign_object(identity, {"a": 1})
        signed["a"] = 2
        _, signature = signature_of(signed)
        self.assertFalse(
            PublicIdentity(identity.public_key).verify(signature, signing_bytes(signed))
        )
