"""
The USB proxy: a USB/IP server for stock clients, with client approval,
TLS and clean release of devices.
"""

from lattice.usb._device import DeviceBackend, TransferType, UsbDevice
from lattice.usb._emulated import EchoDevice, EmulatedBackend, EmulatedDevice, KeyboardDevice
from lattice.usb._policy import ApprovalBook, ExportPolicy, approval_id, normalize_identity
from lattice.usb._protocol import DeviceInfo, Errno, OpStatus, Urb, UrbResult
from lattice.usb._registry import DeviceRegistry
from lattice.usb._server import UsbipProtocol, UsbipServerFactory
from lattice.usb.service import UsbService

__all__ = [
    "ApprovalBook",
    "DeviceBackend",
    "DeviceInfo",
    "DeviceRegistry",
    "EchoDevice",
    "EmulatedBackend",
    "EmulatedDevice",
    "Errno",
    "ExportPolicy",
    "KeyboardDevice",
    "OpStatus",
    "TransferType",
    "Urb",
    "UrbResult",
    "UsbDevice",
    "UsbService",
    "UsbipProtocol",
    "UsbipServerFactory",
    "approval_id",
    "normalize_identity",
]
