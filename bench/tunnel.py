"""Benchmark the tcp-relay tunnel against a direct loopback connection to the same server.

    python bench/tunnel.py [--size 1G] [--rounds 3] [--round-trips 3000] [--connections 200]

The servers (TCP discard-and-count, TCP echo) run in a child process; the test client and the relay
run in this process, as they do in a pytest run.  Direct and relayed runs are interleaved and the
median of ``--rounds`` is compared, so both see the same machine state.  Prints figures and ratios:

- throughput: one connection streams ``--size`` bytes (the server confirms the count); goal >= 0.8x;
- round trip: median time of a 64-byte echo round trip; goal <= +100 us over direct;
- concurrency: ``--connections`` connections at once through the relay, each echoing 64 KiB; goal: no errors.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pytest_jumpstarter_network import TcpRelay
from pytest_jumpstarter_network.testing.echo_server import EchoServer

from pytest_jumpstarter import DeviceContext
from pytest_jumpstarter.settings import Setting, coerce

CHUNK = 1 << 20
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (or one of its threads) so far."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU seconds used by the client thread, the relay thread and the server process during a run."""

    def __init__(self, server_pid: int, relay_tid: int) -> None:
        self.pids = {
            "client": (os.getpid(), threading.get_native_id()),
            "relay": (os.getpid(), relay_tid),
            "server": (server_pid, None),
        }
        self.totals: dict[str, dict[str, float]] = {}

    def measure(self, mode: str, run: Callable[[], float]) -> float:
        before = {k: cpu_seconds(*v) for k, v in self.pids.items()}
        elapsed = run()
        used = self.totals.setdefault(mode, {"wall": 0.0} | {k: 0.0 for k in self.pids})
        used["wall"] += elapsed
        for k, v in self.pids.items():
            used[k] += cpu_seconds(*v) - before[k]
        return elapsed


def stream(addr: tuple[str, int], size: int) -> float:
    """Seconds to send ``size`` bytes and get the server's count back."""
    payload = memoryview(bytes(CHUNK))
    with socket.create_connection(addr, timeout=60) as sock:
        start = time.perf_counter()
        left = size
        while left:
            left -= sock.send(payload[: min(left, CHUNK)])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(64):
            answer += data
        elapsed = time.perf_counter() - start
    if int(answer) != size:
        raise RuntimeError(f"server counted {answer!r} bytes, sent {size}")
    return elapsed


def round_trips(addr: tuple[str, int], count: int) -> float:
    """Median seconds of one 64-byte echo round trip."""
    message = b"x" * 64
    times = []
    with socket.create_connection(addr, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(count + 200):
            start = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < len(message):
                got += len(sock.recv(4096))
            if i >= 200:  # the first ones warm up caches and the relay's code paths
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def concurrent(addr: tuple[str, int], connections: int, size: int = 64 * 1024) -> list[str]:
    """Open ``connections`` at once, echo ``size`` bytes through each; return the errors."""
    errors: list[str] = []
    barrier = threading.Barrier(connections)

    def one(index: int) -> None:
        payload = bytes([index % 251]) * size
        try:
            with socket.create_connection(addr, timeout=30) as sock:
                barrier.wait(30)  # every connection is open before any sends
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                received = bytearray()
                while data := sock.recv(65536):
                    received += data
            if bytes(received) != payload:
                errors.append(
                    f"connection {index}: got {len(received)} bytes back, expected {size} identical"
                )
        except Exception as exc:
            errors.append(f"connection {index}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bytes to stream per throughput run (default 1G)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    size = coerce(Setting("size"), args.size, Path.cwd())

    with EchoServer() as server, tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        settings = TcpRelay.settings_from({"address": "127.0.0.1"})
        tunnel = TcpRelay(DeviceContext(name="tunnel", target="bench", settings=settings, workdir=Path(tmp)))
        tunnel.start()
        try:
            direct_count = ("127.0.0.1", server.ports["count"])
            direct_echo = ("127.0.0.1", server.ports["echo"])
            relay_count = tunnel.tcp(server.ports["count"])
            relay_echo = tunnel.tcp(server.ports["echo"])

            assert tunnel.relay is not None and tunnel.relay._thread.native_id is not None
            assert server.proc is not None
            meter = CpuMeter(server.proc.pid, tunnel.relay._thread.native_id)
            direct_t, relay_t = [], []
            for _ in range(args.rounds):
                direct_t.append(meter.measure("direct", lambda: stream(direct_count, size)))
                relay_t.append(meter.measure("relay", lambda: stream(relay_count, size)))
            direct_bw = size / statistics.median(direct_t)
            relay_bw = size / statistics.median(relay_t)

            direct_rtt, relay_rtt = [], []
            for _ in range(args.rounds):
                direct_rtt.append(round_trips(direct_echo, args.round_trips))
                relay_rtt.append(round_trips(relay_echo, args.round_trips))
            d_rtt, r_rtt = statistics.median(direct_rtt), statistics.median(relay_rtt)

            errors = concurrent(relay_echo, args.connections)
        finally:
            tunnel.stop()

    mib = 1024 * 1024
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work lowers the ratios)")
    print(f"throughput ({size / mib:.0f} MiB, median of {args.rounds}):")
    print(f"  direct  {direct_bw / mib:8.0f} MiB/s")
    print(f"  relay   {relay_bw / mib:8.0f} MiB/s   ratio {relay_bw / direct_bw:.2f}x (goal >= 0.80x)")
    print(f"  CPU seconds per GiB (client thread / relay thread / server; wall), {os.cpu_count()} CPUs:")
    for mode, used in meter.totals.items():
        per = (1 << 30) / (size * args.rounds)
        print(
            f"    {mode:7} {used['client'] * per:5.2f} / {used['relay'] * per:5.2f} / "
            f"{used['server'] * per:5.2f}; wall {used['wall'] * per:5.2f}"
        )
    print(f"round trip (64 B echo, median of {args.round_trips} x {args.rounds}):")
    print(f"  direct  {d_rtt * 1e6:8.1f} us")
    print(f"  relay   {r_rtt * 1e6:8.1f} us   +{(r_rtt - d_rtt) * 1e6:.1f} us (goal <= +100 us)")
    print(f"concurrency: {args.connections} connections through the relay, {len(errors)} errors (goal 0)")
    for error in errors[:10]:
        print("  " + error)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
