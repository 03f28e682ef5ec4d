"""
The USB/IP wire format (protocol version 1.1.1), with no I/O.

Byte layouts follow the kernel's ``Documentation/usb/usbip_protocol.rst`` and
``tools/usb/usbip``: every multi-byte field is big-endian, the setup packet
and the payloads pass through unchanged.  L{OpParser} and L{UrbParser} are
incremental parsers fed with whatever the transport delivered; the
C{encode_*} functions build complete replies, so that each reply can be sent
in one write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CMD_SUBMIT",
    "CMD_UNLINK",
    "HEADER_SIZE",
    "OP_REQ_DEVLIST",
    "OP_REQ_IMPORT",
    "RET_SUBMIT",
    "RET_SUBMIT_HEADER",
    "RET_UNLINK",
    "USBIP_VERSION",
    "DeviceInfo",
    "Errno",
    "IsoPacket",
    "OpRequest",
    "OpStatus",
    "ProtocolError",
    "Unlink",
    "Urb",
    "UrbParser",
    "UrbResult",
    "encode_devlist_reply",
    "encode_import_reply",
    "encode_ret_submit",
    "encode_ret_unlink",
    "parse_op_request",
]

USBIP_VERSION = 0x0111

OP_REQ_DEVLIST = 0x8005
OP_REP_DEVLIST = 0x0005
OP_REQ_IMPORT = 0x8003
OP_REP_IMPORT = 0x0003

CMD_SUBMIT = 1
CMD_UNLINK = 2
RET_SUBMIT = 3
RET_UNLINK = 4

HEADER_SIZE = 48
OP_HEADER_SIZE = 8
IMPORT_REQUEST_SIZE = 40
BUSID_SIZE = 32

#: The largest transfer buffer a client may announce (the kernel stub refuses
#: anything a single URB could not hold; 16 MiB is far above what drivers use).
MAX_TRANSFER = 16 * 1024 * 1024
#: The most isochronous packets in one URB (the kernel's USBIP_MAX_ISO_PACKETS).
MAX_ISO_PACKETS = 1024

DIR_OUT = 0
DIR_IN = 1

_OP = struct.Struct(">HHI")
_USB_DEVICE = struct.Struct(">256s32sIIIHHHBBBBBB")
_INTERFACE = struct.Struct(">BBBB")
_BASIC = struct.Struct(">IIIII")
_SUBMIT = struct.Struct(">IIIII" + "IIiii8s")
_RET_SUBMIT = struct.Struct(">IIIII" + "iIiii8x")
#: The 48-byte RET_SUBMIT header: command, seqnum, devid, direction, ep,
#: status, actual_length, start_frame, number_of_packets, error_count.
RET_SUBMIT_HEADER = _RET_SUBMIT
_RET_UNLINK = struct.Struct(">IIIII" + "i24x")
_ISO = struct.Struct(">IIIi")


class OpStatus(IntEnum):
    """
    OP_REP_IMPORT status values (``usbip_common.h``), as stock clients print them.
    """

    OK = 0
    NA = 1  # "Request Failed"
    DEV_BUSY = 2  # "Device busy (exported)"
    DEV_ERR = 3  # "Device in error state"
    NODEV = 4  # "Device not found"
    ERROR = 5  # "Unexpected response"


class Errno(IntEnum):
    """
    The negative errno values a URB can complete with.
    """

    OK = 0
    ENOENT = -2
    EIO = -5
    ENODEV = -19
    EINVAL = -22
    EPIPE = -32
    EOVERFLOW = -75
    EOPNOTSUPP = -95
    ECONNRESET = -104
    ESHUTDOWN = -108
    ETIMEDOUT = -110
    EREMOTEIO = -121


class ProtocolError(Exception):
    """
    The peer sent something that is not USB/IP; the connection must close.
    """


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """
    What OP_REP_DEVLIST and OP_REP_IMPORT say about one exported device
    (``struct usbip_usb_device`` plus the interface triples).
    """

    busid: str
    busnum: int
    devnum: int
    speed: int
    vendor_id: int
    product_id: int
    bcd_device: int
    device_class: int
    device_subclass: int
    device_protocol: int
    configuration_value: int
    num_configurations: int
    interfaces: tuple[tuple[int, int, int], ...]
    path: str = ""

    @property
    def devid(self) -> int:
        """
        The C{devid} clients put in URB headers: C{busnum << 16 | devnum}.
        """
        return (self.busnum << 16) | self.devnum

    def sysfs_path(self) -> str:
        """
        The path announced to clients (informational only).
        """
        return self.path or f"/sys/bus/usb/devices/{self.busid}"

    def pack(self) -> bytes:
        """
        The 312-byte C{usbip_usb_device} block.
        """
        return _USB_DEVICE.pack(
            self.sysfs_path().encode("utf-8")[:255],
            self.busid.encode("ascii")[: BUSID_SIZE - 1],
            self.busnum,
            self.devnum,
            self.speed,
            self.vendor_id,
            self.product_id,
            self.bcd_device,
            self.device_class,
            self.device_subclass,
            self.device_protocol,
            self.configuration_value,
            self.num_configurations,
            len(self.interfaces),
        )


@dataclass(frozen=True, slots=True)
class OpRequest:
    """
    An operation-phase request: C{code} is OP_REQ_DEVLIST or OP_REQ_IMPORT;
    C{busid} is set for an import.
    """

    version: int
    code: int
    busid: str | None = None


def parse_op_request(buffer: bytes | bytearray) -> tuple[OpRequest, int] | None:
    """
    Parse one operation request from the start of C{buffer}.

    @return: the request and the number of bytes it used, or C{None} when
        more bytes are needed.
    @raise ProtocolError: for an unknown code or an unusable bus id.
    """
    if len(buffer) < OP_HEADER_SIZE:
        return None
    version, code, _status = _OP.unpack_from(buffer, 0)
    if code == OP_REQ_DEVLIST:
        return OpRequest(version, code), OP_HEADER_SIZE
    if code == OP_REQ_IMPORT:
        if len(buffer) < IMPORT_REQUEST_SIZE:
            return None
        raw = bytes(buffer[OP_HEADER_SIZE:IMPORT_REQUEST_SIZE]).split(b"\0", 1)[0]
        try:
            busid = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("bus id is not ASCII") from None
        return OpRequest(version, code, busid), IMPORT_REQUEST_SIZE
    raise ProtocolError(f"unknown operation code 0x{code:04x}")


def encode_devlist_reply(devices: Sequence[DeviceInfo]) -> bytes:
    """
    A complete OP_REP_DEVLIST: header, count, then each device and its interfaces.
    """
    parts = [_OP.pack(USBIP_VERSION, OP_REP_DEVLIST, OpStatus.OK), struct.pack(">I", len(devices))]
    for device in devices:
        parts.append(device.pack())
        parts.extend(_INTERFACE.pack(c, s, p, 0) for c, s, p in device.interfaces)
    return b"".join(parts)


def encode_import_reply(status: OpStatus, device: DeviceInfo | None = None) -> bytes:
    """
    A complete OP_REP_IMPORT; the device block follows only on success.
    """
    header = _OP.pack(USBIP_VERSION, OP_REP_IMPORT, status)
    if status == OpStatus.OK:
        if device is None:
            raise ValueError("a successful import reply needs the device")
        return header + device.pack()
    return header


@dataclass(slots=True)
class IsoPacket:
    """
    One isochronous packet descriptor.
    """

    offset: int
    length: int
    actual_length: int = 0
    status: int = 0


class Urb:
    """
    A CMD_SUBMIT: one transfer asked of the device.

    C{endpoint} is the endpoint number (0-15) and C{direction} 0 (OUT) or 1
    (IN), as on the wire; C{address} combines them as USB does (0x80 for IN).
    A plain slotted class: one is built per transfer.
    """

    __slots__ = (
        "address",
        "data",
        "devid",
        "direction",
        "endpoint",
        "interval",
        "is_in",
        "iso_packets",
        "length",
        "number_of_packets",
        "seqnum",
        "setup",
        "start_frame",
        "transfer_flags",
    )

    def __init__(
        self,
        seqnum: int,
        devid: int,
        direction: int,
        endpoint: int,
        transfer_flags: int,
        length: int,
        start_frame: int,
        number_of_packets: int,
        interval: int,
        setup: bytes,
        data: bytes,
        iso_packets: list[IsoPacket] | None = None,
    ):
        self.seqnum = seqnum
        self.devid = devid
        self.direction = direction
        self.endpoint = endpoint
        self.transfer_flags = transfer_flags
        self.length = length
        self.start_frame = start_frame
        self.number_of_packets = number_of_packets
        self.interval = interval
        self.setup = setup
        self.data = data
        self.iso_packets = iso_packets
        self.is_in = direction == DIR_IN
        self.address = endpoint | 0x80 if direction == DIR_IN else endpoint

    def __repr__(self) -> str:
        return (
            f"Urb(seqnum={self.seqnum}, address=0x{self.address:02x}, "
            f"length={self.length}, data={len(self.data)} bytes)"
        )


@dataclass(frozen=True, slots=True)
class Unlink:
    """
    A CMD_UNLINK: cancel URB C{victim} if it has not completed yet.
    """

    seqnum: int
    devid: int
    victim: int


@dataclass(slots=True)
class UrbResult:
    """
    How a URB completed: a negative errno C{status}, the IN C{data} (for an
    OUT transfer, C{actual_length} counts the bytes the device took).
    """

    status: int = 0
    data: bytes = b""
    actual_length: int = 0
    iso_packets: list[IsoPacket] | None = None
    start_frame: int = 0
    error_count: int = 0

    @classmethod
    def error(cls, status: int) -> UrbResult:
        """
        A failed completion with no data.
        """
        return cls(status=status)


def encode_ret_submit(seqnum: int, urb: Urb, result: UrbResult) -> bytes:
    """
    A complete RET_SUBMIT for C{urb}: header, IN data, then ISO descriptors.

    In replies devid, direction and endpoint are zero, as the kernel stub sends them.
    For ISO transfers the IN data is sent packed (without the gaps between packets).
    """
    packets = result.iso_packets
    if urb.is_in:
        data = result.data
        actual = len(data)
    else:
        data = b""
        actual = result.actual_length
    if packets is None:
        header = _RET_SUBMIT.pack(
            RET_SUBMIT, seqnum, 0, 0, 0, result.status, actual, result.start_frame, 0, 0
        )
        return header + data if data else header
    header = _RET_SUBMIT.pack(
        RET_SUBMIT,
        seqnum,
        0,
        0,
        0,
        result.status,
        actual,
        result.start_frame,
        len(packets),
        result.error_count,
    )
    descriptors = b"".join(
        _ISO.pack(p.offset, p.length, p.actual_length, p.status) for p in packets
    )
    return header + data + descriptors


def encode_ret_unlink(seqnum: int, status: int) -> bytes:
    """
    A complete RET_UNLINK: C{status} is -ECONNRESET when the URB was
    cancelled, 0 when it had already completed.
    """
    return _RET_UNLINK.pack(RET_UNLINK, seqnum, 0, 0, 0, status)


IsoLookup = Callable[[int], bool]


class UrbParser:
    """
    Incremental parser of the URB phase.

    Feed it bytes with L{feed}; it returns each complete L{Urb} or L{Unlink}.
    C{is_iso(address)} tells whether an endpoint is isochronous, because the
    header does not say and ISO descriptors follow only for ISO endpoints.
    """

    def __init__(self, is_iso: IsoLookup):
        self._is_iso = is_iso
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Urb | Unlink]:
        """
        Add received bytes and return every message they complete.

        @raise ProtocolError: on an unknown command or an impossible length.
        """
        if not self._buffer and len(data) >= HEADER_SIZE:
            # Fast path, the usual case: exactly one CMD_SUBMIT without ISO
            # descriptors (a synchronous client's whole request).
            fields = _SUBMIT.unpack_from(data, 0)
            direction = fields[3]
            length = fields[6]
            if (
                fields[0] == CMD_SUBMIT
                and direction <= DIR_IN
                and fields[4] <= 15
                and fields[8] <= 0
                and length <= MAX_TRANSFER
                and len(data) == HEADER_SIZE + (length if direction == DIR_OUT else 0)
            ):
                return [
                    Urb(
                        fields[1],
                        fields[2],
                        direction,
                        fields[4],
                        fields[5],
                        length,
                        fields[7],
                        fields[8],
                        fields[9],
                        fields[10],
                        data[HEADER_SIZE:] if direction == DIR_OUT else b"",
                    )
                ]
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data  # the common case: parse in place, keep only a tail
        messages: list[Urb | Unlink] = []
        offset = 0
        size = len(buffer)
        unpack = _SUBMIT.unpack_from
        while size - offset >= HEADER_SIZE:
            (
                command,
                seqnum,
                devid,
                direction,
                endpoint,
                flags,
                length,
                start_frame,
                npackets,
                interval,
                setup,
            ) = unpack(buffer, offset)
            if command == CMD_UNLINK:
                messages.append(Unlink(seqnum, devid, flags))
                offset += HEADER_SIZE
                continue
            if command != CMD_SUBMIT:
                raise ProtocolError(f"unexpected command {command}")
            if direction > DIR_IN:
                raise ProtocolError(f"bad direction {direction}")
            if endpoint > 15:
                raise ProtocolError(f"bad endpoint {endpoint}")
            if length > MAX_TRANSFER:
                raise ProtocolError(f"transfer of {length} bytes is too long")
            # The endpoint's type decides whether ISO descriptors follow;
            # without packets (0, or -1 for "not ISO") there are none to read.
            iso = (
                npackets > 0
                and endpoint != 0
                and self._is_iso(endpoint | (0x80 if direction == DIR_IN else 0))
            )
            if iso and npackets > MAX_ISO_PACKETS:
                raise ProtocolError(f"bad number_of_packets {npackets}")
            out_length = length if direction == DIR_OUT else 0
            need = HEADER_SIZE + out_length + (npackets * _ISO.size if iso else 0)
            if size - offset < need:
                break
            start = offset + HEADER_SIZE
            if not out_length:
                payload = b""
            elif isinstance(buffer, bytes):
                payload = buffer[start : start + out_length]
            else:
                payload = bytes(memoryview(buffer)[start : start + out_length])
            packets: list[IsoPacket] | None = None
            if iso:
                packets = []
                base = start + out_length
                for i in range(npackets):
                    off, plen, actual, status = _ISO.unpack_from(buffer, base + i * _ISO.size)
                    packets.append(IsoPacket(off, plen, actual, status))
            messages.append(
                Urb(
                    seqnum,
                    devid,
                    direction,
                    endpoint,
                    flags,
                    length,
                    start_frame,
                    npackets,
                    interval,
                    setup,
                    payload,
                    packets,
                )
            )
            offset += need
        if buffer is self._buffer:
            if offset:
                del self._buffer[:offset]
        elif offset < size:
            self._buffer += buffer[offset:]
        return messages

    @property
    def buffered(self) -> int:
        """
        How many bytes wait for the rest of their message.
        """
        return len(self._buffer)
