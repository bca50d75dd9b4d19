"""Progress of boots, flashes and lease waits on the terminal.

- On a tty (``line``): one line per activity, rewritten in place, its elapsed time ticking
  (``jumpstarter: qemu_vm: starting ... 3s: <the driver's latest progress>``), ending as
  ``jumpstarter: qemu_vm: starting: done in 4.2s``.
- Without one (``lines``, CI logs): plain lines: an activity's first and last, a driver's progress at
  most one per device every ``interval`` seconds, and a ``... 20s`` line when a long activity has said
  nothing for ``quiet`` seconds.
- Nothing with ``-q`` or ``--jumpstarter-progress=off``.  Notices (:meth:`TerminalProgress.tell`, e.g.
  who holds a board we wait for) are shown whatever the mode.

Each line names its device once.  In an xdist worker, whose terminal nobody sees, lines go to stderr
(which xdist shows).  While an activity lasts the main thread is busy in a driver's start or flash, so
the ticks come from a thread of the activity's own; every write (ticks, progress, notices) takes one
lock, and the activity ends (its thread joined) before the test phase does.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

MODES = ("auto", "line", "lines", "off")


@dataclass(eq=False)
class _Activity:
    device: str
    what: str
    start: float
    #: Shown only once it has lasted a second (a lease wait that usually does not wait at all).
    quiet: bool
    latest: str = ""
    #: What its line shows now ("": nothing shown yet).
    shown: str = ""


class TerminalProgress:
    #: How often the elapsed time of an activity is redrawn on a tty.
    tick = 0.5
    #: Without a tty: a line after this long without any from a running activity.
    quiet = 10.0

    def __init__(self, config: pytest.Config, mode: str | None = None, interval: float = 2.0) -> None:
        self.config = config
        self.interval = interval
        self.clock: Callable[[], float] = time.monotonic
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        worker = hasattr(config, "workerinput")
        if mode in (None, "auto"):
            if config.get_verbosity() < 0:
                mode = "off"
            else:
                mode = "line" if reporter is not None and getattr(reporter, "isatty", False) else "lines"
        if mode == "line" and (reporter is None or worker):
            mode = "lines"
        self.mode = mode
        self._reporter = reporter if not worker else None
        self._last: dict[str, float] = {}
        self._activities: list[_Activity] = []
        #: The device whose line is open (tty mode): the next write of another device ends it.
        self._open: str | None = None
        self._lock = threading.RLock()

    def __call__(self, device: str, text: str) -> None:
        """A progress line from ``device`` (a driver's ``ctx.progress``): rate limited."""
        if self.mode == "off":
            return
        with self._lock:
            now = self.clock()
            running = self._running(device)
            if running is not None:
                running.latest = _without(device, text)
                if self.mode == "line":
                    self._draw(running)
                    return
            if self.mode == "lines" and now - self._last.get(device, -1e9) < self.interval:
                return
            self._last[device] = now
            self._line(device, text)

    @contextlib.contextmanager
    def activity(self, device: str, what: str, quiet: bool = False) -> Iterator[None]:
        """``device: what ...`` now (``quiet``: once it has lasted a second), its elapsed time ticking,
        and ``device: what: done in 2.1s`` (or ``failed``) at the end."""
        if self.mode == "off":
            yield
            return
        with self._lock:
            outer = self._running(device)
            if outer is not None:
                # Part of a larger one (a boot inside "starting"): said in that line, not a line of its own.
                outer.latest = what
        if outer is not None:
            yield
            return
        running = _Activity(device, what, self.clock(), quiet)
        with self._lock:
            self._activities.append(running)
            self._last[device] = running.start
            if not quiet:
                self._draw(running)
        stop = threading.Event()
        ticker = threading.Thread(target=self._ticks, args=(running, stop), daemon=True)
        ticker.name = f"jumpstarter progress {device}"
        ticker.start()
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            stop.set()
            ticker.join()
            with self._lock:
                self._activities.remove(running)
                if running.shown:
                    text = f"{what}: {outcome} in {self.clock() - running.start:.1f}s"
                    if self.mode == "line" and self._open == device:
                        self._rewrite(device, text)
                        self._close()
                    else:
                        self._line(device, text)

    def tell(self, text: str) -> None:
        """A notice shown now whatever the mode, even from inside a test's setup (capture is paused)."""
        with self._lock, self._terminal():
            reporter = self._reporter
            if reporter is None:
                sys.stderr.write(f"jumpstarter: {text}\n")
                sys.stderr.flush()
                return
            self._close()
            tw = getattr(reporter, "_tw", None)
            if tw is not None and tw.width_of_current_line:
                reporter.write("\n")  # after a test's result dot: write_line only knows its own lines
            reporter.write_line(f"jumpstarter: {text}", yellow=True)

    # --- drawing (with the lock held) -------------------------------------------------------------

    def _ticks(self, running: _Activity, stop: threading.Event) -> None:
        period = self.tick if self.mode == "line" else min(self.quiet, 1.0)
        while not stop.wait(period):
            with self._lock:
                now = self.clock()
                if now - running.start < 1.0 or stop.is_set():
                    continue
                if self.mode == "line":
                    if self._activities and self._activities[-1] is running:  # the innermost one shows
                        self._draw(running)
                elif now - self._last.get(running.device, -1e9) >= self.quiet:
                    self._last[running.device] = now
                    self._draw(running)

    def _draw(self, running: _Activity) -> None:
        elapsed = self.clock() - running.start
        text = f"{running.what} ... {elapsed:.0f}s" if elapsed >= 1.0 else f"{running.what} ..."
        if running.latest:
            text += f": {running.latest}"
        if running.shown == text:
            return  # a tick within the same second
        running.shown = text
        if self.mode == "line":
            self._rewrite(running.device, text)
        else:
            self._line(running.device, text)

    def _rewrite(self, device: str, text: str) -> None:
        """The open line of ``device`` shows ``text`` (opened if need be): tty mode."""
        reporter = self._reporter
        assert reporter is not None
        with self._terminal():
            if self._open == device:
                reporter.rewrite(_full(device, text), erase=True)
            else:
                self._close()
                reporter.ensure_newline()
                reporter.write(_full(device, text))
                self._open = device
            reporter.flush()

    def _line(self, device: str, text: str) -> None:
        """A line of its own."""
        with self._terminal():
            reporter = self._reporter
            if reporter is None:
                sys.stderr.write(_full(device, text) + "\n")
                sys.stderr.flush()
            else:
                self._close()
                reporter.write_line(_full(device, text))

    def _close(self) -> None:
        if self._open is not None and self._reporter is not None:
            with self._terminal():
                self._reporter.write("\n")
                self._reporter.flush()
            self._open = None

    def _running(self, device: str) -> _Activity | None:
        return next((a for a in reversed(self._activities) if a.device == device), None)

    @contextlib.contextmanager
    def _terminal(self) -> Iterator[None]:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            yield


def _without(device: str, text: str) -> str:
    """A driver's text without its leading device name (``qemu_vm: ready`` -> ``ready``): it is said once."""
    for sep in (": ", " "):
        if text.startswith(device + sep):
            return text[len(device) + len(sep) :]
    return text


def _full(device: str, text: str) -> str:
    # Drivers often name themselves already ("qemu_vm (qemu-disk) image -> disk: 40%").
    return f"jumpstarter: {text if text.startswith(device) else f'{device}: {text}'}"
