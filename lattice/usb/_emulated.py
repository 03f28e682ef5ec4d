"""
Emulated USB devices, answered on the reactor: for tests, demos and the benchmark.

L{EchoDevice} is a vendor-class device whose bulk and interrupt OUT
endpoints loop back to the matching IN endpoints; L{KeyboardDevice} is a HID
boot keyboard that types what L{KeyboardDevice.type_text} is given.  Both
have realistic descriptors, answer the standard requests, STALL what they do
not know, and park IN transfers until data exists (as a real device NAKs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed

from lattice.usb._descriptors import (
    DT_CONFIG,
    DT_DEVICE,
    DT_DEVICE_QUALIFIER,
    DT_STRING,
    DeviceSpec,
    EndpointSpec,
    InterfaceSpec,
    config_descriptor,
    device_descriptor,
    device_qualifier,
    endpoint_types,
    string_descriptor,
)
from lattice.usb._device import Completion, Setup, TransferType, UsbDevice
from lattice.usb._protocol import DeviceInfo, Errno, Urb, UrbResult

__all__ = ["EchoDevice", "EmulatedBackend", "EmulatedDevice", "KeyboardDevice"]

SPEED_LOW = 1
SPEED_FULL = 2
SPEED_HIGH = 3


_ENOENT = int(Errno.ENOENT)
_EPIPE = int(Errno.EPIPE)


class Stall(Exception):
    """
    The device rejects a request (the URB completes with -EPIPE).
    """


@dataclass
class _Parked:
    seqnum: int
    urb: Urb
    deferred: Deferred[UrbResult]


class EmulatedDevice:
    """
    The standard-request engine shared by the emulated devices.

    Subclasses set the descriptors and implement L{data_transfer} and, for
    class or vendor requests, L{class_request}.
    """

    def __init__(
        self,
        spec: DeviceSpec,
        interfaces: Sequence[InterfaceSpec],
        *,
        busnum: int,
        devnum: int,
        speed: int,
    ):
        self.spec = spec
        self.interfaces = tuple(interfaces)
        self._config = config_descriptor(self.interfaces)
        self._device = device_descriptor(spec)
        self.configuration = 0
        self.alternates: dict[int, int] = {}
        self.halted: set[int] = set()
        self._types = endpoint_types(self._config)
        self._parked: dict[int, deque[_Parked]] = {}
        self.opened = False
        self.speed = speed
        triples = []
        seen = set()
        for interface in self.interfaces:
            if interface.number not in seen:
                seen.add(interface.number)
                triples.append(
                    (
                        interface.interface_class,
                        interface.interface_subclass,
                        interface.interface_protocol,
                    )
                )
        self._info = DeviceInfo(
            busid=f"{busnum}-{devnum - 1}",
            busnum=busnum,
            devnum=devnum,
            speed=speed,
            vendor_id=spec.vendor_id,
            product_id=spec.product_id,
            bcd_device=spec.bcd_device,
            device_class=spec.device_class,
            device_subclass=spec.device_subclass,
            device_protocol=spec.device_protocol,
            configuration_value=1,
            num_configurations=1,
            interfaces=tuple(triples),
            path=f"/sys/devices/lattice-emulated/usb{busnum}/{busnum}-{devnum - 1}",
        )

    # -- UsbDevice ---------------------------------------------------------

    @property
    def info(self) -> DeviceInfo:
        return self._info

    @property
    def description(self) -> str:
        return " ".join(self.spec.strings[:2]) or "emulated device"

    def endpoint_type(self, address: int) -> TransferType | None:
        if address & 0x7F == 0:
            return TransferType.CONTROL
        if not self.configuration:
            return None
        return self._types.get(address)

    def open(self) -> Deferred[None]:
        self.opened = True
        self._reset_state()
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.opened = False
        self._fail_parked(Errno.ESHUTDOWN)
        self._reset_state()
        return succeed(None)

    def submit(self, urb: Urb) -> Completion:
        if urb.endpoint == 0:
            return self._control(urb)
        address = urb.address
        if not self.configuration or address not in self._types:
            return UrbResult(_ENOENT)
        if address in self.halted:
            return UrbResult(_EPIPE)
        return self.data_transfer(urb)

    def cancel(self, seqnum: int) -> None:
        for queue in self._parked.values():
            for parked in queue:
                if parked.seqnum == seqnum:
                    queue.remove(parked)
                    parked.deferred.callback(UrbResult.error(Errno.ECONNRESET))
                    return

    def set_configuration(self, value: int) -> Completion:
        if value not in (0, 1):
            return UrbResult.error(Errno.EPIPE)
        self._fail_parked(Errno.ESHUTDOWN)
        self.configuration = value
        self.alternates = {}
        self.halted.clear()
        self._types = endpoint_types(self._config)
        self.configured()
        return UrbResult()

    def set_interface(self, interface: int, alternate: int) -> Completion:
        known = {(i.number, i.alternate) for i in self.interfaces}
        if not self.configuration or (interface, alternate) not in known:
            return UrbResult.error(Errno.EPIPE)
        self.alternates[interface] = alternate
        self._types = endpoint_types(self._config, self.alternates)
        return UrbResult()

    def clear_halt(self, address: int) -> Completion:
        self.halted.discard(address)
        return UrbResult()

    def reset(self) -> Completion:
        # Like usb_reset_device(): the configuration and alternate settings
        # survive; endpoint state and anything in flight do not.
        self._fail_parked(Errno.ESHUTDOWN)
        self.halted.clear()
        self.configured()
        return UrbResult()

    # -- for subclasses ----------------------------------------------------

    def data_transfer(self, urb: Urb) -> Completion:
        """
        A bulk or interrupt transfer on a configured, non-halted endpoint.
        """
        return UrbResult.error(Errno.EPIPE)

    def class_request(self, setup: Setup, data: bytes) -> bytes:
        """
        A class or vendor control request; return the IN data (or C{b""}),
        raise L{Stall} to refuse.
        """
        raise Stall()

    def configured(self) -> None:
        """
        Called after SET_CONFIGURATION and resets: drop class state.
        """

    def park(self, urb: Urb) -> Deferred[UrbResult]:
        """
        Hold an IN transfer until L{complete_parked} has data for it.
        """
        deferred: Deferred[UrbResult] = Deferred()
        self._parked.setdefault(urb.address, deque()).append(_Parked(urb.seqnum, urb, deferred))
        return deferred

    def parked(self, address: int) -> deque[_Parked]:
        """
        The transfers waiting on endpoint C{address}, oldest first.
        """
        return self._parked.setdefault(address, deque())

    def halt(self, address: int) -> None:
        """
        Halt an endpoint: pending and future transfers STALL until cleared.
        """
        self.halted.add(address)
        for parked in list(self.parked(address)):
            self.parked(address).remove(parked)
            parked.deferred.callback(UrbResult.error(Errno.EPIPE))

    # -- internals ---------------------------------------------------------

    def _reset_state(self) -> None:
        # An exported device is configured, as the host's USB core leaves it.
        self.configuration = 1
        self.alternates = {}
        self._types = endpoint_types(self._config)
        self.halted.clear()
        self.configured()

    def _fail_parked(self, status: int) -> None:
        queues, self._parked = self._parked, {}
        for queue in queues.values():
            for parked in queue:
                parked.deferred.callback(UrbResult.error(status))

    def _control(self, urb: Urb) -> UrbResult:
        setup = Setup.parse(urb.setup)
        try:
            reply = self._standard(setup, urb.data)
        except Stall:
            return UrbResult.error(Errno.EPIPE)
        if setup.is_in:
            reply = reply[: min(setup.length, urb.length)]
            return UrbResult(data=reply, actual_length=len(reply))
        return UrbResult(actual_length=len(urb.data))

    def _standard(self, setup: Setup, data: bytes) -> bytes:
        kind = (setup.request_type >> 5) & 3
        if kind != 0:
            return self.class_request(setup, data)
        recipient = setup.request_type & 0x1F
        request = setup.request
        if request == 6 and setup.is_in:  # GET_DESCRIPTOR
            if recipient == 1:
                return self.class_request(setup, data)
            return self._descriptor(setup.value >> 8, setup.value & 0xFF)
        if request == 0:  # GET_STATUS
            if recipient == 2:
                return b"\x01\x00" if setup.index & 0xFF in self.halted else b"\x00\x00"
            return b"\x00\x00"
        if request == 8:  # GET_CONFIGURATION
            return bytes([self.configuration])
        if request == 10:  # GET_INTERFACE
            if not self.configuration:
                raise Stall()
            return bytes([self.alternates.get(setup.index & 0xFF, 0)])
        if request == 5:  # SET_ADDRESS
            return b""
        if request == 9:  # SET_CONFIGURATION (normally done by the server)
            if self.set_configuration(setup.value & 0xFF) != UrbResult():
                raise Stall()
            return b""
        if request == 11:  # SET_INTERFACE (normally done by the server)
            if self.set_interface(setup.index & 0xFF, setup.value & 0xFF) != UrbResult():
                raise Stall()
            return b""
        if request in (1, 3) and recipient == 2 and setup.value == 0:  # ENDPOINT_HALT
            if request == 1:
                self.halted.discard(setup.index & 0xFF)
            else:
                self.halt(setup.index & 0xFF)
            return b""
        if request in (1, 3) and recipient == 0:  # remote wakeup, test mode
            return b""
        raise Stall()

    def _descriptor(self, kind: int, index: int) -> bytes:
        if kind == DT_DEVICE:
            return self._device
        if kind == DT_CONFIG and index == 0:
            return self._config
        if kind == DT_STRING:
            found = string_descriptor(index, self.spec.strings)
            if found is not None:
                return found
        if kind == DT_DEVICE_QUALIFIER and self.speed == SPEED_HIGH:
            return device_qualifier(self.spec)
        raise Stall()  # BOS, OTG, other speed, ...: a STALL is the normal answer


#: Queued echo data beyond which OUT transfers wait (NAK) until IN drains it.
ECHO_BUFFER_LIMIT = 4 * 1024 * 1024

VENDOR_WRITE = 0x01
VENDOR_READ = 0x02
VENDOR_HALT = 0x04


class EchoDevice(EmulatedDevice):
    """
    A vendor-class loopback: bulk OUT 0x01 to bulk IN 0x81 and interrupt OUT
    0x02 to interrupt IN 0x82.  High speed (512-byte bulk packets).

    Vendor control requests: C{0x40/0x01} stores its data stage,
    C{0xC0/0x02} reads it back, C{0x40/0x04} halts endpoint C{wIndex}.
    Everything else STALLs.
    """

    VENDOR_ID = 0x1209
    PRODUCT_ID = 0x0001

    def __init__(self, busnum: int = 1, devnum: int = 2):
        spec = DeviceSpec(
            vendor_id=self.VENDOR_ID,
            product_id=self.PRODUCT_ID,
            bcd_device=0x0100,
            device_class=0,
            strings=("Lattice", "Lattice echo", f"ECHO{busnum:02d}{devnum:03d}"),
        )
        interface = InterfaceSpec(
            number=0,
            interface_class=0xFF,
            interface_subclass=0,
            interface_protocol=0,
            endpoints=(
                EndpointSpec(0x01, TransferType.BULK, 512),
                EndpointSpec(0x81, TransferType.BULK, 512),
                EndpointSpec(0x02, TransferType.INTERRUPT, 64, 1),
                EndpointSpec(0x82, TransferType.INTERRUPT, 64, 1),
            ),
        )
        super().__init__(spec, [interface], busnum=busnum, devnum=devnum, speed=SPEED_HIGH)
        self._queues: dict[int, deque[bytes]] = {0x81: deque(), 0x82: deque()}
        self._queued = 0
        self._waiting_out: deque[tuple[_Parked, int]] = deque()
        self._control_data = b""

    def configured(self) -> None:
        for queue in getattr(self, "_queues", {}).values():
            queue.clear()
        self._queued = 0
        waiting = getattr(self, "_waiting_out", None)
        if waiting:
            self._waiting_out = deque()
            for parked, _ in waiting:
                parked.deferred.callback(UrbResult.error(Errno.ESHUTDOWN))

    def cancel(self, seqnum: int) -> None:
        for entry in self._waiting_out:
            if entry[0].seqnum == seqnum:
                self._waiting_out.remove(entry)
                entry[0].deferred.callback(UrbResult.error(Errno.ECONNRESET))
                return
        super().cancel(seqnum)

    def data_transfer(self, urb: Urb) -> Completion:
        if urb.is_in:
            queue = self._queues[urb.address]
            if not queue:
                return self.park(urb)
            data = self._take(queue, urb.length)
            if self._waiting_out:
                self._admit_waiting()
            return UrbResult(0, data, len(data))
        target = urb.address | 0x80
        if self._queued > ECHO_BUFFER_LIMIT:
            deferred: Deferred[UrbResult] = Deferred()
            self._waiting_out.append((_Parked(urb.seqnum, urb, deferred), target))
            return deferred
        self._deliver(target, urb.data)
        return UrbResult(0, b"", len(urb.data))

    def _deliver(self, target: int, data: bytes) -> None:
        parked = self._parked.get(target)
        while data and parked:
            waiter = parked.popleft()
            chunk, data = data[: waiter.urb.length], data[waiter.urb.length :]
            waiter.deferred.callback(UrbResult(data=chunk, actual_length=len(chunk)))
        if data:
            self._queues[target].append(data)
            self._queued += len(data)

    def _take(self, queue: deque[bytes], length: int) -> bytes:
        chunk = queue.popleft()
        if len(chunk) > length:
            queue.appendleft(chunk[length:])
            chunk = chunk[:length]
        self._queued -= len(chunk)
        return chunk

    def _admit_waiting(self) -> None:
        while self._waiting_out and self._queued <= ECHO_BUFFER_LIMIT:
            parked, target = self._waiting_out.popleft()
            self._deliver(target, parked.urb.data)
            parked.deferred.callback(UrbResult(actual_length=len(parked.urb.data)))

    def class_request(self, setup: Setup, data: bytes) -> bytes:
        if setup.request_type == 0x40 and setup.request == VENDOR_WRITE:
            self._control_data = data
            return b""
        if setup.request_type == 0xC0 and setup.request == VENDOR_READ:
            return self._control_data
        if setup.request_type == 0x40 and setup.request == VENDOR_HALT:
            if self.endpoint_type(setup.index & 0xFF) in (None, TransferType.CONTROL):
                raise Stall()
            self.halt(setup.index & 0xFF)
            return b""
        raise Stall()


# HID 1.11 appendix E.6: the boot keyboard report descriptor.
KEYBOARD_REPORT_DESCRIPTOR = bytes.fromhex(
    "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02 95 01 75 08 81 01"
    " 95 05 75 01 05 08 19 01 29 05 91 02 95 01 75 03 91 01 95 06 75 08 15 00 25 65 05 07"
    " 19 00 29 65 81 00 c0"
)

_HID_KEYS = {
    **{chr(ord("a") + i): (0x04 + i, False) for i in range(26)},
    **{chr(ord("A") + i): (0x04 + i, True) for i in range(26)},
    **{str(i): (0x1E + i - 1, False) for i in range(1, 10)},
    "0": (0x27, False),
    "\n": (0x28, False),
    " ": (0x2C, False),
    "-": (0x2D, False),
    ".": (0x37, False),
}


class KeyboardDevice(EmulatedDevice):
    """
    A HID boot keyboard (full speed, interrupt IN 0x81, 8-byte reports).

    It answers GET_REPORT, SET_REPORT (the LED state), GET/SET_IDLE and
    GET/SET_PROTOCOL.  Its interrupt IN parks until L{type_text} queues
    key presses, like a real keyboard nobody touches.
    """

    VENDOR_ID = 0x1209
    PRODUCT_ID = 0x0002

    def __init__(self, busnum: int = 1, devnum: int = 3):
        hid = bytes(
            [9, 0x21, 0x11, 0x01, 0, 1, 0x22, len(KEYBOARD_REPORT_DESCRIPTOR) & 0xFF]
        ) + bytes([len(KEYBOARD_REPORT_DESCRIPTOR) >> 8])
        spec = DeviceSpec(
            vendor_id=self.VENDOR_ID,
            product_id=self.PRODUCT_ID,
            bcd_device=0x0111,
            bcd_usb=0x0110,
            max_packet_size0=8,
            strings=("Lattice", "Lattice keyboard", f"KBD{busnum:02d}{devnum:03d}"),
        )
        interface = InterfaceSpec(
            number=0,
            interface_class=3,
            interface_subclass=1,
            interface_protocol=1,
            endpoints=(EndpointSpec(0x81, TransferType.INTERRUPT, 8, 10),),
            extra=hid,
        )
        self._hid = hid
        super().__init__(spec, [interface], busnum=busnum, devnum=devnum, speed=SPEED_FULL)
        self.reports: deque[bytes] = deque()
        self.leds = 0
        self.idle = 0
        self.protocol = 1

    def configured(self) -> None:
        self.leds = 0
        self.idle = 0
        self.protocol = 1

    def type_text(self, text: str) -> None:
        """
        Queue a press and a release report for each character C{text} has a key for.
        """
        for character in text:
            key = _HID_KEYS.get(character)
            if key is None:
                continue
            code, shift = key
            self._report(bytes([0x02 if shift else 0, 0, code, 0, 0, 0, 0, 0]))
            self._report(bytes(8))

    def _report(self, report: bytes) -> None:
        parked = self.parked(0x81)
        if parked:
            waiter = parked.popleft()
            data = report[: waiter.urb.length]
            waiter.deferred.callback(UrbResult(data=data, actual_length=len(data)))
        else:
            self.reports.append(report)

    def data_transfer(self, urb: Urb) -> Completion:
        if not urb.is_in:
            return UrbResult.error(Errno.ENOENT)
        if self.reports:
            data = self.reports.popleft()[: urb.length]
            return UrbResult(data=data, actual_length=len(data))
        return self.park(urb)

    def class_request(self, setup: Setup, data: bytes) -> bytes:
        rt, request = setup.request_type, setup.request
        if rt == 0x81 and request == 6:  # GET_DESCRIPTOR, interface recipient
            kind = setup.value >> 8
            if kind == 0x22:
                return KEYBOARD_REPORT_DESCRIPTOR
            if kind == 0x21:
                return self._hid
            raise Stall()
        if rt == 0xA1 and request == 0x01:  # GET_REPORT
            return self.reports[0] if self.reports else bytes(8)
        if rt == 0xA1 and request == 0x02:  # GET_IDLE
            return bytes([self.idle])
        if rt == 0xA1 and request == 0x03:  # GET_PROTOCOL
            return bytes([self.protocol])
        if rt == 0x21 and request == 0x09:  # SET_REPORT (LEDs)
            self.leds = data[0] if data else 0
            return b""
        if rt == 0x21 and request == 0x0A:  # SET_IDLE
            self.idle = setup.value >> 8
            return b""
        if rt == 0x21 and request == 0x0B:  # SET_PROTOCOL
            self.protocol = setup.value & 1
            return b""
        raise Stall()


class EmulatedBackend:
    """
    A backend of emulated devices: by default one echo device (1-1) and one
    keyboard (1-2).  Tests add and remove devices to emulate hot-plug.
    """

    name = "emulated"

    def __init__(self, devices: Sequence[EmulatedDevice] | None = None):
        if devices is None:
            devices = [EchoDevice(1, 2), KeyboardDevice(1, 3)]
        self.devices: list[EmulatedDevice] = list(devices)

    def enumerate(self) -> Deferred[list[UsbDevice]]:
        """
        The devices present now.
        """
        return succeed(list[UsbDevice](self.devices))

    def plug(self, device: EmulatedDevice) -> None:
        """
        Emulate connecting C{device}.
        """
        self.devices.append(device)

    def unplug(self, busid: str) -> None:
        """
        Emulate disconnecting the device at C{busid}.
        """
        self.devices = [d for d in self.devices if d.info.busid != busid]
