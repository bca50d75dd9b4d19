"""One connection to a Jumpstarter exporter: the exporter's driver tree and streams, on the run's loop.

Everything of the Jumpstarter client stack is imported here, when a ``jumpstarter`` device starts:
it costs about a second and 77 MB, and a run without such a device must not pay for it.

The client library is asynchronous (anyio over grpc.aio); a :class:`Session` runs it through a
``BlockingPortal`` on the run's one event loop (:data:`pytest_jumpstarter.aioloop.SHARED`) and
exposes blocking calls, each bounded by a deadline.  One loop for every session, not a loop thread
per session: a new loop and thread cost every connect about 0.2 ms, and grpc.aio binds its
completion poller to each loop that ever made a channel, for good: events of a call that were still
in flight when its session's loop closed went to a closed loop (``RuntimeError: Event loop is
closed``, printed by whichever loop took them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from typing import Any

from pytest_jumpstarter.aioloop import SHARED
from pytest_jumpstarter.errors import DriverError, JumpstarterError


class ExporterUnreachable(DriverError):
    """The exporter (or the controller) did not answer at its address."""


class ExporterSilent(ExporterUnreachable):
    """The exporter did not answer within the time given (it may be slow, or not there)."""


#: How long a connect to a standalone exporter runs before a TCP probe checks that it is there.
FIRST_ATTEMPT = 5.0


def probe_tcp(device: str, address: str, timeout: float, what: str = "exporter") -> None:
    """Fail within ``timeout`` seconds, naming ``address``, if nothing accepts TCP connections there."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise ExporterUnreachable(
            device, f"cannot reach the {what} at {address}: {exc} (is it running? is the address right?)"
        ) from None


def tree_paths(root: Any) -> dict[str, Any]:
    """Every driver of an exporter's tree by its dotted path (``qemu.power``)."""
    found: dict[str, Any] = {}

    def walk(prefix: str, client: Any) -> None:
        for name, child in client.children.items():
            path = f"{prefix}.{name}" if prefix else name
            found[path] = child
            walk(path, child)

    walk("", root)
    return found


def client_kind(client: Any) -> str:
    """A driver client's class as Jumpstarter names it (for listings and errors)."""
    label: str = client.labels.get("jumpstarter.dev/client", type(client).__name__)
    return label.rsplit(".", 1)[-1]


#: Bytes written to a console but not yet taken by its stream, beyond which ``write`` waits.
WRITE_BACKLOG = 256 * 1024
#: How long ``write`` waits for the stream to take a full backlog, and ``close`` for it to drain.
WRITE_TIMEOUT = 10.0
FLUSH_TIMEOUT = 2.0


