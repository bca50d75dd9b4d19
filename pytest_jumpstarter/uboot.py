"""The U-Boot helper: stop autoboot, run commands at the prompt and find their output by markers.

One helper for every U-Boot console: the QEMU board's ``uboot`` (and its console's ``run`` when
``shell: uboot``), and the ``uboot-tftp`` flasher on any board with power and a console.
"""

from __future__ import annotations

import itertools
import re
import time

from .console import Console, RunResult
from .errors import BoardReset, ConsoleTimeout


class UBootShell:
    """Stops U-Boot's autoboot and runs commands at its prompt, finding their output by markers.

    The one U-Boot helper: the QEMU board's ``uboot`` and the ``uboot-tftp`` flasher both use it.
    The prompt regex is ``\\r\\n=> ``: a bare ``=> `` also matches crc32's ``==> 9b815e98``.  U-Boot's
    hush drops empty quotes (``@@B""x`` prints ``@@Bx``), so the markers in the output never equal
    the echoed command line, and ``$?`` gives the command's status.  A board that restarts while a
    command runs (its banner or the autoboot countdown shows up) raises :class:`BoardReset` at once.
    """

    prompt = r"\r\n=> "
    autoboot = r"Hit any key to stop autoboot|Press SPACE to abort autoboot|autoboot in \d{1,4} seconds"
    #: Output that means the board restarted under a running command.
    reset_patterns = (r"\r\nU-Boot \d{4}\.\d{2}[^\r\n]{0,80}", autoboot)
    #: How long :meth:`interrupt` waits for output before it sends Ctrl-C again.
    poke_interval = 0.5

    _ids = itertools.count(1)

    def __init__(self, console: Console) -> None:
        self.console = console

    def interrupt(self, timeout: float | None = None) -> None:
        """Get to an idle prompt from wherever U-Boot is: counting down to autoboot, at a prompt
        (a half-typed line, or its output already read), or still starting.

        Ctrl-C stops the countdown (any key does) and, at a prompt, cancels the line and prints a
        fresh prompt; so it is sent at once, again when the countdown shows, and again whenever
        the console stays quiet for :attr:`poke_interval`.  Measured on the demo arm64 board, to a
        verified idle prompt: 0.7x the time of waiting for the countdown text and answering it
        (after power-on or a reset: the early key is taken as "already pressed"), and it works at
        an idle prompt, where waiting for the countdown text never returns.
        """
        console = self.console
        timeout = console.timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + timeout
        console.send("\x03")
        while True:
            remaining = deadline - time.monotonic()
            try:
                index = console.expect(
                    [self.autoboot, self.prompt], timeout=max(0.0, min(self.poke_interval, remaining))
                )
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(
                        console.device, f"U-Boot's prompt ({self.prompt!r})", timeout, console.tail()
                    ) from None
                index = 0
            if index == 1:
                break
            console.send("\x03")
        self.sync(max(0.1, deadline - time.monotonic()))

    def sync(self, timeout: float = 5.0) -> None:
        """Make sure the prompt is idle and the buffer holds nothing stale (an empty command line)."""
        token = f"S{next(self._ids)}"
        self.console.sendline(f'echo @@{token}""@@')
        self.console.expect(f"@@{token}@@{self.prompt}", timeout=timeout)

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command`` at the prompt; its output and status.  Raises :class:`ConsoleTimeout` if
        it does not finish in time, :class:`BoardReset` if the board restarts meanwhile."""
        console = self.console
        token = f"{next(self._ids)}x{int(time.monotonic() * 1000) % 100000}"
        console.sendline(f'echo @@B""{token}@@; {command}; echo @@E""{token}:$?@@')
        start = time.monotonic()
        deadline = start + (console.timeout if timeout is None else timeout)
        # Two bounded patterns rather than one spanning the output (see LinuxShell.run).
        begin = re.compile(f"@@B{token}@@\r?\n")
        end = re.compile(f"@@E{token}:(-?\\d+)@@{self.prompt}")
        try:
            for pattern in (begin, end):
                if console.expect(
                    [pattern, *self.reset_patterns], timeout=max(0.0, deadline - time.monotonic())
                ):
                    raise BoardReset(console.device, command, console.match.group(0).strip(), console.tail())
        except ConsoleTimeout as exc:
            raise ConsoleTimeout(
                console.device, f"the end of U-Boot command {command!r}", deadline - start, console.tail()
            ) from exc
        output = console.before.replace("\r\n", "\n").rstrip("\n")
        return RunResult(command, output, int(console.match.group(1)), time.monotonic() - start)
