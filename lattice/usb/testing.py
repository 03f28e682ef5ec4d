"""
Verified fakes for tests: a libusb stand-in that pyusb drives (so that the
real L{lattice.usb._pyusb} code runs without hardware) and a udev monitor.

L{FakeLibusb} is a C{usb.backend.IBackend}: pass it to
L{lattice.usb._pyusb.PyUSBBackend} as C{backend}.  It follows the rules real
libusb imposes that matter here: a missing configuration or alternate
setting raises C{IndexError} (pyusb loops forever otherwise), reads fill an
C{array('B')}, errors are C{USBError}s with libusb's codes and the errno,
claiming an interface bound to a kernel driver fails with EBUSY.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

__all__ = ["FakeLibusb", "FakeMonitor", "FakeUsbDevice", "UdevEvent"]


@dataclass
class FakeUsbDevice:
    """
    One device on the fake bus: vendor-class bulk echo (0x01 -> 0x81) and an
    interrupt IN endpoint (0x82) with nothing to say, or a hub.
    """

    bus: int = 1
    address: int = 5
    ports: tuple[int, ...] = (2,)
    vendor_id: int = 0x1209
    product_id: int = 0x0001
    device_class: int = 0
    interface_class: int = 0xFF
    kernel_driver: bool = True
    speed: int = 3
    detached: set[int] = field(default_factory=set)
    claimed: set[int] = field(default_factory=set)
    queue: deque[bytes] = field(default_factory=deque)
    halted: set[int] = field(default_factory=set)
    configuration: int = 1
    alternate: int = 0
    resets: int = 0
    gone: bool = False
    calls: list[str] = field(default_factory=list)
    wakeup: threading.Condition = field(default_factory=threading.Condition)


def _error(message: str, code: int, errno: int) -> usb.core.USBError:
    return usb.core.USBError(message, code, errno)


class FakeLibusb(usb.backend.IBackend):  # type: ignore[misc]
    """
    A C{usb.backend.IBackend} over L{FakeUsbDevice}s.
    """

    def __init__(self, *devices: FakeUsbDevice):
        self.devices = list(devices)

    # -- descriptors -------------------------------------------------------

    def enumerate_devices(self) -> Iterator[FakeUsbDevice]:
        return iter([d for d in self.devices if not d.gone])

    def get_device_descriptor(self, dev: FakeUsbDevice) -> Any:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=dev.device_class,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vendor_id,
            idProduct=dev.product_id,
            bcdDevice=0x0100,
            iManufacturer=0,
            iProduct=0,
            iSerialNumber=0,
            bNumConfigurations=1,
            address=dev.address,
            bus=dev.bus,
            port_number=dev.ports[-1] if dev.ports else None,
            port_numbers=dev.ports,
            speed=dev.speed,
        )

    def get_configuration_descriptor(self, dev: FakeUsbDevice, config: int) -> Any:
        if config != 0:
            raise IndexError(config)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=39,
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def get_interface_descriptor(self, dev: FakeUsbDevice, intf: int, alt: int, config: int) -> Any:
        if config != 0 or intf != 0 or alt != 0:
            raise IndexError((intf, alt, config))
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=0,
            bNumEndpoints=3,
            bInterfaceClass=dev.interface_class,
            bInterfaceSubClass=0,
            bInterfaceProtocol=0,
            iInterface=0,
            extra_descriptors=[],
        )

    def get_endpoint_descriptor(
        self, dev: FakeUsbDevice, ep: int, intf: int, alt: int, config: int
    ) -> Any:
        endpoints = [(0x01, 2, 512), (0x81, 2, 512), (0x82, 3, 64)]
        if config != 0 or intf != 0 or alt != 0 or ep >= len(endpoints):
            raise IndexError(ep)
        address, kind, size = endpoints[ep]
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=address,
            bmAttributes=kind,
            wMaxPacketSize=size,
            bInterval=1 if kind == 3 else 0,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    # -- handles and state ---------------------------------------------------

    def open_device(self, dev: FakeUsbDevice) -> FakeUsbDevice:
        if dev.gone:
            raise _error("No such device", -4, 19)
        dev.calls.append("open")
        return dev

    def close_device(self, dev_handle: FakeUsbDevice) -> None:
        dev_handle.calls.append("close")

    def get_configuration(self, dev_handle: FakeUsbDevice) -> int:
        return dev_handle.configuration

    def set_configuration(self, dev_handle: FakeUsbDevice, config_value: int) -> None:
        if dev_handle.claimed:
            raise _error("Resource busy", -6, 16)
        dev_handle.calls.append(f"set_configuration {config_value}")
        dev_handle.configuration = config_value

    def set_interface_altsetting(self, dev_handle: FakeUsbDevice, intf: int, alt: int) -> None:
        if alt != 0:
            raise _error("Pipe error", -9, 32)
        dev_handle.alternate = alt

    def is_kernel_driver_active(self, dev_handle: FakeUsbDevice, intf: int) -> bool:
        return dev_handle.kernel_driver and intf not in dev_handle.detached

    def detach_kernel_driver(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        dev_handle.calls.append(f"detach {intf}")
        dev_handle.detached.add(intf)

    def attach_kernel_driver(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        dev_handle.calls.append(f"attach {intf}")
        dev_handle.detached.discard(intf)

    def claim_interface(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        if dev_handle.kernel_driver and intf not in dev_handle.detached:
            raise _error("Resource busy", -6, 16)
        dev_handle.calls.append(f"claim {intf}")
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: FakeUsbDevice, intf: int) -> None:
        dev_handle.calls.append(f"release {intf}")
        dev_handle.claimed.discard(intf)

    def clear_halt(self, dev_handle: FakeUsbDevice, ep: int) -> None:
        dev_handle.halted.discard(ep)

    def reset_device(self, dev_handle: FakeUsbDevice) -> None:
        dev_handle.resets += 1

    # -- transfers ---------------------------------------------------------

    def _check(self, dev: FakeUsbDevice, ep: int) -> None:
        if dev.gone:
            raise _error("No such device", -4, 19)
        if ep in dev.halted:
            raise _error("Pipe error", -9, 32)

    def bulk_write(
        self, dev_handle: FakeUsbDevice, ep: int, intf: int, data: Any, timeout: int
    ) -> int:
        self._check(dev_handle, ep)
        with dev_handle.wakeup:
            dev_handle.queue.append(bytes(data))
            dev_handle.wakeup.notify_all()
        return len(data)

    def bulk_read(
        self, dev_handle: FakeUsbDevice, ep: int, intf: int, buff: Any, timeout: int
    ) -> int:
        self._check(dev_handle, ep)
        if ep == 0x82:
            with dev_handle.wakeup:
                dev_handle.wakeup.wait(timeout / 1000)
            self._check(dev_handle, ep)
            raise usb.core.USBTimeoutError("Operation timed out", -7, 110)
        with dev_handle.wakeup:
            if not dev_handle.queue and not dev_handle.wakeup.wait_for(
                lambda: bool(dev_handle.queue) or dev_handle.gone, timeout / 1000
            ):
                raise usb.core.USBTimeoutError("Operation timed out", -7, 110)
            self._check(dev_handle, ep)
            chunk = dev_handle.queue.popleft()
        chunk = chunk[: len(buff)]
        buff[: len(chunk)] = type(buff)("B", chunk)
        return len(chunk)

    intr_write = bulk_write
    intr_read = bulk_read

    def ctrl_transfer(
        self,
        dev_handle: FakeUsbDevice,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: Any,
        timeout: int,
    ) -> int:
        if dev_handle.gone:
            raise _error("No such device", -4, 19)
        if bmRequestType == 0x80 and bRequest == 6 and wValue >> 8 == 1:
            descriptor = bytes.fromhex("120100020000004009120100000100000001")
            descriptor = descriptor[: len(data)]
            data[: len(descriptor)] = type(data)("B", descriptor)
            return len(descriptor)
        if bmRequestType & 0x80:
            raise _error("Pipe error", -9, 32)
        return len(data)


@dataclass
class UdevEvent:
    """
    What the hot-plug code reads from a pyudev device.
    """

    action: str
    sys_name: str


class FakeMonitor:
    """
    A pyudev monitor stand-in: L{emit} queues an event and makes the
    descriptor readable, as the netlink socket would.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._events: deque[UdevEvent] = deque()

    def fileno(self) -> int:
        return self._reader.fileno()

    def emit(self, action: str, sys_name: str) -> None:
        self._events.append(UdevEvent(action, sys_name))
        self._writer.send(b"x")

    def poll(self, timeout: float | None = None) -> UdevEvent | None:
        with contextlib.suppress(BlockingIOError):
            self._reader.recv(1)
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
