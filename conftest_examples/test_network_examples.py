"""Example tests reaching a board's network services through the ``net_tunnel`` device.

    pytest conftest_examples --target=conftest_examples/qemu-x86_64.yaml

``net_tunnel`` hands out host-side endpoints for ports on the board: ``tcp()``/``udp()`` give
``(host, port)``, ``connect()`` a socket connected end to end, ``url()`` a URL; ``impaired()`` makes
the link slow or lossy for the duration of a block.
"""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from pytest_jumpstarter import TunnelError


def test_web_page_through_the_tunnel(net_tunnel):
    with urllib.request.urlopen(net_tunnel.url("http", "http", "/"), timeout=10) as response:
        assert b"demo board" in response.read()


def test_echo_survives_a_slow_link(net_tunnel):
    with net_tunnel.impaired(latency_ms=100), net_tunnel.connect("echo") as sock:
        start = time.monotonic()
        sock.sendall(b"over a slow link\n")
        assert sock.recv(64) == b"over a slow link\n"
        assert time.monotonic() - start >= 0.2  # 100 ms each way


def test_closed_port_is_reported_by_board_and_port(net_tunnel):
    with pytest.raises(TunnelError, match="port 2323"):
        net_tunnel.connect(2323)


def test_half_close_reaches_the_guest(net_tunnel):
    with net_tunnel.connect("echo") as sock:
        sock.sendall(b"last words\n")
        sock.shutdown(socket.SHUT_WR)  # the guest's echo sees the end and closes its side too
        data = b""
        while chunk := sock.recv(64):
            data += chunk
        assert data == b"last words\n"
