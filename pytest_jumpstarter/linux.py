"""The Linux shell helper: marker-bracketed commands that survive BusyBox ash on a serial console."""

from __future__ import annotations

import re
import time

from .errors import DriverError
from .shell import RunResult, Shell, clean
from .timeouts import cap
from .waiting import Deadline

#: A login prompt where a shell prompt was expected: the shell exited, or the board rebooted.
LOGIN_INSTEAD = r"\n[^\r\n]{0,60}login: ?$"
#: ash's (and bash's) message for a line it cannot parse; it then runs none of the line.
SYNTAX_ERROR = r"\n[^\r\n]{0,40}sh: (?:line \d+: )?syntax error[^\r\n]{0,200}"


class LinuxShell(Shell):
    """Runs commands on a Linux shell (BusyBox ash included) and finds their output by markers.

    ash sends ``ESC[6n`` before each prompt and re-wraps long echoed command lines, so neither the
    prompt nor the echo can be matched reliably.  The command is bracketed by ``printf`` calls whose
    output contains a byte (0x1e) that the echo shows only as the three characters ``\\36``.  The
    command runs inside ``{ ...\\n}``, so comments, pipes and a missing final newline are its own
    business; a syntax error comes back at once as status 2 with the shell's message.
    """

    default_prompt = r"(?:^|\n)[^\r\n]{0,80}[#$] (?:\x1b\[6n)?"

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command``; its output and exit status.  On a timeout the command is interrupted and
        the prompt proved idle before :class:`~pytest_jumpstarter.errors.ConsoleTimeout` is raised."""
        console = self.console
        if self.line_limit and len(command) > self.line_limit:
            raise DriverError(
                console.device,
                f"command of {len(command)} characters: the shell takes at most {self.line_limit}",
            )
        token = self._short_token()
        seconds = cap(console.timeout if timeout is None else timeout) or 0.0  # within pytest-timeout's
        deadline = Deadline(seconds, f"the end of command {command!r}")
        # Two bounded patterns rather than one spanning the output: a long output is then searched
        # in a window (see expecter._WindowedExpecter), not re-searched whole after every read.
        begin = re.compile(f"\x1eB{token}\x1e\r?\n")
        end = re.compile(f"\x1eE{token}:(-?\\d+)\x1e")
        # The command sits inside `{ ...\n}` on lines of its own, so a comment cannot hide the end
        # marker; ash reads the whole compound before running any of it, so a command that reads
        # stdin cannot eat the marker line.  A syntax error makes ash drop the whole input: its message
        # then comes instead of the begin marker.
        # Every character of the line is echoed back through the board's UART (about 0.1 ms each on
        # a remote console), so the frame is as short as it can be: a short token, ``\36`` (printf
        # takes 1-3 octal digits), no spaces that the shell does not need.
        body = command if command.strip() else ":"
        line = f"printf '\\36B{token}\\36\\n';{{ {body}\n}};printf '\\36E{token}:%d\\36\\n' $?"
        with console.watched(), self._resync_on_timeout(f"the end of command {command!r}", seconds) as start:
            console.sendline(line)
            if console.expect([begin, SYNTAX_ERROR], timeout=deadline.remaining()) == 1:
                message = clean(console.after).strip()
                return RunResult(command, message, 2, time.monotonic() - start)
            if console.expect([end, LOGIN_INSTEAD], timeout=deadline.remaining()) == 1:
                raise DriverError(
                    console.device,
                    f"a login prompt came instead of the end of {command!r} (the shell exited or the board"
                    f" rebooted)\nlast console lines:\n{console.tail()}",
                )
        output = clean(console.before)
        output = output[:-1] if output.endswith("\n") else output
        console.settled = True
        return RunResult(command, output, int(console.match.group(1)), time.monotonic() - start)

    def sync(self, timeout: float = 5.0) -> None:
        token = self._short_token()
        self.console.sendline(f"printf '\\36S{token}\\36\\n'")
        self.console.expect(f"\x1eS{token}\x1e\r?\n", timeout=timeout)
        self.console.settled = True
