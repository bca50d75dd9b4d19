"""QMP for a board: qemu.qmp's async client on a private event-loop thread, every call with a deadline.

qemu.qmp has no timeouts of its own, so each await is wrapped in :func:`asyncio.wait_for`, and the
calling thread waits on the future with a little more than that (a wedged loop cannot hang a test).

asyncio and qemu.qmp are imported where a session starts, not with the module: the driver family
is imported at every pytest start-up that names a target, and asyncio alone costs ~15 ms there.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pytest_jumpstarter.errors import DriverError

T = TypeVar("T")


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
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.get("event") == name:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(e["event"] for e in self._events[since:]) or "none"
                    raise QmpError(
                        device, f"no QMP event {name!r} within {timeout}s (events seen since: {seen})"
                    )
                self._cond.wait(remaining)


class Qmp:
    """One QMP session over an already connected socket (QEMU connected to us)."""

    def __init__(self, device: str, sock: socket.socket, *, timeout: float = 10.0) -> None:
        import asyncio

        from qemu.qmp import EventListener, QMPClient

        self.device = device
        self.events = Events()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp-{device}", daemon=True)
        self._thread.start()
        events = self.events

        class _Recorder(EventListener):
            async def put(self, event: Any) -> None:
                events._add(dict(event))

        self._client = QMPClient(device)
        self._client.register_listener(_Recorder())
        try:
            self._call(lambda: self._client.connect(sock), timeout, "connecting")
        except BaseException:
            self.close()
            raise

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run a QMP command and return its ``return`` value; raise :class:`QmpError` if it fails."""
        from qemu.qmp import ExecuteError

        try:
            return self._call(lambda: self._client.execute(command, arguments), timeout, repr(command))
        except ExecuteError as exc:
            raise QmpError(self.device, f"QMP command {command!r} failed: {exc}") from exc

    def hmp(self, command: str, timeout: float = 10.0) -> str:
        """Run a human monitor command (``info usernet``) and return its text output."""
        out = self.execute("human-monitor-command", {"command-line": command}, timeout)
        return str(out)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float, what: str) -> T:
        import asyncio

        from qemu.qmp import QMPError

        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return future.result(timeout + 2.0)
        except (TimeoutError, asyncio.TimeoutError):
            future.cancel()
            raise QmpError(self.device, f"QMP {what} got no answer within {timeout}s") from None
        except QMPError as exc:
            raise QmpError(self.device, f"QMP {what} failed: {exc}") from exc
        except (ConnectionError, EOFError, OSError) as exc:
            raise QmpError(self.device, f"QMP {what} failed: the connection broke ({exc})") from exc

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect (bounded) and stop the loop thread.  Safe to call twice."""
        import asyncio

        if self._loop.is_closed():
            return
        if self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(self._client.disconnect(), timeout), self._loop
            )
            try:
                future.result(timeout + 1.0)
            except Exception:
                # A QEMU that is gone or wedged: the socket is closed with the loop anyway.
                future.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
