"""The tcp-relay tunnel against real servers in a private network namespace (and on loopback)."""

from __future__ import annotations

import contextlib
import socket
import statistics
import struct
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from net_support import COUNT_PORT, ECHO_PORT, HTTP_BODY, UDP_PORT, Namespace, NamespaceHost, TunnelFactory
from pytest_jumpstarter_network import ImpairmentError, TcpRelay

from pytest_jumpstarter import DeviceContext, DeviceStateError, Network, SettingValueError, TunnelError

pytestmark = pytest.mark.timeout(60)


def echo_once(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def median_round_trip(sock: socket.socket, count: int = 15) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        assert echo_once(sock, b"ping") == b"ping"
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_tunnel_implements_the_network_capability(ns_tunnel: TcpRelay) -> None:
    assert isinstance(ns_tunnel, Network)


def test_http_get_through_relay_reaches_server_in_namespace(ns_tunnel: TcpRelay) -> None:
    url = ns_tunnel.url("http", "http", "hello.txt")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/hello.txt")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == HTTP_BODY


def test_named_forward_and_its_port_number_share_one_endpoint(ns_tunnel: TcpRelay) -> None:
    assert ns_tunnel.tcp("echo") == ns_tunnel.tcp(ECHO_PORT) == ns_tunnel.tcp(str(ECHO_PORT))
    assert ns_tunnel.forwards == {"echo": ECHO_PORT, "count": COUNT_PORT, "http": 80}


def test_connect_returns_a_socket_connected_to_the_board(ns_tunnel: TcpRelay) -> None:
    with ns_tunnel.connect("echo") as sock:
        assert echo_once(sock, b"hello board") == b"hello board"


def test_relay_listens_on_loopback_only_unless_told(ns_servers: Namespace, make_relay: TunnelFactory) -> None:
    # The veth address is this host's own: connecting to it stays on this machine.
    private = make_relay(address=ns_servers.ns_ip)
    host, port = private.tcp(ECHO_PORT)
    assert host == "127.0.0.1"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ns_servers.host_ip, port), timeout=5).close()

    shared = make_relay(address=ns_servers.ns_ip, listen="0.0.0.0")
    host, port = shared.tcp(ECHO_PORT)
    with socket.create_connection((ns_servers.host_ip, port), timeout=5) as sock:
        assert echo_once(sock, b"via veth") == b"via veth"


def test_half_close_from_the_test_reaches_the_board_and_back(ns_tunnel: TcpRelay) -> None:
    # The echo server answers everything, then shuts its side only after it saw our end of stream.
    with ns_tunnel.connect("echo") as sock:
        sock.sendall(b"x" * 300_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"x" * 300_000  # ends with EOF: the server's shutdown came back


def test_half_close_from_the_board_leaves_the_other_direction_open(make_relay: TunnelFactory) -> None:
    received = bytearray()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"hello")
            conn.shutdown(socket.SHUT_WR)  # the board is done talking but still listens
            while data := conn.recv(4096):
                received.extend(data)
            received.extend(b"<EOF>")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        tunnel = make_relay(address="127.0.0.1")
        with tunnel.connect(server.getsockname()[1]) as sock:
            assert recv_all(sock) == b"hello"  # EOF from the board arrives...
            sock.sendall(b"still writing")  # ...and our direction still works
            sock.shutdown(socket.SHUT_WR)
            thread.join(10)
    finally:
        server.close()
        thread.join(10)
    assert bytes(received) == b"still writing<EOF>"


def test_200_concurrent_connections_all_echo_their_own_data(ns_tunnel: TcpRelay) -> None:
    count, size = 200, 32 * 1024
    errors: list[str] = []
    barrier = threading.Barrier(count)

    def one(index: int) -> None:
        payload = bytes([index % 256]) * size
        try:
            with ns_tunnel.connect("echo") as sock:
                barrier.wait(20)  # all 200 are open at the same time
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                if recv_all(sock) != payload:
                    errors.append(f"connection {index}: wrong data back")
        except Exception as exc:
            errors.append(f"connection {index}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_connect_to_a_port_nobody_listens_on_names_board_and_port(ns_tunnel: TcpRelay) -> None:
    with pytest.raises(TunnelError) as info:
        ns_tunnel.connect(5999)
    message = str(info.value)
    assert "board 'server'" in message and "port 5999" in message
    assert "refused" in message.lower()


def test_raw_client_of_a_dead_port_sees_a_reset_not_a_clean_end(ns_tunnel: TcpRelay) -> None:
    # The reset may already be there when connect() returns, or arrive at the first read.
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection(ns_tunnel.tcp(5998), timeout=5) as sock,
    ):
        sock.recv(10)