class StreamTransport:
    """A :class:`pytest_jumpstarter.console.Transport` over a Jumpstarter byte stream (a console).

    A task on the session's event loop receives into a buffer from the moment the stream opens,
    so nothing the board prints is lost between opening and the first expect.  :meth:`fail` ends
    reads at once with a reason (a lost lease), which the console reports instead of a timeout.

    Writes are queued to a writer task in order and ``write`` returns at once, as a write to a
    socket does: waiting for the loop thread to finish each send would cost every keystroke one
    more thread hand-off (a round trip's worth under load).  Only a backlog the stream does not take
    (``WRITE_BACKLOG``) makes ``write`` wait; :meth:`flush` and :meth:`close` drain what is queued.
    """

    def __init__(self, session: Session, client: Any) -> None:
        import asyncio

        self._session = session
        self._buffer = bytearray()
        self._cond = threading.Condition()
        self._room = threading.Condition()  # writers waiting for the backlog to drain
        self._backlog = 0
        self._ended: str | None = None
        self.failure: BaseException | None = None
        self._cm = session.portal.wrap_async_context_manager(client.stream_async("connect"))
        self._stream = self._cm.__enter__()
        # The portal runs asyncio (the client stack is grpc.aio); its loop takes our writes directly.
        self._loop: asyncio.AbstractEventLoop = session.portal.call(asyncio.get_running_loop)
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._pump = session.portal.start_task_soon(self._receive)
        self._writer = session.portal.start_task_soon(self._send_all)

    async def _receive(self) -> None:
        import anyio

        try:
            while True:
                data = await self._stream.receive()
                if data:  # the router sends empty PING frames
                    with self._cond:
                        self._buffer += data
                        self._cond.notify_all()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._end(f"the exporter closed the console stream ({type(exc).__name__})")
        except BaseException as exc:
            self._end(f"the console stream failed: {type(exc).__name__}: {exc}")
            raise

    async def _send_all(self) -> None:
        import anyio

        try:
            while True:
                data = await self._outbox.get()
                await self._stream.send(data)
                with self._room:
                    self._backlog -= len(data)
                    self._room.notify_all()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._end(f"the exporter closed the console stream ({type(exc).__name__})")
        except Exception as exc:
            self._end(f"writing to the console failed: {type(exc).__name__}: {exc}")

    def _end(self, why: str) -> None:
        with self._cond:
            if self._ended is None:
                self._ended = why
            self._cond.notify_all()
        with self._room:
            self._room.notify_all()

    @property
    def ended(self) -> str | None:
        """Why the stream ended, or None while it is open."""
        return self._ended

    def fail(self, exc: BaseException) -> None:
        """End the stream for its readers now, with ``exc`` as the explanation."""
        self.failure = exc
        self._end(str(exc))

    def read(self, size: int, timeout: float | None) -> bytes:
        with self._cond:
            if not self._buffer and self._ended is None:
                self._cond.wait_for(lambda: bool(self._buffer) or self._ended is not None, timeout)
            if self._buffer:
                data = bytes(self._buffer[:size])
                del self._buffer[:size]
                return data
            if self._ended is not None:
                raise EOFError(self._ended)
            return b""

    def write(self, data: bytes) -> None:
        with self._room:
            if self._backlog > WRITE_BACKLOG and not self._room.wait_for(
                lambda: self._backlog <= WRITE_BACKLOG or self._ended is not None, WRITE_TIMEOUT
            ):
                raise TimeoutError(
                    f"writing to the console (the exporter took none of {self._backlog} queued bytes)",
                    WRITE_TIMEOUT,
                )
            if self._ended is not None:
                raise EOFError(self._ended)
            self._backlog += len(data)
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, data)
        except RuntimeError as exc:  # the session's loop is gone
            raise EOFError(f"the console's session is closed ({exc})") from None

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until the stream has taken every byte written (or ended); False after ``timeout``."""
        with self._room:
            return self._room.wait_for(lambda: self._backlog <= 0 or self._ended is not None, timeout)

    def close(self) -> None:
        if self._ended is None:
            self.flush()  # what a test typed last (a `reboot`, a `sync`) still reaches the board
        self._writer.cancel()
        self._pump.cancel()
        with contextlib.suppress(Exception):
            self._cm.__exit__(None, None, None)
        self._end("closed")


_portal: tuple[Any, Any] | None = None  # (the loop, its BlockingPortal)
_portal_lock = threading.Lock()


def shared_portal(timeout: float = 10.0) -> Any:
    """The ``BlockingPortal`` on :data:`~pytest_jumpstarter.aioloop.SHARED`'s loop, made on first use
    (again if that loop was replaced); it runs for as long as the loop does."""
    from anyio.from_thread import BlockingPortal

    global _portal
    with _portal_lock:
        loop = SHARED.loop
        # Also anew when anyio was imported again since (pytester's in-process runs unload the
        # modules a run imported): the client's models refuse a portal of the old class.
        if _portal is None or _portal[0] is not loop or type(_portal[1]) is not BlockingPortal:
            ready: concurrent.futures.Future[Any] = concurrent.futures.Future()

            async def serve() -> None:
                async with BlockingPortal() as portal:
                    ready.set_result(portal)
                    await portal.sleep_until_stopped()

            served = SHARED.submit(serve())
            concurrent.futures.wait([ready, served], timeout, concurrent.futures.FIRST_COMPLETED)
            if not ready.done():
                served.cancel()
                raise JumpstarterError(
                    f"the run's event loop ({SHARED.name}) did not start a portal for Jumpstarter's client"
                    f" within {timeout:g}s: {served}"
                )
            _portal = (loop, ready.result())
        return _portal[1]


class Session:
    """The exporter's root driver client for one device, and what it opened on the shared loop."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.portal = shared_portal()
        self._stack = ExitStack()
        self._clients = self._stack.enter_context(ExitStack())
        self.root: Any = None
        self.paths: dict[str, Any] = {}

    def call(self, func: Callable[..., Any], *args: Any, timeout: float, what: str) -> Any:
        """``await func(*args)`` on the event loop, failing after ``timeout`` seconds with ``what``."""
        import anyio

        async def bounded() -> Any:
            with anyio.fail_after(timeout):
                return await func(*args)

        try:
            return self.portal.call(bounded)
        except TimeoutError:
            raise DriverError(
                self.device, f"{what}: no answer from the exporter within {timeout:g}s"
            ) from None

    def connect_tcp(
        self,
        address: str,
        *,
        insecure: bool,
        tls_ca: str | None,
        passphrase: str | None,
        timeout: float,
    ) -> None:
        """Connect to a standalone exporter (``jmp run --tls-grpc-listener``) and read its driver tree."""
        from jumpstarter.client import client_from_path
        from jumpstarter.config.tls import TLSConfigV1Alpha1

        tls = TLSConfigV1Alpha1(ca=tls_ca or "", insecure=False)

        def attempt(seconds: float) -> None:
            cm = client_from_path(
                address,
                self.portal,
                self._clients,
                allow=[],
                unsafe=True,
                tls_config=tls,
                insecure=insecure,
                passphrase=passphrase,
            )
            self._enter(cm, seconds, f"exporter at {address}")

        # No TCP probe before connecting (it would cost every connect a round trip and the
        # exporter a connection): only when the connect fails, or is slow, does a probe tell a
        # host that is not there ("refused", "no route") from an exporter that answers slowly.
        first = min(timeout, FIRST_ATTEMPT)
        try:
            attempt(first)
        except ExporterSilent:
            probe_tcp(self.device, address, 2.0)
            if timeout <= first:
                raise
            try:
                attempt(timeout - first)  # it accepts connections: give it the rest of the time
            except ExporterSilent:
                raise ExporterSilent(
                    self.device,
                    f"exporter at {address} accepts connections but did not answer within {timeout:g}s",
                ) from None
        except ExporterUnreachable:
            probe_tcp(self.device, address, 2.0)
            raise

    def connect_unix(self, path: str, timeout: float, what: str) -> None:
        """Connect through a local Unix socket (a lease's router tunnel)."""
        from jumpstarter.client import client_from_path

        self._enter(client_from_path(path, self.portal, self._clients, allow=[], unsafe=True), timeout, what)

    def open_channel(self, make: Callable[[], Any], timeout: float, what: str) -> Any:
        """``await make()`` (a controller's grpc.aio channel) on the loop; closed at :meth:`close`."""
        channel = self.call(make, timeout=timeout, what=what)
        self._stack.callback(self._close_channel, channel)
        return channel

    def _close_channel(self, channel: Any) -> None:
        with contextlib.suppress(Exception):
            self.call(channel.close, timeout=5.0, what="closing a channel")

    def enter_async(self, cm: Any) -> Any:
        """Enter an async context manager on the loop, left at :meth:`close`.

        Not bounded by a cancel scope: ``cm`` may hold a task group (a listener), which must not be
        entered inside a scope that ends before it does.
        """
        return self._stack.enter_context(self.portal.wrap_async_context_manager(cm))

    def _enter(self, cm: Any, timeout: float, what: str) -> None:
        try:
            self.root = self._clients.enter_context(
                self.portal.wrap_async_context_manager(_bounded(cm, timeout))
            )
        except TimeoutError:
            raise ExporterSilent(self.device, f"{what} did not answer within {timeout:g}s") from None
        except ImportError as exc:
            raise DriverError(
                self.device,
                f"{what}: {exc} (the client side needs the driver packages of every driver the exporter "
                "serves: pip install the jumpstarter-driver-* packages it uses)",
            ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("jumpstarter", "grpc")):
                cause = exc.__cause__
                detail = f"{type(exc).__name__}: {exc}" + (f" ({cause})" if cause is not None else "")
                raise ExporterUnreachable(self.device, f"cannot talk to the {what}: {detail}") from exc
            raise
        self.paths = tree_paths(self.root)

    def client(self, path: str, key: str) -> Any:
        """The driver client at ``path`` of the tree, or an error naming the paths that exist."""
        client = self.paths.get(path)
        if client is None:
            have = ", ".join(f"{p} ({client_kind(c)})" for p, c in sorted(self.paths.items())) or "none"
            raise DriverError(
                self.device,
                f"{key}: the exporter has no driver at path {path!r}; its driver tree has: {have}",
            )
        return client

    def close(self) -> None:
        """Leave the exporter's client (its channel) first, then what was opened through it; the loop
        runs on for the other sessions."""
        try:
            self._clients.close()
        finally:
            self._stack.close()


@asynccontextmanager
async def _bounded(cm: Any, timeout: float) -> AsyncIterator[Any]:
    """Enter ``cm`` within ``timeout`` seconds (TimeoutError otherwise); leave it normally."""
    import anyio

    scope = anyio.CancelScope(deadline=anyio.current_time() + timeout)
    try:
        with scope:
            value = await cm.__aenter__()
    except anyio.get_cancelled_exc_class():
        # grpc.aio re-raises the cancellation of a pending call as its own CancelledError, which
        # the scope then does not take for its own: past our deadline, it is our timeout.
        if scope.cancel_called and anyio.current_time() >= scope.deadline:
            raise TimeoutError from None
        raise
    if scope.cancelled_caught:
        raise TimeoutError
    try:
        yield value
    except BaseException as exc:
        if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await cm.__aexit__(None, None, None)
