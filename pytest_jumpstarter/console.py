"""A pexpect-compatible console over any byte stream, and a shell helper that survives BusyBox.

:class:`Console` is a real ``pexpect`` spawn (``expect``, ``expect_exact``, ``sendline``, ``before``,
``after``, ``match``, ``pexpect.EOF``/``pexpect.TIMEOUT`` in pattern lists) that reads from a
:class:`Transport`: a socket (QEMU's chardev), or a pyserial port (``socket://``, ``loop://``, a pty).

What it adds to pexpect:

- a timeout raises :class:`~pytest_jumpstarter.errors.ConsoleTimeout` carrying the last lines seen;
- the end of the stream is diagnosed by the owner (``on_eof``): a dead QEMU is reported as dead,
  with its exit status and stderr, not as a timeout;
- fatal patterns (``Kernel panic - not syncing``) fail a wait at once instead of at its deadline;
- everything read is teed into the device's :class:`~pytest_jumpstarter.driver.Transcript`;
- no sleep after each read (pexpect's ``delayafterread``), so round trips cost what the link costs.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import selectors
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pexpect
from pexpect.expect import Expecter, searcher_re
from pexpect.spawnbase import SpawnBase

from .errors import BoardPanic, ConsoleClosed, ConsoleTimeout, DriverError
from .waiting import Deadline

#: Patterns that mean a Linux board is gone for good; waiting longer cannot help.
LINUX_FATAL_PATTERNS = (r"Kernel panic - not syncing[^\r\n]*",)


class Transport(Protocol):
    """A byte stream to a console.  ``write`` raises TimeoutError(what, seconds) if the other end stalls."""

    def read(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` bytes, as soon as any arrive; ``b""`` if none came in ``timeout``.

        Raises :class:`EOFError` once the stream has ended.
        """
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SocketTransport:
    """A connected stream socket (a QEMU unix-socket or TCP chardev)."""

    def __init__(self, sock: socket.socket, write_timeout: float = 30.0) -> None:
        self.sock, self.write_timeout = sock, write_timeout  # how long a write waits for the other end
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._writable = selectors.DefaultSelector()
        self._writable.register(sock, selectors.EVENT_WRITE)

    def read(self, size: int, timeout: float | None) -> bytes:
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            if not self._selector.select(timeout):
                return b""
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                return b""
            except OSError as exc:  # e.g. ECONNRESET from a QEMU that was killed
                raise EOFError(str(exc)) from exc
        except OSError as exc:
            raise EOFError(str(exc)) from exc
        if not data:
            raise EOFError("the other end closed the connection")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                if not self._writable.select(self.write_timeout):
                    what = f"the other end to take {len(view)} more bytes"
                    raise TimeoutError(what, self.write_timeout) from None
                continue
            except OSError as exc:
                raise EOFError(str(exc)) from exc
            view = view[sent:]

    def close(self) -> None:
        self._selector.close()
        self._writable.close()
        self.sock.close()


