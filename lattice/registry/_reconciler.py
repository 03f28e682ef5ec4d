"""
The reconciler: registry entries + consent + tags -> desired instances -> running daemons.

It keeps the latest valid entry of every ``(store_id, service_id)``, plans which instances
should run (the consent firewall, policy, port conflicts), and diffs the plan against the
supervisor's children: it starts what is missing, stops what is no longer wanted, and restarts
what runs with an outdated configuration.  Every decision is kept, with its reason, for
``lattice service list`` and ``/readyz``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from lattice.registry._descriptor import IServiceDescriptor
from lattice.registry._local import LocalState
from lattice.registry._policy import Decision, EntryInvalid, ServiceEntry, parse_entry, should_run
from lattice.registry._supervisor import InstanceKey, ProcessSupervisor

__all__ = ["Launch", "Planned", "Reconciler"]

# (argv, environment) for one instance: built by the service (it holds the LSP tokens).
Launch = Callable[[InstanceKey, ServiceEntry, "int | None"], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Planned:
    """The plan for one instance: run or not, why, and on which port."""

    decision: Decision
    port: int | None


class Reconciler:
    """
    :param launch: builds the argv and environment of an instance (and its LSP token).
    :param release: called once an instance has stopped (to revoke its token).
    """

    _log = Logger()

    def __init__(
        self,
        descriptors: Mapping[str, IServiceDescriptor],
        local: LocalState,
        tags: Collection[str],
        supervisor: ProcessSupervisor,
        launch: Launch,
        release: Callable[[InstanceKey], None] = lambda key: None,
    ) -> None:
        self.descriptors = descriptors
        self.local = local
        self.tags = frozenset(tags)
        self.supervisor = supervisor
        self._launch = launch
        self._release = release
        self.entries: dict[InstanceKey, ServiceEntry] = {}
        self.invalid: dict[InstanceKey, list[str]] = {}
        self.plan: dict[InstanceKey, Planned] = {}
        # What each supervised child was started with: (entry.raw, port).
        self._started_with: dict[InstanceKey, tuple[bytes, int | None]] = {}
        self._reconciling = False
        self._again = False

    # -- inputs ----------------------------------------------------------------------------

    def entry_changed(self, store_id: str, service_id: str, raw: bytes | None) -> None:
        """
        A registry entry was written (``raw``) or deleted (``None``).  An invalid entry is
        reported and not applied: the last valid one (if any) stays in effect.
        """
        key = (store_id, service_id)
        if raw is None:
            self.entries.pop(key, None)
            if self.invalid.pop(key, None) is None:
                self._log.info(
                    "Registry: {store}/{service} removed", store=store_id, service=service_id
                )
            return
        try:
            entry = parse_entry(service_id, raw, self.descriptors)
        except EntryInvalid as e:
            self.invalid[key] = e.errors
            kept = (
                " (the previous valid configuration stays in effect)" if key in self.entries else ""
            )
            for error in e.errors:
                self._log.error(
                    "Registry: {store}/{service} configuration rejected{kept}: {error}",
                    store=store_id,
                    service=service_id,
                    error=error,
                    kept=kept,
                )
            return
        self.invalid.pop(key, None)
        self.entries[key] = entry

    def store_reset(self, store_id: str, entries: Mapping[str, bytes]) -> None:
        """Replace everything known about ``store_id``'s registry (after a full read)."""
        for key in [k for k in self.entries if k[0] == store_id]:
            if key[1] not in entries:
                del self.entries[key]
        for key in [k for k in self.invalid if k[0] == store_id]:
            if key[1] not in entries:
                del self.invalid[key]
        for service_id, raw in entries.items():
            self.entry_changed(store_id, service_id, raw)

    # -- planning --------------------------------------------------------------------------

    def compute_plan(self) -> dict[InstanceKey, Planned]:
        """The desired state: every known instance, whether it should run, and why."""
        plan: dict[InstanceKey, Planned] = {}
        for key, entry in sorted(self.entries.items()):
            decision = should_run(entry, self.local.consent_for(key[1]), self.tags)
            override = self.local.ports.get(key)
            port = override if override is not None else entry.port
            if decision.run and override is not None:
                decision = Decision(True, f"{decision.reason}; local port override {override}")
            plan[key] = Planned(decision, port)
        # Port conflicts, before anything starts: one instance per fixed port.
        by_port: dict[int, list[InstanceKey]] = {}
        for key, planned in plan.items():
            if planned.decision.run and planned.port:
                by_port.setdefault(planned.port, []).append(key)
        for port, keys in by_port.items():
            if len(keys) < 2:
                continue
            running = [k for k in keys if self._started_with.get(k, (b"", None))[1] == port]
            winner = running[0] if running else min(keys)
            for key in keys:
                if key == winner:
                    continue
                plan[key] = Planned(
                    Decision(
                        False,
                        f"port conflict: {port} is taken by {winner[0]}/{winner[1]}; set a "
                        f"local override (lattice service port {key[1]} PORT --store {key[0]}) "
                        f"or port 0 in the registry for a dynamic port",
                    ),
                    plan[key].port,
                )
        return plan

    # -- acting ----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the supervised daemons in line with the plan."""
        if self._reconciling:
            self._again = True
            return
        self._reconciling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._reconcile_once()
        finally:
            self._reconciling = False

    def _reconcile_once(self) -> None:
        plan = self.compute_plan()
        for key, planned in plan.items():
            previous = self.plan.get(key)
            if previous is None or previous.decision != planned.decision:
                self._log.info(
                    "Registry: {store}/{service} {verdict}: {reason}",
                    store=key[0],
                    service=key[1],
                    verdict="should run" if planned.decision.run else "should not run",
                    reason=planned.decision.reason,
                )
        self.plan = plan
        for key, child in list(self.supervisor.children.items()):
            if not child.wanted:
                continue  # already stopping; reconciled again once it has stopped
            wanted = plan.get(key)
            if wanted is None or not wanted.decision.run:
                why = wanted.decision.reason if wanted else "removed from the registry"
                self._stop(key, f"stopping: {why}")
                continue
            entry = self.entries[key]
            if self._started_with.get(key) != (entry.raw, wanted.port):
                self._stop(key, "restarting with its new configuration")
        for key, planned in plan.items():
            if planned.decision.run and key not in self.supervisor.children:
                entry = self.entries[key]
                argv, env = self._launch(key, entry, planned.port)
                self._started_with[key] = (entry.raw, planned.port)
                self.supervisor.start(key, argv, env)

    def _stop(self, key: InstanceKey, why: str) -> None:
        self._log.info("Registry: {store}/{service} {why}", store=key[0], service=key[1], why=why)

        def stopped(_: object) -> None:
            if key not in self.supervisor.children:
                self._started_with.pop(key, None)
                self._release(key)
            self.reconcile()

        self.supervisor.stop(key).addCallback(stopped)

    # -- reporting -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One row per known instance: desired, running, and why."""
        keys = set(self.entries) | set(self.invalid) | set(self.supervisor.children)
        rows = []
        for key in sorted(keys):
            planned = self.plan.get(key)
            child = self.supervisor.get(key)
            row: dict[str, Any] = {
                "store": key[0],
                "service": key[1],
                "consent": self.local.consent_for(key[1]).value,
                "desired": bool(planned and planned.decision.run),
                "why": planned.decision.reason if planned else "not in the registry",
                "port": planned.port if planned else None,
                "state": child.state if child else "stopped",
                "running": bool(child and child.pid is not None),
                "pid": child.pid if child else None,
                "restarts": child.restarts if child else 0,
                "bound_port": child.port if child else None,
                "endpoints": list(child.endpoints) if child else [],
                "last_exit": child.last_exit if child else None,
                "errors": list(self.invalid.get(key, [])),
            }
            rows.append(row)
        return rows
