"""The serial examples in conftest_examples/ run as documented, from YAML and from ini."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "conftest_examples"


@pytest.mark.parametrize(
    ("board", "name"), [("serial_board.yaml", "serial-demo"), ("serial_board.ini", "serial-demo-ini")]
)
def test_serial_examples_pass_on_the_demo_board(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, board: str, name: str
) -> None:
    monkeypatch.delenv("SERIAL_URL", raising=False)
    monkeypatch.setenv("BOARD_PASSWORD", "letmein-example")
    result = pytester.runpytest(
        str(EXAMPLES / "test_serial_examples.py"),
        f"--target={EXAMPLES / board}",
        "-v",
        f"--rootdir={EXAMPLES}",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"*test_console_answers[[]{name}[]] PASSED*"])
