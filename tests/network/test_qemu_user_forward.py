"""qemu-user-forward into a real Linux QEMU board (BusyBox httpd on 80, TCP echo on 7), over slirp.

Skipped when the demo images are missing (failed instead under ``JUMPSTARTER_REQUIRE_IMAGES=1``).
One board serves the module; the tests that power it off come last.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_network import QemuUserForward
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import LINUX_INITRD, LINUX_KERNEL, require_images

from pytest_jumpstarter import DeviceContext, Driver, Transcript, TunnelError
from pytest_jumpstarter.settings import SettingValueError

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(180)]

DEMO_PAGE = b"pytest-jumpstarter demo board"


@pytest.fixture(scope="module")
def linux_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    images = require_images(LINUX_KERNEL, LINUX_INITRD)
    workdir = tmp_path_factory.mktemp("qemu_vm")
    raw = {
        "kernel": str(images.linux_kernel),
        "initrd": str(images.linux_initrd),
        "network": {"forwards": {}},
    }
    settings = QemuBoard.settings_from(raw, workdir)
    board = QemuBoard(
        DeviceContext(
            name="qemu_vm", target="nettest", settings=settings, workdir=workdir, transcript=Transcript()
        )
    )
    try:
        board.start()
        yield board
    finally:
        board.stop()


def make_tunnel(board: Driver[Any], workdir: Path, **settings: Any) -> QemuUserForward:
    full = QemuUserForward.settings_from(
        {"board": board.device_name, "forwards": {"http": 80, "echo": 7}, **settings}, workdir
    )
    ctx = DeviceContext(
        name="tunnel", target="nettest", settings=full, refs={"board": board}, workdir=workdir
    )
    return QemuUserForward(ctx)


@pytest.fixture
def tunnel(linux_board: Any, tmp_path: Path) -> Iterator[QemuUserForward]:
    made = make_tunnel(linux_board, tmp_path)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def test_http_get_reaches_the_boards_httpd(tunnel: QemuUserForward) -> None:
    with urllib.request.urlopen(tunnel.url("http", "http", "/index.html"), timeout=20) as response:
        assert response.status == 200
        assert DEMO_PAGE in response.read()


def test_echo_service_answers_and_half_close_ends_it(tunnel: QemuUserForward) -> None:
    with tunnel.connect("echo", timeout=20) as sock:
        sock.sendall(b"hello guest\n" * 1000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hello guest\n" * 1000


def test_50_parallel_connections_to_the_guest(tunnel: QemuUserForward) -> None:
    # The guest's echo service (BusyBox "nc -ll") listens with a backlog of 2: a burst of 50 SYNs
    # overflows it and slirp resets the excess.  So the connections are opened one after another
    # (each proven by a first echo), then all 50 are used at the same time.
    socks: list[socket.socket] = []
    errors: list[str] = []
    try:
        for index in range(50):
            sock = tunnel.connect("echo", timeout=20)
            socks.append(sock)
            sock.settimeout(60)
            sock.sendall(b"%03d\n" % index)
            got = b""
            while len(got) < 4:
                got += sock.recv(4)
            assert got == b"%03d\n" % index

        def one(index: int, sock: socket.socket) -> None:
            payload = b"%03d " % index * 2000
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                if recv_all(sock) != payload:
                    errors.append(f"connection {index}: wrong data back")
            except Exception as exc:
                errors.append(f"connection {index}: {exc!r}")

        threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(socks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    finally:
        for sock in socks:
            sock.close()
    assert errors == []


def test_connect_to_a_guest_port_nobody_listens_on_names_board_and_port(tunnel: QemuUserForward) -> None:
    with pytest.raises(TunnelError) as info:
        tunnel.connect(5999, timeout=20)
    message = str(info.value)
    assert "board 'qemu_vm' port 5999" in message and "refused" in message
    with tunnel.impaired(latency_ms=30), pytest.raises(TunnelError, match="refused"):
        tunnel.connect(5999, timeout=20)  # through the relay in front of slirp too


def test_udp_port_becomes_a_slirp_udp_forward(tunnel: QemuUserForward, linux_board: Any) -> None:
    host, port = tunnel.udp(5353)
    assert host == "127.0.0.1"
    assert any(
        line.split()[:1] == ["UDP[HOST_FORWARD]"] and f" {port} " in line
        for line in linux_board.hmp("info usernet").splitlines()
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, pytest.raises(OSError, match="in use"):
        taken.bind(("127.0.0.1", port))  # slirp holds it


def test_a_forward_slirp_cannot_make_names_board_and_port(linux_board: Any, tmp_path: Path) -> None:
    tunnel = make_tunnel(linux_board, tmp_path, forwards={}, host="192.0.2.1")  # not an address of ours
    tunnel.start()
    try:
        with pytest.raises(TunnelError, match=r"slirp tcp forward to board 'qemu_vm' port 80"):
            tunnel.tcp(80)
    finally:
        tunnel.stop()


def test_unix_targets_are_rejected_for_a_slirp_board() -> None:
    with pytest.raises(SettingValueError, match=r"forwards.agent: .*unix: targets need driver tcp-relay"):
        QemuUserForward.settings_from({"board": "b", "forwards": {"agent": "unix:/run/agent.sock"}})


def test_forwards_are_removed_on_stop(linux_board: Any, tmp_path: Path) -> None:
    tunnel = make_tunnel(linux_board, tmp_path)
    tunnel.start()
    try:
        address = tunnel.tcp("http")
        extra = tunnel.tcp(7)
    finally:
        tunnel.stop()
    listed = linux_board.hmp("info usernet")
    for _, port in (address, extra):
        assert f" {port} " not in listed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_impaired_slirp_forward_adds_latency(tunnel: QemuUserForward) -> None:
    def median_rtt() -> float:
        with tunnel.connect("echo", timeout=20) as sock:
            times = []
            for _ in range(10):
                start = time.perf_counter()
                sock.sendall(b"ping\n")
                got = b""
                while len(got) < 5:
                    got += sock.recv(10)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

    clean = median_rtt()
    with tunnel.impaired(latency_ms=50):
        slow = median_rtt()
    assert 0.090 <= slow - clean <= 0.150, (clean, slow)


def test_relayed_endpoint_survives_a_power_cycle(linux_board: Any, tmp_path: Path) -> None:
    tunnel = make_tunnel(linux_board, tmp_path, relay=True)
    tunnel.start()
    try:
        before = tunnel.url("http", "http", "/index.html")
        linux_board.off()
        linux_board.on()
        assert tunnel.url("http", "http", "/index.html") == before  # same relay port, new slirp forward
        with urllib.request.urlopen(before, timeout=20) as response:
            assert DEMO_PAGE in response.read()
    finally:
        tunnel.stop()
    assert "HOST_FORWARD" not in linux_board.hmp("info usernet")  # the new QEMU's forwards went too


def test_stop_after_the_board_is_off_does_not_fail(linux_board: Any, tmp_path: Path) -> None:
    tunnel = make_tunnel(linux_board, tmp_path)
    tunnel.start()
    linux_board.off()
    tunnel.stop()  # the forwards went with the QEMU process; nothing to remove, nothing to raise
