"""SocketTransport over a real socket pair: a full send buffer is waited out on the socket itself."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_jumpstarter import Console, ConsoleTimeout, SocketTransport
from pytest_jumpstarter import transports as console_module


class RecordingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A real selector that records, for each wait, what it was waiting for."""

    waits: list[tuple[set[tuple[int, int]], float | None]] = []
    waited = threading.Event()

    def select(self, timeout: float | None = None) -> Any:
        watched = {(key.fd, key.events) for key in self.get_map().values()}
        RecordingSelector.waits.append((watched, timeout))
        RecordingSelector.waited.set()
        return super().select(timeout)


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[socket.socket, socket.socket]]:
    monkeypatch.setattr(console_module.selectors, "DefaultSelector", RecordingSelector)
    RecordingSelector.waits = []
    RecordingSelector.waited = threading.Event()
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def test_a_write_into_a_full_socket_waits_until_the_socket_is_writable(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    transport = SocketTransport(ours)
    data = bytes(range(256)) * 4096  # 1 MiB: many times what the socket buffers hold
    received = bytearray()

    def reader() -> None:
        # Reads only once the writer has had to wait: the buffer is full by then.
        if RecordingSelector.waited.wait(30):
            theirs.settimeout(30)
            while len(received) < len(data) and (chunk := theirs.recv(65536)):
                received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    transport.write(data)
    thread.join(30)
    assert bytes(received) == data
    assert RecordingSelector.waits, "the socket buffer never filled: the test did not test the wait"
    # Every wait was on this socket becoming writable (a wait on nothing is a sleep), with a deadline.
    for watched, timeout in RecordingSelector.waits:
        assert watched == {(ours.fileno(), selectors.EVENT_WRITE)}
        assert timeout is not None and timeout > 0


def test_a_console_whose_other_end_takes_nothing_times_out_saying_so(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _theirs = pair
    transport = SocketTransport(ours, write_timeout=0.2)
    console = Console(transport, device="uart0")
    with pytest.raises(ConsoleTimeout) as info:
        console.send(bytes(1024 * 1024))
    message = str(info.value)
    assert "device 'uart0'" in message
    assert "timed out after 0.2s waiting for the other end to take" in message
    console.close()
