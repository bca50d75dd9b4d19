"""Capability contracts and typed settings: what a ``ref`` needs is checked when the target loads,
and a driver gets its settings as the dataclass it declared, nested groups included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest
from core_support import write

from pytest_jumpstarter import (
    DeviceContext,
    DeviceStateError,
    Driver,
    HasConsole,
    Power,
    SettingValueError,
    setting,
)
from pytest_jumpstarter.capabilities import describe_needs, implements, members

PARTS_CONFTEST = """
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_jumpstarter import Driver, HasConsole, Power, device_fixture, setting


@dataclass(frozen=True, kw_only=True)
class Relay:
    port: int = setting(doc="relay number")
    inverted: bool = False


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    relays: dict[str, Relay] = setting({}, doc="named relays")
    main: Relay = setting(doc="the main relay")
    delay: float = setting(0.5, kind="duration")


class RelayPower(Driver[RelaySettings]):
    name = "relay"
    role = "power"

    def on(self): self.ctx.transcript.write(f"on {self.ctx.settings.main.port}\\n")
    def off(self): pass
    def cycle(self): pass


@dataclass(frozen=True, kw_only=True)
class UartSettings:
    path: str = "/dev/null"


class Uart(Driver[UartSettings]):
    name = "uart"
    role = "uart"


@dataclass(frozen=True, kw_only=True)
class FlasherSettings:
    board: str = setting(kind="ref", needs=(Power, HasConsole))
    helper: str | None = setting(None, kind="ref", needs=(Power,))


class Flashy(Driver[FlasherSettings]):
    name = "flashy"
    role = "flasher"


class Both(RelayPower):
    name = "both"
    role = "both"

    @property
    def console(self): raise NotImplementedError


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [RelayPower, Uart, Flashy, Both]


