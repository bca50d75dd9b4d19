"""The composite board and command-power without QEMU: load-time checks of their parts, reboot between
tests, an off board's console, and what a failing power command says.  Real processes and sockets:
the power commands run, the console is a TCP server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from board_support import FakeConsoleServer
from pytest_jumpstarter_board.board import Board
from pytest_jumpstarter_board.command_power import CommandPower

from pytest_jumpstarter import (
    Addressable,
    DeviceContext,
    DriverError,
    HasConsole,
    Power,
    PowerState,
    SettingValueError,
    TftpHost,
)

PY = sys.executable


def note(word: str) -> str:
    """A power command that appends ``word`` to power.log in the target's folder."""
    return json.dumps([PY, "-c", f"open('power.log', 'a').write('{word}\\n')"])


def target(port: int, extra: str = "") -> str:
    return f"""
name: lab
devices:
  relay:
    driver: command-power
    on_command: {note("on")}
    off_command: {note("off")}
    cycle_delay: 0
  uart:
    driver: serial
    url: socket://127.0.0.1:{port}
    open_at_start: false
  lab:
    driver: board
    power: relay
    console: uart
    ready: fake-board ready
    boot_timeout: 5s
    scope: session
    reset: reboot
{extra}"""


# --- its parts, checked when the target loads ------------------------------------------------------


@pytest.mark.parametrize(
    ("power", "console", "message"),
    [
        (
            "uart",
            "uart",
            "devices.lab.power: device 'uart' (driver serial) does not provide Power (on, off, cycle)",
        ),
        (
            "relay",
            "relay",
            "devices.lab.console: device 'relay' (driver command-power) does not provide HasConsole (console)",
        ),
    ],
)
def test_a_part_that_cannot_do_its_job_is_a_located_usage_error(
    pytester: pytest.Pytester, power: str, console: str, message: str
) -> None:
    path = pytester.makefile(
        ".yaml",
        target=f"""
name: lab
devices:
  relay:
    driver: command-power
    on_command: [relayctl, '1', 'on']
    off_command: [relayctl, '1', 'off']
  uart:
    driver: serial
    url: loop://
  lab:
    driver: board
    power: {power}
    console: {console}
""",
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    key = "power:" if power == "uart" else "console:"
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(key))
    result.stderr.fnmatch_lines([f"*target.yaml:{line}: {message}*"])


NEEDS_TFTP = """
from dataclasses import dataclass
from pytest_jumpstarter import Driver, TftpHost, setting


@dataclass(frozen=True, kw_only=True)
class NetbootSettings:
    board: str = setting(kind="ref", needs=(TftpHost,))


class Netboot(Driver[NetbootSettings]):
    name = "netboot"
    role = "netboot"


def pytest_jumpstarter_add_drivers():
    return [Netboot]
"""


def test_a_board_provides_tftp_only_with_a_tftp_root(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NEEDS_TFTP)
    pytester.makefile(".yaml", target=target(1, "  netboot:\n    driver: netboot\n    board: lab\n"))
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*devices.netboot.board: device 'lab' (driver board) does not provide TftpHost (tftp_root)*"]
    )


def test_what_a_board_provides_follows_its_settings(tmp_path: Path) -> None:
    plain = Board.settings_from({"power": "relay", "console": "uart"})
    full = Board.settings_from(
        {"power": "relay", "console": "uart", "tftp_root": str(tmp_path), "address": "10.1.2.3"}
    )
    assert {Power, PowerState, HasConsole} <= set(Board.provides(plain))
    assert TftpHost not in Board.provides(plain) and Addressable not in Board.provides(plain)
    assert {TftpHost, Addressable} <= set(Board.provides(full))
    with pytest.raises(SettingValueError, match="tftp_root: expected an existing folder"):
        Board.settings_from({"power": "relay", "console": "uart", "tftp_root": str(tmp_path / "nope")})
    with pytest.raises(SettingValueError, match="ready: expected a regular expression"):
        Board.settings_from({"power": "relay", "console": "uart", "ready": "(unclosed"})


# --- reset: reboot and an off board ----------------------------------------------------------------

LIFE_TESTS = """
import pytest
from pathlib import Path
from pytest_jumpstarter import DeviceStateError


def test_first(board):
    assert board.console.run  # started: power cycled, console reconnected, ready seen


def test_second_is_rebooted(board):
    assert Path("power.log").read_text().split() == ["off", "on", "off", "on"]


def test_an_off_board_says_so(board):
    console = board.console
    board.off()
    with pytest.raises(DeviceStateError, match="board 'lab' is off: its console .device 'uart'. shows nothing"):
        board.console
    with pytest.raises(DeviceStateError, match="board 'lab' is off"):
        console.expect("never", timeout=30)
"""


