"""Progress lines for long flashes, rate limited so a CI log gets a handful, not thousands."""

from __future__ import annotations

import time
from collections.abc import Callable

MIB = 1024 * 1024


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


class Progress:
    """Reports ``done`` of ``total`` bytes through ``emit``.

    A line goes out at most every ``interval`` seconds, or when another ``step`` of the total is done
    but never more often than every ``min_gap`` seconds; nothing at all for a flash shorter than
    ``min_gap``, apart from :meth:`finish`'s summary when the flash was long enough to have shown a line.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        what: str,
        total: int | None,
        *,
        interval: float = 5.0,
        step: float = 0.10,
        min_gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.what = what
        self.total = total
        self.interval = interval
        self.step = step
        self.min_gap = min_gap
        self.clock = clock
        self.start = clock()
        self._last = self.start
        self._next_fraction = step
        self.lines = 0

    def update(self, done: int, phase: str = "writing") -> None:
        now = self.clock()
        since = now - self._last
        if since < self.min_gap:
            return
        fraction = done / self.total if self.total else None
        due = since >= self.interval or (fraction is not None and fraction >= self._next_fraction)
        if not due:
            return
        self._last = now
        if fraction is not None:
            while self._next_fraction <= fraction:
                self._next_fraction += self.step
        self.lines += 1
        self.emit(self._line(done, now, phase))

    def finish(self, done: int, note: str = "") -> None:
        if self.lines == 0:
            return
        elapsed = self.clock() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        self.emit(f"{self.what}: done, {_mib(done)} in {elapsed:.1f}s ({_mib(rate)}/s){note}")

    def _line(self, done: int, now: float, phase: str) -> str:
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            left = (self.total - done) / rate if rate > 0 else float("inf")
            eta = f", {left:.0f}s left" if left != float("inf") else ""
            return (
                f"{self.what}: {phase} {_mib(done)}/{_mib(self.total)} ({100 * done / self.total:.0f}%), "
                f"{_mib(rate)}/s{eta}"
            )
        return f"{self.what}: {phase} {_mib(done)}, {_mib(rate)}/s"
