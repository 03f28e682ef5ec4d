"""
Standard USB descriptors: building them (for emulated devices) and reading
endpoint types back out of a configuration descriptor.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from lattice.usb._device import TransferType

__all__ = [
    "EndpointSpec",
    "InterfaceSpec",
    "config_descriptor",
    "device_descriptor",
    "endpoint_types",
    "iter_descriptors",
    "string_descriptor",
]

DT_DEVICE = 1
DT_CONFIG = 2
DT_STRING = 3
DT_INTERFACE = 4
DT_ENDPOINT = 5
DT_DEVICE_QUALIFIER = 6


@dataclass(frozen=True)
class EndpointSpec:
    """
    One endpoint: C{address} includes 0x80 for IN.
    """

    address: int
    type: TransferType
    max_packet_size: int
    interval: int = 0

    def pack(self) -> bytes:
        """
        The 7-byte endpoint descriptor.
        """
        return struct.pack(
            "<BBBBHB",
            7,
            DT_ENDPOINT,
            self.address,
            int(self.type),
            self.max_packet_size,
            self.interval,
        )


@dataclass(frozen=True)
class InterfaceSpec:
    """
    One interface alternate setting, its class triple, class-specific
    descriptor bytes (C{extra}) and endpoints.
    """

    number: int
    interface_class: int
    interface_subclass: int
    interface_protocol: int
    endpoints: tuple[EndpointSpec, ...] = ()
    alternate: int = 0
    extra: bytes = b""
    string_index: int = 0

    def pack(self) -> bytes:
        """
        The interface descriptor, then C{extra}, then the endpoint descriptors.
        """
        header = struct.pack(
            "<BBBBBBBBB",
            9,
            DT_INTERFACE,
            self.number,
            self.alternate,
            len(self.endpoints),
            self.interface_class,
            self.interface_subclass,
            self.interface_protocol,
            self.string_index,
        )
        return header + self.extra + b"".join(e.pack() for e in self.endpoints)


@dataclass(frozen=True)
class DeviceSpec:
    """
    The fields of a device descriptor.
    """

    vendor_id: int
    product_id: int
    bcd_device: int = 0x0100
    bcd_usb: int = 0x0200
    device_class: int = 0
    device_subclass: int = 0
    device_protocol: int = 0
    max_packet_size0: int = 64
    strings: tuple[str, ...] = field(default=())


def device_descriptor(spec: DeviceSpec) -> bytes:
    """
    The 18-byte device descriptor (string indexes 1, 2, 3 when present).
    """
    count = len(spec.strings)
    return struct.pack(
        "<BBHBBBBHHHBBBB",
        18,
        DT_DEVICE,
        spec.bcd_usb,
        spec.device_class,
        spec.device_subclass,
        spec.device_protocol,
        spec.max_packet_size0,
        spec.vendor_id,
        spec.product_id,
        spec.bcd_device,
        1 if count >= 1 else 0,
        2 if count >= 2 else 0,
        3 if count >= 3 else 0,
        1,
    )


def device_qualifier(spec: DeviceSpec) -> bytes:
    """
    The 10-byte device qualifier of a high-speed device.
    """
    return struct.pack(
        "<BBHBBBBBB",
        10,
        DT_DEVICE_QUALIFIER,
        spec.bcd_usb,
        spec.device_class,
        spec.device_subclass,
        spec.device_protocol,
        spec.max_packet_size0,
        1,
        0,
    )


def config_descriptor(
    interfaces: Sequence[InterfaceSpec],
    value: int = 1,
    attributes: int = 0x80,
    max_power_2ma: int = 50,
) -> bytes:
    """
    A full configuration descriptor (header plus every interface).
    """
    body = b"".join(i.pack() for i in interfaces)
    count = len({i.number for i in interfaces})
    header = struct.pack(
        "<BBHBBBBB", 9, DT_CONFIG, 9 + len(body), count, value, 0, attributes, max_power_2ma
    )
    return header + body


def string_descriptor(index: int, strings: Sequence[str]) -> bytes | None:
    """
    String descriptor C{index} (0 is the language list), or C{None}.
    """
    if index == 0:
        return struct.pack("<BBH", 4, DT_STRING, 0x0409)
    if 1 <= index <= len(strings):
        encoded = strings[index - 1].encode("utf-16-le")[:252]
        return struct.pack("<BB", 2 + len(encoded), DT_STRING) + encoded
    return None


def iter_descriptors(raw: bytes) -> Iterator[bytes]:
    """
    Split concatenated descriptors; stops at a malformed length.
    """
    offset = 0
    while offset + 2 <= len(raw):
        length = raw[offset]
        if length < 2 or offset + length > len(raw):
            return
        yield raw[offset : offset + length]
        offset += length


def endpoint_types(
    config: bytes, alternates: Mapping[int, int] | None = None
) -> dict[int, TransferType]:
    """
    Endpoint address to transfer type, for the selected alternate setting of
    each interface (default 0), read from a configuration descriptor.
    """
    alternates = alternates or {}
    result: dict[int, TransferType] = {}
    selected = False
    for descriptor in iter_descriptors(config):
        kind = descriptor[1]
        if kind == DT_INTERFACE and len(descriptor) >= 4:
            number, alternate = descriptor[2], descriptor[3]
            selected = alternates.get(number, 0) == alternate
        elif kind == DT_ENDPOINT and len(descriptor) >= 4 and selected:
            result[descriptor[2]] = TransferType(descriptor[3] & 3)
    return result
