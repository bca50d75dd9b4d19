"""One deadline helper: every wait in the project has a deadline and says what it waited for.

    deadline = Deadline(30.0, "QEMU connecting to the console socket")
    while not ready():
        if deadline.expired:
            raise deadline.error("qemu_vm", "QEMU pid 1234 is still running")
        sel.select(deadline.remaining())

``Deadline(None, ...)`` never expires (``remaining()`` is then ``None``, what ``select`` and
``Condition.wait`` take to mean "no limit").
"""

from __future__ import annotations

import time
from typing import overload

from .errors import DriverError, WaitTimeout, timeout_message


class Deadline:
    """A point in (monotonic) time by which ``what`` must have happened."""

    __slots__ = ("_end", "seconds", "what")

    def __init__(self, seconds: float | None, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self._end = None if seconds is None else time.monotonic() + max(0.0, seconds)

    @overload
    def remaining(self, cap: float) -> float: ...
    @overload
    def remaining(self, cap: None = None) -> float | None: ...
    def remaining(self, cap: float | None = None) -> float | None:
        """Seconds left (never negative), at most ``cap``; ``None`` for a deadline that never expires."""
        if self._end is None:
            return cap
        left = max(0.0, self._end - time.monotonic())
        return left if cap is None else min(left, cap)

    @property
    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def error(self, device: str, detail: str = "", cls: type[DriverError] | None = None) -> DriverError:
        """The error to raise when the deadline passed: it names what was awaited and for how long.

        ``cls`` makes a family's own error type (``cls(device, message)``) instead of :class:`WaitTimeout`.
        """
        seconds = 0.0 if self.seconds is None else self.seconds
        if cls is None:
            return WaitTimeout(device, self.what, seconds, detail)
        return cls(device, timeout_message(self.what, seconds, detail))

    def __repr__(self) -> str:
        return f"Deadline({self.seconds!r}, {self.what!r}, remaining={self.remaining()!r})"
