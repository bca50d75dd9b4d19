"""Timeouts that cooperate with pytest-timeout.

pytest-timeout kills a test after its budget: by a signal (the test fails with a bare "Timeout"),
or from a thread that dumps stacks and ``os._exit``\\ s (no report at all).  Either way the console
tail, the one thing that explains a hung board, is lost.  So:

- when pytest-timeout arms its timer for a test, the plugin notes the deadline (a context variable);
  every console wait is capped by what is left of it, less a margin (:func:`cap`), so the plugin's
  own ``ConsoleTimeout``, with the console tail, fires first and the test fails normally;
- a kept board booted for a test's setup does not eat that test's budget: the timer is re-armed after
  setup (with ``timeout_func_only`` the timer covers only the call anyway);
- a test that timed out leaves its board mid-command: a kept device with ``reset: none`` is stopped
  after it (the next test boots a fresh one, and its report says why); the others are restored by
  their ``reset:`` as always;
- with the thread method, a test stuck outside the console waits (``time.sleep``, a socket read) would
  still be killed with the whole run.  A :class:`Watchdog` fires shortly before pytest-timeout's
  thread: it writes the console logs to disk and sends :data:`INTERRUPT` to the main thread, whose
  handler fails the test there (as the signal method would) and gives the rest of it (its cleanup and
  teardown) a fresh budget.  If the main thread does not take the signal (it is in pytest's own code
  between phases, has the signal blocked, or is stuck in C code), a line names the test, its devices
  and their log files, and pytest-timeout's kill happens as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import signal
import threading
import time
from collections.abc import Generator, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .plugin import Run

#: The monotonic deadline of the running test's pytest-timeout budget, if it has one.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("jumpstarter_deadline", default=None)
_SETTINGS = pytest.StashKey[Any]()
_TIMED_OUT = pytest.StashKey[str]()
#: Sent to the main thread shortly before pytest-timeout's thread method ends the run.  Not SIGALRM
#: (tests that pick the thread method often use it) nor SIGUSR1 (faulthandler.register's usual one).
INTERRUPT = signal.SIGUSR2


def margin(budget: float) -> float:
    """How long before pytest-timeout's kill the plugin's own waits give up: enough to report."""
    return max(0.2, min(2.0, budget * 0.1))


def cap(timeout: float | None) -> float | None:
    """``timeout`` (seconds, None: forever), shortened to what is left of the test's budget."""
    deadline = DEADLINE.get()
    if deadline is None:
        return timeout
    left = max(0.0, deadline - time.monotonic())
    return left if timeout is None or timeout < 0 else min(timeout, left)


class TimeoutPlugin:
    """pytest-timeout's hooks (optional: they exist only when it is installed) and their follow-up."""

    def __init__(self, run: Run) -> None:
        self.run = run
        #: The running test's watchdog (thread method), and whether the main thread is inside a test
        #: phase, where an exception fails that phase (outside it, pytest's own code runs).
        self.watch: Watchdog | None = None
        self.in_phase = False
        self._previous: Any = None
        #: The test whose pytest-timeout timer the handler re-armed.
        self.rearmed: pytest.Item | None = None

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> None:
        budget = float(settings.timeout)
        item.stash[_SETTINGS] = settings
        DEADLINE.set(time.monotonic() + budget - margin(budget))
        main = threading.current_thread() is threading.main_thread()
        if settings.method == "thread" or not main:  # pytest-timeout falls back to a thread off the main one
            if self.watch is not None:
                self.watch.cancel()
            self.watch = Watchdog(self, item, settings, interrupt=main and self._install())
        # None: pytest-timeout's own implementation arms the timer.

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> None:
        DEADLINE.set(None)
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.cancel()
            self._uninstall()

    def handles_interrupt(self) -> bool:
        return bool(signal.getsignal(INTERRUPT) == self._on_interrupt)

    def _install(self) -> bool:
        """Our handler for INTERRUPT, unless the signal is somebody else's."""
        current = signal.getsignal(INTERRUPT)
        if self.handles_interrupt():
            return True
        if current is not signal.SIG_DFL:
            return False
        self._previous = signal.signal(INTERRUPT, self._on_interrupt)
        return True

    def _uninstall(self) -> None:
        if self.handles_interrupt():
            signal.signal(INTERRUPT, self._previous or signal.SIG_DFL)
        self._previous = None

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        watch = self.watch
        if watch is None or not watch.fired or watch.cancelled or watch.debugging():
            return  # not ours to act on: a SIGUSR2 from elsewhere, or a debugger at work
        watch.caught.set()
        # pytest-timeout's timer would still end the run at the full budget, in the middle of this
        # test's cleanup: what is left of the test gets a fresh budget, then the old timer goes.
        item = watch.item
        cancel_old = getattr(item, "cancel_timeout", None)
        item.config.hook.pytest_timeout_set_timer(item=item, settings=watch.settings)
        if callable(cancel_old):
            cancel_old()
        self.rearmed = item  # cancelled at the end of its protocol, whatever is interrupted here
        if self.in_phase:
            pytest.fail(watch.explain(interrupted=True), pytrace=True)
        # Between phases the main thread is in pytest's own code (a report, say), and it is alive: it
        # only gets the time to finish; an exception here would break pytest itself.

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
        try:
            return (yield)
        finally:
            if self.rearmed is item:
                # A timer re-armed by the handler while pytest-timeout was cancelling its own (the
                # signal came in the middle) would otherwise outlive the test and end a later one.
                self.rearmed = None
                item.config.hook.pytest_timeout_cancel_timer(item=item)

    @contextlib.contextmanager
    def _phase(self) -> Iterator[None]:
        self.in_phase = True
        try:
            yield
        finally:
            self.in_phase = False

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None]:
        with self._phase():
            result = yield
        settings = item.stash.get(_SETTINGS, None)
        if settings is not None and not settings.func_only and self._booted_kept_device(item):
            # The boot served every later test too: the budget is the test's, not the boot's.
            hook = item.config.hook
            hook.pytest_timeout_cancel_timer(item=item)
            hook.pytest_timeout_set_timer(item=item, settings=settings)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None]:
        with self._phase():
            return (yield)

    def _booted_kept_device(self, item: pytest.Item) -> bool:
        from .lifecycle import ITEM_DEVICES

        used = item.stash.get(ITEM_DEVICES, None)
        return used is not None and any(d.spec.scope != "test" and d.uses == 1 for d in used.devices)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call" and call.excinfo is not None and _is_timeout(call.excinfo.value):
            item.stash[_TIMED_OUT] = call.excinfo.typename
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
        try:
            with self._phase():
                return (yield)
        finally:
            why = item.stash.get(_TIMED_OUT, None)
            if why is not None and self.run.manager is not None:
                del item.stash[_TIMED_OUT]
                self.run.manager.drop_kept(item, f"the test timed out ({why}) with the board mid-command")


