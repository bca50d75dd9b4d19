"""The exception hierarchy: one root, with subclasses that say what went wrong.

Every message names the thing at fault (file and key, device, chunk or port), what was expected
and what was found, and where it helps, what to do next.  Root causes are chained with ``from``;
``BaseException`` subclasses such as ``KeyboardInterrupt`` are never wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pexpect


class JumpstarterError(Exception):
    """Root of every error raised by pytest-jumpstarter and its drivers."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a target description, located as precisely as we can."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class TargetError(JumpstarterError):
    """A target description is malformed; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in target description"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class DriverError(JumpstarterError):
    """A device failed to do what was asked of it.  ``device`` names it as the target file does."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        #: What went wrong, without the device prefix (for an error that wraps this one).
        self.message = message
        super().__init__(f"device {device!r}: {message}")


class DeviceStateError(DriverError):
    """A device was used in a state that does not allow it (e.g. console of a powered-off board)."""


class DeviceExited(DriverError):
    """The process behind a device (e.g. QEMU) exited while it was still needed."""

    def __init__(
        self,
        device: str,
        *,
        returncode: int | None,
        command: Sequence[str] = (),
        stderr_tail: str = "",
        console_tail: str = "",
        context: str = "",
    ) -> None:
        self.returncode = returncode
        self.command = list(command)
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail
        if returncode is None:
            how = "exited"
        elif returncode < 0:
            how = f"exited, killed by signal {-returncode} ({_signal_name(-returncode)})"
        else:
            how = f"exited with code {returncode}"
        parts = [f"process {how}" + (f" {context}" if context else "")]
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if stderr_tail.strip():
            parts.append("last stderr lines:\n" + _indent(stderr_tail))
        if console_tail.strip():
            parts.append("last console lines:\n" + _indent(console_tail))
        super().__init__(device, "\n".join(parts))


class Halted(str):
    """A console owner's diagnosis saying the device cannot run at all (a stopped or paused VM):
    interrupting what it was doing cannot help, so a timed-out command is not interrupted."""


class ConsoleTimeout(DriverError, pexpect.TIMEOUT):  # type: ignore[misc]
    """A console wait passed its deadline.  Still a ``pexpect.TIMEOUT`` for pexpect-style callers."""

    def __init__(
        self, device: str, waiting_for: str, timeout: float | None, console_tail: str, diagnosis: str = ""
    ) -> None:
        self.waiting_for = waiting_for
        self.timeout = timeout
        self.console_tail = console_tail
        #: What the device's owner found when the wait ended (QEMU's run state, say), or "".
        self.diagnosis = diagnosis
        found = f"found: {diagnosis}\n" if diagnosis else ""
        DriverError.__init__(
            self,
            device,
            f"timed out after {timeout}s waiting for {waiting_for}\n{found}"
            f"last console lines:\n{_indent(console_tail)}",
        )


class ConsoleClosed(DriverError, pexpect.EOF):  # type: ignore[misc]
    """The console stream ended.  Still a ``pexpect.EOF`` for pexpect-style callers."""


class BoardPanic(DriverError):
    """The board printed a fatal pattern (a kernel panic, say) on its console."""

    def __init__(self, device: str, pattern: str, console_tail: str) -> None:
        self.pattern = pattern
        self.console_tail = console_tail
        super().__init__(device, f"console showed {pattern!r}\nlast console lines:\n{_indent(console_tail)}")


class BoardReset(DriverError):
    """The board restarted while a command ran on its console (its banner showed up again)."""

    def __init__(self, device: str, command: str, shown: str, console_tail: str) -> None:
        self.command = command
        self.shown = shown
        self.console_tail = console_tail
        during = f" while running {command!r}" if command else ""
        super().__init__(
            device,
            f"the board reset{during} (console showed {shown!r})\n"
            f"last console lines:\n{_indent(console_tail)}",
        )


class FlashError(DriverError):
    """A flash or its verification failed; the message names the method and the chunk or offset."""


class TunnelError(DriverError):
    """A network forward could not be made or used; the message names the board and the port."""


class FolderError(JumpstarterError):
    """A folder the run needs (for work files, console logs, leases or sockets) cannot be used;
    the message names the folder, the option that chose it and what is wrong with it."""


class CommandNotFound(DriverError):
    """A program the device needs (qemu-img, zstd, ip...) is not installed; the message says how to get it."""


class CommandFailed(DriverError):
    """A short helper command exited non-zero; carries its exit status and the tail of its stderr."""

    def __init__(self, device: str, message: str, *, returncode: int | None, stderr: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(device, message)


class WaitTimeout(DriverError):
    """A wait for something (a socket, a process, a state) passed its deadline; says what was awaited."""

    def __init__(self, device: str, what: str, seconds: float, detail: str = "") -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(device, timeout_message(what, seconds, detail))


class SshError(DriverError):
    """An SSH connection failed or broke: the message names the board, the address and what SSH said."""


class TransferError(DriverError):
    """A file did not arrive intact, or at all: the message names the file, the channel and both checksums."""


class LockTimeout(JumpstarterError):
    """An exclusive device stayed locked by someone else for longer than we were willing to wait."""


def timeout_message(what: str, seconds: float, detail: str = "") -> str:
    """``timed out after 30s waiting for QEMU to connect (detail)``: one wording for every deadline."""
    return f"timed out after {seconds:g}s waiting for {what}" + (f" ({detail})" if detail else "")


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines()) or prefix + "(nothing)"
