"""Keeping secret values out of everything shown or stored: terminal, reports, log files, messages."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"


class Redactor:
    """Replaces every secret value with ``***`` (longest first, so one secret inside another is covered).

    Text that arrives in pieces (console reads) goes through :meth:`split`, which holds back the end
    of each piece that could be the start of a secret, so a secret split across two reads is still
    masked.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = sorted({v for v in values if v}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self.values)) if self.values else None

    def __bool__(self) -> bool:
        return bool(self.values)

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def split(self, text: str) -> tuple[str, str]:
        """``(redacted, rest)``: ``text`` redacted up to where a secret could still continue, and the
        raw rest, to be put in front of the next piece (or redacted with ``self(rest)`` at the end).

        The rest is at most one character shorter than the longest secret: a secret not complete in
        ``text`` starts inside it.
        """
        if self._pattern is None:
            return text, ""
        cut = len(text) - (len(self.values[0]) - 1)
        out: list[str] = []
        pos = 0
        for match in self._pattern.finditer(text):
            if match.start() >= cut:
                break
            out += (text[pos : match.start()], MASK)
            pos = match.end()
        cut = max(cut, pos)
        out.append(text[pos:cut])
        return "".join(out), text[cut:]
