"""The run's one event loop: async clients (QMP) share one loop on one daemon thread.

Synchronous code calls in with :meth:`EventLoopThread.call`, which bounds each coroutine with
:func:`asyncio.wait_for` and waits on its future a little longer than that, so even a wedged loop
cannot hang a test.  asyncio is imported when the loop first starts, not with this module: most
pytest runs never need it (it costs ~15 ms at start-up).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class EventLoopThread:
    """An asyncio loop running forever on a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if (
                self._loop is None
                or self._loop.is_closed()
                or not self._thread
                or not self._thread.is_alive()
            ):
                import asyncio

                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
                self._thread.start()
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the caller owns the returned future."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        """Run ``make()`` on the loop and return its result; ``TimeoutError`` after ``timeout`` seconds."""
        import asyncio

        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        future = self.submit(bounded())
        try:
            return future.result(timeout + 2.0)
        except (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise TimeoutError(f"no result within {timeout}s") from None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and its thread (tests; a run just lets the daemon thread go)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


#: The one loop of this process (pytest run or xdist worker).
SHARED = EventLoopThread("jumpstarter-async")
