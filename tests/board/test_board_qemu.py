"""A board made of parts, end to end on real processes: ``command-power`` runs lab_relay.py, which starts
and stops a QEMU U-Boot board (arm64) whose serial is a TCP server; a ``serial`` device reaches it over
``socket://``; QEMU's slirp serves the board's ``tftp_root``.  ``uboot-tftp`` flashes it."""

from __future__ import annotations

import zlib

import pytest
from board_support import MIB, Lab

pytestmark = pytest.mark.qemu

FLASH_TESTS = """
import zlib
from pathlib import Path

IMAGE = Path({image!r})


def test_uboot_tftp_flashes_and_verifies_through_the_board(flasher, board):
    result = flasher.flash(IMAGE, verify=True)
    assert result.verified and result.method == "uboot-tftp"
    assert result.bytes_written == IMAGE.stat().st_size
    # reset_after power-cycled the board (it has no reset line): U-Boot answers again.
    assert board.console.run("echo flashed").output == "flashed"
    assert board.tftp_root == Path({tftp!r}) and not list(board.tftp_root.iterdir())
"""


def test_uboot_tftp_flashes_a_board_made_of_command_power_and_a_serial_console(
    pytester: pytest.Pytester, lab: Lab
) -> None:
    image = pytester.path / "image.bin"
    data = bytes(range(256)) * (4 * MIB // 256) + b"tail of the image"
    image.write_bytes(data)
    pytester.makefile(".yaml", target=lab.target("  flasher:\n    driver: uboot-tftp\n    board: lab\n"))
    pytester.makepyfile(test_flash=FLASH_TESTS.format(image=str(image), tftp=str(lab.tftp)))
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # The host sees what U-Boot wrote, and nothing past it was touched.
    written = lab.disk.read_bytes()
    assert zlib.crc32(written[: len(data)]) == zlib.crc32(data)
    assert written[len(data) : len(data) + 100] == b"\xab" * 100
    # Power-ons: the start (a cycle), the flash session's cycle, the cycle after flashing.
    assert len(lab.pids()) == 3
    assert lab.alive() == []  # the session's end switched it off


REBOOT_TESTS = """
import pytest
from pathlib import Path
from pytest_jumpstarter import DeviceStateError

PIDS = Path({pids!r})


def boots():
    return len(PIDS.read_text().split())


def test_first_use_boots_it(board):
    assert boots() == 1
    assert board.is_running
    board.console.sendline("setenv mark 1")


def test_reset_reboot_power_cycles_and_waits_for_the_prompt(board):
    assert boots() == 2  # restore("reboot") cycled the power: a new QEMU
    assert board.console.run("printenv mark").status != 0  # the environment is fresh


def test_an_off_board_says_its_console_is_off(board):
    console = board.console
    board.off()
    assert not board.is_running  # the relay's status command
    with pytest.raises(DeviceStateError, match="board 'lab' is off"):
        board.console
    with pytest.raises(DeviceStateError, match="board 'lab' is off"):
        console.expect("=> ", timeout=30)  # at once, not after 30 s
    board.on()
    assert board.console.run("echo back").output == "back"
"""


def test_a_composite_board_reboots_between_tests_and_reports_itself_off(
    pytester: pytest.Pytester, lab: Lab
) -> None:
    pytester.makefile(".yaml", target=lab.target())
    pytester.makepyfile(test_reboot=REBOOT_TESTS.format(pids=str(lab.state / "pids.log")))
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # start, reboot before test 2, reboot before test 3, on() in test 3
    assert len(lab.pids()) == 4
    assert lab.alive() == []


SHELL_TESTS = """
import time
import pytest
from pytest_jumpstarter.errors import BoardPanic, BoardReset


def test_the_board_shell_settings_reach_its_console(board):
    # The target file's fatal pattern (hush drops the "" in the echo, so only the output matches).
    with pytest.raises(BoardPanic, match="LAB-FATAL-123"):
        board.console.run('echo LAB-FATAL-""123', timeout=30)
    board.console.shell.interrupt(10)
    # U-Boot's own fatal patterns come with shell: uboot: a reset under a command ends it at once.
    start = time.monotonic()
    with pytest.raises(BoardReset, match="the board reset while running 'reset'"):
        board.console.run("reset", timeout=30)
    assert time.monotonic() - start < 1  # the timeout is 30 s
    board.console.shell.interrupt(30)
    assert board.console.run("echo back").output == "back"
    assert board.console.shell.line_limit == 300
"""


def test_a_composite_board_takes_the_shell_settings(pytester: pytest.Pytester, lab: Lab) -> None:
    shell = "    fatal_patterns: ['LAB-FATAL-[0-9]+']\n    prompt: '=> '\n    line_limit: 300\n"
    pytester.makefile(".yaml", target=lab.target(shell))
    pytester.makepyfile(test_shell=SHELL_TESTS)
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert lab.alive() == []
