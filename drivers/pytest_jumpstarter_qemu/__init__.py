"""QEMU boards: power, serial console and QMP for guests under qemu-system-*.

Registered through the ``pytest_jumpstarter.drivers`` entry point; the ``qemu_vm`` fixture is this
family's.  Importing this module is cheap (pytest does at every start, for the fixture): the board
loads with a target, and qemu.qmp only when a board powers on.

Each test that used a board records the board's QEMU memory (``user_properties``, so it reaches the
xdist controller and JUnit XML too); the terminal summary shows one line per board.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter import device_fixture

if TYPE_CHECKING:
    from pytest_jumpstarter.driver import Driver

    from .board import QemuBoard
    from .images import demo_images

_WHERE = {"QemuBoard": "board", "demo_images": "images"}
__all__ = ["QemuBoard", "demo_images"]

#: The ``user_properties`` name of a board's memory record: {board, pid, rss, peak} (bytes).
MEMORY_PROPERTY = "jumpstarter_qemu_memory"
_BOARDS: pytest.StashKey[list[QemuBoard]] = pytest.StashKey()

qemu_vm = device_fixture("qemu_vm", doc="The QEMU board (driver qemu) of the current target.")


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{where}", __name__), name)


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[QemuBoard]]:
    from .board import QemuBoard

    return [QemuBoard]


@pytest.hookimpl
def pytest_jumpstarter_device_ready(device: Driver[Any], item: pytest.Item | None) -> None:
    from .board import QemuBoard  # loaded already: a device exists

    if isinstance(device, QemuBoard) and item is not None:
        boards = item.stash.setdefault(_BOARDS, [])
        if device not in boards:
            boards.append(device)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if call.when != "call":
        return
    # Measured after the test body, while a test-scoped board still runs.
    for board in item.stash.get(_BOARDS, []):
        rss, pid = board.rss(), board.pid
        if rss is not None and pid is not None:
            record = {"board": f"{board.ctx.target}/{board.device_name}", "pid": pid, "rss": rss}
            record["peak"] = board.rss(peak=True) or rss
            item.user_properties.append((MEMORY_PROPERTY, record))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    boards: dict[tuple[str, int], dict[str, Any]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, record in getattr(report, "user_properties", ()):
                if name != MEMORY_PROPERTY or not isinstance(record, dict):
                    continue
                seen = boards.setdefault((record["board"], record["pid"]), {"tests": 0, "rss": 0, "peak": 0})
                seen["tests"] += 1
                seen["rss"] = max(seen["rss"], record["rss"])
                seen["peak"] = max(seen["peak"], record["peak"])
    if not boards:
        return
    terminalreporter.write_sep("-", "jumpstarter QEMU memory")
    for (board, pid), seen in sorted(boards.items()):
        terminalreporter.write_line(
            f"{board} (QEMU pid {pid}): RSS up to {_mib(seen['rss'])}, peak {_mib(seen['peak'])}"
            f" over {seen['tests']} test{'s' if seen['tests'] != 1 else ''}"
        )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"
