"""Stream forwards of a relay (TCP and Unix sockets): accepting, connecting upstream, copying both ways.

Each accepted connection is paired with a non-blocking connection to the upstream address; bytes are
copied through the relay's one shared buffer, and only what the other side could not take yet is kept
(reading from that side pauses until it is written).  End of stream is propagated as
``shutdown(SHUT_WR)``, a reset as a reset; while impaired, data waits in a per-direction delay queue.
All of it runs on the relay's loop thread.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from .endpoints import _DELAY_WINDOW, _IMPAIRED_CHUNK, _READ, _SEGMENT, _WRITE, Forward, log

if TYPE_CHECKING:
    from .relay import Relay


class Listener:
    def __init__(self, relay: Relay, fwd: Forward, sock: socket.socket) -> None:
        self.relay = relay
        self.fwd = fwd
        self.sock = sock

    def on_event(self, mask: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _close_listening_socket(self) -> None:
        self.relay._sel.unregister(self.sock)
        self.sock.close()
        if self.fwd.listen.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                os.unlink(self.fwd.listen.address)


class StreamListener(Listener):
    def __init__(self, relay: Relay, fwd: Forward, sock: socket.socket) -> None:
        super().__init__(relay, fwd, sock)
        self.conns: set[_Conn] = set()

    def on_event(self, mask: int) -> None:
        for _ in range(64):  # accept a burst, but let established connections run in between
            try:
                client, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the client will see its connect hang/fail
                log.warning("relay %s: accept on %s failed: %s", self.relay.name, self.fwd.listen, exc)
                return
            _Conn(self, client, peer)

    def close(self) -> None:
        self._close_listening_socket()
        for conn in list(self.conns):
            conn.abort()


class Side:
    """The selector handler of one socket of a connection."""

    def __init__(self, conn: _Conn, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock
        self.mask = 0

    def on_event(self, mask: int) -> None:
        self.conn.on_event(self, mask)


class _Conn:
    """An accepted connection (``a``) and its upstream connection (``b``)."""

    def __init__(self, listener: StreamListener, client: socket.socket, peer: Any) -> None:
        self.listener = listener
        self.relay = listener.relay
        self.peer = peer
        self.closed = False
        self.connecting = True
        listener.conns.add(self)
        fwd = listener.fwd
        client.setblocking(False)
        _nodelay(client)
        self.a = Side(self, client)
        upstream = socket.socket(fwd.upstream.family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        self.b = Side(self, upstream)
        self.up = _Flow(self, self.a, self.b, "up")
        self.down = _Flow(self, self.b, self.a, "down")
        err = upstream.connect_ex(fwd.upstream.address)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        self.relay.at(time.monotonic() + self.relay.connect_timeout, self._connect_timed_out)
        self.update()

    def on_event(self, side: Side, mask: int) -> None:
        if self.closed:
            return
        if self.connecting:
            err = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(err)
                return
            self.connecting = False
            _nodelay(self.b.sock)
            self.listener.fwd._record(self.peer, None)
        else:
            out, into = (self.up, self.down) if side is self.a else (self.down, self.up)
            if mask & _WRITE and not self.closed:
                into.flush()
            if mask & _READ and not self.closed:
                out.read()
        self.update()

    def update(self) -> None:
        """Ask the selector for what each side needs next; close when both directions are done."""
        if self.closed:
            return
        if self.up.done and self.down.done:
            self.close()
            return
        if self.connecting:
            a_mask, b_mask = 0, _WRITE
        else:
            a_mask = (_READ if self.up.wants_read else 0) | (_WRITE if self.down.wants_write else 0)
            b_mask = (_READ if self.down.wants_read else 0) | (_WRITE if self.up.wants_write else 0)
        for side, mask in ((self.a, a_mask), (self.b, b_mask)):
            self.relay._register(side.sock, side.mask, mask, side.on_event)
            side.mask = mask

    def _connect_failed(self, err: int) -> None:
        reason = f"{os.strerror(err)} (errno {errno.errorcode.get(err, err)})"
        self.listener.fwd._record(self.peer, reason)
        log.info("relay %s: connect to %s failed: %s", self.relay.name, self.listener.fwd.label, reason)
        self.abort()

    def _connect_timed_out(self) -> None:
        if self.connecting and not self.closed:
            self.listener.fwd._record(self.peer, f"no answer within {self.relay.connect_timeout}s")
            self.abort()

    def abort(self) -> None:
        """Close both sides with a reset (the peers see ECONNRESET, not a clean end of stream)."""
        if self.closed:
            return
        for side in (self.a, self.b):
            if side.sock.family != socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.a, self.b):
            if side.mask:
                self.relay._sel.unregister(side.sock)
                side.mask = 0
            side.sock.close()
        self.listener.conns.discard(self)


class _Flow:
    """One direction of a connection: read from ``src``, write to ``dst``."""

    def __init__(self, conn: _Conn, src: Side, dst: Side, direction: str) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.direction = direction
        self.ready: collections.deque[memoryview] = collections.deque()
        self.delayed: collections.deque[tuple[float, bytes]] = collections.deque()
        self.delayed_bytes = 0
        self.last_due = 0.0
        self.timer_armed = False
        self.eof = False
        self.shut = False

    @property
    def wants_read(self) -> bool:
        return not self.eof and not self.ready and self.delayed_bytes < _DELAY_WINDOW

    @property
    def wants_write(self) -> bool:
        return bool(self.ready)

    @property
    def done(self) -> bool:
        return self.shut

    def read(self) -> None:
        relay = self.conn.relay
        if relay._impairment is None and not self.delayed:
            self._read_direct(relay)
        else:
            self._read_delayed(relay)

    def _read_direct(self, relay: Relay) -> None:
        src, dst, view = self.src.sock, self.dst.sock, relay._view
        for _ in range(16):  # a few rounds per wake-up, then give other connections a turn
            try:
                n = src.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.conn.abort()
                return
            if n == 0:
                self._end_of_stream()
                return
            sent = 0
            try:
                sent = dst.send(view[:n])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.conn.abort()
                return
            if sent < n:
                self.ready.append(memoryview(bytes(view[sent:n])))
                return
            if n < len(view):
                return  # drained what was there

    def _read_delayed(self, relay: Relay) -> None:
        imp = relay._impairment
        size = _SEGMENT if imp is not None and imp.shapes_segments else _IMPAIRED_CHUNK
        now = time.monotonic()
        link = relay._link(self.direction)
        for _ in range(64):
            if self.delayed_bytes >= _DELAY_WINDOW:
                break
            try:
                data = self.src.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.conn.abort()
                return
            if not data:
                self._end_of_stream()  # after what is still queued, which the timer below delivers
                break
            due = now
            if link is not None:
                due = link.depart(now, len(data)) + link.delay() + link.retransmit_penalty()
            # A byte stream is never reordered: nothing is delivered before what was read before it.
            due = max(due, self.last_due)
            self.last_due = due
            self.delayed.append((due, data))
            self.delayed_bytes += len(data)
        self._arm()

    def _arm(self) -> None:
        if self.delayed and not self.timer_armed:
            self.timer_armed = True
            self.conn.relay.at(self.delayed[0][0], self._release)

    def _release(self) -> None:
        self.timer_armed = False
        if self.conn.closed:
            return
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, data = self.delayed.popleft()
            self.delayed_bytes -= len(data)
            self.ready.append(memoryview(data))
        self._arm()
        self.flush()
        self.conn.update()

    def flush(self) -> None:
        dst = self.dst.sock
        while self.ready:
            chunk = self.ready[0]
            try:
                sent = dst.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.conn.abort()
                return
            if sent < len(chunk):
                self.ready[0] = chunk[sent:]
                return
            self.ready.popleft()
        self._maybe_shut()

    def _end_of_stream(self) -> None:
        self.eof = True
        self._maybe_shut()

    def _maybe_shut(self) -> None:
        if self.eof and not self.ready and not self.delayed and not self.shut:
            self.shut = True
            # If the other side is already gone, its own read notices; nothing to do here.
            with contextlib.suppress(OSError):
                self.dst.sock.shutdown(socket.SHUT_WR)


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
