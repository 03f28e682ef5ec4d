"""
The exported devices, who holds each one, and the approval decisions the
server consults.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice.usb._device import DeviceBackend, UsbDevice
from lattice.usb._policy import ApprovalBook, Decision, ExportPolicy, PendingApproval
from lattice.usb._protocol import DeviceInfo, OpStatus

__all__ = ["DeviceRegistry", "Export", "Holder"]


async def _nothing() -> None:
    return None


class Holder(Protocol):
    """
    A connection that imported a device.
    """

    identity: str
    address: str

    def device_gone(self) -> None:
        """
        The device disappeared: fail what is in flight and disconnect.
        """

    def disconnect(self) -> None:
        """
        Drop the connection (the operator or policy took the device back).
        """


@dataclass
class Export:
    """
    One exported device and its current holder.
    """

    device: UsbDevice
    holder: Holder | None = None
    since: float = 0.0
    closing: Deferred[None] | None = None

    @property
    def info(self) -> DeviceInfo:
        """
        The device's USB/IP description.
        """
        return self.device.info


class DeviceRegistry:
    """
    The exported devices, kept in step with the backend by L{rescan}.
    """

    _log = Logger()

    def __init__(
        self,
        backend: DeviceBackend,
        policy: ExportPolicy,
        approvals: ApprovalBook,
        clock: IReactorTime,
    ):
        self.backend = backend
        self.policy = policy
        self.approvals = approvals
        self.shared: set[str] = set()
        self._clock = clock
        self._exports: dict[str, Export] = {}
        self._present: dict[str, UsbDevice] = {}
        self._listeners: list[Callable[[], None]] = []
        self._scanning: Deferred[None] | None = None
        self._rescan_again = False
        self._waiters: list[Deferred[None]] = []
        self.approval_changed: Callable[[], Awaitable[None]] = _nothing

    # -- observation -------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} whenever exports, holders or pending approvals change.
        """
        self._listeners.append(listener)

    def changed(self) -> None:
        """
        Tell the listeners something changed.
        """
        for listener in self._listeners:
            listener()

    @property
    def exports(self) -> dict[str, Export]:
        """
        The exported devices by bus id.
        """
        return dict(self._exports)

    @property
    def present(self) -> dict[str, UsbDevice]:
        """
        Every device the backend reported, exported or not.
        """
        return dict(self._present)

    # -- backend -----------------------------------------------------------

    def rescan(self) -> Deferred[None]:
        """
        Ask the backend what is present and export or drop devices to match.
        Concurrent calls are coalesced.
        """
        if self._scanning is not None:
            self._rescan_again = True
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        scanning: Deferred[None] = self.backend.enumerate().addCallback(self._apply)
        self._scanning = scanning
        scanning.addErrback(self._scan_failed)
        scanning.addBoth(self._scan_done)
        return scanning

    def _scan_failed(self, failure: Failure) -> None:
        self._log.failure("USB device scan failed", failure)

    def _scan_done(self, result: Any) -> Any:
        self._scanning = None
        waiters, self._waiters = self._waiters, []
        if self._rescan_again:
            # Whoever asked during this scan waits for the next one.
            self._rescan_again = False
            self._waiters.extend(waiters)
            self.rescan()
        else:
            for waiter in waiters:
                waiter.callback(None)
        return result

    def _apply(self, devices: list[UsbDevice]) -> None:
        present = {d.info.busid: d for d in devices}
        self._present = present
        changed = False
        for busid in list(self._exports):
            if busid not in present:
                self.drop(busid, "removed")
                changed = True
        for busid, device in present.items():
            wanted = self.policy.exportable(device.info, self.shared)
            current = self._exports.get(busid)
            if wanted and current is None:
                self._exports[busid] = Export(device)
                self._log.info(
                    "Exporting USB device {busid} {vid:04x}:{pid:04x} ({name})",
                    busid=busid,
                    vid=device.info.vendor_id,
                    pid=device.info.product_id,
                    name=device.description,
                )
                changed = True
            elif current is not None and current.device is not device:
                # Replugged between two scans: the old handle is gone.
                self.drop(busid, "replaced")
                self._exports[busid] = Export(device)
                changed = True
            elif not wanted and current is not None:
                self.drop(busid, "no longer shared")
                changed = True
        if changed:
            self.changed()

    def drop(self, busid: str, why: str) -> None:
        """
        Stop exporting C{busid}; its holder's in-flight URBs fail with -ENODEV.
        """
        export = self._exports.pop(busid, None)
        if export is None:
            return
        self._log.info("USB device {busid} withdrawn ({why})", busid=busid, why=why)
        if export.holder is not None:
            holder, export.holder = export.holder, None
            holder.device_gone()
            export.device.close().addErrback(self._close_failed, busid)
        self.changed()

    def _close_failed(self, failure: Failure, busid: str) -> None:
        self._log.failure("Releasing USB device {busid} failed", failure, busid=busid)

    # -- what clients may do -----------------------------------------------

    def visible_to(self, identity: str) -> list[DeviceInfo]:
        """
        What OP_REQ_DEVLIST shows C{identity}: nothing unless approved.
        """
        if self.approvals.decide(identity) is not Decision.APPROVED:
            return []
        return [
            export.info
            for busid, export in sorted(self._exports.items())
            if self.policy.may_use(export.info, identity)
        ]

    def check_import(self, identity: str, busid: str) -> tuple[OpStatus, Export | None]:
        """
        Decide an OP_REQ_IMPORT: approval first (an unknown client is
        recorded as pending and learns nothing), then existence, then use.
        """
        decision = self.approvals.decide(identity)
        if decision is Decision.UNKNOWN:
            entry = self.approvals.request(identity, busid, self._clock.seconds())
            self._log.warn(
                "USB client {identity} asked for {busid}: pending approval {id} "
                "(lattice usb approve {id})",
                identity=identity,
                busid=busid,
                id=entry.id,
            )
            self.changed()
            return OpStatus.NA, None
        if decision is Decision.DENIED:
            return OpStatus.NA, None
        export = self._exports.get(busid)
        if export is None or not self.policy.may_use(export.info, identity):
            return OpStatus.NODEV, None
        if export.holder is not None:
            return OpStatus.DEV_BUSY, None
        return OpStatus.OK, export

    async def acquire(self, export: Export, holder: Holder) -> OpStatus:
        """
        Give C{export} to C{holder}: wait for a previous holder's release,
        then open the device.  Anything but C{OK} means the import fails:
        C{DEV_ERR} if the device cannot be opened, C{NODEV} if it vanished.
        """
        export.holder = holder
        export.since = self._clock.seconds()
        try:
            if export.closing is not None:
                await export.closing
            await export.device.open()
        except Exception:
            self._log.failure("Opening USB device {busid} failed", busid=export.info.busid)
            if export.holder is holder:
                export.holder = None
            return OpStatus.DEV_ERR
        if self._exports.get(export.info.busid) is not export:
            return OpStatus.NODEV
        if export.holder is not holder:
            return OpStatus.DEV_BUSY
        self._log.info(
            "USB device {busid} imported by {identity} ({address})",
            busid=export.info.busid,
            identity=holder.identity,
            address=holder.address,
        )
        self.changed()
        return OpStatus.OK

    def release(self, export: Export, holder: Holder) -> None:
        """
        C{holder} is done with C{export}: release the device now, so that it is
        importable again at once (a new import waits for the release to finish).
        """
        if export.holder is not holder:
            return
        export.holder = None
        closing = export.device.close()
        export.closing = closing

        def closed(result: object) -> None:
            if export.closing is closing:
                export.closing = None
            if isinstance(result, Failure):
                self._close_failed(result, export.info.busid)

        closing.addBoth(closed)
        self._log.info(
            "USB device {busid} released by {identity}",
            busid=export.info.busid,
            identity=holder.identity,
        )
        self.changed()

    # -- operator actions --------------------------------------------------

    def pending(self) -> list[PendingApproval]:
        """
        Pending approvals, oldest first.
        """
        return sorted(self.approvals.pending.values(), key=lambda p: p.first_seen)

    def holders(self) -> dict[str, Holder]:
        """
        The holder of each imported device, by bus id.
        """
        return {b: e.holder for b, e in self._exports.items() if e.holder is not None}

    async def approve(self, key: str) -> str:
        """
        Approve a pending request (or an identity); returns the identity.

        @raise KeyError: nothing matches C{key}.
        """
        identity = self.approvals.resolve(key)
        self.approvals.approve(identity)
        self.changed()
        await self.approval_changed()
        return identity

    async def deny(self, key: str) -> str:
        """
        Deny a pending request (or an identity) and disconnect it; returns the identity.

        @raise KeyError: nothing matches C{key}.
        """
        identity = self.approvals.resolve(key)
        self.approvals.deny(identity)
        for holder in list(self.holders().values()):
            if holder.identity == identity:
                holder.disconnect()
        self.changed()
        await self.approval_changed()
        return identity
