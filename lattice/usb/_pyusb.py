"""
Real devices through pyusb (libusb-1.0).

Every libusb call blocks, so each one runs in the injected thread pool and
the reactor only sees Deferreds.  pyusb cannot cancel a transfer, so IN
transfers on bulk and interrupt endpoints are read in short slices until
data arrives, the URB is unlinked or the connection goes (a real host
controller NAKs forever; answering -ETIMEDOUT would break usbhid and btusb).
Isochronous endpoints are answered with -EOPNOTSUPP: pyusb has no
per-packet status to fill USB/IP's descriptors with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import usb.core
import usb.util
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from lattice.usb._device import Completion, TransferType, UsbDevice
from lattice.usb._protocol import DeviceInfo, Errno, IsoPacket, Urb, UrbResult

__all__ = ["PyUSBBackend", "PyUSBDevice", "busid_of"]

T = TypeVar("T")

#: How long one blocking read waits before checking for a cancel, in ms.
READ_SLICE_MS = 100
#: Timeout of control and OUT transfers, in ms.
TRANSFER_TIMEOUT_MS = 5000

# libusb speed codes to the kernel's enum usb_device_speed used on the wire.
_SPEEDS = {1: 1, 2: 2, 3: 3, 4: 5, 5: 6}


def busid_of(device: Any) -> str:
    """
    The bus id of a pyusb device, as sysfs and pyudev name it (``1-1.4``).
    """
    ports = getattr(device, "port_numbers", None) or ()
    if not ports:
        return f"usb{device.bus}"  # a root hub has no port path
    return f"{device.bus}-{'.'.join(str(p) for p in ports)}"


def _status_of(error: BaseException) -> int:
    if isinstance(error, usb.core.USBTimeoutError):
        return int(Errno.ETIMEDOUT)
    code = getattr(error, "errno", None)
    if code == 32:
        return int(Errno.EPIPE)
    if code in (19, 2):
        return int(Errno.ENODEV)
    if code == 75:
        return int(Errno.EOVERFLOW)
    return int(Errno.EIO)


class PyUSBDevice:
    """
    One libusb device.  Blocking work runs in the pool; the state it
    changes (claimed interfaces, detached drivers) is touched only there.
    """

    _log = Logger()

    def __init__(self, device: Any, run: Callable[..., Deferred[Any]]):
        self._device = device
        self._run = run
        self._detached: list[int] = []
        self._claimed: list[int] = []
        self._alternates: dict[int, int] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.key = (device.bus, device.address)
        self._types: dict[int, TransferType] = {}
        self._info = self._describe()
        self._name = f"{device.idVendor:04x}:{device.idProduct:04x}"

    # -- descriptors (read from libusb's cache, no I/O) --------------------

    def _configuration(self) -> Any:
        try:
            return self._device.get_active_configuration()
        except Exception:
            try:
                return self._device[0]
            except Exception:
                return None

    def _describe(self) -> DeviceInfo:
        device = self._device
        configuration = self._configuration()
        interfaces: list[tuple[int, int, int]] = []
        value = 0
        if configuration is not None:
            value = configuration.bConfigurationValue
            seen: set[int] = set()
            for interface in configuration:
                if interface.bInterfaceNumber not in seen:
                    seen.add(interface.bInterfaceNumber)
                    interfaces.append(
                        (
                            interface.bInterfaceClass,
                            interface.bInterfaceSubClass,
                            interface.bInterfaceProtocol,
                        )
                    )
            self._types = self._endpoint_map(configuration)
        busid = busid_of(device)
        return DeviceInfo(
            busid=busid,
            busnum=device.bus,
            devnum=device.address,
            speed=_SPEEDS.get(getattr(device, "speed", 0) or 0, 0),
            vendor_id=device.idVendor,
            product_id=device.idProduct,
            bcd_device=device.bcdDevice,
            device_class=device.bDeviceClass,
            device_subclass=device.bDeviceSubClass,
            device_protocol=device.bDeviceProtocol,
            configuration_value=value,
            num_configurations=device.bNumConfigurations,
            interfaces=tuple(interfaces),
            path=f"/sys/bus/usb/devices/{busid}",
        )

    def _endpoint_map(self, configuration: Any) -> dict[int, TransferType]:
        types: dict[int, TransferType] = {}
        for interface in configuration:
            if interface.bAlternateSetting != self._alternates.get(interface.bInterfaceNumber, 0):
                continue
            for endpoint in interface:
                types[endpoint.bEndpointAddress] = TransferType(endpoint.bmAttributes & 3)
        return types

    # -- UsbDevice ---------------------------------------------------------

    @property
    def info(self) -> DeviceInfo:
        return self._info

    @property
    def description(self) -> str:
        return self._name

    def endpoint_type(self, address: int) -> TransferType | None:
        if address & 0x7F == 0:
            return TransferType.CONTROL
        return self._types.get(address)

    def open(self) -> Deferred[None]:
        return self._run(self._open)

    def close(self) -> Deferred[None]:
        with self._lock:
            for event in self._cancels.values():
                event.set()
        return self._run(self._close)

    def submit(self, urb: Urb) -> Completion:
        if urb.endpoint == 0:
            return self._run(self._control, urb)
        kind = self._types.get(urb.address)
        if kind is None:
            return UrbResult.error(Errno.ENOENT)
        if kind is TransferType.ISOCHRONOUS:
            packets = [
                IsoPacket(p.offset, p.length, 0, int(Errno.EOPNOTSUPP))
                for p in urb.iso_packets or []
            ]
            return UrbResult(
                status=int(Errno.EOPNOTSUPP), iso_packets=packets, error_count=len(packets)
            )
        event = threading.Event()
        with self._lock:
            self._cancels[urb.seqnum] = event
        result = self._run(self._transfer, urb, event)
        result.addBoth(self._forget, urb.seqnum)
        return result

    def _forget(self, result: T, seqnum: int) -> T:
        with self._lock:
            self._cancels.pop(seqnum, None)
        return result

    def cancel(self, seqnum: int) -> None:
        with self._lock:
            event = self._cancels.get(seqnum)
        if event is not None:
            event.set()

    def set_configuration(self, value: int) -> Completion:
        return self._run(self._set_configuration, value)

    def set_interface(self, interface: int, alternate: int) -> Completion:
        return self._run(self._set_interface, interface, alternate)

    def clear_halt(self, address: int) -> Completion:
        return self._run(self._guarded, lambda: self._device.clear_halt(address))

    def reset(self) -> Completion:
        return self._run(self._guarded, self._device.reset)

    # -- in the thread pool ------------------------------------------------

    def _interfaces(self) -> list[int]:
        configuration = self._configuration()
        if configuration is None:
            return []
        return sorted({i.bInterfaceNumber for i in configuration})

    def _claim_all(self) -> None:
        for number in self._interfaces():
            try:
                if self._device.is_kernel_driver_active(number):
                    self._device.detach_kernel_driver(number)
                    self._detached.append(number)
            except NotImplementedError:
                pass  # no kernel drivers on this platform
            usb.util.claim_interface(self._device, number)
            self._claimed.append(number)

    def _release_all(self) -> None:
        for number in self._claimed:
            try:
                usb.util.release_interface(self._device, number)
            except Exception as e:
                self._log.warn("Releasing interface {n}: {e}", n=number, e=e)
        self._claimed = []

    def _open(self) -> None:
        self._alternates = {}
        self._claim_all()

    def _close(self) -> None:
        self._release_all()
        for number in self._detached:
            try:
                self._device.attach_kernel_driver(number)
            except Exception as e:
                self._log.warn(
                    "Reattaching the kernel driver of interface {n} failed: {e}", n=number, e=e
                )
        self._detached = []
        usb.util.dispose_resources(self._device)

    def _guarded(self, action: Callable[[], object]) -> UrbResult:
        try:
            action()
        except usb.core.USBError as e:
            return UrbResult.error(_status_of(e))
        return UrbResult()

    def _set_configuration(self, value: int) -> UrbResult:
        try:
            self._release_all()
            self._device.set_configuration(value)
            self._alternates = {}
            configuration = self._configuration()
            self._types = self._endpoint_map(configuration) if configuration else {}
            self._claim_all()
        except usb.core.USBError as e:
            return UrbResult.error(_status_of(e))
        return UrbResult()

    def _set_interface(self, interface: int, alternate: int) -> UrbResult:
        try:
            self._device.set_interface_altsetting(interface, alternate)
        except usb.core.USBError as e:
            return UrbResult.error(_status_of(e))
        self._alternates[interface] = alternate
        configuration = self._configuration()
        self._types = self._endpoint_map(configuration) if configuration else {}
        return UrbResult()

    def _control(self, urb: Urb) -> UrbResult:
        rt, request, value, index, length = (
            urb.setup[0],
            urb.setup[1],
            int.from_bytes(urb.setup[2:4], "little"),
            int.from_bytes(urb.setup[4:6], "little"),
            int.from_bytes(urb.setup[6:8], "little"),
        )
        try:
            if rt & 0x80:
                data = self._device.ctrl_transfer(
                    rt, request, value, index, min(length, urb.length), TRANSFER_TIMEOUT_MS
                )
                payload = bytes(data)
                return UrbResult(data=payload, actual_length=len(payload))
            sent = self._device.ctrl_transfer(
                rt, request, value, index, urb.data, TRANSFER_TIMEOUT_MS
            )
            return UrbResult(actual_length=int(sent))
        except usb.core.USBError as e:
            return UrbResult.error(_status_of(e))

    def _transfer(self, urb: Urb, cancelled: threading.Event) -> UrbResult:
        device = self._device
        if not urb.is_in:
            try:
                written = device.write(urb.address, urb.data, TRANSFER_TIMEOUT_MS)
            except usb.core.USBError as e:
                return UrbResult.error(_status_of(e))
            return UrbResult(actual_length=int(written))
        while not cancelled.is_set():
            try:
                data = device.read(urb.address, urb.length, READ_SLICE_MS)
            except usb.core.USBTimeoutError:
                continue
            except usb.core.USBError as e:
                return UrbResult.error(_status_of(e))
            payload = bytes(data)
            return UrbResult(data=payload, actual_length=len(payload))
        return UrbResult.error(Errno.ECONNRESET)


class PyUSBBackend:
    """
    This machine's devices through pyusb; hubs are reported (the registry
    never exports them).
    """

    name = "pyusb"
    _log = Logger()

    def __init__(self, reactor: Any, threadpool: ThreadPool, backend: Any = None):
        self._reactor = reactor
        self._pool = threadpool
        self._backend = backend
        self._known: dict[tuple[int, int], PyUSBDevice] = {}
        self._warned = False

    def _run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def enumerate(self) -> Deferred[list[UsbDevice]]:
        """
        Scan the buses (in the pool); devices seen before keep their object.
        """
        return self._run(self._scan)

    def _scan(self) -> list[UsbDevice]:
        try:
            found = list(usb.core.find(find_all=True, backend=self._backend))
        except usb.core.NoBackendError:
            if not self._warned:
                self._warned = True
                self._log.error("No libusb-1.0 available (apt-get install libusb-1.0-0)")
            return []
        devices: list[UsbDevice] = []
        known: dict[tuple[int, int], PyUSBDevice] = {}
        for raw in found:
            key = (raw.bus, raw.address)
            device = self._known.get(key)
            if device is None:
                try:
                    device = PyUSBDevice(raw, self._run)
                except Exception as e:
                    self._log.warn("Skipping USB device {key}: {e}", key=key, e=e)
                    continue
            known[key] = device
            devices.append(device)
        self._known = known
        return devices
