"""Shared helpers of the core tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A conftest for inner runs: driver ``rec`` writes every lifecycle event to ``events.log`` next to
#: the target file, and the hooks record what they were called with.
REC_CONFTEST = """
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_jumpstarter import Driver, DriverError, device_fixture, setting


@dataclass(frozen=True, kw_only=True)
class RecSettings:
    board: str | None = setting(None, kind="ref")
    fail_start: bool = False
    can_reset: bool = True
    events: Path = Path("events.log")
    say: str = ""
    slow_stop: bool = False
    interrupt_start: bool = False


class Rec(Driver[RecSettings]):
    name = "rec"
    role = "rec"

    def note(self, text):
        with open(self.ctx.settings.events, "a") as f:
            f.write(text + "\\n")

    def start(self):
        self.note(f"start {self.ctx.target}/{self.ctx.name}")
        assert self.ctx.workdir.is_dir()
        (self.ctx.workdir / "state").write_text("x")
        if self.ctx.settings.say:
            self.ctx.transcript.write(self.ctx.settings.say + "\\n")
        if self.ctx.settings.interrupt_start:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a boot
        if self.ctx.settings.fail_start:
            raise DriverError(self.ctx.name, "power supply says no (expected 12 V, found 0 V)")
        board = self.ctx.refs.get("board")
        if board is not None:
            assert board.started, "referred device must be started first"
        self.started = True

    def stop(self):
        if self.ctx.settings.slow_stop and self.started:
            self.started = False
            print("STOPPING", flush=True)
            import threading
            threading.Event().wait(60)  # interrupted by the test's SIGTERM
        self.note(f"stop {self.ctx.target}/{self.ctx.name}")
        self.started = False

    def restore(self, mode):
        self.note(f"reset {self.ctx.name} {mode}")
        return None if self.ctx.settings.can_reset else "the board has no snapshot support"


class Other(Rec):
    name = "other"
    role = "other"


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Rec, Other]


@pytest.hookimpl
def pytest_jumpstarter_device_ready(device, item):
    device.note(f"ready {device.ctx.name} for {item.name if item else None}")


@pytest.hookimpl
def pytest_jumpstarter_device_teardown(device, item):
    device.note(f"teardown {device.ctx.name} after {item.name if item else None}")


rec = device_fixture("rec")
other = device_fixture("other")
"""


def events(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def write(pytester: pytest.Pytester, name: str, text: str) -> Path:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
