"""QEMU boards through the plugin (pytester): fixtures, transcripts, a board killed mid-run, no survivors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import qemu_pids

pytestmark = pytest.mark.qemu


def linux_target(pytester: pytest.Pytester, images: Images, device: str = "") -> None:
    pytester.makefile(
        ".yaml",
        board=f"""
        name: qemu-x86_64
        labels: {{arch: x86_64}}
        devices:
          qemu_vm:
            driver: qemu
            kernel: {images.linux_kernel}
            initrd: {images.linux_initrd}
            {device}
        """,
    )


def pids_recorded(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_console_transcript_reaches_the_report_and_the_log_file(
    pytester: pytest.Pytester, images: Images
) -> None:
    linux_target(pytester, images)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.device(arch="x86_64")
        def test_guest_says_hello(qemu_vm):
            assert qemu_vm.console.run("echo hello-from-the-guest").ok
            assert False, "show me the console"
        """
    )
    logdir = pytester.path / "logs"
    result = pytester.runpytest("--target=board.yaml", f"--jumpstarter-logdir={logdir}", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Captured console qemu_vm call*", "hello-from-the-guest"])
    (log,) = logdir.rglob("qemu_vm.log")
    assert "hello-from-the-guest" in log.read_text()
    assert "BusyBox" in log.read_text()  # the boot (setup) is in the test's log as well


def test_a_killed_qemu_fails_its_test_and_the_next_test_gets_a_fresh_board(
    pytester: pytest.Pytester, images: Images
) -> None:
    """One board for the module (reset: reboot): a test kills its QEMU; the next test still gets a board."""
    linux_target(pytester, images, device="scope: module\n            reset: reboot")
    pids = pytester.path / "pids.txt"
    pytester.makepyfile(
        f"""
        import os, signal

        def record(board):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{board.pid}}\\n")

        def test_killed(qemu_vm):
            record(qemu_vm)
            os.kill(qemu_vm.pid, signal.SIGKILL)
            qemu_vm.console.run("echo unreachable")

        def test_next(qemu_vm):
            record(qemu_vm)
            assert qemu_vm.console.run("echo fresh").output == "fresh"
        """
    )
    result = pytester.runpytest("--target=board.yaml", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*DeviceExited*process exited, killed by signal 9*", "*command: qemu-system-x86_64*"]
    )
    first, second = pids_recorded(pids)
    assert first != second
    assert not {first, second} & qemu_pids()  # nothing the run started survives it


def test_a_qemu_that_cannot_start_is_a_clear_setup_error(pytester: pytest.Pytester, images: Images) -> None:
    linux_target(pytester, images, device="extra_args: [-no-such-option]")
    pytester.makepyfile("def test_boot(qemu_vm):\n    pass\n")
    result = pytester.runpytest("--target=board.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*exited with code 1*while starting*", "*invalid option*"])


def test_bad_disk_and_network_values_point_at_their_own_line(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        board="""
        name: q
        devices:
          qemu_vm:
            driver: qemu
            kernel: /k
            disks:
              root: {file: r.img, format: vmdk}
              blank: {}
            network:
              forwards:
                ssh: 70000
        """,
    )
    pytester.makepyfile("def test_boot(qemu_vm):\n    pass\n")
    result = pytester.runpytest("--target=board.yaml")
    result.stderr.fnmatch_lines_random(
        [
            "*board.yaml:7: devices.qemu_vm.disks.root.format: expected one of 'raw', 'qcow2'*vmdk*",
            "*board.yaml:8: devices.qemu_vm.disks.blank: give a file or a size*",
            "*board.yaml:11: devices.qemu_vm.network.forwards.ssh: expected a port 1-65535, found 70000*",
        ]
    )


def test_a_hang_outside_the_console_under_the_thread_method_fails_alone(
    pytester: pytest.Pytester, images: Images
) -> None:
    """pytest-timeout's thread method would end the run; the test fails with its console tail instead,
    and the next test gets a fresh board (the kept one was left mid-test)."""
    linux_target(pytester, images, device="scope: session")
    pytester.makepyfile(
        """
        import time

        def test_hangs(qemu_vm):
            qemu_vm.console.run("echo the-job-started")
            time.sleep(120)

        def test_next(qemu_vm):
            assert qemu_vm.console.run("echo fresh").output == "fresh"
        """
    )
    result = pytester.runpytest_subprocess(
        "--target=board.yaml",
        "--timeout=5",
        "--timeout-method=thread",
        "-o",
        "timeout_func_only=true",  # the boots are bounded by boot_timeout, the budget is the tests'
        "--junitxml=out.xml",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=1, failed=1)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").iter("testcase")}
    failure = cases["test_hangs[qemu-x86_64]"].find("failure")
    assert failure is not None and "jumpstarter interrupted it" in (failure.text or "")
    assert "the-job-started" in (failure.text or "").partition("last console lines of qemu_vm:")[2]
    out = "".join(n.text or "" for n in cases["test_hangs[qemu-x86_64]"].iter("system-out"))
    assert "the-job-started" in out
    assert cases["test_next[qemu-x86_64]"].find("failure") is None
