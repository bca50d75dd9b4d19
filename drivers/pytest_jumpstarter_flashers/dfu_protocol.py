"""The DFU 1.1 protocol as the host speaks it: requests, states, statuses, descriptors, a session.

Written from the DFU 1.1 specification; :mod:`.dfu` builds the ``dfu`` flasher on it.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import usb.core

from pytest_jumpstarter.waiting import Deadline

REQUEST_OUT = 0x21  # host-to-device, class, interface
REQUEST_IN = 0xA1  # device-to-host, class, interface
_FUNCTIONAL = 0x21  # DFU functional descriptor type


class Request(IntEnum):
    DETACH = 0
    DNLOAD = 1
    UPLOAD = 2
    GETSTATUS = 3
    CLRSTATUS = 4
    GETSTATE = 5
    ABORT = 6


class State(IntEnum):
    appIDLE = 0
    appDETACH = 1
    dfuIDLE = 2
    dfuDNLOAD_SYNC = 3
    dfuDNBUSY = 4
    dfuDNLOAD_IDLE = 5
    dfuMANIFEST_SYNC = 6
    dfuMANIFEST = 7
    dfuMANIFEST_WAIT_RESET = 8
    dfuUPLOAD_IDLE = 9
    dfuERROR = 10


class Status(IntEnum):
    OK = 0x00
    errTARGET = 0x01
    errFILE = 0x02
    errWRITE = 0x03
    errERASE = 0x04
    errCHECK_ERASED = 0x05
    errPROG = 0x06
    errVERIFY = 0x07
    errADDRESS = 0x08
    errNOTDONE = 0x09
    errFIRMWARE = 0x0A
    errVENDOR = 0x0B
    errUSBR = 0x0C
    errPOR = 0x0D
    errUNKNOWN = 0x0E
    errSTALLEDPKT = 0x0F


def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name.replace("_", "-")
    except ValueError:
        return f"unknown({value})"


@dataclass(frozen=True)
class DfuStatus:
    status: int
    poll_timeout_ms: int
    state: int

    def __str__(self) -> str:
        return f"status {_name(Status, self.status)}, state {_name(State, self.state)}"


@dataclass(frozen=True)
class Functional:
    """The DFU functional descriptor: what the device can do and its transfer size."""

    can_download: bool
    can_upload: bool
    manifestation_tolerant: bool
    will_detach: bool
    detach_timeout_ms: int
    transfer_size: int

    @classmethod
    def parse(cls, extra: Any) -> Functional | None:
        raw = bytes(extra or b"")
        while len(raw) >= 2:
            length, kind = raw[0], raw[1]
            if length < 2:
                break
            if kind == _FUNCTIONAL and length >= 7:
                attributes = raw[2]
                return cls(
                    can_download=bool(attributes & 0x01),
                    can_upload=bool(attributes & 0x02),
                    manifestation_tolerant=bool(attributes & 0x04),
                    will_detach=bool(attributes & 0x08),
                    detach_timeout_ms=raw[3] | raw[4] << 8,
                    transfer_size=raw[5] | raw[6] << 8,
                )
            raw = raw[length:]
        return None


class ProtocolFault(Exception):
    """A protocol failure, turned into a FlashError with the destination by the driver."""


class DfuSession:
    """The DFU protocol on one interface of one opened device."""

    def __init__(self, device: Any, interface: int, functional: Functional, timeout_ms: int) -> None:
        self.device = device
        self.interface = interface
        self.functional = functional
        self.timeout_ms = timeout_ms

    # --- single requests ------------------------------------------------------------------------

    def _out(self, request: Request, value: int, data: bytes | int = 0) -> None:
        self.device.ctrl_transfer(REQUEST_OUT, request, value, self.interface, data, self.timeout_ms)

    def get_status(self) -> DfuStatus:
        reply = bytes(
            self.device.ctrl_transfer(REQUEST_IN, Request.GETSTATUS, 0, self.interface, 6, self.timeout_ms)
        )
        if len(reply) != 6:
            raise ProtocolFault(
                f"bad GETSTATUS reply: expected 6 bytes, got {len(reply)} ({reply.hex() or 'nothing'})"
            )
        state = reply[4]
        if state > max(State):
            raise ProtocolFault(f"bad GETSTATUS reply: state {state} is not a DFU 1.1 state ({reply.hex()})")
        return DfuStatus(reply[0], reply[1] | reply[2] << 8 | reply[3] << 16, state)

    def get_state(self) -> int:
        reply = bytes(
            self.device.ctrl_transfer(REQUEST_IN, Request.GETSTATE, 0, self.interface, 1, self.timeout_ms)
        )
        if len(reply) != 1:
            raise ProtocolFault(f"bad GETSTATE reply: expected 1 byte, got {len(reply)}")
        return reply[0]

    def wait_while_busy(self, status: DfuStatus, busy: tuple[State, ...], deadline: Deadline) -> DfuStatus:
        """Poll GETSTATUS, waiting the device's ``bwPollTimeout`` before each, while it is busy."""
        while status.state in busy and status.status == Status.OK:
            left = deadline.remaining()
            if left is not None and status.poll_timeout_ms / 1000 > left:
                raise ProtocolFault(
                    f"device still busy ({status}) {deadline.seconds}s after {deadline.what} began"
                )
            if status.poll_timeout_ms:
                # The device said how long it will not answer (it is programming its flash).
                time.sleep(status.poll_timeout_ms / 1000)
            status = self.get_status()
        return status

    def to_idle(self) -> None:
        """Bring the interface to dfuIDLE from wherever an earlier run left it."""
        status = self.get_status()
        if status.state == State.dfuERROR:
            self._out(Request.CLRSTATUS, 0)
        elif status.state in (State.dfuDNLOAD_IDLE, State.dfuUPLOAD_IDLE):
            self._out(Request.ABORT, 0)
        elif status.state in (State.dfuDNLOAD_SYNC, State.dfuDNBUSY, State.dfuMANIFEST_SYNC):
            status = self.wait_while_busy(
                status,
                (State.dfuDNBUSY, State.dfuDNLOAD_SYNC, State.dfuMANIFEST_SYNC),
                Deadline(10.0, "the left-over transfer"),
            )
            if status.state == State.dfuERROR:
                self._out(Request.CLRSTATUS, 0)
            elif status.state != State.dfuIDLE:
                self._out(Request.ABORT, 0)
        state = self.get_state()
        if state != State.dfuIDLE:
            raise ProtocolFault(f"cannot bring the device to dfuIDLE: it stays in {_name(State, state)}")

    def recover(self) -> None:
        """Best effort after a failure: CLRSTATUS/ABORT so the next flash starts clean."""
        with contextlib.suppress(usb.core.USBError, ProtocolFault):
            self.to_idle()


def is_gone(exc: usb.core.USBError) -> bool:
    return exc.errno == errno.ENODEV or getattr(exc, "backend_error_code", None) == -4


def is_stall(exc: usb.core.USBError) -> bool:
    return exc.errno == errno.EPIPE or getattr(exc, "backend_error_code", None) == -9
