"""What every console shell helper shares: results, raw sends, interrupt and resync, login.

A shell helper (:class:`~pytest_jumpstarter.linux.LinuxShell`,
:class:`~pytest_jumpstarter.uboot.UBootShell`) finds a command's output by markers.  When a command
does not finish in time, the helper interrupts it and proves the prompt idle with a marker *inside
the timed-out call*, so the next command (and the next test) starts clean.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .errors import ConsoleTimeout, DriverError, Halted
from .shell_settings import LoginSettings, ShellSettings
from .timeouts import cap
from .waiting import Deadline

if TYPE_CHECKING:
    from .console import Console

#: Two letters that differ between processes, for :meth:`Shell._short_token`.
_SALT = "".join(chr(ord("g") + (os.getpid() >> (4 * i)) % 20) for i in range(2))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def clean(text: str) -> str:
    """Console text as a person reads it: no escape sequences, ``\\n`` line ends."""
    return ANSI.sub("", text).replace("\r\n", "\n")


@dataclass(frozen=True)
class RunResult:
    """A shell command's output (``\\n`` line ends, no trailing newline) and exit status.

    The same type for every channel, so a test switches from ``console.run()`` to ``ssh.run()`` by
    changing one word.  On a console stdout and stderr arrive interleaved in ``output`` (and ``stderr``
    is empty); over SSH ``output`` is stdout and ``stderr`` is separate.
    """

    command: str
    output: str
    status: int
    duration: float
    stderr: str = ""
    #: What ran it, for messages: ``console``, or ``ssh root@127.0.0.1:40022``.
    channel: str = "console"

    @property
    def stdout(self) -> str:
        return self.output

    @property
    def ok(self) -> bool:
        return self.status == 0

    def check(self) -> RunResult:
        """Return self if the command succeeded, else raise with its output."""
        if self.status != 0:
            stderr = f"\nstderr:\n{self.stderr}" if self.stderr else ""
            raise DriverError(
                self.channel,
                f"command {self.command!r} exited with status {self.status}:\n{self.output}{stderr}",
            )
        return self


class Shell:
    """The parts of a shell helper that do not depend on the shell's syntax."""

    #: The shell's own prompt regex (a board's ``prompt:`` setting overrides it).
    default_prompt: ClassVar[str] = r"[#$] "
    #: Longest command line the shell accepts (0: no limit we know of).
    default_line_limit: ClassVar[int] = 0
    _ids = itertools.count(1)

    def __init__(self, console: Console, settings: ShellSettings | None = None) -> None:
        self.console = console
        self.settings = settings or ShellSettings()
        self.prompt: str = self.settings.prompt or self.default_prompt
        self.line_limit: int = self.settings.line_limit or self.default_line_limit

    def _token(self) -> str:
        return f"{next(self._ids)}x{int(time.monotonic() * 1000) % 100000}"

    def _short_token(self) -> str:
        """Unique on this console (a counter) and apart from another process's (two salt letters)."""
        return f"{next(self._ids):x}{_SALT}"

    # --- what subclasses provide ---------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command`` and return its output and status."""
        raise NotImplementedError

    def sync(self, timeout: float = 5.0) -> None:
        """Prove the prompt idle with a marker, leaving nothing stale in the buffer."""
        raise NotImplementedError

    # --- raw --------------------------------------------------------------------------------------

    def raw(
        self,
        text: str,
        *,
        send_newline: bool = True,
        wait_echo: bool = True,
        wait_prompt: bool = True,
        timeout: float | None = None,
    ) -> str:
        """Type ``text`` as a person would and return what came back before the prompt (cleaned).

        For what :meth:`run` cannot express: no newline (a key press), no echo (a password), no
        prompt afterwards (a command that boots something else).  Returns ``""`` unless it waits.
        """
        console = self.console
        deadline = Deadline(console.timeout if timeout is None else timeout, f"the prompt after {text!r}")
        console.send(text + ("\n" if send_newline else ""))
        got = ""
        if wait_echo and text:
            console.expect_exact(text, timeout=deadline.remaining())
        if wait_prompt:
            console.expect(self.prompt, timeout=deadline.remaining())
            got = console.before
        return clean(got)

    # --- interrupt and resync --------------------------------------------------------------------

    def interrupt(self, timeout: float | None = None) -> None:
        """Stop what the shell is doing (Ctrl-C, or the board's ``interrupt:``) and prove the prompt idle."""
        timeout = self.settings.resync_timeout if timeout is None else timeout
        deadline = Deadline(timeout, f"{self.console.device}'s prompt after an interrupt")
        self.console.interrupt(self.settings.interrupt)
        self.sync(max(0.1, deadline.remaining(timeout)))

    @contextmanager
    def _resync_on_timeout(self, what: str, timeout: float) -> Iterator[float]:
        """Time out as :class:`ConsoleTimeout` naming ``what``; before raising, get the prompt back."""
        console = self.console
        start = time.monotonic()
        try:
            yield start
        except ConsoleTimeout as exc:
            if isinstance(exc.diagnosis, Halted):
                note = " (not interrupted: the device cannot run, see below)"
            elif _budget_spent(self.settings.resync_timeout):
                # An interrupt given no time would only "fail" to get the prompt back.
                note = " (not interrupted: the test's pytest-timeout budget is spent)"
            else:
                note = self._resync()
            elapsed = round(time.monotonic() - start, 3)
            raise ConsoleTimeout(
                console.device, f"{what}{note}", elapsed, console.tail(), exc.diagnosis
            ) from exc

    def _resync(self) -> str:
        """Interrupt the command that did not finish; a note on whether the prompt came back."""
        try:
            self.interrupt()
        except DriverError as exc:
            first = exc.message.splitlines()[0]
            return f" (then it did not come back to its prompt after an interrupt: {first})"
        return " (it was interrupted; the shell is back at an idle prompt)"

    # --- login -----------------------------------------------------------------------------------

    def login(self, login: LoginSettings | None = None) -> None:
        """Answer the login (and password) prompt until the shell prompt shows; ``retries`` times."""
        login = login or self.settings.login
        if login is None:
            raise DriverError(self.console.device, "login() needs login: {username, ...} in the target file")
        console = self.console
        patterns: Sequence[str] = (login.login_prompt, login.password_prompt, self.prompt, r"Login incorrect")
        attempts = 0
        console.sendline("")  # a fresh prompt, whatever the kernel printed over the last one
        while True:
            index = console.expect(list(patterns), timeout=login.timeout)
            if index == 0:
                attempts += 1
                if attempts > login.retries:
                    raise DriverError(
                        console.device,
                        f"login as {login.username!r} failed {login.retries} times\n"
                        f"last console lines:\n{console.tail()}",
                    )
                console.sendline(login.username)
            elif index == 1:
                console.sendline(login.password or "")
            elif index == 2:
                return


def _budget_spent(resync_timeout: float) -> bool:
    """Whether the test's pytest-timeout budget leaves no time for an interrupt and resync."""
    left = cap(resync_timeout)
    return left is not None and left < 0.1
