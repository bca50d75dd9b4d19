"""Faults of the test runner around real QEMU boards: a killed xdist worker, pytest-timeout's two methods."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fault_support import board_yaml, first_line_with, leftovers, record, start_inner
from pytest_jumpstarter_qemu.images import Images

pytest.importorskip("xdist", reason="needs pytest-xdist (the [test] extra)")
pytest.importorskip("pytest_timeout", reason="needs pytest-timeout (the [test] extra)")

XDIST_TEST = """
import os, threading

def test_victim(qemu_vm):
    open(os.path.join(os.environ["FAULT_DIR"], "victim-%d" % os.getpid()), "w").close()
    threading.Event().wait(120)

def test_one(qemu_vm):
    assert qemu_vm.console.run("echo one").output == "one"

def test_two(qemu_vm):
    assert qemu_vm.console.run("echo two").output == "two"
"""


def test_a_killed_xdist_worker_is_replaced_and_the_replacement_sweeps_its_folders(
    tmp_path: Path, images: Images
) -> None:
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(XDIST_TEST)
    # loadfile would put every test on the victim's worker: each test goes where a worker is free.
    inner = start_inner(tmp_path, "--target=board.yaml", "-n", "2", "--dist=load", "-rA")
    flag = inner.wait_for_file_glob("victim-*")
    worker = int(flag.name.split("-")[1])
    victim = [r for r in inner.recorded() if r["pid"] == worker]
    sent = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    code = inner.finish()
    took = time.monotonic() - sent
    # The replacement worker sweeps the dead one's work root at its start (a zombie is dead).
    left = leftovers(inner)
    seen = first_line_with(inner.text, "replacing crashed worker")
    record(
        "an xdist worker SIGKILLed mid-test",
        f"{seen}; {first_line_with(inner.text, 'FAILED', 'test_victim')}; its QEMU died with it "
        "and the replacement worker swept its work folder",
        left,
        took,
        code,
    )
    assert victim and victim[0]["test"] == "test_board.py::test_victim[demo]", inner.recorded()
    assert "replacing crashed worker" in inner.text, inner.text
    assert "1 failed, 2 passed" in inner.text, inner.text
    assert not left, left


HUNG_TEST = """
def test_hung(qemu_vm):
    print("IN-TEST", flush=True)
    qemu_vm.console.run("echo HUNG-MARK; sleep 600", timeout=300)

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo back").output == "back"
"""


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_pytest_timeout_on_a_test_hung_in_console_run_reports_the_console_tail(
    tmp_path: Path, images: Images, method: str
) -> None:
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(HUNG_TEST)
    inner = start_inner(
        tmp_path, "--target=board.yaml", "--timeout=10", f"--timeout-method={method}", "--junitxml=junit.xml"
    )
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    code = inner.finish()
    took = time.monotonic() - sent
    left = leftovers(inner)
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    failure = next(iter(junit.iter("failure")), None)
    text = "" if failure is None else (failure.get("message") or "") + (failure.text or "")
    seen = first_line_with(text, "ConsoleTimeout") or first_line_with(inner.text, "Timeout")
    record(f"pytest-timeout ({method} method), test hung in console.run", seen, left, took, code)
    # The plugin's own wait ends first, within the budget: the test fails with the console tail.
    assert "ConsoleTimeout" in text and "HUNG-MARK" in text, text or inner.text
    assert "(not interrupted: the test's pytest-timeout budget is spent)" in text, text
    assert "1 failed, 1 passed" in inner.text, inner.text
    assert not left, left


ASLEEP_TEST = """
import threading

def test_asleep(qemu_vm):
    print("IN-TEST", flush=True)
    threading.Event().wait(600)  # not a console wait: no deadline of ours ends it

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo still-here").output == "still-here"
"""


def test_pytest_timeout_thread_method_outside_the_console_fails_the_test_and_the_run_goes_on(
    tmp_path: Path, images: Images
) -> None:
    """pytest-timeout's thread method would dump stacks and ``os._exit`` the run; the plugin's watchdog
    interrupts the main thread just before, so the test fails with its console tail, the kept board is
    restored, the next test passes, and the run ends with its reports."""
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(ASLEEP_TEST)
    inner = start_inner(
        tmp_path, "--target=board.yaml", "--timeout=8", "--timeout-method=thread", "--junitxml=junit.xml"
    )
    inner.wait_for(b"IN-TEST")
    sent = time.monotonic()
    code = inner.finish()
    took = time.monotonic() - sent
    qemu = inner.qemu_pid()
    left = leftovers(inner)
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    cases = {str(case.get("name")).split("[")[0]: case for case in junit.iter("testcase")}
    failure = cases["test_asleep"].find("failure") if "test_asleep" in cases else None
    message = "" if failure is None else (failure.get("message") or "") + (failure.text or "")
    after = cases.get("test_after")
    after_passed = after is not None and not any(
        after.find(tag) is not None for tag in ("failure", "error", "skipped")
    )
    record(
        "pytest-timeout (thread method), test hung outside the console",
        f"pytest exits {code}; {first_line_with(message, 'imeout') or 'no failure message'}; "
        f"the next test {'passed' if after_passed else 'did not pass'}; "
        f"QEMU {qemu} stopped at the end",
        left,
        took,
        code,
    )
    assert code == 1, inner.text
    assert failure is not None and "test_asleep" in message, inner.text
    assert after_passed, inner.text
    assert "+++ Timeout +++" not in inner.text, inner.text  # pytest-timeout's kill never came
    assert not left, left
