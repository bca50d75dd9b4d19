"""Faults on real QEMU boards: what the user sees, and that nothing is left behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from fault_support import board_yaml, first_line_with, leftovers, record, start_inner
from pytest_jumpstarter_qemu.images import Images

WAITING_TEST = """
import threading

def test_waits(qemu_vm):
    print("IN-TEST", flush=True)
    threading.Event().wait(120)
"""

RUN_TEST = """
def test_runs(qemu_vm):
    print("IN-TEST", flush=True)
    qemu_vm.console.run("sleep 1; echo done", timeout=8)

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo back").output.endswith("back")
"""


def _setup(path: Path, images: Images, test: str, **settings: object) -> None:
    (path / "board.yaml").write_text(board_yaml(images, **settings))
    (path / "test_board.py").write_text(test)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_pytest_tears_everything_down(
    tmp_path: Path, images: Images, signum: signal.Signals
) -> None:
    _setup(tmp_path, images, WAITING_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml")
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    os.kill(inner.proc.pid, signum)
    code = inner.finish()
    took = time.monotonic() - sent
    left = leftovers(inner)
    record(f"{signum.name} to pytest", f"exit {code} (interrupted), teardown ran", left, took, code)
    assert code == pytest.ExitCode.INTERRUPTED, inner.text
    assert not left, left


def test_sigterm_to_the_process_group_tears_everything_down(tmp_path: Path, images: Images) -> None:
    _setup(tmp_path, images, WAITING_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml")
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    os.killpg(inner.proc.pid, signal.SIGTERM)  # QEMU gets it too: the CI runner's cancel
    code = inner.finish()
    left = leftovers(inner)
    record("SIGTERM to the process group", f"exit {code} (interrupted)", left, time.monotonic() - sent, code)
    assert code == pytest.ExitCode.INTERRUPTED, inner.text
    assert not left, left


def test_qemu_killed_mid_test_is_reported_with_its_signal_and_the_next_test_runs(
    tmp_path: Path, images: Images
) -> None:
    _setup(tmp_path, images, RUN_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    os.kill(inner.qemu_pid(), signal.SIGKILL)
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "DeviceExited") or first_line_with(inner.text, "SIGKILL")
    record("QEMU SIGKILLed mid-test", seen, left, time.monotonic() - sent, code)
    assert "SIGKILL" in inner.text and "DeviceExited" in inner.text, inner.text
    assert "1 failed, 1 passed" in inner.text, inner.text
    assert not left, left


def test_a_stopped_qemu_is_a_timeout_that_says_the_process_is_stopped(tmp_path: Path, images: Images) -> None:
    _setup(tmp_path, images, RUN_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    os.kill(inner.qemu_pid(), signal.SIGSTOP)  # the guest "hangs": QEMU runs nothing
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "stopped by a signal")
    record("QEMU stopped (SIGSTOP) mid-test", seen, left, time.monotonic() - sent, code)
    assert "ConsoleTimeout" in inner.text and "is stopped by a signal (process state T" in inner.text, (
        inner.text
    )
    assert "(not interrupted: the device cannot run, see below)" in inner.text, inner.text
    assert "1 failed, 1 passed" in inner.text, inner.text
    assert not left, left


def test_a_sigkilled_run_is_swept_by_the_next_run(tmp_path: Path, images: Images) -> None:
    _setup(tmp_path, images, WAITING_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml")
    inner.wait_for(b"IN-TEST")
    qemu = inner.qemu_pid()
    sent = time.monotonic()
    os.kill(inner.proc.pid, signal.SIGKILL)
    code = inner.finish()
    assert code == -signal.SIGKILL
    (tmp_path / "test_board.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_dev.py").write_text("def test_dev(qemu_vm):\n    pass\n")
    again = start_inner(tmp_path, "--target=board.yaml", "test_board.py")
    assert again.finish() == 0, again.text
    left = leftovers(inner)
    record(
        "pytest SIGKILLed (the next run sweeps)",
        f"QEMU {qemu} died with its parent; next run swept its folders",
        left,
        time.monotonic() - sent,
        code,
    )
    assert not left, left


def test_qemu_dying_at_start_is_reported_with_its_exit_status_and_stderr(
    tmp_path: Path, images: Images
) -> None:
    _setup(tmp_path, images, RUN_TEST, extra_args="[-no-such-option]")
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    sent = time.monotonic()
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "DeviceExited", "exited with code 1")
    record("QEMU dies at start", seen, left, time.monotonic() - sent, code)
    assert re.search(r"DeviceExited: .* exited with code 1 \(QEMU pid \d+\) while starting", inner.text), (
        inner.text
    )
    assert "invalid option" in inner.text, inner.text  # QEMU's own complaint, from its stderr
    assert "2 errors" in inner.text, inner.text  # each test's board is tried again, and says so at once
    assert not left, left


PANIC_TEST = """
def test_panics(qemu_vm):
    print("IN-TEST", flush=True)
    qemu_vm.console.run("echo c > /proc/sysrq-trigger", timeout=60)

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo back").output.endswith("back")
"""


def test_a_guest_panic_fails_the_test_at_once_with_the_panic_and_the_next_test_runs(
    tmp_path: Path, images: Images
) -> None:
    _setup(tmp_path, images, PANIC_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "BoardPanic", "Kernel panic")
    record("the guest panics", seen, left, time.monotonic() - sent, code)
    assert "BoardPanic" in inner.text and "Kernel panic - not syncing" in inner.text, inner.text
    assert "1 failed, 1 passed" in inner.text, inner.text
    assert not left, left
