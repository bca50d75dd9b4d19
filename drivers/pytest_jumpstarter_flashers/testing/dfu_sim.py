"""A software USB DFU 1.1 device, plugged into pyusb as a backend (``usb.backend.IBackend``).

These machines have no USB bus, so the ``dfu`` method is tested against this device: pyusb's own
``usb.core.find(backend=...)``, descriptors, string descriptors and control transfers run for real;
only the wire is replaced.  The device follows the DFU 1.1 state machine (its states, which request
is allowed in which state, stalls for the rest, ``bwPollTimeout`` enforced: a GETSTATUS that comes
too early is stalled as a real busy device would), stores what it is sent per alternate setting,
and uploads it back.  Faults can be armed to test the host side's error handling.
"""

from __future__ import annotations

import array
import errno
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

# DFU 1.1 class requests, states and status codes (spec sections 3, 6.1.2).
DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)
(
    APP_IDLE,
    APP_DETACH,
    DFU_IDLE,
    DNLOAD_SYNC,
    DNBUSY,
    DNLOAD_IDLE,
    MANIFEST_SYNC,
    MANIFEST,
    MANIFEST_WAIT_RESET,
    UPLOAD_IDLE,
    DFU_ERROR,
) = range(11)
OK, ERR_TARGET, ERR_FILE, ERR_WRITE, ERR_ERASE, ERR_CHECK_ERASED, ERR_PROG, ERR_VERIFY, ERR_ADDRESS = range(9)
ERR_STALLEDPKT = 0x0F

_GET_DESCRIPTOR = 0x06


@dataclass
class Faults:
    """Faults to arm on the simulated device (each fires once, at the given download block number)."""

    #: Report errWRITE for this block (the write to flash "failed").
    write_error_at_block: int | None = None
    #: Stall the DNLOAD request carrying this block (a pipe error on the host).
    stall_at_block: int | None = None
    #: Disappear from the bus when this block arrives: every later request fails with ENODEV.
    vanish_at_block: int | None = None
    #: Answer GETSTATUS with a truncated (3-byte) reply after this block.
    bad_status_at_block: int | None = None
    #: Silently flip a bit of what is stored at this byte offset (only an upload can tell).
    corrupt_offset: int | None = None
    #: Fail manifestation with errVERIFY (the device's own image check failed).
    manifest_error: bool = False


