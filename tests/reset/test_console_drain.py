"""Console.drain forgets everything read so far: a stale prompt cannot satisfy the next wait."""

from __future__ import annotations

import socket

import pytest

from pytest_jumpstarter.console import Console, SocketTransport
from pytest_jumpstarter.errors import ConsoleTimeout


def test_a_drained_prompt_does_not_match_the_next_wait() -> None:
    ours, board = socket.socketpair()
    console = Console(SocketTransport(ours), device="board", timeout=1.0)
    try:
        # One read brings a command's end marker and, behind it, the prompt that follows it.
        board.sendall(b"END\r\nboard:~# ")
        console.expect("END")
        console.drain(quiet=0.0, limit=0.5)
        with pytest.raises(ConsoleTimeout):
            console.expect(r"board:~# ", timeout=0.3)
        board.sendall(b"\r\nfresh:~# ")
        console.expect(r"\S+:~# ", timeout=1.0)
        assert console.after == "fresh:~# "
    finally:
        console.close()
        board.close()
