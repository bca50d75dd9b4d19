"""Driver ``board``: one board made of parts, a power switch and a console (and a TFTP folder, an address).

This is how a lab board looks from the test host: a relay or PDU port (any device with
:class:`~pytest_jumpstarter.capabilities.Power`) and a UART behind a console server (any device with
:class:`~pytest_jumpstarter.capabilities.HasConsole`).  The composite is one device that a flasher, a
tunnel or a test uses as it would use a QEMU board: ``on``/``off``/``cycle``, ``console``, and, as
configured, ``tftp_root`` and ``guest_address``.

A console that goes away with the power (it provides
:class:`~pytest_jumpstarter.capabilities.Reconnect`) is dropped before the power goes off and opened
again after it comes on.  A board that is off says so when its console is used, instead of letting
a wait run into its deadline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pytest_jumpstarter import stages as _stages
from pytest_jumpstarter.capabilities import (
    Addressable,
    HasConsole,
    Power,
    PowerState,
    Reconnect,
    TftpHost,
)
from pytest_jumpstarter.console import Console
from pytest_jumpstarter.driver import DeviceContext, Driver
from pytest_jumpstarter.errors import ConsoleTimeout, DeviceStateError
from pytest_jumpstarter.settings import setting
from pytest_jumpstarter.shell import Shell
from pytest_jumpstarter.shell_settings import ShellSettings, check_shell
from pytest_jumpstarter.uboot import UBootShell

#: A shell prompt (BusyBox ash sends ``ESC[6n`` before it).
LINUX_PROMPT = r"(?:^|\n)[^\r\n]{0,80}[#$] (?:\x1b\[6n)?"


@dataclass(frozen=True, kw_only=True)
class BoardSettings(ShellSettings):
    """The parts, how it boots, and the console shell's keys (prompt, login, fatal_patterns, stages...)."""

    power: str = setting(kind="ref", needs=(Power,), doc="the device switching its power (command-power)")
    console: str = setting(kind="ref", needs=(HasConsole,), doc="the device of its console (serial)")
    shell: str = setting("linux", choices=("linux", "uboot"), doc="what runs on the console: linux or uboot")
    ready: str | None = setting(
        None, doc="regex that means booted (default: a shell prompt; uboot: stop autoboot at the prompt)"
    )
    boot_timeout: float = setting(60.0, kind="duration", doc="how long a power-on waits for ready")
    autostart: bool = setting(True, doc="power-cycle and wait for ready when the device starts")
    tftp_root: Path | None = setting(None, doc="the folder the board's TFTP server serves (TftpHost)")
    address: str | None = setting(None, doc="its IP address or host name, from the test host (Addressable)")


