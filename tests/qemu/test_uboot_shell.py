"""U-Boot's shell as a suite written by U-Boot people uses it: any line it takes, resets seen at once,
interrupts, a resync after a timeout, the boot log.  On the demo arm64 U-Boot board."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import UBOOT_ARM64, require_images
from qemu_board_helpers import board_from, uboot_settings

from pytest_jumpstarter.errors import BoardReset, ConsoleTimeout, DriverError

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def uboot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuBoard]:
    board = board_from(uboot_settings(require_images(UBOOT_ARM64)), tmp_path_factory.mktemp("ubsh"))
    board.start()
    yield board
    board.stop()


def test_a_500_character_command_runs(uboot: QemuBoard) -> None:
    word = "x" * 495
    result = uboot.uboot.run(f"echo {word}")
    assert (len(result.command), result.status, result.output) == (500, 0, word)


def test_a_line_longer_than_uboot_takes_fails_at_once_naming_the_limit(uboot: QemuBoard) -> None:
    with pytest.raises(DriverError, match="at most 511"):
        uboot.uboot.run("echo " + "y" * 600)
    assert uboot.uboot.run("echo still").output == "still"


def test_a_comment_does_not_hide_the_end(uboot: QemuBoard) -> None:
    result = uboot.uboot.run("echo a # comment")
    assert (result.output, result.status) == ("a", 0)


def test_a_syntax_error_returns_at_once_with_hush_message_and_a_failed_status(uboot: QemuBoard) -> None:
    start = time.monotonic()
    result = uboot.uboot.run("echo a | echo b", timeout=20)
    assert result.status != 0 and "syntax error" in result.output
    assert time.monotonic() - start < 10  # not the timeout
    assert uboot.uboot.run("echo next").output == "next"


def test_output_without_a_final_newline_and_empty_lines(uboot: QemuBoard) -> None:
    assert uboot.uboot.run("echo -n abc").output == "abc"
    assert uboot.uboot.run("").status == 0
    # An empty line must not replay the previous command (U-Boot repeats the last one on Enter).
    assert uboot.uboot.run("echo after-empty").output == "after-empty"


def test_escapes_are_removed_from_uboot_output(uboot: QemuBoard) -> None:
    assert uboot.uboot.run("echo \x1b[1mbold\x1b[0m").output == "bold"


def test_after_a_timed_out_run_the_next_run_succeeds(uboot: QemuBoard) -> None:
    with pytest.raises(ConsoleTimeout, match="interrupted; the shell is back at an idle prompt"):
        uboot.uboot.run("sleep 6", timeout=1)
    result = uboot.uboot.run("echo clean", timeout=5)
    assert (result.output, result.status) == ("clean", 0)


def test_interrupt_and_raw_mode(uboot: QemuBoard) -> None:
    shell = uboot.uboot
    shell.raw("sleep 10", wait_prompt=False)
    start = time.monotonic()
    shell.interrupt()
    assert time.monotonic() - start < 5
    assert shell.raw("echo raw") == "\r\nraw\r\n" or "raw" in shell.raw("echo raw")


def test_boot_log_has_everything_since_power_on(uboot: QemuBoard) -> None:
    log = uboot.console.boot_log
    assert log.lstrip().startswith("U-Boot") or "U-Boot 20" in log.splitlines()[0:5][-1] or "U-Boot 20" in log
    assert "echo still" in log


def test_a_reset_inside_run_fails_at_once_saying_the_board_reset(uboot: QemuBoard) -> None:
    # BoardReset, not ConsoleTimeout: the wait ended on the reset's evidence, not its 30 s deadline
    # (on the demo board it ends well under 1 s; the bound is not asserted, times are for benchmarks).
    with pytest.raises(BoardReset, match="reset") as info:
        uboot.uboot.run("reset", timeout=30)
    assert "the board reset while running 'reset'" in str(info.value)
    assert "resetting ..." in str(info.value) or "QMP event RESET" in str(info.value)
    # The same text is not diagnosed again: the board comes back and runs commands.
    uboot.uboot.interrupt(30)
    assert uboot.uboot.run("echo back").output == "back"


def test_a_reset_from_outside_under_a_command_ends_it_at_once(uboot: QemuBoard) -> None:
    # No "resetting ..." here: QEMU resets the board (its RESET event, then U-Boot's new sign-on).
    timer = threading.Timer(0.3, uboot.execute, ("system_reset",))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(BoardReset, match="the board reset while running 'sleep 20'"):
            uboot.uboot.run("sleep 20", timeout=30)
    finally:
        timer.join()
    assert time.monotonic() - start < 5  # not the 20 s sleep nor the 30 s timeout
    uboot.uboot.interrupt(30)
    assert uboot.uboot.run("echo back").output == "back"
