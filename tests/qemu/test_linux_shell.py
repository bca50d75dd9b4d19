"""console.run() on a real BusyBox shell: the marker functions are defined once per shell, and a shell
that lacks them (a nested shell, one whose functions were removed) gets them without the command
running twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import board_from, linux_settings

pytestmark = pytest.mark.qemu


class Definitions:
    """Counts the shell's definitions of the marker functions (the echo of the line is no count: a
    line typed ahead while the shell still prints is echoed twice, once by the tty)."""

    def __init__(self, board: QemuBoard, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        shell = board.console.shell
        define = shell._define_helpers

        def counted(*args: object) -> bool:
            self.count += 1
            return bool(define(*args))

        monkeypatch.setattr(shell, "_define_helpers", counted)


@pytest.fixture(scope="module")
def board(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuBoard]:
    board = board_from(linux_settings(images, network="none"), tmp_path_factory.mktemp("board"))
    board.start()
    yield board
    board.stop()


@pytest.fixture
def definitions(board: QemuBoard, monkeypatch: pytest.MonkeyPatch) -> Definitions:
    return Definitions(board, monkeypatch)


def test_the_functions_are_defined_once_and_each_command_sends_the_short_line(
    board: QemuBoard, definitions: Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    board.console.run("true").check()
    assert definitions.count <= 1  # once, unless the board's start defined them already
    sent: list[str] = []
    sendline = board.console.sendline
    monkeypatch.setattr(board.console, "sendline", lambda line: (sent.append(line), sendline(line))[1])
    for n in range(5):
        assert board.console.run(f"echo n{n}; false").output == f"n{n}"
    assert board.console.run("false").status == 1
    assert board.console.run("exit_with() { return $1; }; exit_with 7").status == 7
    assert definitions.count <= 1
    # One short line each: no printf frame, no second line.
    assert len(sent) == 7 and all(line.startswith("_jB ") and "\n" not in line for line in sent), sent


def test_a_nested_shell_gets_the_functions_and_the_command_runs_once(
    board: QemuBoard, definitions: Definitions
) -> None:
    shell = board.console.shell
    board.console.run("rm -f /tmp/once").check()
    shell.raw("sh")  # a new shell: it has no functions of its parent's
    try:
        assert board.console.run("echo inner $$ >> /tmp/once; cat /tmp/once | wc -l").output == "1"
        assert definitions.count == 1
        assert board.console.run("false").status == 1
    finally:
        shell.raw("exit")
    # Back in the outer shell, whose functions were there all along.
    assert board.console.run("wc -l < /tmp/once").output == "1"
    assert definitions.count == 1


def test_commands_that_name_the_functions_run_and_removing_them_is_survived(
    board: QemuBoard, definitions: Definitions
) -> None:
    assert "function" in board.console.run("type _jE").check().output
    board.console.run("unset -f _jB _jE").check()
    assert board.console.run("type _jB").status != 0
    assert board.console.run("echo back").output == "back"
    assert definitions.count == 1
    assert board.console.run("type _jB").status == 0


def test_a_syntax_error_is_status_2_with_the_shells_message_and_runs_nothing(board: QemuBoard) -> None:
    board.console.run("rm -f /tmp/ran").check()
    result = board.console.run("touch /tmp/ran; echo (")
    assert result.status == 2 and "syntax error" in result.output
    assert board.console.run("test -e /tmp/ran").status == 1
    # The same in a shell without the functions: the syntax error wins over the missing function.
    board.console.run("unset -f _jB _jE").check()
    result = board.console.run("touch /tmp/ran; echo (")
    assert result.status == 2 and "syntax error" in result.output
    assert board.console.run("test -e /tmp/ran").status == 1


def test_a_command_that_prints_the_missing_message_is_not_mistaken_for_it(board: QemuBoard) -> None:
    result = board.console.run("echo 'sh: _jB: not found'; echo 'bash: _jB: command not found'")
    assert result.output == "sh: _jB: not found\nbash: _jB: command not found"
    assert board.console.run("printf '%s\\n' 'not found'").output == "not found"


@pytest.mark.parametrize(
    ("command", "output", "status"),
    [
        ("echo a # a comment; false", "a", 0),  # the comment would hide a `}` on its line
        ("false; echo b;", "b", 0),
        ("sleep 0.05 &", "", 0),
        ("echo c |\ncat", "c", 0),
        ("cat <<EOF\nd\nEOF", "d", 0),
        ("echo '#' && echo f; (exit 3)", "#\nf", 3),
        ("test 1 = 2", "", 1),
    ],
)
def test_comments_background_jobs_pipes_and_here_documents_come_back_whole(
    board: QemuBoard, command: str, output: str, status: int
) -> None:
    result = board.console.run(command)
    assert (result.output, result.status) == (output, status)
    assert board.console.run("echo next").output == "next"
