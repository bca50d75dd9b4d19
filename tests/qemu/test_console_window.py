"""Console searches long output in a window, with pexpect's results (no quadratic re-search)."""

from __future__ import annotations

import re
import socket
import threading

import pexpect
import pytest
from pexpect.expect import searcher_re

from pytest_jumpstarter.console import Console, SocketTransport, _max_width, _WindowedExpecter


def feed(chunks: list[str]) -> Console:
    """A Console reading ``chunks`` from a real socket pair, sent by a thread."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        with theirs:
            for chunk in chunks:
                theirs.sendall(chunk.encode())

    threading.Thread(target=send, daemon=True).start()
    return Console(SocketTransport(ours), device="test", timeout=20)


@pytest.mark.parametrize(
    ("pattern", "bounded"),
    [
        ("END\r\n", True),
        (r"[#$] ", True),
        (r"(?:^|\n)[^\r\n]{0,80}# ", True),
        (r"a.*b", False),
        (r"x+", False),
    ],
)
def test_pattern_width_decides_the_window(pattern: str, bounded: bool) -> None:
    assert (_max_width([re.compile(pattern)]) is not None) == bounded


def test_before_after_and_groups_match_pexpect_semantics() -> None:
    lines = [f"line {i} " + "x" * 50 + "\r\n" for i in range(20000)]
    chunks = [*["".join(lines[i : i + 37]) for i in range(0, len(lines), 37)], "tail MARK-42 rest\r\n# "]
    console = feed(chunks)
    console.expect(r"MARK-(\d+)")
    assert console.match.group(1) == "42"
    assert console.after == "MARK-42"
    assert console.before == "".join(lines) + "tail "
    console.expect(r"(?<=rest\r\n)# ")  # a lookbehind reaching into the previous read still works
    assert console.before == " rest\r\n"
    console.close()


def test_caret_does_not_match_in_the_middle_of_long_output() -> None:
    chunks = ["z" * 5000 for _ in range(50)] + ["\nprompt# "]
    console = feed(chunks)
    console.expect(r"(?:^|\n)[a-z]{0,20}# ")
    assert console.after == "\nprompt# "
    console.close()


def test_a_match_split_across_reads_is_found() -> None:
    chunks = ["a" * 70000, "EN", "D\r", "\n"]
    console = feed(chunks)
    console.expect("END\r\n")
    assert len(console.before) == 70000
    console.close()


def test_the_search_buffer_stays_bounded_on_long_output() -> None:
    """8 MB without a match keeps only a short tail to search: pexpect would re-search all of it each read."""
    ours, theirs = socket.socketpair()
    console = Console(SocketTransport(ours), device="test")
    expecter = _WindowedExpecter(console, searcher_re(console.compile_pattern_list("DONE\r\n")), 6)
    chunk = ("0123456789abcdef" * 256)[:4000]
    searched = []
    for _ in range(2000):
        assert expecter.new_data(chunk) is None
        searched.append(console._buffer.tell())
    assert max(searched) < 4000 + 6 + 3 * 256 + 1
    assert expecter.new_data("DONE\r\n") == 0
    assert len(console.before) == 8_000_000
    console.close()
    theirs.close()


def test_drain_forgets_text_left_after_the_last_match() -> None:
    """A prompt that followed the last match must not satisfy the next expect after drain()."""
    ours, theirs = socket.socketpair()
    console = Console(SocketTransport(ours), device="test")
    theirs.sendall(b"MARK-1\r\nold-prompt# ")
    console.expect("MARK-1")
    assert "old-prompt# " in console.drain(quiet=0.2)
    with pytest.raises(pexpect.TIMEOUT):
        console.expect("prompt# ", timeout=0.2)
    console.close()
    theirs.close()
