"""driver: jumpstarter under the core contracts, without an exporter: settings, provides(), refs, listing."""

from __future__ import annotations

import pytest
from pytest_jumpstarter_remote import JumpstarterBoard
from pytest_jumpstarter_remote.driver import PortForwards

from pytest_jumpstarter.capabilities import Flash, HasConsole, Network, Power, PowerState, Reset


def provided(**values: object) -> set[type]:
    return set(JumpstarterBoard.provides(JumpstarterBoard.settings_from(values)))


def test_provides_follows_the_configured_paths():
    source = {"exporter": "127.0.0.1:1"}
    assert provided(**source, console="c") == {HasConsole}
    assert provided(**source, power="p") == {Power, PowerState, Reset}
    assert provided(**source, flasher="f") == {Flash}
    assert provided(**source, network={"http": "n"}) == {Network, PortForwards}
    everything = provided(**source, power="p", console="c", flasher="f", network={"http": "n"})
    assert everything == {Power, PowerState, Reset, HasConsole, Flash, Network, PortForwards}


def test_settings_are_typed():
    settings = JumpstarterBoard.settings_from(
        {"client": "lab.yaml", "selector": {"board": "rpi4"}, "duration": "30m", "network": "http=qemu.http"}
    )
    assert settings.duration == 1800.0 and settings.selector == {"board": "rpi4"}
    assert settings.network == {"http": "qemu.http"}
    assert settings.client is not None and settings.client.name == "lab.yaml"


TUNNEL = """
name: lab
devices:
  board:
    driver: jumpstarter
    exporter: 127.0.0.1:1
    insecure: true
    console: qemu.console
  net_tunnel:
    driver: jumpstarter-network
    board: board
    forwards: {http: 80}
"""


def test_a_tunnel_on_a_board_without_networks_fails_at_load(pytester):
    pytester.makefile(".yaml", lab=TUNNEL)
    pytester.makepyfile("def test_x(target):\n    pass\n")
    result = pytester.runpytest("--target=lab.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*lab.yaml:*devices.net_tunnel.board*device 'board' (driver jumpstarter) does not provide PortForwards*"
        ]
    )


HEAVY = ("jumpstarter", "jumpstarter.client", "grpc", "anyio", "jumpstarter_protocol")


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("exporter: 127.0.0.1:1\n    insecure: true", "*exporter = '127.0.0.1:1'*"),
        (
            "client: lab-client.yaml\n    selector: {board: rpi4, site: lab-2}",
            "*selector = {board: 'rpi4', site: 'lab-2'}*",
        ),
        ("exporter_config: local-exporter.yaml", "*exporter_config = */local-exporter.yaml*"),
    ],
)
def test_listing_shows_the_source_and_imports_nothing_heavy(pytester, source, shown):
    pytester.makefile(
        ".yaml",
        lab=f"name: lab\ndevices:\n  board:\n    driver: jumpstarter\n    {source}\n    console: qemu.console\n",
    )
    pytester.makepyfile(
        conftest=f"""
        import sys
        def pytest_unconfigure(config):
            heavy = [m for m in {HEAVY!r} if m in sys.modules]
            print("HEAVY IMPORTS:", heavy or "none")
        """,
        test_x="def test_x(target):\n    pass\n",
    )
    # anyio comes with its own pytest plugin; it is not ours to count.
    result = pytester.runpytest_subprocess("--target=lab.yaml", "--jumpstarter-list", "-s", "-p", "no:anyio")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*board: driver jumpstarter, role board*", shown, "*HEAVY IMPORTS: none*"])


def test_listing_shows_an_exporter_configs_declared_tree_without_running_it(pytester):
    pytester.makefile(
        ".yaml",
        **{
            "local-exporter": "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\n"
            "metadata: {namespace: default, name: local}\nendpoint: null\nexport:\n"
            "  qemu: {type: jumpstarter_driver_qemu.driver.Qemu, config: {arch: x86_64}}\n"
            "  bench:\n    type: jumpstarter_driver_composite.driver.Composite\n"
            "    children: {relay: {type: jumpstarter_driver_power.driver.MockPower}}\n",
            "lab": "name: lab\ndevices:\n  board:\n    driver: jumpstarter\n"
            "    exporter_config: local-exporter.yaml\n    console: qemu.console\n    power: bench.relay\n"
            "    flasher: other.flasher\n",
        },
    )
    pytester.makepyfile("def test_x(target):\n    pass\n")
    result = pytester.runpytest_subprocess("--target=lab.yaml", "--jumpstarter-list")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "*exporter config local-exporter.yaml: driver tree as declared (not run by a listing;*",
            "*  bench (Composite)",
            "*    bench.relay (MockPower)  <- power",
            "*  qemu (Qemu)",
            "*console: 'qemu.console' is not declared (a child Qemu may add when it runs)",
            "*flasher: 'other.flasher' is NOT in this tree",
        ]
    )