class Board(Driver[BoardSettings]):
    """A board made of a ``power`` device and a ``console`` device; ``reset: reboot`` power-cycles it."""

    name = "board"
    # Its own role, not qemu_vm: tests written for "the board" run on a lab board or, with
    # role: board on a qemu device, on a virtual one.
    role = "board"
    restore_modes = ("reboot",)

    def __init__(self, ctx: DeviceContext[BoardSettings]) -> None:
        super().__init__(ctx)
        #: Whether the power is on as far as we switched it; None: not known (not switched yet, or a
        #: switch failed half-way).
        self._powered: bool | None = None
        #: Whether we switched the power at all (then stop() switches it off).
        self._switched = False
        #: The boot stage the board is in (its ``shell`` after power-on; see :meth:`boot_to`).
        self.stage: str = ctx.settings.shell
        #: The console whose fatal patterns include this board's (the console part may open a new one).
        self._fatal_console: Console | None = None
        #: The shell helper this board put on the console (for its stage).
        self._shell: Shell | None = None

    @classmethod
    def check(cls, settings: BoardSettings) -> Iterable[tuple[str, str]]:
        if settings.ready is not None:
            try:
                re.compile(settings.ready)
            except re.error as exc:
                yield "ready", f"expected a regular expression, found {settings.ready!r} ({exc})"
        if settings.tftp_root is not None and not settings.tftp_root.is_dir():
            yield "tftp_root", f"expected an existing folder, found {str(settings.tftp_root)!r}"
        yield from check_shell(settings, settings.shell)

    @classmethod
    def provides(cls, settings: BoardSettings) -> tuple[type, ...]:
        optional: dict[type, bool] = {
            TftpHost: settings.tftp_root is not None,
            Addressable: settings.address is not None,
        }
        return tuple(c for c in super().provides(settings) if optional.get(c, True))

    # --- its parts --------------------------------------------------------------------------------

    @property
    def power(self) -> Power:
        """The power device (a relay, a PDU port)."""
        return self.ctx.ref("power", Power)

    @property
    def tftp_root(self) -> Path | None:
        return self.ctx.settings.tftp_root

    @property
    def guest_address(self) -> str | None:
        return self.ctx.settings.address

    @property
    def ready_pattern(self) -> str:
        if self.ctx.settings.ready is not None:
            return self.ctx.settings.ready
        if self.ctx.settings.prompt is not None:
            return self.ctx.settings.prompt
        return UBootShell.prompt_line if self.ctx.settings.shell == "uboot" else LINUX_PROMPT

    @property
    def shell_kind(self) -> str:
        return self.ctx.settings.shell

    @property
    def shell_settings(self) -> ShellSettings:
        return self.ctx.settings

    def boot_to(self, stage: str) -> None:
        """Bring the board to boot stage ``stage`` (its ``shell`` after power-on, or one of ``stages``)."""
        _stages.boot_to(self, stage)

    def reset(self) -> None:
        """Back to the first stage: a power cycle (a composite board has no reset line of its own)."""
        self.cycle()

    def _part_provides(self, key: str, capability: type) -> bool:
        """Whether the device of setting ``key`` provides ``capability``, by its driver's own account."""
        device = self.ctx.refs[key]
        return capability in type(device).provides(device.ctx.settings)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        if self.ctx.settings.autostart:
            try:
                self.cycle()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        try:
            if self.started and self._powered is not False and self._switched:
                self.off()
        finally:
            self.started = False

    def restore(self, mode: str) -> str | None:
        if mode != "reboot":
            return f"driver 'board' cannot restore with reset: {mode} (it can: reboot)"
        self.cycle()
        return None

    # --- Power, PowerState --------------------------------------------------------------------------

    def on(self) -> None:
        """Switch the power on and wait until the board is ready (a no-op if it is on)."""
        self.require_started("on()")
        if self._powered:
            return
        self._power_up(self.power.on, "after power-on")

    def off(self) -> None:
        self.require_started("off()")
        self._switched = True
        self._powered = None
        if self._part_provides("console", Reconnect):
            self.ctx.ref("console", Reconnect).disconnect()
        self.power.off()
        self._powered = False

    def cycle(self) -> None:
        """Power off and on (the power device's own cycle), then wait until the board is ready."""
        self.require_started("cycle()")
        self._power_up(self.power.cycle, "after a power cycle")

    @property
    def is_running(self) -> bool:
        """Whether the power is on: the power device's word if it can tell, else what we last switched."""
        if self._part_provides("power", PowerState):
            return self.ctx.ref("power", PowerState).is_running
        return bool(self._powered)

    def _power_up(self, switch: Callable[[], None], context: str) -> None:
        self._switched = True
        self._powered = None
        reconnects = self._part_provides("console", Reconnect)
        if reconnects:
            self.ctx.ref("console", Reconnect).disconnect()
        else:
            # The console stays connected: what it holds from before must not pass for the new boot.
            self._console().drain(quiet=0.0, limit=0.5)
        switch()
        self._powered = True
        self.stage, self._shell = self.shell_kind, None
        if not reconnects:
            self._console().fatal.skip_seen()  # what it showed before the power cycle is history
        if reconnects:
            self.ctx.ref("console", Reconnect).reconnect()
        self._wait_ready(context)

    def _wait_ready(self, context: str) -> None:
        console = self.console
        timeout = self.ctx.settings.boot_timeout
        try:
            if self.ctx.settings.shell == "uboot" and self.ctx.settings.ready is None:
                console.shell.interrupt(timeout)
            else:
                console.expect(self.ready_pattern, timeout=timeout)
                if self.ctx.settings.login is not None and self.shell_kind == "linux":
                    console.shell.login()
        except ConsoleTimeout as exc:
            raise ConsoleTimeout(
                self.device_name,
                f"the ready pattern {self.ready_pattern!r} {context}",
                timeout,
                exc.console_tail,
                exc.diagnosis,
            ) from exc
        self.ctx.progress(f"{self.device_name}: ready {context}")

    # --- HasConsole ---------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        """The console part's console, with this board's shell; an error if the board is off."""
        self.require_started("console")
        if self._powered is False:
            raise self._off_error()
        return self._console()

    def _console(self) -> Console:
        console = self.ctx.ref("console", HasConsole).console
        # Ours to set: this board owns how the console's end and its shell are read.
        console.on_eof = self._console_ended
        if self._fatal_console is not console:
            console.fatal.add(_stages.fatal_patterns(self.shell_kind, self.ctx.settings))
            self._fatal_console = console
        if console.shell is not self._shell:  # a new console, a new stage, or not ours yet
            console.shell = self._shell = _stages.shell_for(
                console, self.stage, self.shell_kind, self.ctx.settings
            )
        return console

    def _console_ended(self) -> BaseException | None:
        """Why the console stream ended, when the power explains it."""
        if self._powered is False:
            return self._off_error()
        if self._part_provides("power", PowerState) and not self.ctx.ref("power", PowerState).is_running:
            return DeviceStateError(
                self.device_name,
                f"board {self.device_name!r} lost its power: its console ended and power device "
                f"{self.ctx.settings.power!r} reports it off",
            )
        return None

    def _off_error(self) -> DeviceStateError:
        return DeviceStateError(
            self.device_name,
            f"board {self.device_name!r} is off: its console (device {self.ctx.settings.console!r}) "
            "shows nothing until it is powered on (on() or cycle())",
        )
