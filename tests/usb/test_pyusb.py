"""Tests for ``lattice.usb._pyusb`` through pyusb against the verified libusb fake."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase

from lattice.usb import ApprovalBook, DeviceRegistry, ExportPolicy, Urb, UrbResult
from lattice.usb._pyusb import PyUSBBackend, PyUSBDevice
from lattice.usb.testing import FakeLibusb, FakeUsbDevice

GET_DEVICE_DESCRIPTOR = bytes.fromhex("8006000100001200")


def urb(seqnum: int, address: int, length: int, data: bytes = b"", setup: bytes = bytes(8)) -> Urb:
    """A URB for C{address} (0x80 set for IN)."""
    direction = 1 if address & 0x80 else 0
    return Urb(seqnum, 0x10005, direction, address & 0x0F, 0, length, 0, 0, 0, setup, data)


class PyUSBBackendTests(TestCase):
    """The pyusb backend runs every libusb call in its pool and maps errors to errno."""

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="test-usb")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.fake = FakeUsbDevice()
        self.hub = FakeUsbDevice(address=1, ports=(1,), device_class=9, interface_class=9)
        self.libusb = FakeLibusb(self.fake, self.hub)
        self.backend = PyUSBBackend(reactor, self.pool, backend=self.libusb)

    async def device(self) -> PyUSBDevice:
        devices = await self.backend.enumerate()
        [device] = [d for d in devices if d.info.busid == "1-2"]
        assert isinstance(device, PyUSBDevice)
        return device

    async def completed(self, completion: object) -> UrbResult:
        if isinstance(completion, UrbResult):
            return completion
        result = await completion  # type: ignore[misc]
        assert isinstance(result, UrbResult)
        return result

    async def test_enumerate(self) -> None:
        """Devices get sysfs-style bus ids and their descriptors; the same object each scan."""
        device = await self.device()
        info = device.info
        self.assertEqual((info.busnum, info.devnum, info.speed), (1, 5, 3))
        self.assertEqual((info.vendor_id, info.interfaces), (0x1209, ((0xFF, 0, 0),)))
        self.assertIs(await self.device(), device)

    async def test_hub_never_exported(self) -> None:
        """The registry does not export the hub the backend reports."""
        registry = DeviceRegistry(
            self.backend, ExportPolicy(auto_share=True), ApprovalBook(False), reactor
        )
        await registry.rescan()
        self.assertEqual(sorted(registry.exports), ["1-2"])

    async def test_open_close_drivers(self) -> None:
        """Export detaches the kernel driver and claims; release gives both back."""
        device = await self.device()
        await device.open()
        self.assertEqual(self.fake.calls[-2:], ["detach 0", "claim 0"])
        await device.close()
        self.assertEqual(self.fake.calls[-3:], ["release 0", "attach 0", "close"])
        self.assertEqual(self.fake.detached, set())

    async def test_transfers(self) -> None:
        """Control IN, bulk OUT and the bulk IN echo go through pyusb."""
        device = await self.device()
        await device.open()
        self.addCleanup(device.close)
        control = await self.completed(device.submit(urb(1, 0x80, 18, setup=GET_DEVICE_DESCRIPTOR)))
        self.assertEqual(control.data[:4], bytes.fromhex("12010002"))
        out = await self.completed(device.submit(urb(2, 0x01, 5, b"hello")))
        self.assertEqual((out.status, out.actual_length), (0, 5))
        echo = await self.completed(device.submit(urb(3, 0x81, 512)))
        self.assertEqual(echo.data, b"hello")

    async def test_stall_and_clear(self) -> None:
        """A STALL is -EPIPE; clear_halt is performed through libusb."""
        device = await self.device()
        await device.open()
        self.addCleanup(device.close)
        self.fake.halted.add(0x81)
        stalled = await self.completed(device.submit(urb(1, 0x81, 64)))
        self.assertEqual(stalled.status, -32)
        await self.completed(device.clear_halt(0x81))
        self.assertEqual(self.fake.halted, set())

    async def test_parked_in_cancelled(self) -> None:
        """An interrupt IN with no data waits in slices until cancelled (-ECONNRESET)."""
        device = await self.device()
        await device.open()
        self.addCleanup(device.close)
        pending = device.submit(urb(7, 0x82, 64))
        device.cancel(7)
        result = await self.completed(pending)
        self.assertEqual(result.status, -104)

    async def test_unknown_endpoint(self) -> None:
        """An endpoint that is not in the configuration is -ENOENT without touching libusb."""
        device = await self.device()
        result = await self.completed(device.submit(urb(1, 0x85, 64)))
        self.assertEqual(result.status, -2)

    async def test_device_gone(self) -> None:
        """A device unplugged mid-transfer completes with -ENODEV."""
        device = await self.device()
        await device.open()
        self.fake.gone = True
        result = await self.completed(device.submit(urb(1, 0x01, 1, b"x")))
        self.assertEqual(result.status, -19)

    async def test_set_configuration(self) -> None:
        """SET_CONFIGURATION releases the interfaces, configures, and claims them again."""
        device = await self.device()
        await device.open()
        self.addCleanup(device.close)
        result = await self.completed(device.set_configuration(1))
        self.assertEqual(result.status, 0)
        self.assertEqual(self.fake.calls[-3:], ["release 0", "set_configuration 1", "claim 0"])


class RealLibusbTests(TestCase):
    """pyusb over the real libusb-1.0 of this machine, which has no USB bus."""

    async def test_empty_bus(self) -> None:
        """A scan through real libusb works and finds nothing here (no USB bus)."""
        import usb.backend.libusb1

        if usb.backend.libusb1.get_backend() is None:
            raise SkipTest("libusb-1.0 is not installed (apt-get install libusb-1.0-0)")
        pool = ThreadPool(minthreads=1, maxthreads=1, name="test-usb")
        pool.start()
        self.addCleanup(pool.stop)
        self.assertEqual(await PyUSBBackend(reactor, pool).enumerate(), [])

    def test_real_devices(self) -> None:
        """Export, transfers and kernel-driver detach on real devices: needs hardware."""
        raise SkipTest("needs hardware or a USB/IP-capable kernel (no USB bus here)")
