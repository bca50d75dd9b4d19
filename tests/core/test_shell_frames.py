"""Which line console.run() sends: the short frame where the shell has the marker functions, their
definition once where it has not, and the long frame for a shell that cannot define them."""

from __future__ import annotations

import re

import pytest

from pytest_jumpstarter import Console
from pytest_jumpstarter.errors import DriverError


class Shell:
    """A Transport that answers like a shell: with or without the functions, able to define them or not."""

    def __init__(self, *, has_functions: bool, can_define: bool) -> None:
        self.has_functions = has_functions
        self.can_define = can_define
        self.lines: list[str] = []
        self.pending = b""

    def write(self, data: bytes) -> None:
        line = data.decode()
        self.lines.append(line)
        if line.startswith("_jB("):
            if self.can_define:
                self.has_functions = True
                sync = re.search(r"\\36S(\w+)\\36", line)
                assert sync
                self.pending += f"\x1eS{sync.group(1)}\x1e\r\n# ".encode()
            else:
                self.pending += b"\r\nsh: syntax error: unexpected (\r\n# "
            return
        short = re.match(r"_jB (\w+)&&\{ (.*)(?:\n|;)\};_jE \1", line, re.S)
        long = re.match(r"printf '\\36B(\w+)\\36\\n';\{ (.*)\n\};printf", line, re.S)
        if short and not self.has_functions:
            self.pending += b"\r\nsh: _jB: not found\r\nsh: _jE: not found\r\n# "
            return
        match = short or long
        assert match, line
        token, command = match.groups()
        self.pending += (
            f"\x1eB{token}\x1e\r\n{command.removeprefix('echo ')}\r\n\x1eE{token}:0\x1e\r\n# ".encode()
        )

    def read(self, size: int, timeout: float | None) -> bytes:
        chunk, self.pending = self.pending[:size], self.pending[size:]
        return chunk

    def close(self) -> None:
        pass


def kinds(lines: list[str]) -> list[str]:
    return ["define" if s.startswith("_jB(") else "short" if s.startswith("_jB") else "long" for s in lines]


def test_a_shell_with_the_functions_gets_the_short_line_only() -> None:
    shell = Shell(has_functions=True, can_define=True)
    console = Console(shell, device="dut", timeout=2.0)
    assert [console.run(f"echo {n}").output for n in "ab"] == ["a", "b"]
    assert kinds(shell.lines) == ["short", "short"]


def test_a_shell_without_them_gets_them_defined_once_and_the_command_again() -> None:
    shell = Shell(has_functions=False, can_define=True)
    console = Console(shell, device="dut", timeout=2.0)
    assert [console.run(f"echo {n}").output for n in "ab"] == ["a", "b"]
    assert kinds(shell.lines) == ["short", "define", "short", "short"]


def test_a_shell_that_cannot_define_them_falls_back_to_the_long_frame_for_good() -> None:
    shell = Shell(has_functions=False, can_define=False)
    console = Console(shell, device="dut", timeout=2.0)
    assert [console.run(f"echo {n}").output for n in "ab"] == ["a", "b"]
    assert kinds(shell.lines) == ["short", "define", "long", "long"]


def test_a_command_that_names_the_functions_goes_in_the_long_frame() -> None:
    shell = Shell(has_functions=True, can_define=True)
    console = Console(shell, device="dut", timeout=2.0)
    assert console.run("echo _jB: not found").output == "_jB: not found"
    assert kinds(shell.lines) == ["long"]


class Replay:
    """A Transport that answers each command line with ``reply(token)``."""

    def __init__(self, reply: object) -> None:
        self.reply = reply
        self.pending = b""

    def write(self, data: bytes) -> None:
        token = re.match(rb"_jB (\w+)&&", data)
        assert token, data
        self.pending += self.reply(token.group(1).decode())  # type: ignore[operator]

    def read(self, size: int, timeout: float | None) -> bytes:
        chunk, self.pending = self.pending[:size], self.pending[size:]
        return chunk

    def close(self) -> None:
        pass


def test_markers_of_an_earlier_command_are_text_not_this_commands_markers() -> None:
    def reply(token: str) -> bytes:
        return (
            f"\x1eBold1\x1e\r\nlate output\r\n\x1eEold1:5\x1e\r\n"  # a command that timed out earlier
            f"\x1eB{token}\x1e\r\nmine\r\n\x1eEold2:7\x1e\r\nmore\r\n\x1eE{token}:3\x1e\r\n# "
        ).encode()

    result = Console(Replay(reply), device="dut", timeout=2.0).run("anything")
    assert (result.output, result.status) == ("mine\n\x1eEold2:7\x1e\nmore", 3)


def test_a_command_ending_in_a_backslash_is_refused_before_anything_is_sent() -> None:
    shell = Shell(has_functions=True, can_define=True)
    console = Console(shell, device="dut", timeout=2.0)
    with pytest.raises(DriverError, match=r"device 'dut': command 'echo a \\\\' ends with a backslash"):
        console.run("echo a \\")
    assert shell.lines == []
    # An escaped backslash, and an escaped space, are the command's own business.
    assert console.run("echo a \\\\").output == "a \\\\"
    assert console.run("echo a \\ ").output == "a \\ "
