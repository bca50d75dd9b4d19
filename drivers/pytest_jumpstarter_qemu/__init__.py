"""QEMU boards: power, serial console and QMP for guests under qemu-system-*.

Registered through the ``pytest_jumpstarter.drivers`` entry point; the ``qemu_vm`` fixture is this
family's.  Importing this module is cheap (pytest does at every start, for the fixture): the board
loads with a target, and qemu.qmp only when a board powers on.

Each test that used a board records the board's QEMU memory (``user_properties``, so it reaches the
xdist controller and JUnit XML too); the terminal summary shows one line per board.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef, lazy_exports

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


__getattr__ = lazy_exports(__name__, _WHERE)


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [DriverRef("qemu", "pytest_jumpstarter_qemu.board:QemuBoard")]


@pytest.hookimpl
def pytest_jumpstarter_device_ready(device: Driver[Any], item: pytest.Item | None) -> None:
    board = sys.modules.get(f"{__name__}.board")  # not loaded: this device is no QEMU board
    if board is not None and isinstance(device, board.QemuBoard) and item is not None:
        if device.warm.note is not None:  # started from the cache, or why not: once, in this report
            item.add_report_section("setup", "jumpstarter", device.warm.note)
            device.warm.note = None
        boards = item.stash.setdefault(_BOARDS, [])
        if device not in boards:
            boards.append(device)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_jumpstarter.cacheopts import cache_options

    options = cache_options(config)
    if options["cache_clear"] and not hasattr(config, "workerinput"):  # once, in the xdist controller
        from .statecache import StateCache, default_dir

        StateCache(options["cache_dir"] or default_dir()).clear()


@pytest.hookimpl
def pytest_jumpstarter_list_device(config: pytest.Config, target: Any, device: Any) -> list[str]:
    """``cache: hit|miss|off (why)`` for a QEMU board: its key from files and settings only."""
    board = sys.modules.get(f"{__name__}.board")  # not loaded: the target has no QEMU board
    if board is None or device.driver is not board.QemuBoard or device.settings is None:
        return []
    from pytest_jumpstarter.cacheopts import cache_options
    from pytest_jumpstarter.errors import JumpstarterError

    from .statecache import FileFacts, make_key
    from .warm import CacheOptions, key_parts, off_reason

    options = CacheOptions.from_extra(cache_options(config))
    reset = device.reset if device.scope != "test" else "none"
    why = off_reason(device.settings, options.mode)
    if why is None and device.settings.accel == "auto":
        why = "accel: auto (the key depends on the KVM probe, made at power-on)"
    if why is not None:
        return [f"cache: off ({why})"]
    try:
        facts = FileFacts(options.cache().folder / FileFacts.NAME, write=False)  # a listing writes nothing
        key = make_key(key_parts(device.settings, device.settings.accel, reset == "snapshot", facts))
    except (OSError, JumpstarterError) as exc:
        return [f"cache: miss (cannot make its key: {str(exc).splitlines()[0]})"]
    entry = options.cache().peek(key)
    if entry is None:
        return [f"cache: miss (entry {key} in {options.cache().folder})"]
    return [f"cache: hit (entry {key}, {entry.size / 2**20:.0f} MiB)"]


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
