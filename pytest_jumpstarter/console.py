"""A pexpect-compatible console over any byte stream.

:class:`Console` is a real ``pexpect`` spawn (``expect``, ``expect_exact``, ``sendline``, ``before``,
``after``, ``match``, ``pexpect.EOF``/``pexpect.TIMEOUT`` in pattern lists) that reads from a
:class:`~pytest_jumpstarter.transports.Transport`: a socket (QEMU's chardev), or a pyserial port.

What it adds to pexpect:

- a timeout raises :class:`~pytest_jumpstarter.errors.ConsoleTimeout` carrying the last lines seen;
- the end of the stream is diagnosed by the owner (``on_eof``): a dead QEMU is reported as dead,
  with its exit status and stderr, not as a timeout;
- fatal patterns (:mod:`.fatal`: a kernel panic, U-Boot's ``resetting ...``) fail a wait at once, each
  occurrence once; inside a shell command the owner's ``watch`` (QEMU's RESET/SHUTDOWN events) too;
- everything read is teed into the device's :class:`~pytest_jumpstarter.driver.Transcript` and kept
  in :attr:`Console.boot_log`;
- no sleep after each read (pexpect's ``delayafterread``), so round trips cost what the link costs.

The shell helpers live apart: :mod:`.linux` (LinuxShell), :mod:`.uboot` (UBootShell), :mod:`.shell`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pexpect
from pexpect.expect import searcher_re
from pexpect.spawnbase import SpawnBase

from .errors import ConsoleClosed, ConsoleTimeout
from .expecter import _max_width, _WindowedExpecter
from .fatal import LINUX_FATAL_PATTERNS, FatalPattern, FatalScanner
from .linux import LinuxShell
from .shell import ANSI as _ANSI
from .shell import RunResult
from .timeouts import cap
from .transports import SerialTransport, SocketTransport, Transport
from .waiting import Deadline

__all__ = [
    "LINUX_FATAL_PATTERNS",
    "Console",
    "LinuxShell",
    "RunResult",
    "SerialTransport",
    "SocketTransport",
    "Transport",
    "_WindowedExpecter",
    "_max_width",
]

#: How much of everything read :attr:`Console.boot_log` keeps (a long run's output is in the transcript).
BOOT_LOG_LIMIT = 8 * 1024 * 1024
#: While a watch is on, reads wait at most this long before asking it again.
WATCH_INTERVAL = 0.05


class Console(SpawnBase):  # type: ignore[misc]
    """A pexpect spawn over a :class:`Transport`, owned by a device.

    ``on_eof`` is called when the stream ends; it returns the exception that explains why (for a
    QEMU board: :class:`~pytest_jumpstarter.errors.DeviceExited` with stderr), or ``None``.
    ``watch`` is asked, while a shell command runs (:meth:`watched`), whether something outside the
    stream ended the wait (a QEMU board: a RESET or SHUTDOWN event); it returns that error or ``None``.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        device: str,
        timeout: float = 30.0,
        logfile_read: Any = None,
        fatal_patterns: Sequence[str | FatalPattern] = (),
        on_eof: Callable[[], BaseException | None] | None = None,
        watch: Callable[[], BaseException | None] | None = None,
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
        self.fatal = FatalScanner(
            device, [p if isinstance(p, FatalPattern) else FatalPattern(p) for p in fatal_patterns]
        )
        self.watch = watch
        self._watching = 0
        #: Called when a wait times out: what the owner sees that explains the silence (a paused VM).
        self.on_timeout = on_timeout
        self._tail = ""
        self._log_chunks: list[str] = []
        self._log_size = 0
        self._closed = False
        #: True while every byte sent has been taken by the board: nothing was sent since the last
        #: shell command whose end marker came back (a shell prints it only after reading the
        #: whole line).  A restore in place (``loadvm``) may then skip the console round trip.
        self.settled = True
        self.shell: Any = LinuxShell(self)

    # --- pexpect's spawn interface -------------------------------------------------------------

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        if timeout == -1:
            timeout = self.timeout
        if self._closed:
            raise self._eof_error()
        data = self._read(size, timeout)
        if not data:
            raise pexpect.TIMEOUT("Timeout exceeded.")
        text: str = self._decoder.decode(data, final=False)
        self._log(text, "read")
        self._tail = (self._tail + text)[-16384:]
        if self._log_size < BOOT_LOG_LIMIT:
            self._log_chunks.append(text)
            self._log_size += len(text)
        if self.fatal and (error := self.fatal.feed(text, self.tail)) is not None:
            raise error
        return text

    def _read(self, size: int, timeout: float | None) -> bytes:
        """Read, asking the watch (if one is on) at least every WATCH_INTERVAL while nothing comes."""
        deadline = Deadline(timeout, "console output") if self._watching and self.watch else None
        while True:
            if deadline is not None and self.watch is not None and (error := self.watch()) is not None:
                raise error
            slice_ = timeout if deadline is None else min(WATCH_INTERVAL, deadline.remaining(WATCH_INTERVAL))
            try:
                data = self.transport.read(size, slice_)
            except EOFError:
                self.flag_eof = True
                raise self._eof_error() from None
            if data or deadline is None or deadline.expired:
                return data

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
        timeout = cap(self.timeout if timeout == -1 else timeout)  # within the test's pytest-timeout
        with self._diagnosed([getattr(p, "pattern", p) for p in pattern_list], timeout):
            width = _max_width(pattern_list)
            if width is not None and not async_ and not kw and searchwindowsize in (-1, None):
                expecter = _WindowedExpecter(self, searcher_re(pattern_list), width)
                return expecter.expect_loop(timeout)
            return super().expect_list(pattern_list, timeout, searchwindowsize, async_, **kw)

    def expect_exact(
        self,
        pattern_list: Any,
        timeout: float | None = -1,
        searchwindowsize: Any = -1,
        async_: bool = False,
        **kw: Any,
    ) -> Any:
        timeout = cap(self.timeout if timeout == -1 else timeout)
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

    def sendcontrol(self, char: str) -> int:
        """Send Ctrl-``char`` (``sendcontrol("c")`` is Ctrl-C)."""
        code = ord(char.lower()) - ord("a") + 1 if char.isalpha() else {"[": 27, "\\": 28, "]": 29}.get(char)
        if code is None or not 0 < code < 32:
            raise ValueError(f"sendcontrol: expected a letter or one of [ \\ ], found {char!r}")
        return self.send(bytes([code]))

    def interrupt(self, sequence: str = "\x03") -> None:
        """Send the interrupt sequence (Ctrl-C unless the board says otherwise); see Shell.interrupt."""
        self.send(sequence)

    @property
    def boot_log(self) -> str:
        """Everything the console showed since it opened (power-on), escapes removed (8 MiB at most)."""
        return _ANSI.sub("", "".join(self._log_chunks))

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """Within: the owner's ``watch`` can end any wait (a shell command's, not a raw expect's)."""
        self._watching += 1
        try:
            yield
        finally:
            self._watching -= 1

    @contextlib.contextmanager
    def fatal_paused(self) -> Iterator[None]:
        """Within: fatal patterns are not checked (a test that resets the board on purpose)."""
        enabled, self.fatal.enabled = self.fatal.enabled, False
        try:
            yield
        finally:
            self.fatal.enabled = enabled
            self.fatal.skip_seen()

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
        watching, self._watching = self._watching, 0  # draining is not a command's wait
        try:
            while not deadline.expired:
                try:
                    got.append(self.read_nonblocking(self.maxread, quiet))
                except pexpect.TIMEOUT:
                    break
        finally:
            self._watching = watching
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
