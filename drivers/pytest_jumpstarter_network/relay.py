"""A TCP/UDP/Unix relay: one epoll event loop on one thread, for every forward of a tunnel.

Each accepted connection is paired with a non-blocking connection to the upstream address, and
bytes are copied both ways through one shared 1 MiB buffer; only bytes the other side could not take
yet are kept (and reading from that side pauses until they are written: back pressure, no unbounded
buffering).  End of stream is propagated as ``shutdown(SHUT_WR)`` on the other side, so half-closed
connections work in both directions; a reset is propagated as a reset.

While an :class:`~.impairment.Impairment` is set, data read is held in a per-direction delay queue
and written when its delivery time comes (see :mod:`.impairment` for the model).

All socket work happens on the loop thread; the public methods hand work to it and wait (with a
deadline) for the answer, so callers never share sockets with the loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .impairment import Impairment, Link

log = logging.getLogger("pytest_jumpstarter.network")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
#: Copy buffer shared by every connection (the loop is single threaded).
_BUFFER_SIZE = 1 << 20
#: TCP data read per chunk while impaired without segment shaping.
_IMPAIRED_CHUNK = 64 * 1024
#: A typical Ethernet TCP segment; loss and rate act per segment of this size.
_SEGMENT = 1448
#: Bytes one direction may hold in its delay queue before reading from its source pauses.
_DELAY_WINDOW = 1 << 20
#: A UDP client that sent nothing for this long loses its upstream socket.
_UDP_IDLE = 60.0
#: How many outcomes of accepted connections a forward remembers for :meth:`Relay.wait_outcome`.
_OUTCOMES_KEPT = 4096


@dataclass(frozen=True)
class Address:
    """A socket address with its family: ``Address(AF_INET, ("10.0.0.2", 80))`` or a Unix path."""

    family: int
    address: Any

    @classmethod
    def inet(cls, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return cls(family, (host, port))

    @classmethod
    def unix(cls, path: str | os.PathLike[str]) -> Address:
        return cls(socket.AF_UNIX, os.fspath(path))

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.address}"
        host, port = self.address[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


class Forward:
    """One listening endpoint of a relay and where its traffic goes."""

    def __init__(self, kind: str, listen: Address, upstream: Address, label: str) -> None:
        #: ``"tcp"`` (stream, TCP or Unix listener) or ``"udp"``.
        self.kind = kind
        #: The bound address (the real port, if 0 was asked for).
        self.listen = listen
        self.upstream = upstream
        #: What the upstream is, for messages: ``board 'qemu_vm' (10.0.0.2) port 80``.
        self.label = label
        self.closed = False
        self._outcomes: collections.OrderedDict[Any, str | None] = collections.OrderedDict()
        self._cond = threading.Condition()

    def _record(self, client: Any, error: str | None) -> None:
        with self._cond:
            self._outcomes[client] = error
            while len(self._outcomes) > _OUTCOMES_KEPT:
                self._outcomes.popitem(last=False)
            self._cond.notify_all()

    def wait_outcome(self, client: Any, timeout: float) -> str | None:
        """Wait until the relay connected (``None``) or failed to connect (the reason) for ``client``.

        ``client`` is the local address of the test's socket (the relay's peer address).
        Raises :class:`TimeoutError` if neither happened in ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: client in self._outcomes or self.closed, timeout):
                raise TimeoutError(client)
            if client not in self._outcomes:
                return "the forward was closed"
            return self._outcomes.pop(client)

    def __repr__(self) -> str:
        return f"<Forward {self.kind} {self.listen} -> {self.upstream} ({self.label})>"


