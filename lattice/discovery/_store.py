"""
Durable state of the discovery subsystem: SQLite by default, PostgreSQL when
C{[discovery] database} is a C{postgresql://} URL.

The store is synchronous and knows nothing of Twisted; the service runs every
call in a one-thread pool (C{deferToThreadPool}) so nothing blocks the
reactor.  Times are integer epoch milliseconds in both engines.  The SQL is
written once, with C{?} placeholders translated for psycopg.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MessageRow", "PeerRow", "SQLStore", "open_store"]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS peers (
        server_uuid TEXT PRIMARY KEY,
        server_id TEXT NOT NULL,
        record TEXT NOT NULL,
        seq BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        last_probe BIGINT NOT NULL DEFAULT 0,
        probe_ok INTEGER NOT NULL DEFAULT 0,
        is_neighbor INTEGER NOT NULL DEFAULT 0,
        trust_status TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS key_events (
        event_key TEXT PRIMARY KEY, event TEXT NOT NULL, created_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS outbound (
        message_id TEXT PRIMARY KEY,
        to_domain TEXT NOT NULL,
        envelope TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        ack TEXT NOT NULL DEFAULT '',
        delivered_at BIGINT NOT NULL DEFAULT 0)""",
    """CREATE INDEX IF NOT EXISTS outbound_due ON outbound (status, next_attempt_at)""",
    """CREATE TABLE IF NOT EXISTS inbound (
        message_id TEXT PRIMARY KEY,
        from_server TEXT NOT NULL,
        ack TEXT NOT NULL,
        received_at BIGINT NOT NULL)""",
]


@dataclass(frozen=True)
class PeerRow:
    """
    One stored peer.
    """

    server_uuid: str
    server_id: str
    record: dict[str, Any]
    first_seen: int
    last_seen: int
    last_probe: int
    probe_ok: bool
    is_neighbor: bool
    trust_status: str


@dataclass(frozen=True)
class MessageRow:
    """
    One outbound message.
    """

    message_id: str
    to_domain: str
    envelope: dict[str, Any]
    status: str
    priority: int
    attempts: int
    next_attempt_at: int
    created_at: int
    expires_at: int
    last_error: str
    ack: dict[str, Any] | None
    delivered_at: int


_PEER_COLUMNS = (
    "server_uuid, server_id, record, first_seen, last_seen, last_probe, probe_ok, "
    "is_neighbor, trust_status"
)
_MESSAGE_COLUMNS = (
    "message_id, to_domain, envelope, status, priority, attempts, next_attempt_at, "
    "created_at, expires_at, last_error, ack, delivered_at"
)


def _peer(row: Sequence[Any]) -> PeerRow:
    return PeerRow(
        row[0],
        row[1],
        json.loads(row[2]),
        int(row[3]),
        int(row[4]),
        int(row[5]),
        bool(row[6]),
        bool(row[7]),
        row[8],
    )


def _message(row: Sequence[Any]) -> MessageRow:
    return MessageRow(
        row[0],
        row[1],
        json.loads(row[2]),
        row[3],
        int(row[4]),
        int(row[5]),
        int(row[6]),
        int(row[7]),
        int(row[8]),
        row[9],
        json.loads(row[10]) if row[10] else None,
        int(row[11]),
    )