@dataclass
class SimulatedDfuDevice:
    """The device: ids, alternate settings (each a storage of ``size`` bytes), timings and faults."""

    alt_names: tuple[str, ...] = ("flash",)
    size: int = 64 * 1024 * 1024
    transfer_size: int = 4096
    #: ``bwPollTimeout`` reported while a block is being written (ms); honoured or the device stalls.
    busy_ms: int = 0
    manifest_ms: int = 0
    can_upload: bool = True
    manifestation_tolerant: bool = True
    will_detach: bool = True
    #: Starts in run-time mode (application, DFU_DETACH needed) rather than in DFU mode.
    runtime: bool = False
    vendor_id: int = 0x1209
    product_id: int = 0xDF11
    serial: str = "SIM0001"
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.storage = {i: bytearray(self.size) for i in range(len(self.alt_names))}
        #: Bytes of the last complete download per alternate setting.
        self.image_length = dict.fromkeys(range(len(self.alt_names)), 0)
        self.attached = True
        self.dfu_mode = not self.runtime
        self.state = DFU_IDLE if self.dfu_mode else APP_IDLE
        self.status = OK
        self.alt = 0
        self.requests: list[tuple[int, int]] = []  # (bRequest, wValue) log, for tests
        self._lock = threading.Lock()
        self._reset_transfer()

    def _reset_transfer(self) -> None:
        self._offset = 0
        self._next_block = 0
        self._pending: bytes | None = None
        self._busy_until = 0.0
        self._manifested = False
        self._upload_offset = 0

    # --- descriptors --------------------------------------------------------------------------

    def strings(self) -> dict[int, str]:
        table = {1: "pytest-jumpstarter", 2: "Simulated DFU device", 3: self.serial}
        for i, name in enumerate(self.alt_names):
            table[4 + i] = name
        return table

    def functional_descriptor(self) -> list[int]:
        attributes = 0x01 | (0x02 if self.can_upload else 0) | (0x04 if self.manifestation_tolerant else 0)
        attributes |= 0x08 if self.will_detach else 0
        detach_ms = 1000
        return [
            9,
            0x21,
            attributes,
            detach_ms & 0xFF,
            detach_ms >> 8,
            self.transfer_size & 0xFF,
            self.transfer_size >> 8,
            0x10,
            0x01,
        ]

    # --- the state machine ---------------------------------------------------------------------

    def _stall(self, why: str) -> usb.core.USBError:
        self.state = DFU_ERROR if self.dfu_mode else self.state
        self.status = ERR_STALLEDPKT if self.dfu_mode else self.status
        return usb.core.USBError(f"Pipe error ({why})", -9, errno.EPIPE)

    def _gone(self) -> usb.core.USBError:
        return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)

    def control(self, request_type: int, request: int, value: int, index: int, data: array.array[int]) -> Any:
        with self._lock:
            if not self.attached:
                raise self._gone()
            if request_type & 0x60 == 0 and request == _GET_DESCRIPTOR:
                return self._get_descriptor(value, index, data)
            if request_type & 0x60 != 0x20:
                raise usb.core.USBError("Pipe error (unsupported request)", -9, errno.EPIPE)
            self.requests.append((request, value))
            if not self.dfu_mode:
                return self._runtime_request(request, value, data)
            return self._dfu_request(request, value, data)

    def _runtime_request(self, request: int, value: int, data: array.array[int]) -> Any:
        if request == DETACH and self.state == APP_IDLE:
            self.state = APP_DETACH
            if self.will_detach:
                self._enter_dfu_mode()
            return 0
        if request == GETSTATUS:
            return self._fill(data, bytes([OK, 0, 0, 0, self.state, 0]))
        if request == GETSTATE:
            return self._fill(data, bytes([self.state]))
        raise usb.core.USBError("Pipe error (not allowed in run-time mode)", -9, errno.EPIPE)

    def _enter_dfu_mode(self) -> None:
        self.dfu_mode = True
        self.state = DFU_IDLE
        self.status = OK
        self._reset_transfer()

    def usb_reset(self) -> None:
        """A USB bus reset: a device waiting for it leaves DFU mode (or enters it after DETACH)."""
        with self._lock:
            if self.state == APP_DETACH:
                self._enter_dfu_mode()
            elif self.dfu_mode and self.state in (MANIFEST, MANIFEST_WAIT_RESET):
                if self.state == MANIFEST and time.monotonic() < self._busy_until:
                    # Reset while still writing: the image is lost, as on a real device.
                    self.image_length[self.alt] = 0
                self.state = DFU_IDLE
                self._reset_transfer()

    def _dfu_request(self, request: int, value: int, data: array.array[int]) -> Any:
        now = time.monotonic()
        if self.state == DNBUSY:
            if now < self._busy_until:
                raise self._stall("request while dfuDNBUSY, before bwPollTimeout elapsed")
            self._commit_pending()
            if self.state != DFU_ERROR:
                self.state = DNLOAD_SYNC
        if self.state == MANIFEST:
            if now < self._busy_until:
                raise self._stall("request while dfuMANIFEST, before bwPollTimeout elapsed")
            self.state = MANIFEST_SYNC if self.manifestation_tolerant else MANIFEST_WAIT_RESET
            if self.state == MANIFEST_WAIT_RESET:
                # Such a device does not answer at all until it is reset.
                raise self._gone_until_reset()
        if request == GETSTATUS:
            return self._getstatus(data)
        if request == GETSTATE:
            return self._fill(data, bytes([self.state]))
        if request == CLRSTATUS:
            if self.state != DFU_ERROR:
                raise self._stall("CLRSTATUS outside dfuERROR")
            self.state, self.status = DFU_IDLE, OK
            self._reset_transfer()
            return 0
        if request == ABORT:
            if self.state not in (DFU_IDLE, DNLOAD_IDLE, UPLOAD_IDLE):
                raise self._stall("ABORT not allowed in this state")
            self.state = DFU_IDLE
            self._reset_transfer()
            return 0
        if request == DNLOAD:
            return self._dnload(value, bytes(data))
        if request == UPLOAD:
            return self._upload(value, data)
        raise self._stall(f"request {request} not allowed in DFU mode")

    def _gone_until_reset(self) -> usb.core.USBError:
        return usb.core.USBError("Pipe error (waiting for reset)", -9, errno.EPIPE)

    def _dnload(self, block: int, payload: bytes) -> int:
        if self.state not in (DFU_IDLE, DNLOAD_IDLE):
            raise self._stall("DNLOAD not allowed in this state")
        faults = self.faults
        if payload and faults.vanish_at_block == block:
            faults.vanish_at_block = None
            self.attached = False
            raise self._gone()
        if payload and faults.stall_at_block == block:
            faults.stall_at_block = None
            raise self._stall("armed fault")
        if not payload:
            if self.state == DFU_IDLE:
                raise self._stall("zero-length DNLOAD with nothing downloaded")
            self.state = MANIFEST_SYNC
            return 0
        if block != self._next_block:
            self.state, self.status = DFU_ERROR, ERR_ADDRESS
            return len(payload)
        if len(payload) > self.transfer_size:
            raise self._stall("DNLOAD longer than wTransferSize")
        self._pending = payload
        self._next_block = (block + 1) & 0xFFFF
        self.state = DNLOAD_SYNC
        self._block = block
        return len(payload)

    def _commit_pending(self) -> None:
        payload = self._pending
        self._pending = None
        if payload is None:
            return
        faults = self.faults
        if faults.write_error_at_block == self._block:
            faults.write_error_at_block = None
            self.state, self.status = DFU_ERROR, ERR_WRITE
            return
        store = self.storage[self.alt]
        end = self._offset + len(payload)
        if end > len(store):
            self.state, self.status = DFU_ERROR, ERR_ADDRESS
            return
        store[self._offset : end] = payload
        if faults.corrupt_offset is not None and self._offset <= faults.corrupt_offset < end:
            store[faults.corrupt_offset] ^= 0x10
            faults.corrupt_offset = None
        self._offset = end

    def _getstatus(self, data: array.array[int]) -> int:
        if self.faults.bad_status_at_block is not None and self._next_block > self.faults.bad_status_at_block:
            self.faults.bad_status_at_block = None
            return self._fill(data, bytes([OK, 0, 0]))
        poll = 0
        if self.state == DNLOAD_SYNC:
            if self._pending is not None and self.busy_ms:
                self.state = DNBUSY
                poll = self.busy_ms
                self._busy_until = time.monotonic() + self.busy_ms / 1000
            else:
                self._commit_pending()
                if self.state != DFU_ERROR:
                    self.state = DNLOAD_IDLE
        elif self.state == MANIFEST_SYNC:
            if not self._manifested:
                self._manifested = True
                self.image_length[self.alt] = self._offset
                if self.faults.manifest_error:
                    self.faults.manifest_error = False
                    self.state, self.status = DFU_ERROR, ERR_VERIFY
                else:
                    self.state = MANIFEST
                    poll = self.manifest_ms
                    self._busy_until = time.monotonic() + self.manifest_ms / 1000
            else:
                self.state = DFU_IDLE
                self._reset_transfer()
        status = bytes([self.status, poll & 0xFF, (poll >> 8) & 0xFF, poll >> 16, self.state, 0])
        return self._fill(data, status)

    def _upload(self, block: int, data: array.array[int]) -> int:
        if not self.can_upload or self.state not in (DFU_IDLE, UPLOAD_IDLE):
            raise self._stall("UPLOAD not allowed")
        if self.state == DFU_IDLE:
            self._upload_offset = 0
        length = self.image_length[self.alt]
        start = self._upload_offset
        chunk = bytes(self.storage[self.alt][start : min(start + len(data), length)])
        self._upload_offset += len(chunk)
        self.state = UPLOAD_IDLE if len(chunk) == len(data) else DFU_IDLE
        return self._fill(data, chunk)

    def _get_descriptor(self, value: int, index: int, data: array.array[int]) -> int:
        kind, number = value >> 8, value & 0xFF
        if kind != 3:
            raise usb.core.USBError("Pipe error (descriptor)", -9, errno.EPIPE)
        if number == 0:
            return self._fill(data, bytes([4, 3, 0x09, 0x04]))
        text = self.strings().get(number)
        if text is None:
            raise usb.core.USBError("Pipe error (no such string)", -9, errno.EPIPE)
        encoded = text.encode("utf-16-le")
        return self._fill(data, bytes([2 + len(encoded), 3]) + encoded)

    @staticmethod
    def _fill(data: array.array[int], reply: bytes) -> int:
        count = min(len(data), len(reply))
        data[:count] = array.array("B", reply[:count])
        return count


