"""The tunnel drivers as a pytest user meets them: a target file, the ``net_tunnel`` fixture, xdist.

The xdist test boots two real QEMU boards (skipped without the demo images, as the qemu tests are).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_jumpstarter_network.testing.echo_server import EchoServer
from pytest_jumpstarter_qemu.images import LINUX_INITRD, LINUX_KERNEL, require_images

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def test_target_file_names_forwards_for_the_net_tunnel_fixture(
    pytester: pytest.Pytester, echo: EchoServer
) -> None:
    pytester.makefile(
        ".yaml",
        relay=f"""
            name: lab-host
            devices:
              net_tunnel:
                driver: tcp-relay
                address: 127.0.0.1
                forwards: {{echo: {echo.ports["echo"]}}}
            """,
    )
    pytester.makepyfile(
        """
        import socket
        from pytest_jumpstarter import Network

        def test_echo(net_tunnel):
            assert isinstance(net_tunnel, Network)
            with net_tunnel.connect("echo") as sock:
                sock.sendall(b"through the plugin")
                assert sock.recv(100) == b"through the plugin"
        """
    )
    pytester.runpytest("--target=relay.yaml").assert_outcomes(passed=1)


def test_ini_target_file_works_the_same(pytester: pytest.Pytester, echo: EchoServer) -> None:
    pytester.makefile(
        ".ini",
        relay=textwrap.dedent(
            f"""
            [target]
            name = lab-host

            [device net_tunnel]
            driver = tcp-relay
            address = 127.0.0.1
            forwards = echo={echo.ports["echo"]}, udp_echo={echo.ports["udp"]}
            """
        ),
    )
    pytester.makepyfile(
        """
        import socket

        def test_tcp_and_udp(net_tunnel):
            with net_tunnel.connect("echo") as sock:
                sock.sendall(b"ini")
                assert sock.recv(10) == b"ini"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(5)
                udp.sendto(b"dgram", net_tunnel.udp("udp_echo"))
                assert udp.recv(10) == b"dgram"
        """
    )
    pytester.runpytest("--target=relay.ini").assert_outcomes(passed=1)


def test_bad_forward_in_target_file_is_reported_with_its_key(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        relay="""
            name: lab-host
            devices:
              net_tunnel:
                driver: tcp-relay
                address: 127.0.0.1
                forwards: {ssh: twenty-two}
            """,
    )
    pytester.makepyfile("def test_x(net_tunnel):\n    pass\n")
    result = pytester.runpytest("--target=relay.yaml")
    assert result.ret != 0
    output = pytest.LineMatcher(result.stdout.lines + result.stderr.lines)
    output.fnmatch_lines(["*relay.yaml*forwards.ssh*expected a port number*'twenty-two'*"])


@pytest.fixture(scope="module")
def linux_images() -> Any:
    """The demo images, found before pytester points HOME at its own folder."""
    return require_images(LINUX_KERNEL, LINUX_INITRD)


def test_two_xdist_workers_forwarding_the_same_guest_port_get_different_host_ports(
    pytester: pytest.Pytester, linux_images: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = linux_images
    pytester.makefile(
        ".yaml",
        board=f"""
            name: qemu-x86_64
            devices:
              qemu_vm:
                driver: qemu
                kernel: {images.linux_kernel}
                initrd: {images.linux_initrd}
              net_tunnel:
                driver: qemu-user-forward
                board: qemu_vm
                forwards: {{http: 80}}
            """,
    )
    pytester.makepyfile(
        """
        import os
        import urllib.request

        def test_http(net_tunnel, tmp_path_factory):
            host, port = net_tunnel.tcp("http")
            with urllib.request.urlopen(net_tunnel.url("http", "http", "/"), timeout=30) as response:
                assert b"demo board" in response.read()
            worker = os.environ["PYTEST_XDIST_WORKER"]
            with open(os.path.join(os.environ["PORTS_DIR"], worker), "w") as f:
                f.write(str(port))
        """
    )
    ports_dir = pytester.mkdir("ports")
    monkeypatch.setenv("PORTS_DIR", str(ports_dir))
    # --dist each: every worker runs the test, so both boards forward guest port 80 at the same time.
    result = pytester.runpytest("-n", "2", "--dist", "each", "--target=board.yaml")
    result.assert_outcomes(passed=2)
    ports = {path.name: int(path.read_text()) for path in ports_dir.iterdir()}
    assert set(ports) == {"gw0", "gw1"}
    assert ports["gw0"] != ports["gw1"]


def test_a_tunnel_whose_board_lacks_what_it_needs_is_a_located_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        wrong="""
            name: wrong-boards
            devices:
              uart0:
                driver: serial
                url: loop://
              qemu_vm:
                driver: qemu
                bios: /dev/null
                autostart: false
              slirp:
                driver: qemu-user-forward
                board: uart0
                forwards:
                  ssh: 22
                  agent: unix:/run/agent.sock
              relay:
                driver: tcp-relay
                board: uart0
            """,
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--target=wrong.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*wrong.yaml:12: devices.slirp.board: device 'uart0' (driver serial) does not provide "
            "UserNetwork (boots, forward, hostfwd_add, hostfwd_remove) and PowerState (is_running) and "
            "QmpHost (execute, hmp, wait_event); devices that do: qemu_vm",
            "*wrong.yaml:15: devices.slirp.forwards.agent: expected a port number, found "
            "unix:/run/agent.sock (unix: targets need driver tcp-relay)",
            "*wrong.yaml:18: devices.relay.board: device 'uart0' (driver serial) does not provide "
            "Addressable (guest_address); devices that do: qemu_vm",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_tunnel_on_a_qemu_board_without_a_nic_is_refused_at_load(pytester: pytest.Pytester) -> None:
    """``network: none`` gives the board no NIC: nothing to forward to, said at the target's line."""
    pytester.makefile(
        ".yaml",
        nonic="""
name: nonic
devices:
  qemu_vm: {driver: qemu, bios: /dev/null, autostart: false, network: none}
  tunnel: {driver: qemu-user-forward, board: qemu_vm, forwards: {ssh: 22}}
""",
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--target=nonic.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*nonic.yaml:4: devices.tunnel.board: device 'qemu_vm' (driver qemu) does not provide UserNetwork*"]
    )
