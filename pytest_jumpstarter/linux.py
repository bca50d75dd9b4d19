"""The Linux shell helper: marker-bracketed commands that survive BusyBox ash on a serial console."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from .errors import DriverError
from .shell import RunResult, Shell, clean
from .timeouts import cap
from .waiting import Deadline

if TYPE_CHECKING:
    from .console import Console
    from .shell_settings import ShellSettings

#: A login prompt where a shell prompt was expected: the shell exited, or the board rebooted.
LOGIN_INSTEAD = r"\n[^\r\n]{0,60}login: ?$"
#: ash's (and bash's) message for a line it cannot parse; it then runs none of the line.
SYNTAX_ERROR = r"\n[^\r\n]{0,40}sh: (?:line \d+: )?syntax error[^\r\n]{0,200}"
#: The marker functions, defined once per shell (see :meth:`LinuxShell._begin`).  ``$?`` in ``_jE``
#: is still the status of the command before the call: nothing has run inside the function yet.
HELPERS = "_jB(){ printf '\\36B%s\\36\\n' $1;};_jE(){ printf '\\36E%s:%d\\36\\n' $1 $?;}"
#: What a shell says when it has no ``_jB``: ash and dash ``sh: _jB: not found``, bash
#: ``bash: _jB: command not found``, zsh ``command not found: _jB``.
MISSING = r"_jB: (?:command )?not found|not found: _jB"
#: A command's begin and end markers, whoever's token they carry: compiled once, not per command (a
#: third of run()'s CPU time was compiling and measuring two new patterns), and bounded, so a long
#: output is searched in a window (see expecter._WindowedExpecter).
BEGIN = re.compile(r"\x1eB(\w{1,32})\x1e\r?\n")
END = re.compile(r"\x1eE(\w{1,32}):(-?\d{1,10})\x1e")
#: A command that names the functions goes in the long frame: its echo could read "_jB: not found".
_OURS = re.compile(r"_j[BE]")
#: What makes a command need its closing `}` on a line of its own: a comment (it would hide the `}`),
#: several lines or a here-document, or an end that `;}` cannot follow (`&`, `|`, `;`, a backslash).
_OWN_LINE = re.compile(r"[#\n]|<<|[\\&|;]\s*$")


class LinuxShell(Shell):
    """Runs commands on a Linux shell (BusyBox ash included) and finds their output by markers.

    ash sends ``ESC[6n`` before each prompt and re-wraps long echoed command lines, so neither the
    prompt nor the echo can be matched reliably.  The command is bracketed by ``printf`` calls (in two
    shell functions defined once per shell) whose output contains a byte (0x1e) that the echo shows
    only as the three characters ``\\36``.  The command runs inside ``{ ...;}`` (``{ ...\\n}`` where it
    needs its own line), so comments, pipes and a missing final newline are its own business; a
    syntax error comes back at once as status 2 with the shell's message.
    """

    default_prompt = r"(?:^|\n)[^\r\n]{0,80}[#$] (?:\x1b\[6n)?"

    def __init__(self, console: Console, settings: ShellSettings | None = None) -> None:
        super().__init__(console, settings)
        #: This shell cannot define the marker functions: every command goes in the long frame.
        self.long_frame = False

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command``; its output and exit status.  On a timeout the command is interrupted and
        the prompt proved idle before :class:`~pytest_jumpstarter.errors.ConsoleTimeout` is raised."""
        console = self.console
        if self.line_limit and len(command) > self.line_limit:
            raise DriverError(
                console.device,
                f"command of {len(command)} characters: the shell takes at most {self.line_limit}",
            )
        if (len(command) - len(command.rstrip("\\"))) % 2:  # an odd run: the last one escapes the newline
            raise DriverError(
                console.device,
                f"command {command!r} ends with a backslash: the shell would join the next line to it "
                "and wait for more (escape it as \\\\ or drop it)",
            )
        token = self._short_token()
        seconds = cap(console.timeout if timeout is None else timeout) or 0.0  # within pytest-timeout's
        deadline = Deadline(seconds, f"the end of command {command!r}")
        with console.watched(), self._resync_on_timeout(f"the end of command {command!r}", seconds) as start:
            if not self._begin(command, token, deadline):
                message = clean(console.after).strip()
                # Where the `}` had a line of its own, the shell drops the first line, then parses the
                # `}` line alone: that second complaint (and the prompt) is read here, or the next
                # command would take it for its own syntax error.
                self.sync(max(0.1, deadline.remaining(self.settings.resync_timeout)))
                return RunResult(command, message, 2, time.monotonic() - start)
            index, before = self._until([END, LOGIN_INSTEAD], token, deadline)
            if index == 1:
                raise DriverError(
                    console.device,
                    f"a login prompt came instead of the end of {command!r} (the shell exited or the board"
                    f" rebooted)\nlast console lines:\n{console.tail()}",
                )
        output = clean(before)
        output = output[:-1] if output.endswith("\n") else output
        console.settled = True
        return RunResult(command, output, int(console.match.group(2)), time.monotonic() - start)

    def _begin(self, command: str, token: str, deadline: Deadline) -> bool:
        """Send ``command`` framed by its markers and wait for the begin marker; False when the shell
        rejected the line (a syntax error, whose message is then ``console.after``).

        The command sits inside ``{ ...;}``, or ``{ ...\n}`` where a comment could hide the ``}``
        (:data:`_OWN_LINE`); the shell reads the whole compound before running any of it, so a
        command that reads stdin cannot eat the end marker, and a syntax error makes it drop the
        line: its message then comes instead of the begin marker.  Every character of the line is
        echoed back through the board's UART (and a remote board's exporter), so the markers come
        from two shell functions (:data:`HELPERS`) where the shell has them: ``_jB T&&{ CMD;};_jE
        T``.  A shell without them (a new one: a reboot, ``su``, ``sh``) says so and, through
        ``&&``, runs nothing of the line; the functions are then defined and the command sent again.
        """
        console = self.console
        body = command if command.strip() else ":"
        defined = False
        while True:
            if self.long_frame or _OURS.search(command):
                console.sendline(
                    f"printf '\\36B{token}\\36\\n';{{ {body}\n}};printf '\\36E{token}:%d\\36\\n' $?"
                )
                return self._until([BEGIN, SYNTAX_ERROR], token, deadline)[0] == 0
            # One line where nothing in the command needs the `}` on a line of its own: a second line
            # costs the shell a continuation prompt, a round trip (0.5 ms of 23 on a remote board).
            close = "\n}" if _OWN_LINE.search(body) else ";}"
            console.sendline(f"_jB {token}&&{{ {body}{close};_jE {token}")
            index = self._until([BEGIN, SYNTAX_ERROR, MISSING], token, deadline)[0]
            if index < 2:
                return bool(index == 0)
            # No functions, so nothing of the line ran.  Define them once; if that does not take,
            # this shell cannot have them (not a POSIX shell): the long frame from now on.
            self.long_frame = defined or not self._define_helpers(deadline)
            defined = True

    def _until(
        self, patterns: list[re.Pattern[str] | str], token: str, deadline: Deadline
    ) -> tuple[int, str]:
        """``expect(patterns)`` until the first (a marker) matches with ``token``: a marker of an earlier
        command is text like any other.  The index that matched and the text before the match."""
        console = self.console
        skipped = ""
        while True:
            index: int = console.expect(patterns, timeout=deadline.remaining())
            if index != 0 or console.match.group(1) == token:
                return index, skipped + console.before
            skipped += console.before + console.after

    def _define_helpers(self, deadline: Deadline) -> bool:
        """Define the marker functions; whether the shell took them.  Its marker also consumes what
        the shell printed about the line that found none (the second "not found", the prompt)."""
        token = self._short_token()
        self.console.sendline(f"{HELPERS};printf '\\36S{token}\\36\\n'")
        synced = f"\x1eS{token}\x1e\r?\n"
        return bool(self.console.expect([synced, SYNTAX_ERROR], timeout=deadline.remaining()) == 0)

    def sync(self, timeout: float = 5.0) -> None:
        token = self._short_token()
        self.console.sendline(f"printf '\\36S{token}\\36\\n'")
        self.console.expect(f"\x1eS{token}\x1e\r?\n", timeout=timeout)
        self.console.settled = True
