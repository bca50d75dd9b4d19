"""Datagram forwards of a relay (UDP): one upstream socket per client, dropped after a quiet minute."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .endpoints import _READ, _UDP_IDLE, Forward
from .streams import Listener

if TYPE_CHECKING:
    from .relay import Relay


class UdpListener(Listener):
    """A UDP forward: one upstream socket per client address, so replies find their way back."""

    def __init__(self, relay: Relay, fwd: Forward, sock: socket.socket) -> None:
        super().__init__(relay, fwd, sock)
        self.peers: dict[Any, _UdpPeer] = {}
        self.queued = 0
        self.closed = False
        relay.at(time.monotonic() + _UDP_IDLE, self._expire)

    def on_event(self, mask: int) -> None:
        for _ in range(256):
            try:
                data, client = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP errors queued on the socket: not fatal for a datagram relay
            peer = self.peers.get(client)
            if peer is None:
                peer = self.peers[client] = _UdpPeer(self, client)
            peer.last_used = time.monotonic()
            self.deliver("up", data, peer.sock.send)

    def deliver(self, direction: str, data: bytes, send: Callable[[bytes], object]) -> None:
        link = self.relay._link(direction)
        if link is None:
            _send_datagram(send, data)
            return
        if link.lost() or self.queued >= link.impairment.queue_limit:
            return
        now = time.monotonic()
        due = link.depart(now, len(data)) + link.delay()
        self.queued += 1

        def release() -> None:
            self.queued -= 1
            if not self.closed:
                _send_datagram(send, data)

        self.relay.at(due, release)

    def _expire(self) -> None:
        if self.closed:
            return
        cutoff = time.monotonic() - _UDP_IDLE
        for client, peer in list(self.peers.items()):
            if peer.last_used < cutoff:
                peer.close()
                del self.peers[client]
        self.relay.at(time.monotonic() + _UDP_IDLE, self._expire)

    def close(self) -> None:
        self.closed = True
        self._close_listening_socket()
        for peer in self.peers.values():
            peer.close()
        self.peers.clear()


class _UdpPeer:
    def __init__(self, listener: UdpListener, client: Any) -> None:
        self.listener = listener
        self.client = client
        self.last_used = time.monotonic()
        fwd = listener.fwd
        self.sock = socket.socket(fwd.upstream.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(fwd.upstream.address)
        listener.relay._sel.register(self.sock, _READ, self.on_event)

    def on_event(self, mask: int) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ICMP port unreachable from the board: the datagram is simply lost
            self.listener.deliver("down", data, lambda d: self.listener.sock.sendto(d, self.client))

    def close(self) -> None:
        self.listener.relay._sel.unregister(self.sock)
        self.sock.close()


def _send_datagram(send: Callable[[bytes], object], data: bytes) -> None:
    # A full buffer or an ICMP error: UDP gives no promise, and neither does the relay.
    with contextlib.suppress(OSError):
        send(data)
