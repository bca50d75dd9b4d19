"""Progress of boots, flashes and lease waits on the terminal.

On a tty one line per activity, rewritten in place; without one (CI logs), plain lines, at most one
per device every ``interval`` seconds besides an activity's first and last; nothing with ``-q`` or
``--jumpstarter-progress=off``.  Each line names its device once.  In an xdist worker, whose
terminal nobody sees, lines go to stderr (which xdist shows).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import pytest

MODES = ("auto", "line", "lines", "off")


class TerminalProgress:
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
        #: The device whose line is open (tty mode): the next write of another device ends it.
        self._open: str | None = None

    def __call__(self, device: str, text: str) -> None:
        """A progress line from ``device`` (a driver's ``ctx.progress``): rate limited."""
        if self.mode == "off":
            return
        now = self.clock()
        if self.mode == "lines" and now - self._last.get(device, -1e9) < self.interval:
            return
        self._last[device] = now
        self._emit(device, text, final=False)

    @contextlib.contextmanager
    def activity(self, device: str, what: str) -> Iterator[None]:
        """``device: what ...`` now, ``device: what: done in 2.1s`` (or ``failed``) at the end."""
        start = self.clock()
        self._emit(device, f"{what} ...", final=False)
        self._last[device] = start
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            self._emit(device, f"{what}: {outcome} in {self.clock() - start:.1f}s", final=True)

    def _emit(self, device: str, text: str, final: bool) -> None:
        if self.mode == "off":
            return
        # Drivers often name themselves already ("qemu_vm (qemu-disk) image -> disk: 40%").
        line = f"jumpstarter: {text if text.startswith(device) else f'{device}: {text}'}"
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter = self._reporter
            if reporter is None:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            elif self.mode == "line" and self._open == device:
                reporter.rewrite(line, erase=True)
                if final:
                    self._close()
            elif self.mode == "line" and self._open is None and not final and text.endswith("..."):
                # The start of an activity: its line stays open for updates until it ends.
                reporter.ensure_newline()
                reporter.write(line)
                self._open = device
            else:
                self._close()
                reporter.write_line(line)

    def _close(self) -> None:
        if self._open is not None and self._reporter is not None:
            self._reporter.write("\n")
            self._reporter.flush()
            self._open = None
