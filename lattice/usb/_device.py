"""
The seam between the USB/IP server and the devices it exports.

A backend (pyusb, emulated) produces L{UsbDevice}s.  The server never talks
USB itself: it asks the device for the transfer type of an endpoint, hands it
URBs, and turns the four control requests that change host-side state into
calls (as the kernel's ``stub_rx.c`` does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from twisted.internet.defer import Deferred

from lattice.usb._protocol import DeviceInfo, Urb, UrbResult

__all__ = [
    "Completion",
    "DeviceBackend",
    "SpecialRequest",
    "TransferType",
    "UsbDevice",
    "classify_special",
]

Completion = UrbResult | Deferred[UrbResult]


class TransferType(IntEnum):
    """
    Endpoint transfer types, as C{bmAttributes & 3} of the endpoint descriptor.
    """

    CONTROL = 0
    ISOCHRONOUS = 1
    BULK = 2
    INTERRUPT = 3


class UsbDevice(Protocol):
    """
    One device a backend can export.

    C{submit} and the special-request methods return either a L{UrbResult}
    at once (emulated devices answer on the reactor) or a L{Deferred} that
    fires with one (hardware).  The Deferred always fires, even after
    L{cancel}; the server discards results it no longer wants.
    """

    @property
    def info(self) -> DeviceInfo:
        """
        What USB/IP announces about the device.
        """

    @property
    def description(self) -> str:
        """
        A human-readable name (manufacturer and product strings).
        """

    def endpoint_type(self, address: int) -> TransferType | None:
        """
        The transfer type of the endpoint C{address} in the current
        configuration and alternate settings, or C{None} if there is none.
        """

    def open(self) -> Deferred[None]:
        """
        Take the device for a client (detach kernel drivers, claim interfaces).
        """

    def close(self) -> Deferred[None]:
        """
        Give the device back (release interfaces, reattach kernel drivers).
        """

    def submit(self, urb: Urb) -> Completion:
        """
        Perform one transfer.  An endpoint that is not in the current
        configuration and alternate settings completes with -ENOENT.
        """

    def cancel(self, seqnum: int) -> None:
        """
        Ask the device to end URB C{seqnum} early; its completion still fires.
        """

    def set_configuration(self, value: int) -> Completion:
        """
        SET_CONFIGURATION, performed on the host.
        """

    def set_interface(self, interface: int, alternate: int) -> Completion:
        """
        SET_INTERFACE, performed on the host.
        """

    def clear_halt(self, address: int) -> Completion:
        """
        CLEAR_FEATURE(ENDPOINT_HALT), performed on the host.
        """

    def reset(self) -> Completion:
        """
        A port reset, performed on the host.
        """


class DeviceBackend(Protocol):
    """
    Where devices come from.
    """

    name: str

    def enumerate(self) -> Deferred[list[UsbDevice]]:
        """
        Every device present now (hubs included; the registry filters).
        """


class SpecialRequest(IntEnum):
    """
    The control requests the kernel stub performs on the host instead of
    passing them to the device (``stub_rx.c: tweak_special_requests``).
    """

    SET_CONFIGURATION = 1
    SET_INTERFACE = 2
    CLEAR_HALT = 3
    RESET = 4


@dataclass(frozen=True, slots=True)
class Setup:
    """
    A decoded 8-byte setup packet (little-endian on the wire).
    """

    request_type: int
    request: int
    value: int
    index: int
    length: int

    @classmethod
    def parse(cls, raw: bytes) -> Setup:
        """
        Decode a setup packet.
        """
        return cls(*struct.unpack("<BBHHH", raw))

    @property
    def is_in(self) -> bool:
        """
        Whether the data stage flows device to host.
        """
        return bool(self.request_type & 0x80)


def classify_special(setup: Setup) -> SpecialRequest | None:
    """
    Which special request C{setup} is, if any.
    """
    rt, request = setup.request_type, setup.request
    if rt == 0x00 and request == 9:
        return SpecialRequest.SET_CONFIGURATION
    if rt == 0x01 and request == 11:
        return SpecialRequest.SET_INTERFACE
    if rt == 0x02 and request == 1 and setup.value == 0:
        return SpecialRequest.CLEAR_HALT
    if rt == 0x23 and request == 3 and setup.value == 4:  # SET_FEATURE(PORT_RESET)
        return SpecialRequest.RESET
    return None
