"""Fixtures for the network tunnel tests: a private network namespace with real servers in it.

Traffic only ever goes to loopback or into the namespace a fixture created (a veth pair with a
private /30); the namespace, the veth pair and every server process are removed in teardown.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from net_support import (
    COUNT_PORT,
    ECHO_PORT,
    HTTP_BODY,
    HTTP_PORT,
    UDP_PORT,
    Namespace,
    NamespaceHost,
    TunnelFactory,
)
from pytest_jumpstarter_network import TcpRelay
from pytest_jumpstarter_network.testing.echo_server import EchoServer

from pytest_jumpstarter import DeviceContext, Driver
from pytest_jumpstarter.process import Child, spawn
from pytest_jumpstarter.waiting import Deadline


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.254.0.0/16 that no interface of this host uses (xdist workers pick different ones)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.254.{rng.randrange(256)}.{rng.randrange(64) * 4}/30")
        if f" {net[1]}/" not in used and f" {net[2]}/" not in used:
            return net
    raise RuntimeError("no free /30 found in 10.254.0.0/16")


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    """A network namespace joined to this one by a veth pair; removed afterwards, whatever happens."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag = f"{os.getpid() % 100000}{random.randrange(256):02x}"
    name, host_if, ns_if = f"jsnet-{tag}", f"jsh{tag}", f"jsn{tag}"
    net = _free_subnet()
    with contextlib.ExitStack() as stack:
        _ip("netns", "add", name)
        stack.callback(_ip, "netns", "del", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        # Deleting the namespace deletes its end of the pair, and with it ours; this covers a failure before.
        stack.callback(
            lambda: subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        )
        _ip("addr", "add", f"{net[1]}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{net[2]}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, str(net[1]), str(net[2]))


@pytest.fixture(scope="module")
def ns_servers(netns: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    """An echo/count/UDP echo server and python's http.server running inside ``netns``."""
    root = tmp_path_factory.mktemp("www")
    (root / "hello.txt").write_bytes(HTTP_BODY)
    args = ["--echo", str(ECHO_PORT), "--count", str(COUNT_PORT), "--udp", str(UDP_PORT)]
    with contextlib.ExitStack() as stack:
        echo = EchoServer(netns.ns_ip, prefix=netns.exec_prefix(), extra_args=args)
        stack.enter_context(echo)
        http = [
            *netns.exec_prefix(),
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            netns.ns_ip,
            "--directory",
            str(root),
            str(HTTP_PORT),
        ]
        stack.enter_context(_process(http, ready=b"Serving HTTP"))
        yield netns


@contextlib.contextmanager
def _process(command: list[str], ready: bytes, timeout: float = 10.0) -> Iterator[Child]:
    """Run ``command`` as a child (own session, dies with us) until the block ends; wait for ``ready``."""
    with spawn(command, device="test-server", stdout=subprocess.PIPE, stderr="stdout") as proc:
        assert proc.stdout is not None
        deadline = Deadline(timeout, f"{command} to print {ready!r}")
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while ready not in seen:
                if deadline.expired or not sel.select(deadline.remaining()):
                    raise RuntimeError(f"{command} did not print {ready!r} within {timeout}s: {seen!r}")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    proc.wait(5)
                    raise RuntimeError(f"{command} exited ({proc.returncode}) before {ready!r}: {seen!r}")
                seen += chunk
        yield proc


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[TunnelFactory]:
    """Build and start ``tcp-relay`` tunnels (stopped after the test): ``make_relay(address=..., ...)``."""
    made: list[TcpRelay] = []

    def make(board: Driver[Any] | None = None, **settings: Any) -> TcpRelay:
        refs = {"board": board} if board is not None else {}
        if board is not None:
            settings["board"] = board.device_name
        ctx = DeviceContext(
            name="tunnel",
            target="nettest",
            settings=TcpRelay.settings_from(settings, tmp_path),
            refs=refs,
            workdir=tmp_path,
        )
        tunnel = TcpRelay(ctx)
        tunnel.start()
        made.append(tunnel)
        return tunnel

    yield make
    for tunnel in made:
        tunnel.stop()


@pytest.fixture
def ns_tunnel(ns_servers: Namespace, make_relay: TunnelFactory) -> TcpRelay:
    """A tcp-relay to the namespace host, with the servers' ports named."""
    board = NamespaceHost(DeviceContext(name="server", target="nettest", settings={}), ns_servers.ns_ip)
    return make_relay(board=board, forwards={"echo": ECHO_PORT, "count": COUNT_PORT, "http": HTTP_PORT})
