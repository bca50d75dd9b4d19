"""Driver ``command-power``: a power switch worked by commands (a relay tool, a PDU client, ``uhubctl``).

Each action is an argv list run without a shell, in the target file's folder, bounded by
``timeout``.  Its stdout and stderr go to files, not pipes: an ``on`` command that leaves a daemon
behind holding them (a console server, a QEMU) does not keep us waiting.  A command that fails,
cannot be run or outlives its timeout is a :class:`DriverError` naming the device, the action, the
argv, the exit status and the end of its stderr.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pytest_jumpstarter.capabilities import PowerState
from pytest_jumpstarter.driver import Driver
from pytest_jumpstarter.errors import DriverError
from pytest_jumpstarter.process import Child, spawn
from pytest_jumpstarter.settings import setting

#: Characters that only mean something to a shell; in a program name they mean a shell was expected.
_SHELL_SYNTAX = re.compile(r"[\s|&;<>()$`*?~\"']")
ACTIONS = ("on", "off", "cycle", "status")


#: An argv as written: YAML gives numbers for ``3``; they are passed as text.
Argv = list[str | int | float]


@dataclass(frozen=True, kw_only=True)
class CommandPowerSettings:
    # Not ``on:``/``off:``: YAML 1.1 reads those keys as booleans.
    on_command: Argv = setting(doc="argv that switches the power on, e.g. [relayctl, 3, 'on']")
    off_command: Argv = setting(doc="argv that switches the power off")
    cycle_command: Argv = setting([], doc="argv that power-cycles (default: off, cycle_delay, on)")
    status_command: Argv = setting([], doc="argv telling the state: exit status 0 means on, any other off")
    timeout: float = setting(30.0, kind="duration", doc="deadline of each command")
    cycle_delay: float = setting(
        1.0, kind="duration", doc="time off between off and on when cycling (capacitors drain)"
    )


class CommandPower(Driver[CommandPowerSettings]):
    """Power on, off and cycle by running commands; ``is_running`` too when ``status`` is given."""

    name = "command-power"
    role = "power"

    @classmethod
    def check(cls, settings: CommandPowerSettings) -> Iterable[tuple[str, str]]:
        for action in ACTIONS:
            key = f"{action}_command"
            argv: Argv = getattr(settings, key)
            if not argv:
                if action in ("on", "off"):
                    yield key, "expected a command (an argv list such as [relayctl, 3, 'on']), found none"
                continue
            for index, item in enumerate(argv):
                if isinstance(item, bool):
                    yield (
                        key,
                        f"item {index}: expected a string, found boolean {item}: YAML reads a bare "
                        "on/off/yes/no as a boolean; quote it ('on')",
                    )
            if _SHELL_SYNTAX.search(str(argv[0])):
                yield (
                    key,
                    "commands run without a shell: expected an argv list whose first item is a program, "
                    f"found {str(argv[0])!r}; split it ([relayctl, 3, 'on']) or ask for a shell "
                    "explicitly ([sh, -c, '...'])",
                )

    @classmethod
    def provides(cls, settings: CommandPowerSettings) -> tuple[type, ...]:
        # Without a status command nothing can tell whether the board is on.
        return tuple(c for c in super().provides(settings) if c is not PowerState or settings.status_command)

    def start(self) -> None:
        for action in ACTIONS:
            argv = self._argv(action)
            if argv and self._program(argv[0]) is None:
                raise DriverError(
                    self.device_name,
                    f"power {action} command {shlex.join(argv)!r}: program {argv[0]!r} not found "
                    f"(on PATH, or relative to {self._cwd()}) (target {self.ctx.target}, {self.ctx.source})",
                )
        self.started = True

    # --- Power ----------------------------------------------------------------------------------

    def on(self) -> None:
        self._run("on")

    def off(self) -> None:
        self._run("off")

    def cycle(self) -> None:
        if self.ctx.settings.cycle_command:
            self._run("cycle")
            return
        self._run("off")
        # A physical delay: a board whose supply is cut for an instant may not reset at all.
        threading.Event().wait(self.ctx.settings.cycle_delay)
        self._run("on")

    @property
    def is_running(self) -> bool:
        """Whether the ``status`` command says the power is on (exit status 0)."""
        if not self.ctx.settings.status_command:
            # AttributeError, so that isinstance(device, PowerState) is False, as provides() says.
            raise AttributeError(
                f"device {self.device_name!r} (command-power) has no status_command: it cannot tell "
                "whether the power is on"
            )
        return self._run("status", check=False) == 0

    # --- running a command ----------------------------------------------------------------------

    def _argv(self, action: str) -> list[str]:
        return [str(item) for item in getattr(self.ctx.settings, f"{action}_command")]

    def _cwd(self) -> Path:
        source = self.ctx.source
        return Path(source).parent if source and not source.startswith("<") else Path.cwd()

    def _program(self, name: str) -> str | None:
        if "/" in name:
            path = Path(name) if Path(name).is_absolute() else self._cwd() / name
            return str(path) if os.access(path, os.X_OK) and path.is_file() else None
        return shutil.which(name)

    def _run(self, action: str, check: bool = True) -> int:
        """Run the ``action`` command to its end, bounded; return its exit status."""
        self.require_started(f"power {action}")
        settings = self.ctx.settings
        argv = self._argv(action)
        shown = self.ctx.redact(shlex.join(argv))
        program = self._program(argv[0])
        if program is None:
            raise DriverError(self.device_name, f"power {action} command {shown!r}: {argv[0]!r} not found")
        self.ctx.progress(f"{self.device_name}: power {action}")
        # stdout and stderr go to a file, not a pipe: a daemon the command leaves behind would hold a
        # pipe open.  What the command started may outlive it (that can be its job), so a command that
        # exits is released, not stopped; one that outlives its timeout is stopped with its group.
        log = self.ctx.workdir / f"power-{action}.log"
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        try:
            child = spawn(
                [program, *argv[1:]], device=self.device_name, stdout="stderr", stderr=log, cwd=self._cwd()
            )
        except (OSError, DriverError) as exc:
            raise DriverError(
                self.device_name, f"power {action} command {shown!r} cannot run: {exc}"
            ) from exc
        try:
            if not child.wait(settings.timeout):
                child.kill()
                raise DriverError(
                    self.device_name,
                    f"power {action} command {shown!r} did not finish within {settings.timeout:g}s "
                    f"(stopped it); stderr: {self._tail(child)}",
                )
            status = child.returncode
            assert status is not None
        except BaseException:
            child.kill()
            child.release()
            raise
        child.release()
        if status != 0 and check:
            raise DriverError(
                self.device_name,
                f"power {action} command {shown!r} failed with exit status {status}; "
                f"stderr: {self._tail(child)}",
            )
        return status

    def _tail(self, child: Child) -> str:
        return self.ctx.redact(child.stderr_tail(10).strip()) or "(empty)"
