"""A TCP/UDP/Unix relay: one epoll event loop on one thread, for every forward of a tunnel.

Each accepted connection is paired with a non-blocking connection to the upstream address, and
bytes are copied both ways through one shared 1 MiB buffer; only bytes the other side could not take
yet are kept (and reading from that side pauses until they are written: back pressure, no unbounded
buffering).  End of stream is propagated as ``shutdown(SHUT_WR)`` on the other side, so half-closed
connections work in both directions; a reset is propagated as a reset.

While an :class:`~.impairment.Impairment` is set, data read is held in a per-direction delay queue
and written when its delivery time comes (see :mod:`.impairment` for the model).

The connections themselves are in :mod:`.streams` (TCP, Unix) and :mod:`.datagrams` (UDP); the
addresses and forwards they serve in :mod:`.endpoints`.  All socket work happens on the loop
thread; the public methods hand work to it and wait (with a deadline) for the answer, so callers
never share sockets with the loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .datagrams import UdpListener
from .endpoints import _BUFFER_SIZE, _READ, Address, Forward, log
from .impairment import Impairment, Link
from .streams import Listener, Side, StreamListener

__all__ = ["Address", "Forward", "Relay"]


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
        self._forwards: dict[Forward, Listener] = {}
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
            if isinstance(owner, Side):
                owner.conn.abort()

    def _start_listener(self, fwd: Forward, sock: socket.socket) -> None:
        listener: Listener = (
            UdpListener(self, fwd, sock) if fwd.kind == "udp" else StreamListener(self, fwd, sock)
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