power = device_fixture("power")
"""


def run(pytester: pytest.Pytester, target: str, test: str = "def test_nothing(): pass\n") -> pytest.RunResult:
    pytester.makeconftest(PARTS_CONFTEST)
    write(pytester, "t.yaml", target)
    pytester.makepyfile(test_it=test)
    return pytester.runpytest("--target=t.yaml", "-p", "no:cacheprovider")


def test_a_ref_to_a_device_without_the_needed_capability_is_a_located_usage_error(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        "name: t\n"
        "devices:\n"
        "  uart0: {driver: uart}\n"
        "  relay1: {driver: relay, main: {port: 1}}\n"
        "  dut: {driver: both, main: {port: 2}}\n"
        "  flasher:\n"
        "    driver: flashy\n"
        "    board: uart0\n"
        "    helper: uart0\n",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*t.yaml:8: devices.flasher.board: device 'uart0' (driver uart) does not provide "
            "Power (on, off, cycle) and HasConsole (console); devices that do: dut",
            "*t.yaml:9: devices.flasher.helper: device 'uart0' (driver uart) does not provide "
            "Power (on, off, cycle); devices that do: relay1, dut",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_ref_that_provides_what_it_needs_loads(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        "name: t\ndevices:\n  dut: {driver: both, main: {port: 2}}\n  flasher: {driver: flashy, board: dut}\n",
    )
    result.assert_outcomes(passed=1)


def test_nested_settings_are_built_into_their_dataclasses(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        "name: t\n"
        "devices:\n"
        "  power:\n"
        "    driver: relay\n"
        "    main: {port: 3}\n"
        "    relays: {fan: {port: 4, inverted: yes}}\n",
        "def test_it(power):\n"
        "    s = power.ctx.settings\n"
        "    assert type(s).__name__ == 'RelaySettings'\n"
        "    assert s.main.port == 3 and s.main.inverted is False\n"
        "    assert s.relays['fan'].port == 4 and s.relays['fan'].inverted is True\n"
        "    assert s.delay == 0.5\n",
    )
    result.assert_outcomes(passed=1)


def test_a_nested_mistake_points_at_its_own_line(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        "name: t\n"
        "devices:\n"
        "  power:\n"
        "    driver: relay\n"
        "    main:\n"
        "      port: 3\n"
        "    relays:\n"
        "      fan:\n"
        "        prot: 4\n"
        "      pump:\n"
        "        port: many\n",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*t.yaml:9: devices.power.relays.fan.prot: unknown key 'prot'; did you mean 'port'? (known: port, inverted)*",
            "*t.yaml:11: devices.power.relays.pump.port: expected an integer, found string 'many'*",
        ]
    )


def test_a_missing_nested_required_key_is_named(pytester: pytest.Pytester) -> None:
    result = run(pytester, "name: t\ndevices:\n  power: {driver: relay, main: {inverted: true}}\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*devices.power.main: missing required key 'port' (int): relay number*"])


def test_ini_gives_a_group_as_name_value_pairs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PARTS_CONFTEST)
    write(
        pytester,
        "t.ini",
        "[target]\nname = t\n\n[device power]\ndriver = relay\nmain = port=5, inverted=on\n",
    )
    pytester.makepyfile(
        test_it="def test_it(power):\n    assert power.ctx.settings.main.port == 5\n"
        "    assert power.ctx.settings.main.inverted is True\n"
    )
    pytester.runpytest("--target=t.ini", "-p", "no:cacheprovider").assert_outcomes(passed=1)


# --- the same contracts, in-process ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Settings:
    name: str = setting(doc="required")
    timeout: float = setting(5.0, kind="duration")
    paths: list[Path] = setting([])


class _Switch(Driver[_Settings]):
    name = "switch"

    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...


def test_capabilities_are_judged_on_the_class_including_annotated_attributes() -> None:
    class Console:
        console: object

    assert members(Power) == ("on", "off", "cycle")
    assert implements(_Switch, Power)
    assert not implements(_Switch, HasConsole)
    assert implements(Console, HasConsole)
    assert Power in _Switch.provides(_Switch.settings_from({"name": "x"}))
    assert describe_needs([Power, HasConsole]) == "Power (on, off, cycle) and HasConsole (console)"


def test_settings_from_builds_the_dataclass_as_the_loader_does(tmp_path: Path) -> None:
    settings = _Switch.settings_from({"name": "x", "timeout": "2m", "paths": ["a", "b"]}, tmp_path)
    assert settings == _Settings(name="x", timeout=120.0, paths=[tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SettingValueError, match="expected a duration"):
        _Switch.settings_from({"name": "x", "timeout": ".inf"})
    with pytest.raises(SettingValueError, match="expected a duration"):
        _Switch.settings_from({"name": "x", "timeout": float("inf")})
    with pytest.raises(SettingValueError, match="missing required settings of driver 'switch': name"):
        _Switch.settings_from({})


def test_ref_hands_over_a_device_typed_as_the_capability_or_says_what_it_lacks() -> None:
    switch = _Switch(DeviceContext(name="sw", target="t", settings=_Switch.settings_from({"name": "x"})))
    ctx: DeviceContext[None] = DeviceContext(
        name="flasher", target="t", settings=None, refs={"board": switch}
    )
    assert ctx.ref("board", Power) is switch
    with pytest.raises(
        DeviceStateError, match=r"board: device 'sw' \(driver switch\) does not provide HasConsole"
    ):
        ctx.ref("board", HasConsole)
    with pytest.raises(DeviceStateError, match="setting 'other' names no device"):
        ctx.ref("other", Power)


class _OffBoard(_Switch):
    """A board whose console, like a powered-off QEMU board's, raises when looked at."""

    name = "offboard"

    @property
    def console(self) -> object:
        raise DeviceStateError("b", "the console needs a powered-on board; it is off")


@runtime_checkable
class _PowerAndConsole(Power, HasConsole, Protocol):
    pass