class SerialTransport:
    """A pyserial port: ``serial.serial_for_url("socket://...")``, ``loop://``, or a tty path."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def read(self, size: int, timeout: float | None) -> bytes:
        import serial

        try:
            self.port.timeout = timeout
            first: bytes = self.port.read(1)
            if not first:
                return b""
            # The rest of what is already there, without waiting: timeout 0 makes pyserial non-blocking.
            self.port.timeout = 0
            rest: bytes = self.port.read(max(0, size - 1))
        except (serial.SerialException, OSError) as exc:
            raise EOFError(str(exc)) from exc
        return first + rest

    def write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise EOFError(str(exc)) from exc

    def close(self) -> None:
        self.port.close()


class Console(SpawnBase):  # type: ignore[misc]
    """A pexpect spawn over a :class:`Transport`, owned by a device.

    ``on_eof`` is called when the stream ends; it returns the exception that explains why (for a
    QEMU board: :class:`~pytest_jumpstarter.errors.DeviceExited` with stderr), or ``None``.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        device: str,
        timeout: float = 30.0,
        logfile_read: Any = None,
        fatal_patterns: Sequence[str] = (),
        on_eof: Callable[[], BaseException | None] | None = None,
        on_timeout: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            maxread=65536,
            searchwindowsize=None,
            encoding="utf-8",
            codec_errors="replace",
        )
        self.delayafterread = None
        self.transport = transport
        self.device = device
        self.logfile_read = logfile_read
        self.on_eof = on_eof
        #: Called when a wait times out: what the owner sees that explains the silence (a paused VM).
        self.on_timeout = on_timeout
        self._fatal = [re.compile(p) for p in fatal_patterns]
        self._tail = ""
        self._closed = False
        self.shell: LinuxShell | Any = LinuxShell(self)
        #: True while every byte sent has been taken by the board: nothing was sent since the last
        #: shell command whose end marker came back (a shell prints it only after reading the
        #: whole line).  A restore in place (``loadvm``) may then skip the console round trip.
        self.settled = True

    # --- pexpect's spawn interface -------------------------------------------------------------

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        if timeout == -1:
            timeout = self.timeout
        if self._closed:
            raise self._eof_error()
        try:
            data = self.transport.read(size, timeout)
        except EOFError:
            self.flag_eof = True
            raise self._eof_error() from None
        if not data:
            raise pexpect.TIMEOUT("Timeout exceeded.")
        text: str = self._decoder.decode(data, final=False)
        self._log(text, "read")
        self._tail = (self._tail + text)[-16384:]
        if self._fatal:
            # Scan the new text plus a little before it, so a pattern split across reads is seen.
            window = self._tail[-(len(text) + 200) :]
            for pattern in self._fatal:
                if m := pattern.search(window):
                    raise BoardPanic(self.device, m.group(0), self.tail())
        return text

    def send(self, s: str | bytes) -> int:
        if self._closed:
            raise self._eof_error()
        data = s.encode("utf-8") if isinstance(s, str) else s
        self._log(data.decode("utf-8", "replace"), "send")
        self.settled = False
        try:
            self.transport.write(data)
        except EOFError:
            self.flag_eof = True
            raise self._eof_error() from None
        except TimeoutError as exc:
            what, seconds = (exc.args[0], exc.args[1]) if len(exc.args) == 2 else (str(exc), None)
            raise ConsoleTimeout(self.device, what, seconds, self.tail()) from None
        return len(data)

    def sendline(self, s: str | bytes = "") -> int:
        # One write, not two: the line arrives whole, as a person's Enter would send it.
        line = s.encode("utf-8") if isinstance(s, str) else s
        linesep = self.linesep.encode("utf-8") if isinstance(self.linesep, str) else self.linesep
        return self.send(line + linesep)

    def expect_list(
        self,
        pattern_list: Any,
        timeout: float | None = -1,
        searchwindowsize: Any = -1,
        async_: bool = False,
        **kw: Any,
    ) -> Any:
        with self._diagnosed([getattr(p, "pattern", p) for p in pattern_list], timeout):
            width = _max_width(pattern_list)
            if width is not None and not async_ and not kw and searchwindowsize in (-1, None):
                expecter = _WindowedExpecter(self, searcher_re(pattern_list), width)
                return expecter.expect_loop(self.timeout if timeout == -1 else timeout)
            return super().expect_list(pattern_list, timeout, searchwindowsize, async_, **kw)

    def expect_exact(
        self,
        pattern_list: Any,
        timeout: float | None = -1,
        searchwindowsize: Any = -1,
        async_: bool = False,
        **kw: Any,
    ) -> Any:
        with self._diagnosed(pattern_list, timeout):
            return super().expect_exact(pattern_list, timeout, searchwindowsize, async_, **kw)

    @contextlib.contextmanager
    def _diagnosed(self, patterns: Any, timeout: float | None) -> Iterator[None]:
        """Turn pexpect's plain EOF and TIMEOUT into the owner's diagnosis and a timeout with the tail."""
        try:
            yield
        except pexpect.EOF as exc:
            # pexpect re-raises its own plain EOF; a dead QEMU must be reported as dead.
            if isinstance(exc, ConsoleClosed):
                raise
            raise self._eof_error() from None
        except pexpect.TIMEOUT as exc:
            if isinstance(exc, ConsoleTimeout):
                raise
            raise self._timeout_error(patterns, timeout) from None

    def isalive(self) -> bool:
        return not self._closed and not self.flag_eof

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()

    # --- conveniences ---------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        """Run ``command`` through this console's shell helper (Linux by default)."""
        result: RunResult = self.shell.run(command, timeout=timeout)
        return result

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the console showed, for error messages."""
        text = _ANSI.sub("", self._tail).replace("\r\n", "\n").replace("\r", "\n")
        return "\n".join(text.splitlines()[-lines:])

    def drain(self, quiet: float = 0.05, limit: float = 2.0) -> str:
        """Read until the board has been quiet for ``quiet`` seconds (at most ``limit`` in all)."""
        deadline = Deadline(limit, "the console to go quiet")
        got = []
        while not deadline.expired:
            try:
                got.append(self.read_nonblocking(self.maxread, quiet))
            except pexpect.TIMEOUT:
                break
        # Everything unmatched so far goes: pexpect keeps it in two places, and its next expect
        # searches ``_before`` (all text since the last match) when that is the longer one.
        stale: str = self._before.getvalue()  # type: ignore[has-type]
        self.buffer = ""
        self._before = self.buffer_type()
        return stale + "".join(got)

    def _timeout_error(self, patterns: Any, timeout: float | None) -> ConsoleTimeout:
        if timeout == -1:
            timeout = self.timeout
        if isinstance(patterns, str | bytes) or not isinstance(patterns, list | tuple):
            patterns = [patterns]
        shown = " or ".join(repr(p) for p in patterns if p not in (pexpect.TIMEOUT, pexpect.EOF))
        return ConsoleTimeout(self.device, shown or "output", timeout, self.tail(), self.diagnosis())

    def diagnosis(self) -> str:
        """What the owner found that explains a silent console ("" if nothing, or no owner to ask)."""
        return (self.on_timeout() or "") if self.on_timeout is not None else ""

    def _eof_error(self) -> BaseException:
        if self.on_eof is not None:
            reason = self.on_eof()
            if reason is not None:
                return reason
        return ConsoleClosed(self.device, f"console closed\nlast console lines:\n{self.tail()}")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: Characters searched before the earliest place a new match can start (for lookarounds, ``\b``, ``^``).
_CONTEXT = 256
#: Longer patterns are searched the pexpect way.
_WIDTH_LIMIT = 1 << 16


@functools.lru_cache(maxsize=512)
def _pattern_width(pattern: str | bytes, flags: int) -> int | None:
    """The longest text ``pattern`` can match, or None if unbounded (``.*``) or unknown."""
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # Python 3.10
        import sre_parse
    try:
        _, high = sre_parse.parse(pattern, flags).getwidth()
    except Exception:
        return None
    return int(high) if high < _WIDTH_LIMIT else None


def _max_width(pattern_list: Any) -> int | None:
    widths = []
    for p in pattern_list:
        if p is pexpect.EOF or p is pexpect.TIMEOUT:
            continue
        width = _pattern_width(p.pattern, p.flags) if hasattr(p, "pattern") else None
        if width is None:
            return None
        widths.append(width)
    return max(widths) if widths else None


class _WindowedExpecter(Expecter):  # type: ignore[misc]
    """pexpect's Expecter for patterns of bounded length, without its quadratic cost on long output.

    pexpect copies and re-searches the whole buffer after every read.  When every pattern matches at
    most ``width`` characters, and the buffer had no match before the fresh data came, a new match
    must end in the fresh data, so it starts at most ``width`` before it: only that tail is searched
    (with ``_CONTEXT`` more characters, seen through ``re``'s ``pos`` so that ``^``, ``\\b`` and
    lookarounds behave as on the whole buffer).  ``before``, ``after``, ``match`` are pexpect's.
    """

    def __init__(self, spawn: Any, searcher: Any, width: int) -> None:
        super().__init__(spawn, searcher, None)
        self.width = width

    def new_data(self, data: str) -> int | None:
        spawn = self.spawn
        spawn._before.write(data)
        old_len = spawn._buffer.tell()
        spawn._buffer.write(data)
        first = max(0, old_len - self.width - _CONTEXT)  # the earliest start a new match can have
        start = max(0, first - _CONTEXT)
        spawn._buffer.seek(start)
        window = spawn._buffer.read()
        best: tuple[int, re.Match[str]] | None = None
        for index, regex in self.searcher._searches:
            m = regex.search(window, first - start)
            if m is not None and (best is None or m.start() < best[1].start()):
                best = (index, m)
        if best is None:
            keep = self.width + 3 * _CONTEXT
            if len(window) > keep:
                spawn._buffer = spawn.buffer_type()
                spawn._buffer.write(window[-keep:])
            return None
        index, m = best
        everything = spawn._before.getvalue()
        spawn.before = everything[: len(everything) - (len(window) - m.start())]
        spawn.after = m.group(0)
        spawn.match = m
        spawn.match_index = index
        spawn._buffer = spawn.buffer_type()
        spawn._buffer.write(window[m.end() :])
        spawn._before = spawn.buffer_type()
        spawn._before.write(window[m.end() :])
        self.searcher.start, self.searcher.end, self.searcher.match = m.start(), m.end(), m
        return index


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


class LinuxShell:
    """Runs commands on a Linux shell (BusyBox ash included) and finds their output by markers.

    ash sends ``ESC[6n`` before each prompt and re-wraps long echoed command lines, so neither the
    prompt nor the echo can be matched reliably.  The command is bracketed by ``printf`` calls whose
    output contains a byte (0x1e) that the echo shows only as the four characters ``\\036``.
    """

    _ids = itertools.count(1)

    def __init__(self, console: Console) -> None:
        self.console = console

    def run(self, command: str, timeout: float | None = None) -> RunResult:
        console = self.console
        token = f"{next(self._ids)}x{int(time.monotonic() * 1000) % 100000}"
        console.sendline(
            f"printf '\\036B{token}\\036\\n'; {{ {command}\n}}; printf '\\036E{token}:%d\\036\\n' $?"
        )
        # Two bounded patterns rather than one spanning the output: a long output is then searched
        # in a window (see _WindowedExpecter), not re-searched whole after every read.
        begin = re.compile(f"\x1eB{token}\x1e\r?\n")
        end = re.compile(f"\x1eE{token}:(-?\\d+)\x1e")
        start = time.monotonic()
        deadline = start + (console.timeout if timeout is None else timeout)
        try:
            console.expect(begin, timeout=max(0.0, deadline - time.monotonic()))
            console.expect(end, timeout=max(0.0, deadline - time.monotonic()))
        except ConsoleTimeout as exc:
            raise ConsoleTimeout(
                console.device,
                f"the end of command {command!r}",
                deadline - start,
                console.tail(),
                exc.diagnosis,
            ) from exc
        output = _ANSI.sub("", console.before).replace("\r\n", "\n").rstrip("\n")
        console.settled = True
        return RunResult(command, output, int(console.match.group(1)), time.monotonic() - start)