class SQLStore:
    """
    The discovery tables on one DB-API connection (sqlite3 or psycopg).
    """

    def __init__(self, connection: Any, dialect: str):
        self._connection = connection
        self.dialect = dialect

    # The statements are fixed text; only the column lists and placeholder
    # counts are interpolated, never values (hence the S608 exemptions).
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        connection = self._connection
        if self.dialect == "postgresql":
            with connection.transaction(), connection.cursor() as cursor:
                yield cursor
        else:
            cursor = connection.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()

    def _execute(self, cursor: Any, statement: str, args: Sequence[Any] = ()) -> Any:
        cursor.execute(self._sql(statement), tuple(args))
        return cursor

    def create(self) -> None:
        with self._tx() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)

    def close(self) -> None:
        self._connection.close()

    # meta ---------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self._tx() as cursor:
            row = self._execute(cursor, "SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as cursor:
            self._execute(
                cursor,
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # peers --------------------------------------------------------------

    def load_peers(self) -> list[PeerRow]:
        with self._tx() as cursor:
            rows = self._execute(cursor, f"SELECT {_PEER_COLUMNS} FROM peers").fetchall()  # noqa: S608
        return [_peer(row) for row in rows]

    def save_peers(self, records: Iterable[tuple[dict[str, Any], str, int]]) -> None:
        """
        Insert or update C{(record, trust_status, seen_at)} entries.
        """
        with self._tx() as cursor:
            for record, trust, seen in records:
                self._execute(
                    cursor,
                    "INSERT INTO peers (server_uuid, server_id, record, seq, first_seen, "
                    "last_seen, trust_status) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (server_uuid) DO UPDATE SET server_id = excluded.server_id, "
                    "record = excluded.record, seq = excluded.seq, "
                    "trust_status = excluded.trust_status, "
                    "last_seen = CASE WHEN excluded.last_seen > peers.last_seen "
                    "THEN excluded.last_seen ELSE peers.last_seen END",
                    (
                        record["server_uuid"],
                        record["server_id"],
                        json.dumps(record, sort_keys=True),
                        record["seq"],
                        seen,
                        seen,
                        trust,
                    ),
                )

    def touch_peers(self, seen: Iterable[tuple[str, int, bool | None]]) -> None:
        """
        Record contact: C{(server_uuid, at, probe_ok or None when not a probe)}.
        """
        with self._tx() as cursor:
            for uuid, at, probe_ok in seen:
                if probe_ok is None:
                    self._execute(
                        cursor,
                        "UPDATE peers SET last_seen = ? WHERE server_uuid = ? AND last_seen < ?",
                        (at, uuid, at),
                    )
                elif probe_ok:
                    self._execute(
                        cursor,
                        "UPDATE peers SET last_seen = ?, last_probe = ?, probe_ok = 1 "
                        "WHERE server_uuid = ?",
                        (at, at, uuid),
                    )
                else:
                    self._execute(
                        cursor,
                        "UPDATE peers SET last_probe = ?, probe_ok = 0 WHERE server_uuid = ?",
                        (at, uuid),
                    )

    def set_trust(self, server_uuid: str, trust: str) -> None:
        with self._tx() as cursor:
            self._execute(
                cursor,
                "UPDATE peers SET trust_status = ? WHERE server_uuid = ?",
                (trust, server_uuid),
            )

    def set_neighbors(self, uuids: Sequence[str]) -> None:
        with self._tx() as cursor:
            self._execute(cursor, "UPDATE peers SET is_neighbor = 0 WHERE is_neighbor = 1")
            for uuid in uuids:
                self._execute(
                    cursor, "UPDATE peers SET is_neighbor = 1 WHERE server_uuid = ?", (uuid,)
                )

    def save_event(self, key: str, event: dict[str, Any], now: int) -> None:
        with self._tx() as cursor:
            self._execute(
                cursor,
                "INSERT INTO key_events (event_key, event, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (event_key) DO NOTHING",
                (key, json.dumps(event, sort_keys=True), now),
            )

    def load_events(self) -> list[dict[str, Any]]:
        with self._tx() as cursor:
            rows = self._execute(
                cursor, "SELECT event FROM key_events ORDER BY created_at"
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    # outbound -----------------------------------------------------------

    def enqueue(
        self, envelope: dict[str, Any], to_domain: str, priority: int, now: int, expires_at: int
    ) -> None:
        with self._tx() as cursor:
            self._execute(
                cursor,
                f"INSERT INTO outbound ({_MESSAGE_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?, '', '', 0)",
                (
                    envelope["message_id"],
                    to_domain,
                    json.dumps(envelope, sort_keys=True),
                    priority,
                    now,
                    now,
                    expires_at,
                ),
            )

    def enqueue_many(self, entries: list[tuple[dict[str, Any], str, int, int, int]]) -> list[None]:
        """
        C{(envelope, to_domain, priority, now, expires_at)} entries in one transaction.
        """
        with self._tx() as cursor:
            for envelope, to_domain, priority, now, expires_at in entries:
                self._execute(
                    cursor,
                    f"INSERT INTO outbound ({_MESSAGE_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?, '', '', 0)",
                    (
                        envelope["message_id"],
                        to_domain,
                        json.dumps(envelope, sort_keys=True),
                        priority,
                        now,
                        now,
                        expires_at,
                    ),
                )
        return [None] * len(entries)

    def due_messages(self, now: int, limit: int) -> list[MessageRow]:
        with self._tx() as cursor:
            rows = self._execute(
                cursor,
                f"SELECT {_MESSAGE_COLUMNS} FROM outbound WHERE status = 'pending' "  # noqa: S608
                "AND next_attempt_at <= ? AND expires_at > ? "
                "ORDER BY priority DESC, created_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
        return [_message(row) for row in rows]

    def get_message(self, message_id: str) -> MessageRow | None:
        with self._tx() as cursor:
            row = self._execute(
                cursor,
                f"SELECT {_MESSAGE_COLUMNS} FROM outbound WHERE message_id = ?",  # noqa: S608
                (message_id,),
            ).fetchone()
        return None if row is None else _message(row)

    def mark_delivered(self, acks: Iterable[tuple[str, dict[str, Any]]], now: int) -> None:
        with self._tx() as cursor:
            for message_id, ack in acks:
                self._execute(
                    cursor,
                    "UPDATE outbound SET status = 'delivered', ack = ?, delivered_at = ?, "
                    "attempts = attempts + 1 WHERE message_id = ? AND status = 'pending'",
                    (json.dumps(ack, sort_keys=True), now, message_id),
                )

    def mark_failed_attempts(
        self, failures: Iterable[tuple[str, int, int, str]], max_attempts: int
    ) -> None:
        """
        C{(message_id, attempts, next_attempt_at, error)}: reschedule, or fail
        for good once C{attempts} reaches C{max_attempts}.
        """
        with self._tx() as cursor:
            for message_id, attempts, next_at, error in failures:
                status = "failed" if attempts >= max_attempts else "pending"
                self._execute(
                    cursor,
                    "UPDATE outbound SET status = ?, attempts = ?, next_attempt_at = ?, "
                    "last_error = ? WHERE message_id = ? AND status = 'pending'",
                    (status, attempts, next_at, error[:500], message_id),
                )

    def queue_counts(self, now: int) -> dict[str, int]:
        with self._tx() as cursor:
            rows = self._execute(
                cursor, "SELECT status, COUNT(*) FROM outbound GROUP BY status"
            ).fetchall()
        counts = {"pending": 0, "sending": 0, "failed": 0, "delivered": 0, "expired": 0}
        for status, count in rows:
            counts[str(status)] = int(count)
        return counts

    # inbound ------------------------------------------------------------

    def inbound_ack(self, message_id: str) -> dict[str, Any] | None:
        with self._tx() as cursor:
            row = self._execute(
                cursor, "SELECT ack FROM inbound WHERE message_id = ?", (message_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def inbound_acks(self, message_ids: list[str]) -> list[dict[str, Any] | None]:
        """
        The stored acknowledgement of each id (C{None} when not received), in order.
        """
        found: dict[str, dict[str, Any]] = {}
        with self._tx() as cursor:
            for start in range(0, len(message_ids), 500):
                chunk = message_ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                rows = self._execute(
                    cursor,
                    f"SELECT message_id, ack FROM inbound WHERE message_id IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
                for message_id, ack in rows:
                    found[str(message_id)] = dict(json.loads(ack))
        return [found.get(message_id) for message_id in message_ids]

    def record_inbound_many(
        self, entries: list[tuple[str, str, dict[str, Any], int]]
    ) -> list[None]:
        self.record_inbound(entries)
        return [None] * len(entries)

    def record_inbound(self, entries: Iterable[tuple[str, str, dict[str, Any], int]]) -> None:
        with self._tx() as cursor:
            for message_id, origin, ack, now in entries:
                self._execute(
                    cursor,
                    "INSERT INTO inbound (message_id, from_server, ack, received_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                    (message_id, origin, json.dumps(ack, sort_keys=True), now),
                )

    # maintenance --------------------------------------------------------

    def cleanup(
        self, now: int, inbound_keep_ms: int, demote_after_ms: int, delete_after_ms: int
    ) -> tuple[dict[str, int], list[str]]:
        """
        Expire old messages and received ids, demote and delete stale peers;
        returns the counts and the uuids of deleted peers.
        """
        with self._tx() as cursor:
            expired = self._execute(
                cursor,
                "UPDATE outbound SET status = 'expired' WHERE status = 'pending' "
                "AND expires_at <= ?",
                (now,),
            ).rowcount
            forgotten = self._execute(
                cursor, "DELETE FROM inbound WHERE received_at < ?", (now - inbound_keep_ms,)
            ).rowcount
            demoted = self._execute(
                cursor,
                "UPDATE peers SET is_neighbor = 0 WHERE is_neighbor = 1 AND last_seen < ?",
                (now - demote_after_ms,),
            ).rowcount
            deleted_rows = self._execute(
                cursor,
                "SELECT server_uuid FROM peers WHERE last_seen < ?",
                (now - delete_after_ms,),
            ).fetchall()
            self._execute(cursor, "DELETE FROM peers WHERE last_seen < ?", (now - delete_after_ms,))
        counts = {
            "expired_messages": max(0, expired),
            "forgotten_message_ids": max(0, forgotten),
            "demoted_neighbors": max(0, demoted),
            "deleted_peers": len(deleted_rows),
        }
        return counts, [str(row[0]) for row in deleted_rows]


def open_store(database: str, state_dir: Path) -> SQLStore:
    """
    Open (and create) the store named by C{[discovery] database}: empty means
    C{<state_dir>/discovery.sqlite3}; a C{postgresql://} URL uses psycopg.
    Blocking: call it in the store's thread.
    """
    if database.startswith(("postgresql://", "postgres://")):
        import psycopg  # noqa: PLC0415 (optional dependency, only for PostgreSQL)

        pg = psycopg.connect(database, autocommit=True)
        if pg.info.encoding.lower().replace("-", "") not in ("utf8", "unicode"):
            pg.close()
            raise ValueError(
                f"the PostgreSQL database uses encoding {pg.info.encoding}; "
                "discovery needs a UTF8 database (createdb -E UTF8)"
            )
        store = SQLStore(pg, "postgresql")
    else:
        path = Path(database) if database else state_dir / "discovery.sqlite3"
        connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=5000")
        store = SQLStore(connection, "sqlite")
    store.create()
    return store
