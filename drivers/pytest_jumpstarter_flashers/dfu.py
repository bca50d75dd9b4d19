"""``dfu``: USB Device Firmware Upgrade 1.1 over pyusb, written from the DFU 1.1 specification.

A flash is: find the device (``DFU_DETACH`` and wait for it to come back in DFU mode if it runs
its application), select the alternate setting named by the target, get it to ``dfuIDLE``
(``CLRSTATUS`` out of ``dfuERROR``, ``ABORT`` out of a half-done transfer), then one ``DFU_DNLOAD``
per ``wTransferSize`` bytes, each followed by ``DFU_GETSTATUS`` polls that wait the
``bwPollTimeout`` the device asks for; a zero-length ``DFU_DNLOAD`` starts manifestation, polled
the same way (a device that is not manifestation tolerant gets a USB reset).  Verification
uploads the image back (``DFU_UPLOAD``) and compares it block by block.

Every failure is a :class:`FlashError` naming the block and offset, the device's status
(``errWRITE``...) and state, and what was expected; a stall (pipe error) is followed by a
GETSTATUS to say why, and the device is left in ``dfuIDLE`` when it can still be reached.

``backend: simulated`` uses :mod:`.testing.dfu_sim` (a software device behind pyusb's backend interface).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from os import PathLike
from typing import Any

import usb.core
import usb.util

from pytest_jumpstarter.driver import DeviceContext
from pytest_jumpstarter.errors import DriverError, FlashError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.waiting import Deadline

from .base import Destination, FlasherDriver, FlasherSettings
from .dfu_protocol import (
    REQUEST_IN,
    REQUEST_OUT,
    DfuSession,
    DfuStatus,
    Functional,
    ProtocolFault,
    Request,
    State,
    Status,
    is_gone,
    is_stall,
)
from .image import Image, ImageError
from .progress import Progress


@dataclass(frozen=True, kw_only=True)
class DfuSettings(FlasherSettings):
    vendor_id: int | None = setting(None, doc="USB idVendor (e.g. 0x0483)")
    product_id: int | None = setting(None, doc="USB idProduct in DFU or run-time mode")
    serial: str | None = setting(None, doc="USB serial number, when several devices match")
    backend: str = setting("libusb", choices=("libusb", "simulated"), doc="pyusb backend")
    simulated_size: int = setting(64 * 1024 * 1024, kind="size", doc="storage of the simulated device")
    simulated_alts: list[str] = setting(["flash"], doc="alternate settings of the simulated device")
    request_timeout: float = setting(5.0, kind="duration", doc="deadline of one USB control request")
    detach_timeout: float = setting(10.0, kind="duration", doc="wait for the device in DFU mode after detach")
    manifest_timeout: float = setting(60.0, kind="duration", doc="deadline for manifestation")
    find_timeout: float = setting(2.0, kind="duration", doc="how long to look for the device on the bus")


class DfuFlasher(FlasherDriver[DfuSettings]):
    """Flashes a USB DFU 1.1 device; targets are its alternate settings, by name or number."""

    name = "dfu"
    default_storage = "0"

    def __init__(self, ctx: DeviceContext[DfuSettings]) -> None:
        super().__init__(ctx)
        self.simulator: Any = None
        self.backend: Any = None
        self._alts: dict[str, int] = {}

    # --- finding the device ---------------------------------------------------------------------

    def start(self) -> None:
        settings = self.ctx.settings
        self.backend = self.ctx.extra.get("usb_backend")
        if self.backend is None and settings.backend == "simulated":
            from .testing.dfu_sim import SimulatedDfuBackend, SimulatedDfuDevice

            self.simulator = SimulatedDfuDevice(
                alt_names=tuple(settings.simulated_alts),
                size=settings.simulated_size,
            )
            self.backend = SimulatedDfuBackend(self.simulator)
        elif self.backend is not None:
            self.simulator = getattr(self.backend, "device", None)
        device = self._find(Deadline(settings.find_timeout, f"USB device {self._wanted()}"))
        if device is None:
            raise DriverError(
                self.device_name, f"dfu: no USB device matches {self._wanted()}: is it plugged in?"
            )
        self._alts = {name: alt for alt, name in self._alt_names(device).items()}
        super().start()

    def _wanted(self) -> str:
        s = self.ctx.settings
        parts = []
        if s.vendor_id is not None:
            parts.append(f"idVendor {s.vendor_id:#06x}")
        if s.product_id is not None:
            parts.append(f"idProduct {s.product_id:#06x}")
        if s.serial:
            parts.append(f"serial {s.serial!r}")
        return ", ".join(parts) + " with a DFU interface" if parts else "any device with a DFU interface"

    def _dfu_interfaces(self, device: Any) -> list[Any]:
        try:
            config = device[0]
            return [i for i in config if i.bInterfaceClass == 0xFE and i.bInterfaceSubClass == 0x01]
        except (usb.core.USBError, IndexError):
            return []

    def _find(self, deadline: Deadline, dfu_mode: bool = False) -> Any:
        s = self.ctx.settings

        def match(device: Any) -> bool:
            if s.vendor_id is not None and device.idVendor != s.vendor_id:
                return False
            if s.product_id is not None and device.idProduct != s.product_id and not dfu_mode:
                return False
            interfaces = self._dfu_interfaces(device)
            if not interfaces or (dfu_mode and interfaces[0].bInterfaceProtocol != 2):
                return False
            if s.serial:
                try:
                    return bool(usb.util.get_string(device, device.iSerialNumber) == s.serial)
                except (usb.core.USBError, ValueError):
                    return False
            return True

        while True:
            device = usb.core.find(backend=self.backend, custom_match=match)
            if device is not None or deadline.expired:
                return device
            # Re-enumeration after a detach or reset takes the device a physical while; look again soon.
            time.sleep(deadline.remaining(0.05))

    def _alt_names(self, device: Any) -> dict[int, str]:
        names = {}
        for interface in self._dfu_interfaces(device):
            alt = interface.bAlternateSetting
            try:
                names[alt] = (
                    usb.util.get_string(device, interface.iInterface) if interface.iInterface else str(alt)
                )
            except (usb.core.USBError, ValueError):
                names[alt] = str(alt)
        return names

    def storages(self) -> list[str]:
        return [*self._alts, *(str(n) for n in self._alts.values())]

    def resolve(self, target: str | None) -> Destination:
        if target is None and self._alts:
            first = next(iter(self._alts))
            return Destination(first, first)
        return super().resolve(target)

    def _open(self, dest: Destination) -> DfuSession:
        """Find the device, in DFU mode (detaching it if needed), with ``dest``'s alternate setting."""
        timeout_ms = int(self.ctx.settings.request_timeout * 1000)
        device = self._find(Deadline(self.ctx.settings.find_timeout, f"USB device {self._wanted()}"))
        if device is None:
            raise self.fail(dest, f"no USB device matches {self._wanted()} (unplugged?)")
        interfaces = self._dfu_interfaces(device)
        functional = self._functional(device, interfaces)
        if interfaces[0].bInterfaceProtocol == 1:
            device = self._detach(dest, device, interfaces[0].bInterfaceNumber, functional, timeout_ms)
            interfaces = self._dfu_interfaces(device)
            functional = self._functional(device, interfaces)
        alt = self._alts.get(dest.storage)
        if alt is None:
            alt = int(dest.storage) if dest.storage.isdigit() else 0
        matching = [i for i in interfaces if i.bAlternateSetting == alt]
        if not matching:
            raise self.fail(
                dest, f"the device has no DFU alternate setting {alt}; it has {self._alt_names(device)}"
            )
        number = matching[0].bInterfaceNumber
        if len(interfaces) > 1:
            device.set_interface_altsetting(number, alt)
        return DfuSession(device, number, functional, timeout_ms)

    def _functional(self, device: Any, interfaces: list[Any]) -> Functional:
        for source in [*interfaces, device[0]]:
            functional = Functional.parse(getattr(source, "extra_descriptors", None))
            if functional is not None:
                return functional
        raise DriverError(self.device_name, "dfu: the device has no DFU functional descriptor")

    def _detach(
        self, dest: Destination, device: Any, interface: int, functional: Functional, timeout_ms: int
    ) -> Any:
        wait = min(functional.detach_timeout_ms, 0xFFFF) or 1000
        try:
            device.ctrl_transfer(REQUEST_OUT, Request.DETACH, wait, interface, 0, timeout_ms)
            if not functional.will_detach:
                device.reset()
        except usb.core.USBError as exc:
            if not is_gone(exc):  # a device that detaches at once may vanish under the request
                raise self.fail(dest, f"DFU_DETACH failed: {exc}") from exc
        usb.util.dispose_resources(device)
        found = self._find(
            Deadline(self.ctx.settings.detach_timeout, "the device in DFU mode"), dfu_mode=True
        )
        if found is None:
            raise self.fail(
                dest,
                f"after DFU_DETACH the device did not come back in DFU mode within "
                f"{self.ctx.settings.detach_timeout}s",
            )
        self._alts = {name: alt for alt, name in self._alt_names(found).items()}
        return found

    # --- flashing -------------------------------------------------------------------------------

    def write(self, dest: Destination, image: Image, progress: Progress) -> int:
        session = self._open(dest)
        if not session.functional.can_download:
            raise self.fail(dest, "the device does not support download (bitCanDnload is 0)")
        transfer = session.functional.transfer_size or 1024
        block_number = 0
        offset = 0
        pending = bytearray()
        try:
            session.to_idle()
            for block in image.blocks():
                pending += block.content()
                while len(pending) >= transfer:
                    self._download(session, dest, block_number, offset, bytes(pending[:transfer]))
                    del pending[:transfer]
                    offset += transfer
                    block_number = (block_number + 1) & 0xFFFF
                progress.update(offset)
            if pending:
                self._download(session, dest, block_number, offset, bytes(pending))
                offset += len(pending)
                block_number = (block_number + 1) & 0xFFFF
            self._manifest(session, dest, block_number, offset)
        except ProtocolFault as exc:
            session.recover()
            raise self.fail(dest, str(exc)) from exc
        except ImageError:
            session.recover()  # the image broke off: ABORT, so the device does not keep half of it
            raise
        finally:
            usb.util.dispose_resources(session.device)
        return offset

    def _download(
        self, session: DfuSession, dest: Destination, number: int, offset: int, data: bytes
    ) -> None:
        where = f"block {number} (offset {offset}, {len(data)} bytes)"
        try:
            session._out(Request.DNLOAD, number, data)
        except usb.core.USBError as exc:
            raise self._usb_failure(session, dest, f"DFU_DNLOAD of {where}", exc) from exc
        try:
            status = session.get_status()
            status = session.wait_while_busy(
                status, (State.dfuDNBUSY, State.dfuDNLOAD_SYNC), Deadline(30.0, f"writing {where}")
            )
        except usb.core.USBError as exc:
            raise self._usb_failure(session, dest, f"DFU_GETSTATUS after {where}", exc) from exc
        except ProtocolFault as exc:
            raise ProtocolFault(f"{where}: {exc}") from exc
        if status.status != Status.OK or status.state != State.dfuDNLOAD_IDLE:
            raise ProtocolFault(
                f"{where}: expected status OK, state dfuDNLOAD-IDLE; device reported {status}"
            )

    def _manifest(self, session: DfuSession, dest: Destination, number: int, size: int) -> None:
        deadline = Deadline(self.ctx.settings.manifest_timeout, "manifestation")
        where = f"manifestation after {size} bytes"
        try:
            session._out(Request.DNLOAD, number, b"")
            status = session.get_status()
            if not session.functional.manifestation_tolerant and status.state == State.dfuMANIFEST:
                # It will not answer again until reset: wait the time it asked for, then reset it.
                if status.poll_timeout_ms:
                    time.sleep(status.poll_timeout_ms / 1000)  # the device is writing its flash
                session.device.reset()
                return
            status = session.wait_while_busy(status, (State.dfuMANIFEST_SYNC, State.dfuMANIFEST), deadline)
        except usb.core.USBError as exc:
            raise self._usb_failure(session, dest, where, exc) from exc
        if status.status != Status.OK or status.state not in (State.dfuIDLE, State.dfuMANIFEST_WAIT_RESET):
            raise ProtocolFault(f"{where}: expected status OK, state dfuIDLE; device reported {status}")
        if status.state == State.dfuMANIFEST_WAIT_RESET:
            session.device.reset()

    def _usb_failure(
        self, session: DfuSession, dest: Destination, what: str, exc: usb.core.USBError
    ) -> FlashError:
        if is_gone(exc):
            return self.fail(dest, f"{what}: the device vanished from the bus (unplugged or reset): {exc}")
        if is_stall(exc):
            try:
                status: DfuStatus | str = session.get_status()
            except (usb.core.USBError, ProtocolFault) as why:
                status = f"GETSTATUS failed too: {why}"
            session.recover()
            return self.fail(dest, f"{what}: the device stalled the request (pipe error); then {status}")
        session.recover()
        return self.fail(dest, f"{what}: USB error: {exc}")

    def verify(self, dest: Destination, image: Image, progress: Progress) -> None:
        session = self._open(dest)
        if not session.functional.can_upload:
            raise self.fail(
                dest,
                "cannot verify: the device does not support upload (bitCanUpload is 0); "
                "flash with verify=False to rely on the device's own manifestation check",
            )
        digest = image.digest
        try:
            session.to_idle()
            reader = _UploadReader(session, digest.size)
            for index, expected in enumerate(digest.crcs):
                offset = index * digest.block_size
                length = min(digest.block_size, digest.size - offset)
                data = reader.read(length)
                if len(data) != length:
                    raise ProtocolFault(
                        f"verify: upload ended at offset {offset + len(data)}, expected {digest.size} bytes"
                    )
                found = zlib.crc32(data)
                if found != expected:
                    raise ProtocolFault(
                        f"verify: block {index} (offset {offset}, {length} bytes) differs: expected CRC32 "
                        f"{expected:08x}, found {found:08x}"
                    )
                progress.update(offset + length, "verifying")
            if session.get_state() == State.dfuUPLOAD_IDLE:
                session._out(Request.ABORT, 0)
        except usb.core.USBError as exc:
            raise self._usb_failure(session, dest, "DFU_UPLOAD (verify)", exc) from exc
        except ProtocolFault as exc:
            session.recover()
            raise self.fail(dest, str(exc)) from exc
        finally:
            usb.util.dispose_resources(session.device)

    def dump(self, target: str, path: str | PathLike[str], size: int) -> int:
        dest = self.resolve(target)
        session = self._open(dest)
        try:
            session.to_idle()
            reader = _UploadReader(session, size)
            copied = 0
            with open(path, "wb") as out:
                while copied < size and (data := reader.read(min(1024 * 1024, size - copied))):
                    out.write(data)
                    copied += len(data)
            if session.get_state() == State.dfuUPLOAD_IDLE:
                session._out(Request.ABORT, 0)
            return copied
        except (usb.core.USBError, ProtocolFault) as exc:
            session.recover()
            raise self.fail(dest, f"dump: {exc}") from exc
        finally:
            usb.util.dispose_resources(session.device)


class _UploadReader:
    """DFU_UPLOAD blocks as a byte stream; a short block ends it (the device is then dfuIDLE)."""

    def __init__(self, session: DfuSession, limit: int) -> None:
        self.session = session
        self.limit = limit
        self.number = 0
        self.buffer = bytearray()
        self.ended = False
        self.received = 0

    def read(self, size: int) -> bytes:
        transfer = self.session.functional.transfer_size or 1024
        while len(self.buffer) < size and not self.ended and self.received < self.limit:
            data = bytes(
                self.session.device.ctrl_transfer(
                    REQUEST_IN,
                    Request.UPLOAD,
                    self.number,
                    self.session.interface,
                    transfer,
                    self.session.timeout_ms,
                )
            )
            self.number = (self.number + 1) & 0xFFFF
            self.received += len(data)
            self.buffer += data
            if len(data) < transfer:
                self.ended = True
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out
