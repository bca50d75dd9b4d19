"""Driver ``serial``: a console reached through ``serial.serial_for_url``."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pytest_jumpstarter.console import Console, SerialTransport
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import DeviceStateError, DriverError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.waiting import Deadline


@dataclass(frozen=True, kw_only=True)
class SerialSettings:
    url: str = setting(doc="pyserial URL or tty path, e.g. socket://127.0.0.1:4000 or /dev/ttyUSB0")
    baudrate: int = setting(115200, doc="line speed (ignored by socket:// and loop://)")
    timeout: float = setting(30.0, kind="duration", doc="default deadline of console.expect")
    open_timeout: float = setting(
        10.0,
        kind="duration",
        doc="how long to keep trying to open the port (a tty appearing, a server starting)",
    )
    open_at_start: bool = setting(
        True,
        doc="open the port when the device starts; false for a port that exists only while its board "
        "is powered (a USB serial on the board, a QEMU TCP chardev): the board opens it (reconnect())",
    )


class SerialConsole(Driver[SerialSettings]):
    """A serial console: ``console.sendline``/``console.expect`` on a pyserial URL.

    ``url`` is anything pyserial opens: ``socket://host:port`` (a TCP serial server, a QEMU TCP
    chardev), ``rfc2217://host:port``, ``loop://`` (echoes what is written), or a tty path.
    It can be dropped and opened again (:class:`~pytest_jumpstarter.capabilities.Reconnect`), which a
    composite board does around a power cycle.
    """

    name = "serial"
    role = "console"

    def __init__(self, ctx: DeviceContext[SerialSettings]) -> None:
        super().__init__(ctx)
        self._console: Console | None = None

    @classmethod
    def check(cls, settings: SerialSettings) -> Iterable[tuple[str, str]]:
        if settings.baudrate <= 0:
            yield "baudrate", f"expected a positive line speed, found {settings.baudrate}"

    @property
    def console(self) -> Console:
        """The open console (pexpect-compatible)."""
        self.require_started("console")
        if self._console is None:
            raise DeviceStateError(
                self.device_name,
                f"serial port {self.ctx.redact(self.url)!r} is not open (open_at_start: false, or "
                "disconnected): the board using it opens it when it powers on; or call reconnect()",
            )
        return self._console

    @property
    def url(self) -> str:
        return self.ctx.settings.url

    def start(self) -> None:
        if self.started:
            return
        if self.ctx.settings.open_at_start:
            self._connect()
        self.started = True

    def disconnect(self) -> None:
        """Close the port (its board is going off); :meth:`reconnect` opens it again."""
        console, self._console = self._console, None
        if console is not None:
            console.close()

    def reconnect(self) -> None:
        """Close the port if open and open it again, waiting up to ``open_timeout`` for it to appear."""
        self.require_started("reconnect()")
        self.disconnect()
        self._connect()

    def _connect(self) -> None:
        self._console = Console(
            SerialTransport(self._open()),
            device=self.device_name,
            timeout=self.ctx.settings.timeout,
            logfile_read=self.ctx.transcript,
        )

    def _open(self) -> Any:
        import serial

        settings = self.ctx.settings
        open_timeout = settings.open_timeout
        deadline = Deadline(open_timeout, f"serial port {self.ctx.redact(self.url)!r} to open")
        waiter = threading.Event()
        last: Exception | None = None
        while True:
            try:
                return _open_keeping_input(
                    serial.serial_for_url(self.url, baudrate=settings.baudrate, timeout=0, do_not_open=True)
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                last = exc
            if isinstance(last, ValueError) or deadline.expired:
                break
            # Nothing signals that a tty node appears or a TCP server starts listening: poll for it.
            waiter.wait(deadline.remaining(0.05))
        shown = self.ctx.redact(self.url)
        raise DriverError(
            self.device_name,
            f"cannot open serial port {shown!r} (target {self.ctx.target}, {self.ctx.source}) "
            f"within open_timeout={open_timeout:g}s: {self.ctx.redact(str(last))}; "
            "check that the port exists or the server listens, or raise open_timeout",
        )

    def stop(self) -> None:
        self.started = False
        self.disconnect()

    def restore(self, mode: str) -> str | None:
        # A serial line has no state of its own to restore; the board behind it might, but that
        # is another device's job.  Reopening (the plugin's fallback) clears our buffers.
        return f"a serial console cannot {mode}; it is reopened instead"

    def __getattr__(self, name: str) -> Any:
        # The console fixture is this device; let tests write console.expect(...) as with pexpect.
        # Only a started console's attributes: a capability check (isinstance with a Protocol)
        # asks for others and must get False, not an error about the console's state.
        if name.startswith("_") or self._console is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self._console, name)


def _open_keeping_input(port: Any) -> Any:
    """Open a pyserial port without the input flush pyserial does in ``open()``.

    pyserial discards whatever arrived before ``open()`` returned; a board that prints its banner
    the moment we connect (a socket:// console server, a bootloader) would lose its first bytes,
    which a test may need to see ("Hit any key to stop autoboot").
    """
    flush = port.reset_input_buffer
    port.reset_input_buffer = lambda: None
    try:
        port.open()
    finally:
        port.reset_input_buffer = flush
    return port
