"""Example tests on a serial console (see serial_board.yaml; the demo board is loop://, an echo).

pytest conftest_examples --target=conftest_examples/serial_board.yaml
"""

from __future__ import annotations

import pytest

serial_board = pytest.mark.device("console", console="serial")


@serial_board
def test_console_answers(console):
    console.sendline("help")
    console.expect("help")


@serial_board
def test_expect_a_pattern_list(console):
    console.sendline("U-Boot 2023.01 (Jan 01 2023)")
    index = console.expect([r"U-Boot (\d+\.\d+)", "Linux version"])
    assert index == 0
    assert console.match.group(1) == "2023.01"


@serial_board
def test_target_knows_its_labels(target, console):
    assert target.labels["console"] == "serial"
    assert target.device("console") is console