class SimulatedDfuBackend(usb.backend.IBackend):  # type: ignore[misc]
    """A pyusb backend with one bus holding the :class:`SimulatedDfuDevice` (while it is attached)."""

    def __init__(self, device: SimulatedDfuDevice) -> None:
        super().__init__()
        self.device = device

    def enumerate_devices(self) -> list[SimulatedDfuDevice]:
        return [self.device] if self.device.attached else []

    def get_device_descriptor(self, dev: SimulatedDfuDevice) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vendor_id,
            idProduct=dev.product_id,
            bcdDevice=0x0100,
            iManufacturer=1,
            iProduct=2,
            iSerialNumber=3,
            bNumConfigurations=1,
            address=7,
            bus=1,
            port_number=1,
            port_numbers=(1,),
            speed=3,
        )

    def get_configuration_descriptor(self, dev: SimulatedDfuDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=18 + 9 * len(dev.alt_names) + 9,
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def get_interface_descriptor(
        self, dev: SimulatedDfuDevice, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        alts = len(dev.alt_names) if dev.dfu_mode else 1
        if intf != 0 or alt >= alts:
            raise IndexError((intf, alt))
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=alt,
            bNumEndpoints=0,
            bInterfaceClass=0xFE,
            bInterfaceSubClass=0x01,
            bInterfaceProtocol=2 if dev.dfu_mode else 1,
            iInterface=4 + alt,
            extra_descriptors=dev.functional_descriptor(),
        )

    def get_endpoint_descriptor(
        self, dev: SimulatedDfuDevice, ep: int, intf: int, alt: int, config: int
    ) -> Any:
        raise IndexError(ep)

    def open_device(self, dev: SimulatedDfuDevice) -> SimulatedDfuDevice:
        if not dev.attached:
            raise dev._gone()
        return dev

    def close_device(self, dev_handle: SimulatedDfuDevice) -> None:
        pass

    def set_configuration(self, dev_handle: SimulatedDfuDevice, config_value: int) -> None:
        pass

    def get_configuration(self, dev_handle: SimulatedDfuDevice) -> int:
        return 1

    def set_interface_altsetting(self, dev_handle: SimulatedDfuDevice, intf: int, altsetting: int) -> None:
        if not dev_handle.attached:
            raise dev_handle._gone()
        if altsetting >= len(dev_handle.alt_names):
            raise usb.core.USBError("Pipe error (no such alternate setting)", -9, errno.EPIPE)
        dev_handle.alt = altsetting

    def claim_interface(self, dev_handle: SimulatedDfuDevice, intf: int) -> None:
        if not dev_handle.attached:
            raise dev_handle._gone()

    def release_interface(self, dev_handle: SimulatedDfuDevice, intf: int) -> None:
        pass

    def ctrl_transfer(
        self,
        dev_handle: SimulatedDfuDevice,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> Any:
        return dev_handle.control(bmRequestType, bRequest, wValue, wIndex, data)

    def reset_device(self, dev_handle: SimulatedDfuDevice) -> None:
        if not dev_handle.attached:
            raise dev_handle._gone()
        dev_handle.usb_reset()

    def is_kernel_driver_active(self, dev_handle: SimulatedDfuDevice, intf: int) -> bool:
        return False

    def clear_halt(self, dev_handle: SimulatedDfuDevice, ep: int) -> None:
        pass