class Relay:
    """The event loop that carries every forward of one tunnel."""

    def __init__(self, name: str, connect_timeout: float = 5.0) -> None:
        self.name = name
        self.connect_timeout = connect_timeout
        #: Unexpected exceptions raised inside the loop (bugs), for the owner to report.
        self.errors: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _READ, self._on_wake)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._buf = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._impairment: Impairment | None = None
        self._links: dict[str, Link] = {}
        self._forwards: dict[Forward, _Listener] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"relay {name}", daemon=True)
        self._thread.start()

    # -- public API (any thread) -------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def impairment(self) -> Impairment | None:
        return self._impairment

    def add(self, kind: str, listen: Address, upstream: Address, label: str, backlog: int = 1024) -> Forward:
        """Listen on ``listen`` (port 0: any free port) and relay to ``upstream``."""
        stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        sock = socket.socket(listen.family, stype)
        try:
            if listen.family != socket.AF_UNIX and kind != "udp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(listen.address)
            if kind != "udp":
                sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        fwd = Forward(kind, Address(listen.family, sock.getsockname()), upstream, label)
        try:
            self._call(lambda: self._start_listener(fwd, sock))
        except BaseException:
            sock.close()
            raise
        return fwd

    def remove(self, fwd: Forward) -> None:
        """Close the forward's listener and every connection through it (the peers see a reset)."""
        if fwd.closed or not self.alive:
            return
        self._call(lambda: self._stop_listener(fwd))

    def set_impairment(self, impairment: Impairment | None) -> None:
        """Impair the traffic of every forward from now on (``None``: a clean link again)."""

        def apply() -> None:
            self._impairment = impairment
            self._links = (
                {d: Link.make(impairment, d) for d in ("up", "down")} if impairment is not None else {}
            )

        self._call(apply)

    def close(self, timeout: float = 5.0) -> None:
        """Close every forward and connection and end the loop thread."""
        if not self.alive:
            return
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.errors.append(f"the relay thread did not end within {timeout}s")

    # -- loop machinery ------------------------------------------------------------------------

    def _call(self, fn: Callable[[], None], timeout: float = 10.0) -> None:
        if threading.current_thread() is self._thread:
            fn()
            return
        if not self.alive:
            raise RuntimeError(f"relay {self.name} is closed")
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

        self._calls.append(run)
        self._wake()
        future.result(timeout)

    def _wake(self) -> None:
        # A full buffer means a wake-up is already pending; an error means the loop is closing.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _on_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def at(self, due: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop at monotonic time ``due``."""
        heapq.heappush(self._timers, (due, next(self._seq), fn))

    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    self._guard(key.data, mask)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self._timers)
                    self._guard(_TimerCall(fn), 0)
                while self._calls:
                    self._calls.popleft()()
        except BaseException as exc:  # the loop itself broke: say so, then clean up below
            self.errors.append(f"relay loop crashed: {exc!r}")
            log.exception("relay %s crashed", self.name)
        finally:
            for fwd in list(self._forwards):
                self._stop_listener(fwd)
            while self._calls:  # let waiting callers return instead of timing out
                self._calls.popleft()()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _guard(self, handler: Callable[[int], None], mask: int) -> None:
        try:
            handler(mask)
        except Exception as exc:
            # A bug in one connection's handling must not take the others down; the owner reports it.
            self.errors.append(f"{type(exc).__name__}: {exc}")
            log.exception("relay %s: handler failed", self.name)
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, _Side):
                owner.conn.abort()

    def _start_listener(self, fwd: Forward, sock: socket.socket) -> None:
        listener: _Listener = (
            _UdpListener(self, fwd, sock) if fwd.kind == "udp" else _StreamListener(self, fwd, sock)
        )
        self._forwards[fwd] = listener
        self._sel.register(sock, _READ, listener.on_event)

    def _stop_listener(self, fwd: Forward) -> None:
        listener = self._forwards.pop(fwd, None)
        if listener is not None:
            listener.close()
        with fwd._cond:
            fwd.closed = True
            fwd._cond.notify_all()

    def _register(self, sock: socket.socket, old: int, new: int, handler: Callable[[int], None]) -> None:
        if old == new:
            return
        if not old:
            self._sel.register(sock, new, handler)
        elif not new:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, new, handler)

    def _link(self, direction: str) -> Link | None:
        return self._links.get(direction)


class _TimerCall:
    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def __call__(self, mask: int) -> None:
        self.fn()


class _Listener:
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


class _StreamListener(_Listener):
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


class _Side:
    """The selector handler of one socket of a connection."""

    def __init__(self, conn: _Conn, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock
        self.mask = 0

    def on_event(self, mask: int) -> None:
        self.conn.on_event(self, mask)


class _Conn:
    """An accepted connection (``a``) and its upstream connection (``b``)."""

    def __init__(self, listener: _StreamListener, client: socket.socket, peer: Any) -> None:
        self.listener = listener
        self.relay = listener.relay
        self.peer = peer
        self.closed = False
        self.connecting = True
        listener.conns.add(self)
        fwd = listener.fwd
        client.setblocking(False)
        _nodelay(client)
        self.a = _Side(self, client)
        upstream = socket.socket(fwd.upstream.family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        self.b = _Side(self, upstream)
        self.up = _Flow(self, self.a, self.b, "up")
        self.down = _Flow(self, self.b, self.a, "down")
        err = upstream.connect_ex(fwd.upstream.address)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(err)
            return
        self.relay.at(time.monotonic() + self.relay.connect_timeout, self._connect_timed_out)
        self.update()

    def on_event(self, side: _Side, mask: int) -> None:
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

    def __init__(self, conn: _Conn, src: _Side, dst: _Side, direction: str) -> None:
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


class _UdpListener(_Listener):
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
    def __init__(self, listener: _UdpListener, client: Any) -> None:
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


def _nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
