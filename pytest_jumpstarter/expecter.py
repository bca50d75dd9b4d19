"""pexpect's Expecter for patterns of bounded length, searched in a window instead of the whole buffer."""

from __future__ import annotations

import functools
import re
from typing import Any

import pexpect
from pexpect.expect import Expecter

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