def test_reset_reboot_cycles_the_power_and_waits_for_ready_then_off_is_reported_as_off(
    pytester: pytest.Pytester, console_server: FakeConsoleServer
) -> None:
    pytester.makefile(".yaml", target=target(console_server.port))
    pytester.makepyfile(test_life=LIFE_TESTS)
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # start: cycle; before tests 2 and 3: cycle; test 3: off; the session's end: nothing more (it is off)
    assert (pytester.path / "power.log").read_text().split() == ["off", "on"] * 3 + ["off"]
    assert console_server.connections == 3  # reopened after each power-on


def test_a_board_that_never_gets_ready_names_itself_and_the_pattern(
    pytester: pytest.Pytester, console_server: FakeConsoleServer
) -> None:
    text = (
        target(console_server.port)
        .replace("ready: fake-board ready", "ready: 'login:'")
        .replace("5s", "0.5s")
    )
    pytester.makefile(".yaml", target=text)
    pytester.makepyfile("def test_it(board): pass")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*device 'lab': timed out after 0.5s waiting for the ready pattern 'login:' after a power cycle*"]
    )
    # A failed start switches the power off again.
    assert (pytester.path / "power.log").read_text().split() == ["off", "on", "off"]


# --- command-power ---------------------------------------------------------------------------------


def power(tmp_path: Path, **values: object) -> CommandPower:
    settings = CommandPower.settings_from({"on_command": ["true"], "off_command": ["true"], **values})
    driver = CommandPower(DeviceContext(name="relay", target="lab", settings=settings, workdir=tmp_path))
    driver.start()
    return driver


def test_a_failing_power_command_reports_action_argv_status_and_stderr(tmp_path: Path) -> None:
    relay = power(tmp_path, on_command=["sh", "-c", "echo relay 3 is stuck >&2; exit 3"])
    with pytest.raises(DriverError) as info:
        relay.on()
    assert str(info.value) == (
        "device 'relay': power on command \"sh -c 'echo relay 3 is stuck >&2; exit 3'\" failed with exit "
        "status 3; stderr: relay 3 is stuck"
    )


def test_a_power_command_that_hangs_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    # The command's child keeps running after it: its whole group is stopped.
    relay = power(tmp_path, off_command=["sh", "-c", "echo switching >&2; sleep 60 & wait"], timeout="0.3s")
    with pytest.raises(
        DriverError,
        match=r"power off command .* did not finish within 0.3s \(stopped it\); stderr: switching",
    ):
        relay.off()


def test_cycle_is_off_then_on_unless_a_cycle_command_is_given(tmp_path: Path) -> None:
    log = tmp_path / "log"
    step = lambda word: [PY, "-c", f"open({str(log)!r}, 'a').write('{word} ')"]  # noqa: E731
    power(tmp_path, on_command=step("on"), off_command=step("off"), cycle_delay=0).cycle()
    assert log.read_text().split() == ["off", "on"]
    power(tmp_path, cycle_command=step("cycle")).cycle()
    assert log.read_text().split() == ["off", "on", "cycle"]


def test_status_exit_zero_means_on_and_without_status_there_is_no_power_state(tmp_path: Path) -> None:
    assert power(tmp_path, status_command=["true"]).is_running
    assert not power(tmp_path, status_command=["false"]).is_running
    no_status = power(tmp_path)
    assert not isinstance(no_status, PowerState)
    assert PowerState not in CommandPower.provides(no_status.ctx.settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"on_command": ["relayctl 1 on"]},
            "on_command: commands run without a shell: expected an argv list",
        ),
        (
            {"off_command": ["relayctl", True]},
            "off_command: item 1: expected a string, found boolean True: YAML",
        ),
        ({"off_command": []}, "off_command: expected a command"),
    ],
)
def test_commands_are_argv_lists_checked_at_load(values: dict[str, object], message: str) -> None:
    with pytest.raises(SettingValueError, match=message):
        CommandPower.settings_from({"on_command": ["true"], "off_command": ["true"], **values})


def test_a_missing_power_program_fails_the_start(tmp_path: Path) -> None:
    settings = CommandPower.settings_from(
        {"on_command": ["no-such-relay-tool", "on"], "off_command": ["true"]}
    )
    relay = CommandPower(DeviceContext(name="relay", target="lab", settings=settings, workdir=tmp_path))
    with pytest.raises(
        DriverError, match="power on command 'no-such-relay-tool on': program 'no-such-relay-tool' not found"
    ):
        relay.start()
