"""
``lattice kv status``: the KV store's state, through the running node's admin surface;
``lattice kv restore``: a new store from an etcd snapshot, offline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lattice.kv._snapshot import Restored, SnapshotError, check_hash, read_backend
from lattice.kv._sqlite import SQLiteStorage
from lattice.kv._storage import Batch

__all__ = ["add_kv_commands", "format_status", "restore_snapshot"]

Request = Callable[[Any, str, str, object], tuple[int, object]]


def format_status(state: dict[str, Any]) -> str:
    """The text ``lattice kv status`` prints."""
    if state.get("backend") == "etcd":
        return _format_cluster_status(state)
    return "\n".join(
        [
            f"listening:          {state.get('listening') or 'no'}",
            f"database:           {state.get('path')} ({state.get('db_size', 0)} bytes)",
            f"durability:         {state.get('durability')}",
            f"revision:           {state.get('revision')}",
            f"compacted revision: {state.get('compact_revision')}",
            f"keys:               {state.get('keys')}",
            f"leases:             {state.get('leases')}",
            f"watchers:           {state.get('watchers')}",
            f"auth enabled:       {'yes' if state.get('auth_enabled') else 'no'}",
        ]
    )


def _yes_no(value: object) -> str:
    return "unknown (no call yet)" if value is None else ("yes" if value else "no")


def _format_cluster_status(state: dict[str, Any]) -> str:
    """``lattice kv status`` of a node in front of an etcd cluster (``backend = etcd``)."""
    return "\n".join(
        [
            f"listening:          {state.get('listening') or 'no'}",
            "backend:            etcd cluster",
            f"members:            {', '.join(state.get('endpoints') or [])}",
            f"current member:     {state.get('current')}",
            f"reachable:          {_yes_no(state.get('reachable'))}",
            f"linearizable:       {_yes_no(state.get('can_linearize'))}",
            f"revision:           {state.get('revision')} (last seen on the watch stream)",
            f"upstream watches:   {state.get('upstream_watches')}",
        ]
    )


def restore_snapshot(
    snapshot: Path, target: Path, tenant: str, *, skip_hash_check: bool = False
) -> Restored:
    """
    Build a new KV database at ``target`` from an etcd snapshot (taken from Lattice or from
    etcd 3.4), its keys in ``tenant``'s keyspace.  The database is written next to
    ``target`` and renamed into place once complete.

    :raises SnapshotError: the snapshot is damaged or not an etcd snapshot, or ``target``
        already holds data.
    """
    for existing in (target, Path(f"{target}-wal")):
        if existing.exists() and existing.stat().st_size > 0:
            raise SnapshotError(
                f"{existing} already exists: refusing to overwrite a KV database; restore "
                f"into a new path (stop the node and move the old database away first)"
            )
    data = snapshot.read_bytes()
    db = data
    if not skip_hash_check:
        db = check_hash(data)
    elif len(data) % 512 == 32:
        # etcd's rule: a size 32 bytes past a multiple of 512 means a hash is appended.
        db = data[:-32]
    restored = read_backend(db, tenant=tenant)
    state = restored.state
    partial = Path(f"{target}.restoring")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    storage = SQLiteStorage(partial, lambda function: function(), threaded=False)
    try:
        storage.load()
        errors: list[BaseException | None] = []
        batch = Batch(
            state.revision,
            changes=state.history,
            compact_revision=state.compact_revision or None,
            leases_granted=state.leases,
            meta=dict(state.meta),
        )
        storage.submit(batch, errors.append)
        if errors != [None]:
            raise SnapshotError(f"writing {partial} failed: {errors[0]}")
    finally:
        storage.close(lambda: None)
    with contextlib.suppress(FileNotFoundError):
        if target.stat().st_size == 0:
            target.unlink()
    os.replace(partial, target)
    return restored


def add_kv_commands(
    commands: Any,
    load: Callable[[argparse.Namespace], Any],
    request: Request,
    error: type[Exception],
) -> None:
    """Add ``lattice kv status`` and ``lattice kv restore`` to an argparse subparsers object."""

    def status(args: argparse.Namespace) -> int:
        config = load(args)
        if not config.kv.enabled:
            raise error("[kv] enabled = false: this node runs no KV store")
        code, body = request(config, "GET", "/kv/status", None)
        if code != 200 or not isinstance(body, dict):
            raise error(f"unexpected answer from the node's admin surface (HTTP {code})")
        if args.json:
            print(json.dumps(body, indent=2, sort_keys=True))
        else:
            print(format_status(body))
        return 0

    def restore(args: argparse.Namespace) -> int:
        if args.data_file is not None and args.tenant is not None:
            target, tenant = Path(args.data_file), args.tenant
        else:
            config = load(args)
            target = Path(args.data_file or config.kv.data_path(config.node.state_dir))
            tenant = args.tenant or config.kv.default_tenant
        try:
            restored = restore_snapshot(
                Path(args.snapshot), target, tenant, skip_hash_check=args.skip_hash_check
            )
        except (OSError, SnapshotError) as e:
            raise error(f"lattice kv restore: {e}") from None
        state = restored.state
        live: set[bytes] = set()
        for change in state.history:
            (live.add if change.kv is not None else live.discard)(change.key)
        print(
            f"restored {args.snapshot} into {target} (tenant {tenant!r}): revision "
            f"{state.revision}, compacted at {state.compact_revision}, {len(live)} keys, "
            f"{len(state.history)} versions, {len(state.leases)} leases"
        )
        if restored.dropped_passwords:
            print(
                "passwords not carried over (etcd's bcrypt hashes; set them again with "
                f"etcdctl user passwd): {', '.join(restored.dropped_passwords)}"
            )
        if restored.auth_turned_off:
            print("authentication was enabled in the snapshot and is now off")
        return 0

    kv = commands.add_parser("kv", help="the etcd-compatible KV store")
    kv_commands = kv.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    show = kv_commands.add_parser("status", help="revision, keys, leases, watchers, database")
    show.add_argument("--json", action="store_true", help="print the raw JSON")
    show.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    show.set_defaults(handler=status)
    back = kv_commands.add_parser(
        "restore",
        help="a new KV database from an etcd snapshot (run with the node stopped)",
        description="Build a new KV database from a snapshot taken with `etcdctl snapshot "
        "save` from Lattice or from etcd 3.4.  Refuses a damaged snapshot and an existing "
        "database.",
    )
    back.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot file")
    back.add_argument(
        "--data-file",
        default=None,
        help="the database to create (default: [kv] data_file of the configuration)",
    )
    back.add_argument(
        "--tenant",
        default=None,
        help="the tenant whose keyspace receives the keys (default: [kv] default_tenant)",
    )
    back.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="accept a snapshot without (or with a wrong) trailing SHA-256, as etcdctl's flag",
    )
    back.add_argument("--config", "-c", default=argparse.SUPPRESS, help="INI file")
    back.set_defaults(handler=restore)