def test_ref_judges_capabilities_by_the_driver_without_evaluating_properties() -> None:
    board = _OffBoard(DeviceContext(name="b", target="t", settings=_Switch.settings_from({"name": "x"})))
    ctx: DeviceContext[None] = DeviceContext(name="f", target="t", settings=None, refs={"board": board})
    assert ctx.ref("board", _PowerAndConsole) is board  # an isinstance() check would raise here
    assert ctx.provided("board", HasConsole) is board
    switch = _Switch(DeviceContext(name="sw", target="t", settings=_Switch.settings_from({"name": "x"})))
    ctx = DeviceContext(name="f", target="t", settings=None, refs={"board": switch})
    assert ctx.provided("board", HasConsole) is None
    assert ctx.provided("nothing", Power) is None
    with pytest.raises(DeviceStateError, match=r"does not provide Power \(on, off, cycle\) and HasConsole"):
        ctx.ref("board", _PowerAndConsole)


CHECK_REFS_CONFTEST = """
from dataclasses import dataclass

import pytest
from pytest_jumpstarter import Driver, Power, TftpHost, setting


@dataclass(frozen=True, kw_only=True)
class NoSettings:
    pass


class Relay(Driver[NoSettings]):
    name = "relay"

    def on(self): pass
    def off(self): pass
    def cycle(self): pass


class TftpBoard(Relay):
    name = "tftpboard"
    tftp_root = None


@dataclass(frozen=True, kw_only=True)
class PullSettings:
    board: str = setting(kind="ref", needs=(Power,))
    folder: str | None = None


class Puller(Driver[PullSettings]):
    name = "puller"

    @classmethod
    def check_refs(cls, settings, refs):
        board = refs.get("board")
        if settings.folder is None and board is not None and TftpHost not in board.provides:
            yield "board", f"needs a folder: set folder, or use a board that provides TftpHost ({board.describe()} does not)"


@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [Relay, TftpBoard, Puller]
"""


def test_check_refs_sees_what_the_referenced_devices_provide(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CHECK_REFS_CONFTEST)
    write(
        pytester,
        "t.yaml",
        "name: t\n"
        "devices:\n"
        "  relay: {driver: relay}\n"
        "  tb: {driver: tftpboard}\n"
        "  ok1: {driver: puller, board: tb}\n"
        "  ok2: {driver: puller, board: relay, folder: /srv}\n"
        "  bad:\n"
        "    driver: puller\n"
        "    board: relay\n",
    )
    pytester.makepyfile(test_it="def test_nothing(): pass\n")
    result = pytester.runpytest("--target=t.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*t.yaml:9: devices.bad.board: needs a folder: set folder, or use a board that provides "
            "TftpHost (device 'relay' (driver relay) does not)"
        ]
    )
    assert "ok1" not in result.stderr.str() and "ok2" not in result.stderr.str()


def _port_shorthand(value: object) -> object:
    return {"port": value}


@dataclass(frozen=True, kw_only=True)
class _Port:
    port: int = setting(doc="a port")
    proto: str = "tcp"


@dataclass(frozen=True, kw_only=True)
class _PortsSettings:
    ports: dict[str, _Port] = setting({}, shorthand=_port_shorthand)


class _Ports(Driver[_PortsSettings]):
    name = "ports"


def test_a_mapping_of_groups_reads_ini_pairs_through_the_short_form() -> None:
    assert _Ports.settings_from({"ports": "ssh=22, dns=53"}).ports == {
        "ssh": _Port(port=22),
        "dns": _Port(port=53),
    }
    assert _Ports.settings_from({"ports": {"ssh": 22, "dns": {"port": 53, "proto": "udp"}}}).ports == {
        "ssh": _Port(port=22),
        "dns": _Port(port=53, proto="udp"),
    }
    with pytest.raises(SettingValueError, match="ports: dns: port: expected an integer"):
        _Ports.settings_from({"ports": "ssh=22, dns=many"})
