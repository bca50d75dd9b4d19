"""console.run() against random console output: whatever the board prints around and inside the
markers, in whatever pieces it arrives, run() returns the command's output and exit status, or
raises ConsoleTimeout when the end marker never comes; nothing else, and never a hang."""

from __future__ import annotations

import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_jumpstarter import Console
from pytest_jumpstarter.errors import ConsoleTimeout


class ScriptedBoard:
    """A Transport whose board answers each command with ``reply(token)``, split into ``cuts``."""

    def __init__(self, reply: object, cuts: list[int]) -> None:
        self.reply = reply
        self.cuts = cuts
        self.pending = b""
        self.closed = threading.Event()

    def write(self, data: bytes) -> None:
        if data == b"\x03":  # the interrupt after a timeout: the shell is idle already
            return
        sync = re.search(rb"\\0?36S(\w+)\\0?36", data)
        if sync:  # the marker that proves the prompt idle again (after an interrupt)
            self.pending += b"\x1eS" + sync.group(1) + b"\x1e\r\n"
            return
        # The short frame (``_jB T&&{ ...``: the shell has the marker functions) or the long one.
        token = re.search(rb"^_jB (\w+)&&", data) or re.search(rb"\\0?36B(\w+)\\0?36", data)
        assert token, data
        self.pending += self.reply(token.group(1).decode())  # type: ignore[operator]

    def read(self, size: int, timeout: float | None) -> bytes:
        if not self.pending:
            self.closed.wait(
                min(timeout or 0.0, 0.02)
            )  # nothing more will come: the wait is the board's silence
            return b""
        n = min(size, self.cuts.pop(0) if self.cuts else size, len(self.pending))
        chunk, self.pending = self.pending[:n], self.pending[n:]
        return chunk

    def close(self) -> None:
        self.closed.set()


def _pieces(*items: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(items), max_size=40).map("".join)


# Noise may hold stale markers of other commands, bare marker characters and BusyBox's ESC[6n.
noise = _pieces(*"ab $#\r\n\x1e\x00", "\x1b[6n", "\x1eB12x3\x1e", "\x1eE9x9:1\x1e", "é")
output = _pieces(*"xyz 09\n\t", "é", "€", "\x1b[0m", "\r\n", "line\n")
cuts = st.lists(st.integers(min_value=1, max_value=7), max_size=60)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=noise, out=output, after=noise, status=st.integers(min_value=0, max_value=255), pieces=cuts)
def test_run_returns_the_output_and_status_whatever_surrounds_them(
    before: str, out: str, after: str, status: int, pieces: list[int]
) -> None:
    def reply(token: str) -> bytes:
        return f"{before}\x1eB{token}\x1e\r\n{out}\x1eE{token}:{status}\x1e{after}".encode()

    console = Console(ScriptedBoard(reply, pieces), device="fuzz", timeout=5.0)
    result = console.run("some command")
    expected = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r\n", "\n")
    expected = expected.removesuffix("\n")  # exactly as printed, but for the end of its last line
    assert (result.output, result.status) == (expected, status)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=noise, out=output, pieces=cuts, begin=st.booleans())
def test_a_missing_end_marker_is_a_console_timeout_naming_the_command(
    before: str, out: str, pieces: list[int], begin: bool
) -> None:
    def reply(token: str) -> bytes:
        return (before + (f"\x1eB{token}\x1e\r\n" if begin else "") + out + f"\x1eE{token}").encode()

    console = Console(ScriptedBoard(reply, pieces), device="fuzz", timeout=5.0)
    with pytest.raises(ConsoleTimeout, match="the end of command 'some command'"):
        console.run("some command", timeout=0.05)
