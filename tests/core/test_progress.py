"""Boot, flash and lease waits on the terminal: a ticking line on a tty, plain lines in CI logs, nothing
with -q.  The tty case runs pytest on a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from core_support import write

#: A driver whose start takes ``boot`` seconds, like a real board's boot; CI mode's "still going"
#: line after 1 s instead of 10 s, so a short boot shows one.
SLOW_CONFTEST = """
import threading
from dataclasses import dataclass

import pytest
import pytest_jumpstarter.progress as progress
from pytest_jumpstarter import Driver, device_fixture

progress.TerminalProgress.quiet = 1.0


@dataclass(frozen=True, kw_only=True)
class SlowSettings:
    boot: float = 3.0


class Slow(Driver[SlowSettings]):
    name = "slow"
    role = "slow"

    def start(self):
        self.ctx.progress("slow: power on")
        self.boot()
        self.started = True

    def boot(self):
        with self.ctx.activity("booting"):
            threading.Event().wait(self.ctx.settings.boot)  # the board boots

    def stop(self):
        self.started = False


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Slow]


slow = device_fixture("slow")
"""


@pytest.fixture
def slow(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(SLOW_CONFTEST)
    write(pytester, "t.yaml", "name: t\ndevices:\n  slow: {driver: slow}\n")
    pytester.makepyfile(
        test_boot="def test_boot(slow):\n    assert slow.started\n",
        test_reboot="def test_reboot_in_the_test(slow):\n    slow.boot()\n",
    )
    return pytester


def test_without_a_tty_a_slow_boot_shows_plain_lines_and_nothing_with_q(slow: pytest.Pytester) -> None:
    result = slow.runpytest("--target=t.yaml", "test_boot.py", "test_reboot.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "jumpstarter: slow: starting ...",
            "jumpstarter: slow: starting ... [12]s: booting",  # the boot is part of the start's line
            "jumpstarter: slow: starting: done in *s",
            # A boot the test asks for is a line of its own.
            "jumpstarter: slow: booting ... [12]s",
            "jumpstarter: slow: booting: done in *s",
        ]
    )
    out = result.stdout.str()
    assert "\r" not in out and "slow: slow" not in out
    assert out.count("jumpstarter: slow: booting: done") == 1  # the test's boot, not the start's
    quiet = slow.runpytest("--target=t.yaml", "-q", "test_boot.py")
    quiet.assert_outcomes(passed=1)
    assert "jumpstarter:" not in quiet.stdout.str()


def test_on_a_tty_a_slow_boot_is_one_line_whose_elapsed_time_ticks(slow: pytest.Pytester) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "pytest", "-p", "no:cacheprovider", "--color=no", "--target=t.yaml", "test_boot.py"],
        cwd=str(slow.path),
        env=dict(os.environ),
        encoding="utf-8",
        timeout=120,
    )
    child.expect(pexpect.EOF)
    out = child.before
    child.close()
    assert child.exitstatus == 0, out
    (line,) = [line for line in out.split("\n") if "jumpstarter: slow:" in line]
    # Rewritten in place (carriage returns, no new lines): the start, the ticks, the end.
    shown = [part.rstrip() for part in line.split("\r") if part.strip()]
    assert shown[0] == "jumpstarter: slow: starting ..."
    assert "jumpstarter: slow: starting ...: power on" in shown
    assert {
        "jumpstarter: slow: starting ... 1s: booting",
        "jumpstarter: slow: starting ... 2s: booting",
    } & set(shown), shown
    assert shown[-1].startswith("jumpstarter: slow: starting: done in ")


def test_a_wait_for_an_exclusive_device_shows_its_elapsed_time(rec_pytester: pytest.Pytester) -> None:
    from pytest_jumpstarter.locking import DeviceLease

    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  rec: {driver: rec, exclusive: true}\n")
    rec_pytester.makepyfile(
        "import pytest_jumpstarter.progress as progress\n\n"
        "progress.TerminalProgress.quiet = 1.0\n\n\n"
        "def test_boot(rec):\n    pass\n"
    )
    lease = DeviceLease("t/rec", lock_dir=rec_pytester.path / "locks", owner="the other run")
    lease.acquire(5)
    releaser = threading.Timer(3.0, lease.release)
    releaser.start()
    try:
        result = rec_pytester.runpytest_subprocess("--target=t.yaml", "--jumpstarter-lock-dir=locks")
    finally:
        releaser.cancel()
        releaser.join()
        if lease.held:
            lease.release()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "jumpstarter: waiting for exclusive device 't/rec', held by *the other run*",
            "jumpstarter: rec: waiting for exclusive device 't/rec' ... [12]s",
            "jumpstarter: rec: waiting for exclusive device 't/rec': done in *s",
            "jumpstarter: rec: starting ...",
        ]
    )