def test_unknown_forward_name_lists_the_known_ones(ns_tunnel: TcpRelay) -> None:
    with pytest.raises(TunnelError, match=r"no forward named 'ssh'.*count, echo, http"):
        ns_tunnel.tcp("ssh")


def test_after_stop_the_forwarded_port_refuses_and_open_connections_end(
    ns_servers: Namespace, tmp_path: Path
) -> None:
    ctx = DeviceContext(
        name="tunnel",
        target="nettest",
        settings=TcpRelay.settings_from({"address": ns_servers.ns_ip}),
        workdir=tmp_path,
    )
    tunnel = TcpRelay(ctx)
    tunnel.start()
    try:
        address = tunnel.tcp(ECHO_PORT)
        sock = tunnel.connect(ECHO_PORT)
    finally:
        tunnel.stop()
    with sock:
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""  # reset or closed, never left hanging
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    with pytest.raises(DeviceStateError, match="stopped"):
        tunnel.tcp(ECHO_PORT)


def test_close_removes_a_forward_opened_at_run_time(ns_tunnel: TcpRelay) -> None:
    address = ns_tunnel.tcp(ECHO_PORT)
    ns_tunnel.close(ECHO_PORT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    with ns_tunnel.connect(ECHO_PORT) as sock:  # opened again on demand, on a new port
        assert echo_once(sock, b"again") == b"again"


def test_udp_datagrams_are_relayed_both_ways(ns_tunnel: TcpRelay) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        target = ns_tunnel.udp(UDP_PORT)
        for i in range(5):
            sock.sendto(b"datagram %d" % i, target)
            assert sock.recvfrom(100)[0] == b"datagram %d" % i


def test_unix_socket_path_reaches_a_board_port(ns_tunnel: TcpRelay) -> None:
    path = ns_tunnel.unix("echo")
    assert path.is_socket() and len(bytes(path)) < 108  # a deep tmp_path would not fit sun_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        assert echo_once(sock, b"over unix") == b"over unix"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    ns_tunnel.close("echo", proto="unix")
    assert not path.exists()


def test_forward_to_a_unix_socket_gives_a_tcp_endpoint(make_relay: TunnelFactory, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"agent says " + conn.recv(100))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        tunnel = make_relay(address="127.0.0.1", forwards={"agent": f"unix:{path}"})
        with tunnel.connect("agent") as sock:
            sock.sendall(b"hi")
            assert recv_all(sock) == b"agent says hi"
    finally:
        server.close()
        thread.join(10)


def test_impaired_latency_adds_twice_the_one_way_delay_to_a_round_trip(ns_tunnel: TcpRelay) -> None:
    with ns_tunnel.connect("echo") as sock:
        clean = median_round_trip(sock)
        with ns_tunnel.impaired(latency_ms=40):
            slow = median_round_trip(sock)
        after = median_round_trip(sock)
    assert 0.075 <= slow - clean <= 0.110, (clean, slow)
    assert after < clean + 0.010, (clean, after)


def test_impaired_jitter_spreads_round_trips_without_reordering_the_stream(ns_tunnel: TcpRelay) -> None:
    with ns_tunnel.connect("echo") as sock, ns_tunnel.impaired(latency_ms=20, jitter_ms=15, seed=3):
        times = []
        for i in range(20):
            start = time.perf_counter()
            assert echo_once(sock, b"%04d" % i) == b"%04d" % i
            times.append(time.perf_counter() - start)
    assert max(times) - min(times) > 0.010
    assert 0.025 <= statistics.median(times) <= 0.080


def test_impaired_udp_loss_drops_the_asked_ratio(ns_tunnel: TcpRelay) -> None:
    sent, loss = 1000, 0.2
    echoed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, ns_tunnel.impaired(loss=loss, seed=7):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        target = ns_tunnel.udp(UDP_PORT)
        for batch in range(0, sent, 100):  # in batches, so no socket buffer overflows and adds loss
            for i in range(batch, batch + 100):
                sock.sendto(b"%d" % i, target)
            sock.settimeout(0.15)
            with contextlib.suppress(TimeoutError):
                while True:
                    sock.recvfrom(100)
                    echoed += 1
    # Loss acts on each direction: an echo survives with probability (1 - loss)^2 = 0.64.
    expected = sent * (1 - loss) ** 2
    assert abs(echoed - expected) <= 0.06 * sent, (echoed, expected)


def test_impaired_rate_limits_throughput(ns_tunnel: TcpRelay) -> None:
    size, rate_kbps = 50_000, 800  # 100 kB/s: about half a second
    with ns_tunnel.impaired(rate_kbps=rate_kbps), ns_tunnel.connect("count") as sock:
        start = time.perf_counter()
        sock.sendall(b"r" * size)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == str(size).encode()
        elapsed = time.perf_counter() - start
    ideal = size * 8 / (rate_kbps * 1000)
    assert 0.85 * ideal <= elapsed <= 1.6 * ideal, (elapsed, ideal)


def test_tcp_loss_delays_segments_but_never_loses_or_corrupts_bytes(ns_tunnel: TcpRelay) -> None:
    payload = bytes(range(256)) * 200  # 51200 bytes: about 35 segments each way
    with ns_tunnel.connect("echo") as sock, ns_tunnel.impaired(loss=0.1, seed=5):
        start = time.perf_counter()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == payload
        elapsed = time.perf_counter() - start
    assert elapsed >= 0.2  # with this seed some segments were "retransmitted" after 200 ms


def test_impairment_parameters_are_checked(ns_tunnel: TcpRelay) -> None:
    with pytest.raises(ImpairmentError, match="jitter_ms"), ns_tunnel.impaired(latency_ms=10, jitter_ms=20):
        pass
    with pytest.raises(ImpairmentError, match="loss"), ns_tunnel.impaired(loss=1.5):
        pass


def test_board_without_an_address_is_reported_by_name(make_relay: TunnelFactory) -> None:
    board = NamespaceHost(DeviceContext(name="dut", target="nettest", settings={}), "")
    with pytest.raises(TunnelError, match=r"board 'dut' has no guest_address.*qemu-user-forward"):
        make_relay(board=board)


def test_settings_name_the_bad_forward_and_the_missing_address(tmp_path: Path) -> None:
    with pytest.raises(
        SettingValueError, match=r"forwards: web: expected a port number 1..65535 or unix:PATH"
    ):
        TcpRelay.settings_from({"address": "h", "forwards": {"ssh": 22, "web": "eighty"}})
    with pytest.raises(
        SettingValueError, match=r"forwards.big: expected a port number 1..65535, found 70000"
    ):
        TcpRelay.settings_from({"address": "h", "forwards": {"big": 70000}})
    with pytest.raises(
        SettingValueError, match=r"address: tcp-relay needs address: \(the board's IP\) or board:"
    ):
        TcpRelay.settings_from({})
    settings = TcpRelay.settings_from({"address": "h", "forwards": "ssh=22, agent=unix:agent.sock"}, tmp_path)
    assert {name: f.target for name, f in settings.forwards.items()} == {
        "ssh": 22,
        "agent": tmp_path / "agent.sock",  # relative to the target file's folder, as every path
    }


def test_a_reset_from_the_board_reaches_the_client_as_a_reset(make_relay: TunnelFactory) -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with linger 0: a reset, not an end of stream

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        tunnel = make_relay(address="127.0.0.1")
        with tunnel.connect(server.getsockname()[1]) as sock:
            sock.sendall(b"bye")
            with pytest.raises(ConnectionResetError):
                while sock.recv(10):
                    pass
    finally:
        server.close()
        thread.join(10)


def test_switching_impairment_mid_stream_keeps_every_byte_in_order(ns_tunnel: TcpRelay) -> None:
    payload = bytes(range(251)) * 16384  # ~4 MiB; 251 so that a shifted block cannot look right
    received = bytearray()
    progress = threading.Condition()

    def wait_for_more(amount: int) -> None:
        with progress:
            target = min(len(received) + amount, len(payload))
            assert progress.wait_for(lambda: len(received) >= target, 10), "the stream stalled"

    with ns_tunnel.connect("echo") as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        def read() -> None:
            while data := sock.recv(65536):
                with progress:
                    received.extend(data)
                    progress.notify_all()

        threads = [threading.Thread(target=send), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        try:
            # Switch while bytes are in flight both ways: each phase lasts until more data came back.
            for index in range(6):
                with ns_tunnel.impaired(latency_ms=3, jitter_ms=3, rate_kbps=50_000, seed=index):
                    wait_for_more(128 * 1024)
                wait_for_more(128 * 1024)
        finally:
            for thread in threads:
                thread.join(30)
    assert len(received) == len(payload)
    assert bytes(received) == payload
