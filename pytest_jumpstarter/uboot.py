"""The U-Boot helper: stop autoboot, run commands at the prompt and find their output by markers.

One helper for every U-Boot console: the QEMU board's ``uboot`` (and its console's ``run`` when
``shell: uboot``), the composite board's, and the ``uboot-tftp`` flasher on any board with power and
a console.
"""

from __future__ import annotations

import re
import time
from typing import ClassVar

from .errors import BoardReset, ConsoleTimeout, DriverError
from .fatal import UBOOT_FATAL, FatalPattern
from .shell import RunResult, Shell, clean
from .timeouts import cap
from .waiting import Deadline

#: hush's continuation prompt: the line is not finished (an open quote, a trailing ``&&``).
_CONTINUATION = r"\r\n> $"
#: hush could not parse the line, and ran none of it.
_SYNTAX_ERROR = r"syntax error\r?\n"


class UBootShell(Shell):
    """Stops U-Boot's autoboot and runs commands at its prompt, finding their output by markers.

    A command is typed as given; its status comes from ``echo @<token>$?``, on the same line
    (one round trip) unless the command has a ``#`` (a comment would hide it) or the two would not
    fit U-Boot's line (512 bytes with the NUL): then on a line of its own, typed once the prompt is
    back.  The marker's echo shows ``$?`` where its output shows digits, so one never passes for the
    other; the line stays short, since U-Boot echoes every character.  The output is
    what U-Boot printed between the echo of the command and the marker, even without a final newline.

    A board that restarts under a command (``resetting ...``, a new banner, the autoboot countdown,
    a QEMU RESET event) raises :class:`BoardReset` at once; a syntax error returns at once with
    hush's message and status 1; a timeout interrupts the command (Ctrl-C) and proves the prompt idle
    before it raises.  The default prompt is a bare ``=> `` so output without a final newline ends
    too; ``crc32``'s ``==> `` matched early costs nothing, the marker comes after the real prompt.
    """

    default_prompt = "=> "
    default_line_limit = 511
    #: Kept for callers: U-Boot's prompt at the start of a line.
    prompt_line: ClassVar[str] = r"\r\n=> "
    autoboot = r"Hit any key to stop autoboot|Press SPACE to abort autoboot|autoboot in \d{1,4} seconds"
    #: Output that means the board restarted under a running command.
    reset_patterns = (r"\r\nU-Boot \d{4}\.\d{2}[^\r\n]{0,80}", autoboot)
    #: The console fatal patterns a U-Boot board gets (a target file's ``fatal_patterns`` add to them).
    fatal: ClassVar[tuple[FatalPattern, ...]] = UBOOT_FATAL
    #: How long :meth:`interrupt` waits for output before it sends Ctrl-C again.
    poke_interval = 0.5

    def interrupt(self, timeout: float | None = None) -> None:
        """Get to an idle prompt from wherever U-Boot is: counting down to autoboot, at a prompt
        (a half-typed line, or its output already read), running a command, or still starting.

        Ctrl-C stops the countdown (any key does), stops a command that polls for it (``sleep``,
        ``tftpboot``), and at a prompt cancels the line and prints a fresh prompt; so it is sent at
        once, again when the countdown shows, and again whenever the console stays quiet for
        :attr:`poke_interval`.  Then a marker proves the prompt idle.
        """
        console = self.console
        timeout = console.timeout if timeout is None else timeout
        deadline = Deadline(timeout, f"U-Boot's prompt ({self.prompt!r})")
        console.interrupt(self.settings.interrupt)
        while True:
            try:
                index = console.expect(
                    [self.autoboot, self.prompt], timeout=deadline.remaining(self.poke_interval)
                )
            except ConsoleTimeout as exc:
                if deadline.expired:
                    what = f"U-Boot's prompt ({self.prompt!r})"
                    raise ConsoleTimeout(
                        console.device, what, timeout, console.tail(), exc.diagnosis
                    ) from None
                index = 0
            if index == 1:
                break
            console.interrupt(self.settings.interrupt)
        self.sync(max(0.1, deadline.remaining(timeout)))

    def sync(self, timeout: float = 5.0) -> None:
        """Make sure the prompt is idle and the buffer holds nothing stale (an empty command line)."""
        token = f"S{self._token()}"
        self.console.sendline(f'echo @@{token}""@@')
        self.console.expect(f"@@{token}@@\r?\n{self.prompt}", timeout=timeout)
        self.console.settled = True

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command`` at the prompt; its output and status.

        Raises :class:`BoardReset` if the board restarts meanwhile, :class:`ConsoleTimeout` if it
        does not finish in time (after interrupting it: the prompt is idle again), and
        :class:`~pytest_jumpstarter.errors.DriverError` at once for a line U-Boot cannot take.
        """
        console = self.console
        if "\n" in command or "\r" in command:
            raise DriverError(
                console.device, f"a U-Boot command is one line; found a line break in {command!r}"
            )
        if len(command) > self.line_limit:
            raise DriverError(
                console.device,
                f"command of {len(command)} characters: U-Boot takes at most {self.line_limit}"
                " (line_limit; CONFIG_SYS_CBSIZE - 1)",
            )
        # Short: U-Boot echoes each character through the emulated (or real) UART, so every one of
        # them is on the round trip's bill (the marker is most of run("true")'s cost).
        # The echo of the line shows ``$?`` where the marker's output has digits, so neither can pass
        # for the other.
        token = self._short_token()
        marker = f"echo @{token}$?"
        end = f"@{token}(-?\\d+)\r?\n{self.prompt}"
        blank = not command.strip()
        one_line = blank or ("#" not in command and len(f"{command};{marker}") <= self.line_limit)
        line = marker if blank else f"{command};{marker}" if one_line else command
        seconds = console.timeout if timeout is None else timeout
        try:
            return self._run(command, line, marker, end, one_line, blank, seconds)
        except BoardReset as exc:
            if exc.command:
                raise
            # Found by a fatal pattern or a QMP event, which do not know the command: name it.
            raise BoardReset(console.device, command, exc.shown, exc.console_tail) from None

    def _run(
        self, command: str, line: str, marker: str, end: str, one_line: bool, blank: bool, seconds: float
    ) -> RunResult:
        console = self.console
        seconds = cap(seconds) or 0.0  # within the test's pytest-timeout budget
        deadline = Deadline(seconds, f"the end of U-Boot command {command!r}")
        with (
            console.watched(),
            self._resync_on_timeout(f"the end of U-Boot command {command!r}", seconds) as start,
        ):
            console.sendline(line)
            self._expect(command, re.escape(line) + "\r?\n", deadline)
            if one_line:
                if self._expect(command, end, deadline) == 1:
                    return self._syntax_error(command, deadline, start)
                output, status = console.before, 0 if blank else int(console.match.group(1))
            else:
                if self._expect(command, self.prompt, deadline) == 1:
                    return self._syntax_error(command, deadline, start)
                before, prompt = console.before, console.after
                console.sendline(marker)
                self._expect(command, f"{re.escape(marker)}\r?\n{end}", deadline)
                # A prompt-like text in the output ("==> ") may have been taken for the prompt: then
                # the rest of the output and the real prompt come before the marker's echo.
                rest = console.before
                output = re.sub(f"(?:{self.prompt})\\Z", "", before + prompt + rest) if rest else before
                status = int(console.match.group(1))
        text = clean(output)
        console.settled = True
        return RunResult(
            command, text[:-1] if text.endswith("\n") else text, status, time.monotonic() - start
        )

    def _syntax_error(self, command: str, deadline: Deadline, start: float) -> RunResult:
        """hush printed its message (``syntax error``) and ran nothing; ``$?`` is untouched, so the
        status is ours: 1.  The prompt after the message is read, so nothing stale is left."""
        console = self.console
        message = clean(console.before + console.after).strip()
        console.expect(self.prompt, timeout=deadline.remaining())
        return RunResult(command, message, 1, time.monotonic() - start)

    def _expect(self, command: str, pattern: str, deadline: Deadline) -> int:
        """Wait for ``pattern``: 0; hush's syntax error: 1; a restart or an unfinished line: raise."""
        console = self.console
        index: int = console.expect(
            [pattern, _SYNTAX_ERROR, _CONTINUATION, *self.reset_patterns], timeout=deadline.remaining()
        )
        if index == 2:
            console.interrupt(self.settings.interrupt)
            self.sync(self.settings.resync_timeout)
            raise DriverError(
                console.device,
                f"U-Boot waits for the rest of {command!r} (an open quote or a trailing operator?);"
                " the line was cancelled",
            )
        if index > 2:
            console.fatal.note_reset()
            raise BoardReset(console.device, command, console.match.group(0).strip(), console.tail())
        return index
