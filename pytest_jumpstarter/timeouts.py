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
  their ``reset:`` as always.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .plugin import Run

#: The monotonic deadline of the running test's pytest-timeout budget, if it has one.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("jumpstarter_deadline", default=None)
_SETTINGS = pytest.StashKey[Any]()
_TIMED_OUT = pytest.StashKey[str]()


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

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> None:
        budget = float(settings.timeout)
        item.stash[_SETTINGS] = settings
        DEADLINE.set(time.monotonic() + budget - margin(budget))
        # None: pytest-timeout's own implementation arms the timer.

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> None:
        DEADLINE.set(None)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Any:
        result = yield
        settings = item.stash.get(_SETTINGS, None)
        if settings is not None and not settings.func_only and self._booted_kept_device(item):
            # The boot served every later test too: the budget is the test's, not the boot's.
            hook = item.config.hook
            hook.pytest_timeout_cancel_timer(item=item)
            hook.pytest_timeout_set_timer(item=item, settings=settings)
        return result

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

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        try:
            return (yield)
        finally:
            why = item.stash.get(_TIMED_OUT, None)
            if why is not None and self.run.manager is not None:
                del item.stash[_TIMED_OUT]
                self.run.manager.drop_kept(item, f"the test timed out ({why}) with the board mid-command")


def _is_timeout(exc: BaseException) -> bool:
    from .errors import ConsoleTimeout

    # pytest-timeout's signal method fails the test with pytest.fail("Timeout (>Ns from pytest-timeout).").
    return isinstance(exc, ConsoleTimeout | TimeoutError) or (
        isinstance(exc, pytest.fail.Exception) and "pytest-timeout" in str(exc)
    )
