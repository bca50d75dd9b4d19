"""Which of a QEMU board's QMP RESET and SHUTDOWN events are news: the console watch of its shell commands.

A board restarting under a command ends the command at once (:class:`~pytest_jumpstarter.errors.BoardReset`),
but one restart is reported once: the events of a restart we asked for (``system_reset``, SeaBIOS's own
reset after it, a boot) are history once the board is ready, and a reset the console text already
reported (U-Boot's ``resetting ...``) is not reported again by its RESET event.  A SHUTDOWN after which
QEMU exits is a dead board, not a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pytest_jumpstarter import stages as _stages

if TYPE_CHECKING:
    from pytest_jumpstarter.console import Console

    from .qmp import Events


class RestartWatch:
    """The events of one QEMU process, read from ``mark`` on."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mark = 0  # events before this index were expected (or already diagnosed)
        self.resets_told = 0  # of the console's text-diagnosed resets, how many a RESET event matched

    def expected(self, events: Events, console: Console | None) -> None:
        """Everything so far was ours (a restart we made, a boot): history."""
        self.mark = len(events)
        if console is not None:
            self.resets_told = console.fatal.resets

    def news(
        self, events: Events, console: Console | None, exited: Callable[[], BaseException | None]
    ) -> BaseException | None:
        """The first restart not reported yet, as the error that ends a wait; ``exited()`` says whether
        (and how) QEMU died after a SHUTDOWN."""
        for index, event in enumerate(list(events)[self.mark :], self.mark):
            if event.get("event") not in ("RESET", "SHUTDOWN"):
                continue
            self.mark = index + 1
            if event["event"] == "RESET" and console is not None and console.fatal.resets > self.resets_told:
                self.resets_told += 1  # the console text ("resetting ...") already reported this reset
                continue
            if event["event"] == "SHUTDOWN" and (gone := exited()) is not None:
                return gone
            reason = event.get("data", {}).get("reason", "")
            shown = f"QMP event {event['event']}" + (f" ({reason})" if reason else "")
            if console is not None:
                # Its last words (printed before the reset) are readable now: this same reset, not news.
                with console.fatal_paused():
                    console.drain(quiet=0.0, limit=0.5)
                self.resets_told = console.fatal.resets
            return _stages.unexpected_restart(self.device, shown, console)
        return None
