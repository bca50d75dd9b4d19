"""Console text that means a wait cannot succeed: a panic, a crash, a board that reset under us.

A :class:`FatalScanner` looks at each piece of text as it is read; the first pattern found ends the
wait at once (:class:`~pytest_jumpstarter.errors.BoardPanic` or
:class:`~pytest_jumpstarter.errors.BoardReset`).  Text that was diagnosed once is never diagnosed
again: the scanner remembers where in the stream its last match ended, so the overlap it rescans
(for a pattern split across two reads) cannot find the same panic twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import BoardPanic, BoardReset, DriverError


@dataclass(frozen=True)
class FatalPattern:
    """A regex (bounded: at most one line) and what it means: the board ``panic``-ked or ``reset``."""

    regex: str
    kind: Literal["panic", "reset"] = "panic"


#: A Linux board is gone for good after any of these; waiting longer cannot help.
LINUX_FATAL: tuple[FatalPattern, ...] = (
    FatalPattern(r"Kernel panic - not syncing[^\r\n]{0,200}"),
    FatalPattern(r"Internal error: Oops[^\r\n]{0,200}"),
    FatalPattern(r"\bOops: [0-9a-f]{4} \[#\d+\][^\r\n]{0,200}"),
)
#: Kept for callers of the old name: the regexes of :data:`LINUX_FATAL`.
LINUX_FATAL_PATTERNS = tuple(p.regex for p in LINUX_FATAL)

#: U-Boot's own "this board is broken" and "I am resetting" lines, and an arm64 exception.
UBOOT_FATAL: tuple[FatalPattern, ...] = (
    FatalPattern(r"### ERROR ### Please RESET the board ###"),
    FatalPattern(r"\"Synchronous Abort\" handler[^\r\n]{0,200}"),
    FatalPattern(r"resetting \.\.\.", "reset"),
    FatalPattern(r"Resetting CPU[^\r\n]{0,80}", "reset"),
)

#: Characters before new text that are scanned again, so a pattern split across reads is seen.
OVERLAP = 200


class FatalScanner:
    """Finds fatal patterns in a stream of text, each occurrence once."""

    def __init__(self, device: str, patterns: Iterable[FatalPattern]) -> None:
        self.device = device
        self.patterns = [(re.compile(p.regex), p.kind) for p in patterns]
        #: Characters of the stream seen so far, and where the last diagnosed match ended.
        self.position = 0
        self.diagnosed_to = 0
        self._window = ""
        #: The last panic seen since the board last restarted (a kept board is then not handed out).
        self.last: BoardPanic | None = None
        #: Off while a caller expects the board to reset or print such text (``Console.fatal_paused``).
        self.enabled = True
        #: Resets diagnosed from console text (here, or by a shell: :meth:`note_reset`).  The board's
        #: QMP RESET event for the same reset comes just after its text; the board counts them off
        #: against this, so one reset is reported once.
        self.resets = 0

    def add(self, patterns: Iterable[FatalPattern]) -> None:
        """More patterns (a composite board's, on its console part's console), each one once."""
        known = {(regex.pattern, kind) for regex, kind in self.patterns}
        self.patterns += [(re.compile(p.regex), p.kind) for p in patterns if (p.regex, p.kind) not in known]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def feed(self, text: str, tail: Callable[[], str]) -> DriverError | None:
        """Scan ``text`` (just read); the error its first new fatal pattern means (with ``tail()``, the
        console's last lines, asked only then: it costs more than the scan), else None."""
        self._window = (self._window + text)[-(OVERLAP + len(text)) :]
        self.position += len(text)
        if not self.enabled or not self.patterns:
            return None
        start = self.position - len(self._window)  # stream position of the window's first character
        first = max(0, self.diagnosed_to - start)
        found: tuple[re.Match[str], str] | None = None
        for regex, kind in self.patterns:
            m = regex.search(self._window, first)
            if m is not None and (found is None or m.start() < found[0].start()):
                found = (m, kind)
        if found is None:
            return None
        m, meaning = found
        self.diagnosed_to = start + m.end()
        error: DriverError
        if meaning == "reset":
            self.resets += 1
            error = BoardReset(self.device, "", m.group(0).strip(), tail())
        else:
            error = self.last = BoardPanic(self.device, m.group(0).strip(), tail())
        return error

    def note_reset(self) -> None:
        """A shell saw the board restart (a new sign-on) and reported it."""
        self.resets += 1

    def skip_seen(self) -> None:
        """Treat everything read so far as diagnosed (after a restart the old text is history)."""
        self.diagnosed_to = self.position
        self.last = None
