"""
Push-pull anti-entropy over a L{PeerTable}, and neighbor selection (no Twisted).

One exchange, initiated by A with partner B:

 1. A sends C{{type: digest, record: A's record, digest: {uuid: seq}, events}};
 2. B merges A's record and events and answers C{{type: digest_reply, record:
    B's record, records: what A lacks, want: uuids B lacks, events}};
 3. A merges those records and, when B wants any, sends C{{type: records,
    records}}.

Every record is self-signed, so it does not matter who forwards it; a record
of a server the receiver does not know waits in C{pending} until its endpoint
is proven.  The functions return the uuids that became pending so the caller
can prove them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lattice.discovery._records import PeerTable

__all__ = [
    "Candidate",
    "GossipError",
    "answer_digest",
    "digest_request",
    "handle_push",
    "handle_reply",
    "select_neighbors",
]

MAX_RECORDS_PER_MESSAGE = 2000
MAX_DIGEST = 100_000


class GossipError(ValueError):
    """
    A gossip message is malformed.
    """


def digest_request(table: PeerTable, own_record: dict[str, Any]) -> dict[str, Any]:
    """
    The first message of an exchange.
    """
    return {
        "type": "digest",
        "record": own_record,
        "digest": table.digest(),
        "events": table.events(),
    }


def _merge(table: PeerTable, records: object, now: int) -> tuple[list[str], list[str]]:
    """
    Offer records; returns the uuids updated in place and those now pending.
    """
    if not isinstance(records, list):
        raise GossipError("records must be a list")
    updated, pending = [], []
    for record in records[:MAX_RECORDS_PER_MESSAGE]:
        outcome = table.offer(record, now)
        if outcome.status == "updated":
            updated.append(record["server_uuid"])
        elif outcome.status == "pending":
            pending.append(record["server_uuid"])
    return updated, pending


@dataclass
class Merged:
    """
    What a gossip message changed.
    """

    updated: list[str]
    pending: list[str]
    events: int = 0


def _digest_of(body: Mapping[str, Any]) -> dict[str, int]:
    digest = body.get("digest")
    if not isinstance(digest, dict) or len(digest) > MAX_DIGEST:
        raise GossipError("digest must be an object of at most 100000 entries")
    return digest


def answer_digest(
    table: PeerTable, own_record: dict[str, Any], body: Mapping[str, Any], now: int
) -> tuple[dict[str, Any], Merged]:
    """
    Step 2: B's answer to A's digest, and what A's message changed at B.
    """
    digest = _digest_of(body)
    events = table.apply_events(body.get("events", []), now)
    updated, pending = _merge(table, [body.get("record")], now)
    give, want = table.compare(digest, MAX_RECORDS_PER_MESSAGE)
    reply = {
        "type": "digest_reply",
        "record": own_record,
        "records": give,
        "want": want,
        "events": table.events(),
    }
    return reply, Merged(updated, pending, events)


def handle_reply(
    table: PeerTable, body: Mapping[str, Any], now: int
) -> tuple[dict[str, Any] | None, Merged]:
    """
    Step 3 at A: merge B's answer; returns the push message (or C{None}).
    """
    if body.get("type") != "digest_reply":
        raise GossipError("expected a digest_reply")
    events = table.apply_events(body.get("events", []), now)
    records = body.get("records", [])
    if not isinstance(records, list):
        raise GossipError("records must be a list")
    updated, pending = _merge(table, [body.get("record"), *records], now)
    want = body.get("want", [])
    if not isinstance(want, list):
        raise GossipError("want must be a list")
    push = None
    wanted = table.records_for(
        (uuid for uuid in want if isinstance(uuid, str)), MAX_RECORDS_PER_MESSAGE
    )
    if wanted:
        push = {"type": "records", "records": wanted}
    return push, Merged(updated, pending, events)


def handle_push(table: PeerTable, body: Mapping[str, Any], now: int) -> Merged:
    """
    Step 3 at B: merge the records A pushed.
    """
    events = table.apply_events(body.get("events", []), now)
    updated, pending = _merge(table, body.get("records", []), now)
    return Merged(updated, pending, events)


@dataclass(frozen=True)
class Candidate:
    """
    A usable peer as neighbor selection sees it.
    """

    server_uuid: str
    last_seen: int
    responsive: bool


def select_neighbors(
    candidates: Sequence[Candidate],
    now: int,
    rng: random.Random,
    max_neighbors: int = 8,
    eligible_ms: int = 7 * 86_400_000,
    random_share: float = 0.25,
) -> list[str]:
    """
    Choose neighbors: peers seen within C{eligible_ms}, responsive ones
    first (most recently seen first), with a random share of the slots for
    diversity.
    """
    eligible = [c for c in candidates if now - c.last_seen <= eligible_ms]
    responsive = sorted(
        (c for c in eligible if c.responsive), key=lambda c: c.last_seen, reverse=True
    )
    random_slots = int(max_neighbors * random_share) if len(eligible) > max_neighbors else 0
    chosen = [c.server_uuid for c in responsive[: max_neighbors - random_slots]]
    taken = set(chosen)
    rest = [c for c in eligible if c.server_uuid not in taken]
    rng.shuffle(rest)
    # the random share, then responsive peers before unprobed ones
    ordered = rest[:random_slots] + sorted(rest[random_slots:], key=lambda c: not c.responsive)
    for candidate in ordered:
        if len(chosen) >= max_neighbors:
            break
        chosen.append(candidate.server_uuid)
    return chosen
