"""QMP for a board: qemu.qmp's async client on the run's shared event loop, every call with a deadline.

qemu.qmp has no timeouts of its own, so each await is bounded (:meth:`EventLoopThread.call`).  All
boards' clients share one loop thread (:data:`pytest_jumpstarter.aioloop.SHARED`), and events come
through qemu.qmp's own all-events listener (``QMPClient.events``).

asyncio and qemu.qmp are imported where a session starts, not with the module: the driver family
is imported at every pytest start-up that names a target, and asyncio alone costs ~15 ms there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pytest_jumpstarter.aioloop import SHARED
from pytest_jumpstarter.errors import DriverError
from pytest_jumpstarter.waiting import Deadline

T = TypeVar("T")


def prepare() -> None:
    """Import qemu.qmp (and asyncio) and start the shared loop: ~40 ms on a run's first launch,
    spent while the just-spawned QEMU starts up instead of after it connected (a cache hit's
    whole start is ~0.3 s)."""
    import qemu.qmp  # noqa: F401

    SHARED.loop  # noqa: B018  (starts the loop thread)


class QmpError(DriverError):
    """A QMP command failed, was refused, or did not answer in time."""


class Events:
    """Every QMP event the board sent since power-on, in order, and a way to wait for the next one.

    Each event is the QMP message as a dict: ``{"event": "POWERDOWN", "data": {...}, "timestamp": {...}}``.
    """

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def _add(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def __iter__(self) -> Any:
        with self._cond:
            return iter(list(self._events))

    def __len__(self) -> int:
        with self._cond:
            return len(self._events)

    def names(self) -> list[str]:
        with self._cond:
            return [e["event"] for e in self._events]

    def clear(self) -> None:
        with self._cond:
            self._events.clear()

    def wait(self, name: str, timeout: float = 10.0, since: int = 0, device: str = "qemu") -> dict[str, Any]:
        """The first event called ``name`` at index ``since`` or later; waits up to ``timeout`` seconds."""
        deadline = Deadline(timeout, f"QMP event {name!r}")
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.get("event") == name:
                        return event
                if deadline.expired:
                    seen = ", ".join(e["event"] for e in self._events[since:]) or "none"
                    raise QmpError(
                        device, f"no QMP event {name!r} within {timeout}s (events seen since: {seen})"
                    )
                self._cond.wait(deadline.remaining())


class Qmp:
    """One QMP session over an already connected socket (QEMU connected to us), on the run's shared loop."""

    def __init__(self, device: str, sock: socket.socket, *, timeout: float = 10.0) -> None:
        from qemu.qmp import QMPClient

        self.device = device
        self.events = Events()
        self._loop = SHARED
        self._recorder: concurrent.futures.Future[None] | None = None

        async def make() -> QMPClient:
            return QMPClient(device)

        self._client = self._call(make, timeout, "starting")
        # qemu.qmp's own all-events listener; one task on the loop copies each event into our log.
        self._recorder = self._loop.submit(self._record(self._client.events))
        try:
            self._call(lambda: self._client.connect(sock), timeout, "connecting")
        except BaseException:
            self.close()
            raise

    async def _record(self, listener: Any) -> None:
        async for event in listener:
            self.events._add(dict(event))

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run a QMP command and return its ``return`` value; raise :class:`QmpError` if it fails."""
        from qemu.qmp import ExecuteError

        try:
            return self._call(lambda: self._client.execute(command, arguments), timeout, repr(command))
        except ExecuteError as exc:
            raise QmpError(self.device, f"QMP command {command!r} failed: {exc}") from exc

    def send_fd(self, fd: int, name: str, timeout: float = 5.0) -> None:
        """Pass ``fd`` to QEMU (``SCM_RIGHTS``) as ``name`` for ``fd:name`` URIs (QMP ``getfd``).
        QEMU holds its own copy: the caller still closes ``fd``."""

        async def send() -> None:
            self._client.send_fd_scm(fd)  # must run on the loop thread, right before its getfd
            await self._client.execute("getfd", {"fdname": name})

        self._call(send, timeout, f"getfd {name!r}")

    def hmp(self, command: str, timeout: float = 10.0) -> str:
        """Run a human monitor command (``info usernet``) and return its text output."""
        out = self.execute("human-monitor-command", {"command-line": command}, timeout)
        return str(out)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float, what: str) -> T:
        from qemu.qmp import QMPError

        try:
            return self._loop.call(make, timeout)
        except TimeoutError:
            raise QmpError(self.device, f"QMP {what} got no answer within {timeout}s") from None
        except QMPError as exc:
            raise QmpError(self.device, f"QMP {what} failed: {exc}") from exc
        except (ConnectionError, EOFError, OSError) as exc:
            raise QmpError(self.device, f"QMP {what} failed: the connection broke ({exc})") from exc

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect (bounded) and stop recording events.  Safe to call twice."""
        client, self._client = getattr(self, "_client", None), None  # type: ignore[assignment]
        recorder, self._recorder = self._recorder, None
        if client is None:
            return

        async def finish() -> None:
            import asyncio

            try:
                # A QEMU that is gone or wedged: give up after the bound; the socket closes anyway.
                await asyncio.wait_for(client.disconnect(), timeout)
            finally:
                # Events read but not yet copied (e.g. SHUTDOWN just before QEMU exited) are kept.
                for event in client.events.clear():
                    self.events._add(dict(event))
                if recorder is not None:
                    recorder.cancel()

        with contextlib.suppress(Exception):
            self._loop.call(finish, timeout + 1.0)