class Watchdog:
    """Fires a little before the thread method of pytest-timeout ends the run (see the module doc)."""

    def __init__(self, plugin: TimeoutPlugin, item: pytest.Item, settings: Any, interrupt: bool) -> None:
        self.plugin = plugin
        self.item = item
        self.settings = settings
        self.budget = float(settings.timeout)
        self.kill_at = time.monotonic() + self.budget
        self.interrupt = interrupt
        self.main = threading.main_thread().ident
        self.cancelled = False
        #: Set just before the signal goes: a SIGUSR2 from anyone else fails nothing.
        self.fired = False
        #: Set by the main thread's handler: it took the signal and fails the test.
        self.caught = threading.Event()
        # After the console waits' own deadline (budget - margin), before the kill (budget).
        self._timer = threading.Timer(self.budget - 0.6 * margin(self.budget), self._fire)
        self._timer.name = f"jumpstarter watchdog {item.nodeid}"
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self.cancelled = True
        self._timer.cancel()

    def debugging(self) -> bool:
        """A debugger is at work (pdb, an IDE's): pytest-timeout then holds back, so do we."""
        from pytest_timeout import is_debugging  # type: ignore[import-untyped]

        return not self.settings.disable_debugger_detection and bool(is_debugging())

    def _fire(self) -> None:
        if self.cancelled or self.debugging():
            return
        self.flush(drain=False)  # first: whatever happens next, the console logs are on disk
        if self.interrupt and self.main is not None and self.plugin.handles_interrupt():
            self.fired = True
            signal.pthread_kill(self.main, INTERRUPT)
            if self.caught.wait(0.2 * margin(self.budget)):
                return
        if not self.cancelled and not self.caught.is_set() and self.plugin.run.manager is not None:
            self.flush(drain=True)  # the run is about to end: the held-back end of the output too
            self.plugin.run.manager.notify(self.explain(interrupted=False))

    def flush(self, drain: bool) -> None:
        manager = self.plugin.run.manager
        for device in list(manager.live.values()) if manager is not None else ():
            device.transcript.flush(drain=drain)
        for handler in logging.getLogger().handlers:  # pytest's --log-file among them
            with contextlib.suppress(Exception):
                handler.flush()

    def explain(self, interrupted: bool) -> str:
        """What happened, the devices the test used, their log files and last console lines."""
        from .lifecycle import ITEM_DEVICES

        used = self.item.stash.get(ITEM_DEVICES, None)
        devices = used.devices if used is not None else []
        logs = [(d.spec.name, d.transcript.path) for d in devices]
        where = "; ".join(
            f"{name}: console log {path if path is not None and path.exists() else 'not written (no output)'}"
            for name, path in logs
        )
        if interrupted:
            head = (
                f"Timeout (>{self.settings.timeout}s from pytest-timeout, thread method): the test was stuck"
                " outside the console waits; jumpstarter interrupted it before pytest-timeout's kill"
            )
        else:
            left = max(0.0, self.kill_at - time.monotonic())
            head = (
                f"{self.item.nodeid} is stuck past its {self.settings.timeout}s budget where it cannot be"
                f" interrupted: pytest-timeout (thread method) ends this run in {left:.1f}s, without a report"
            )
        text = f"{head}\ndevices: {where or 'none'}"
        for device in devices:
            tail = device.transcript.tail()
            if tail:
                text += f"\nlast console lines of {device.spec.name}:\n" + "\n".join(
                    f"    {line}" for line in tail.splitlines()
                )
        return self.plugin.run.redact(text)


def _is_timeout(exc: BaseException) -> bool:
    from .errors import ConsoleTimeout

    # pytest-timeout's signal method fails the test with pytest.fail("Timeout (>Ns from pytest-timeout).").
    return isinstance(exc, ConsoleTimeout | TimeoutError) or (
        isinstance(exc, pytest.fail.Exception) and "pytest-timeout" in str(exc)
    )
