"""qemu-user-forward against a stand-in for the QEMU board's slirp forwards.

The stand-in keeps the board contract (``hostfwd_add`` returns a real host port picked by the
kernel, ``hostfwd_remove`` closes it) with real sockets; the guest is an echo server on loopback.
The same behaviour against a real QEMU board is in ``test_qemu_user_forward.py``.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_network import Address, Forward, QemuUserForward, Relay
from pytest_jumpstarter_network.echo_server import EchoServer

from pytest_jumpstarter import DeviceContext, Driver, TunnelError

pytestmark = pytest.mark.timeout(60)


class SlirpStandIn(Driver):
    """Only what qemu-user-forward uses of a QemuBoard: hostfwd_add/remove and is_running."""

    name = "slirp-stand-in"

    def __init__(self, ctx: DeviceContext, guest_ports: dict[int, int]) -> None:
        super().__init__(ctx)
        self.guest_ports = guest_ports  # guest port -> where the stand-in guest really listens
        self.relay = Relay("slirp-stand-in")
        self.added: dict[tuple[str, int], Forward] = {}
        self.removed: list[tuple[str, int]] = []
        self.is_running = True

    def hostfwd_add(self, guest_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> int:
        if guest_port not in self.guest_ports:
            raise TunnelError(
                self.device_name, f"could not forward {proto} {host}:0 to guest port {guest_port}"
            )
        fwd = self.relay.add(
            proto, Address.inet(host, 0), Address.inet("127.0.0.1", self.guest_ports[guest_port]), ""
        )
        port = int(fwd.listen.address[1])
        self.added[(proto, port)] = fwd
        return port

    def hostfwd_remove(self, host_port: int, proto: str = "tcp", host: str = "127.0.0.1") -> None:
        self.relay.remove(self.added.pop((proto, host_port)))
        self.removed.append((proto, host_port))


@pytest.fixture
def board() -> Iterator[SlirpStandIn]:
    with EchoServer() as guest:
        stand_in = SlirpStandIn(
            DeviceContext(name="qemu_vm", target="unit", settings={}),
            {7: guest.ports["echo"], 9: guest.ports["count"], 5353: guest.ports["udp"]},
        )
        try:
            yield stand_in
        finally:
            stand_in.relay.close()


def make_tunnel(board: Driver, tmp_path: Path, **settings: Any) -> QemuUserForward:
    full: dict[str, Any] = {
        "board": board.device_name,
        "host": "127.0.0.1",
        "relay": False,
        "forwards": {},
        "listen": "127.0.0.1",
        "connect_timeout": 5.0,
    }
    full.update(settings)
    ctx = DeviceContext(name="tunnel", target="unit", settings=full, refs={"board": board}, workdir=tmp_path)
    return QemuUserForward(ctx)


def round_trip(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    return time.perf_counter() - start


def test_endpoint_is_the_slirp_host_forward_itself(board: SlirpStandIn, tmp_path: Path) -> None:
    tunnel = make_tunnel(board, tmp_path, forwards={"echo": 7})
    tunnel.start()
    try:
        host, port = tunnel.tcp("echo")
        assert (host, port) == tunnel.tcp(7)
        assert list(board.added) == [("tcp", port)]  # opened at start, once
        with tunnel.connect("echo") as sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
    finally:
        tunnel.stop()
    assert board.removed == [("tcp", port)] and board.added == {}


def test_udp_forward_uses_a_udp_host_forward(board: SlirpStandIn, tmp_path: Path) -> None:
    tunnel = make_tunnel(board, tmp_path)
    tunnel.start()
    try:
        target = tunnel.udp(5353)
        assert ("udp", target[1]) in board.added
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"dns?", target)
            assert sock.recv(10) == b"dns?"
    finally:
        tunnel.stop()
    assert board.added == {}


def test_impaired_endpoints_go_through_the_relay_and_add_latency(board: SlirpStandIn, tmp_path: Path) -> None:
    tunnel = make_tunnel(board, tmp_path)
    tunnel.start()
    try:
        direct = tunnel.tcp(7)
        with tunnel.connect(7) as sock:
            clean = statistics.median(round_trip(sock) for _ in range(10))
        with tunnel.impaired(latency_ms=30):
            relayed = tunnel.tcp(7)
            assert relayed != direct
            with tunnel.connect(7) as sock:
                slow = statistics.median(round_trip(sock) for _ in range(10))
        assert tunnel.tcp(7) == direct
    finally:
        tunnel.stop()
    assert 0.055 <= slow - clean <= 0.090, (clean, slow)
    assert board.added == {}


def test_relay_setting_puts_every_endpoint_behind_the_relay(board: SlirpStandIn, tmp_path: Path) -> None:
    tunnel = make_tunnel(board, tmp_path, relay=True)
    tunnel.start()
    try:
        _host, port = tunnel.tcp(7)
        assert ("tcp", port) not in board.added and len(board.added) == 1
        with tunnel.connect(7) as sock:
            sock.sendall(b"relayed")
            assert sock.recv(10) == b"relayed"
    finally:
        tunnel.stop()


def test_board_refusing_a_forward_is_reported_with_board_and_port(
    board: SlirpStandIn, tmp_path: Path
) -> None:
    tunnel = make_tunnel(board, tmp_path)
    tunnel.start()
    try:
        with pytest.raises(TunnelError, match=r"slirp tcp forward to board 'qemu_vm' port 2222"):
            tunnel.tcp(2222)
    finally:
        tunnel.stop()


def test_stop_after_the_board_is_gone_does_not_talk_to_it(board: SlirpStandIn, tmp_path: Path) -> None:
    tunnel = make_tunnel(board, tmp_path, forwards={"echo": 7})
    tunnel.start()
    board.is_running = False
    tunnel.stop()
    assert board.removed == []


def test_unix_targets_are_rejected_for_a_slirp_board() -> None:
    problems = dict(QemuUserForward.check({"forwards": {"agent": "unix:/run/agent.sock"}}))
    assert "tcp-relay" in problems["forwards.agent"]
