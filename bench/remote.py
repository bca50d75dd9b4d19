"""Our ``driver: jumpstarter`` against Jumpstarter's own client code, on one exporter, in one invocation.

    .venv/bin/python bench/remote.py [--rounds 3] [--flash-size BYTES] [--flash-rounds 2] [--only LIST]

A standalone exporter (``jmp run`` as nobody, jumpstarter-driver-qemu under TCG, the demo board) is
started once.  Each round runs the same steps twice, ours then theirs or theirs then ours (the order
alternates), each on a fresh connection:

- connect: ours ``JumpstarterBoard.start()`` (connect on the run's event loop, tree, path checks; its
  settings and folder are made untimed, as the plugin makes them at load and setup; the run's loop
  and portal are made by the untimed first connect); theirs ``start_blocking_portal`` +
  ``client_from_path``; the median of 9 connects per round;
- power-on to prompt: ``board.on()`` vs ``power.on()`` + ``console.pexpect()`` + ``expect(prompt)``;
- console echo round trip (one character) and marker-command round trip (``console.run``) vs
  the same through the pexpect ``fdspawn`` (``sendline`` + ``expect`` of a marker and the prompt);
- console throughput: the board prints about 200 KB, read to an end marker;
- port-forward round trip (64 bytes to the guest's echo) and throughput (4 MiB echoed), ours
  ``board.tcp("echo")`` vs ``TcpPortforwardAdapter(client=qemu.echo)``;
- flash, verified: ours ``board.flash(image)`` (write, dump, compare) vs ``flasher.flash`` +
  ``flasher.dump`` + a sha256 comparison, last (it overwrites the boot disk); ``--flash-rounds`` rounds.

``--only`` limits a run to some figures (``connect``, ``power``, ``echo``, ``marker``, ``console``,
``forward``, ``flash``, ``overhead``); the console and forward figures boot the board, so they time
power-on too.

Then the plugin's per-test overhead on a kept remote board (pytest runs of 1 and 201 trivial tests
that use the board, minus the same without a device), against one gRPC round trip (``MockPower.on``).
Medians over rounds; ratios are ours / theirs (goal: <= 1.0), with each round's ratio as the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "remote"))

from exporter_support import (  # noqa: E402
    BOOTDISK,
    demo_board_export,
    free_port,
    give_to_exporter_user,
    private_dir,
    running_exporter,
)
from pytest_jumpstarter_remote import JumpstarterBoard  # noqa: E402

from pytest_jumpstarter import DeviceContext  # noqa: E402

PROMPT = r"[#$] "
FILLER = "0123456789abcdefghijklmnopqrstuvwxyz" * 2
LINES = 3000  # about 220 KB of console output
PF_SIZE = 4 << 20
CONNECTS = 9


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def echo_round_trips(sock: socket.socket, count: int) -> list[float]:
    payload = b"x" * 64
    times = []
    for _ in range(count):
        began = time.perf_counter()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("echo closed")
            got += data
        times.append(time.perf_counter() - began)
    return times


def echo_throughput(addr: tuple[str, int], size: int) -> float:
    """MiB/s of ``size`` bytes sent to the guest's echo and read back."""
    with socket.create_connection(addr, timeout=60) as sock:
        block = os.urandom(64 * 1024)
        began = time.perf_counter()

        def send() -> None:
            left = size
            while left > 0:
                sock.sendall(block[: min(left, len(block))])
                left -= len(block)

        sender = threading.Thread(target=send)
        sender.start()
        got = 0
        while got < size:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"echo closed after {got} of {size} bytes")
            got += len(data)
        sender.join()
        return size / (time.perf_counter() - began) / (1 << 20)


def sha256(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    left = size if size is not None else path.stat().st_size
    with open(path, "rb") as f:
        while left > 0 and (chunk := f.read(min(1 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class Ours:
    name = "ours"

    def __init__(self, address: str, workdir: Path) -> None:
        self.address = address
        self.workdir = workdir
        self.board: JumpstarterBoard | None = None
        self.settings: Any = None
        self.connect_time = 0.0
        self.prepare()
        #: (count, median size) of console transport reads during each throughput run.
        self.reads: list[tuple[int, float]] = []

    def connect(self) -> None:
        # Timed: board.start() only.  The settings are the target file's (checked at load) and the
        # device's folder is made by the plugin's setup: theirs has neither, so neither is timed.
        assert self.settings is not None
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        self.board = JumpstarterBoard(DeviceContext("board", "bench", self.settings, workdir=folder))
        began = time.perf_counter()
        self.board.start()
        self.connect_time = time.perf_counter() - began

    def prepare(self) -> None:
        self.settings = JumpstarterBoard.settings_from(
            {
                "exporter": self.address,
                "insecure": True,
                "power": "qemu.power",
                "console": "qemu.console",
                "flasher": "qemu.flasher",
                "network": {"echo": "qemu.echo", "http": "qemu.http"},
                "ready": PROMPT,
                "autostart": False,
            }
        )

    def power_on(self) -> None:
        assert self.board is not None
        self.board.on()

    def echo(self, count: int) -> list[float]:
        console = self._console()
        times = []
        for _ in range(count):
            began = time.perf_counter()
            console.send("a")
            console.expect_exact("a")
            times.append(time.perf_counter() - began)
        console.send("\x15")  # Ctrl-U: the line is empty again
        console.sendline("")
        console.expect(PROMPT)
        return times

    def marker(self, count: int) -> list[float]:
        console = self._console()
        times = []
        for i in range(count):
            began = time.perf_counter()
            result = console.run(f"echo m{i}")
            times.append(time.perf_counter() - began)
            assert result.output == f"m{i}", result
        return times

    def throughput(self) -> float:
        console = self._console()
        transport = console.transport
        reads: list[int] = []
        plain_read = transport.read

        def counted(size: int, timeout: float | None) -> bytes:
            data: bytes = plain_read(size, timeout)
            reads.append(len(data))
            return data

        transport.read = counted
        began = time.perf_counter()
        console.sendline(f"yes {FILLER} | head -n {LINES}; echo END-$((40+2))")
        console.expect_exact("END-42", timeout=300)
        elapsed = time.perf_counter() - began
        transport.read = plain_read
        self.reads.append((len(reads), statistics.median(reads) if reads else 0))
        console.expect(PROMPT)
        return LINES * (len(FILLER) + 2) / elapsed / 1024

    def forward(self) -> tuple[str, int]:
        assert self.board is not None
        return self.board.tcp("echo")

    def flash(self, image: Path) -> None:
        assert self.board is not None
        if self.board.is_running:
            self.board.off()
        result = self.board.flash(image)
        assert result.verified

    def _console(self) -> Any:
        assert self.board is not None
        return self.board.console

    def close(self) -> None:
        if self.board is not None:
            self.board.stop()
            self.board = None


class Theirs:
    """Jumpstarter's client as its docs use it: client_from_path, console.pexpect(), the adapters."""

    name = "theirs"

    def __init__(self, address: str, workdir: Path) -> None:
        self.address = address
        self.workdir = workdir
        self.stack = contextlib.ExitStack()
        self.client: Any = None
        self.pexpect: Any = None
        self.connect_time = 0.0

    def connect(self) -> None:
        from anyio.from_thread import start_blocking_portal
        from jumpstarter.client import client_from_path

        began = time.perf_counter()
        portal = self.stack.enter_context(start_blocking_portal())
        self.client = self.stack.enter_context(
            portal.wrap_async_context_manager(
                client_from_path(self.address, portal, self.stack, allow=[], unsafe=True, insecure=True)
            )
        )
        self.connect_time = time.perf_counter() - began

    def power_on(self) -> None:
        self.client.qemu.power.on()
        self.pexpect = self.stack.enter_context(self.client.qemu.console.pexpect())
        self.pexpect.expect(PROMPT, timeout=120)

    def echo(self, count: int) -> list[float]:
        p = self.pexpect
        times = []
        for _ in range(count):
            began = time.perf_counter()
            p.send("a")
            p.expect_exact("a")
            times.append(time.perf_counter() - began)
        p.send("\x15")
        p.sendline("")
        p.expect(PROMPT)
        return times

    def marker(self, count: int) -> list[float]:
        p = self.pexpect
        times = []
        for i in range(count):
            began = time.perf_counter()
            p.sendline(f"echo m{i}; echo rc-$?-end")
            p.expect(r"rc-(\d+)-end")
            p.expect(PROMPT)
            times.append(time.perf_counter() - began)
        return times

    def throughput(self) -> float:
        p = self.pexpect
        began = time.perf_counter()
        p.sendline(f"yes {FILLER} | head -n {LINES}; echo END-$((40+2))")
        p.expect_exact("END-42", timeout=300)
        elapsed = time.perf_counter() - began
        p.expect(PROMPT)
        return LINES * (len(FILLER) + 2) / elapsed / 1024

    def forward(self) -> tuple[str, int]:
        from jumpstarter_driver_network.adapters import TcpPortforwardAdapter

        host, port = self.stack.enter_context(TcpPortforwardAdapter(client=self.client.qemu.echo))
        return str(host), int(port)

    def flash(self, image: Path) -> None:
        flasher = self.client.qemu.flasher
        with contextlib.suppress(Exception):
            self.client.qemu.power.off()
        flasher.flash(str(image))
        back = Path(tempfile.mkdtemp(dir=self.workdir)) / "back.img"
        flasher.dump(str(back))
        assert sha256(back, image.stat().st_size) == sha256(image), "theirs: the read-back differs"
        back.unlink()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.qemu.power.off()
        self.pexpect = None
        self.stack.close()
        self.stack = contextlib.ExitStack()


def timed(func: Callable[[], Any]) -> float:
    began = time.perf_counter()
    func()
    return time.perf_counter() - began


#: The figures a run can be limited to with --only (default: all of them).
FIGURES = ("connect", "power", "echo", "marker", "console", "forward", "flash", "overhead")
#: Figures that need the board booted first (power-on is then timed too).
BOOTED = ("power", "echo", "marker", "console", "forward")


def run_round(side: Ours | Theirs, figures: dict[str, dict[str, list[float]]], only: set[str]) -> None:
    mine = figures[side.name]
    try:
        # A connect is a few ms on a shared machine: the median of CONNECTS per round, not one sample.
        samples = []
        for _ in range(CONNECTS - 1 if "connect" in only else 0):
            side.connect()
            samples.append(side.connect_time)
            side.close()
        side.connect()
        samples.append(side.connect_time)
        if "connect" in only:
            mine.setdefault("connect_s", []).append(statistics.median(samples))
        if not only & set(BOOTED):
            return
        mine.setdefault("power_on_to_prompt_s", []).append(timed(side.power_on))
        if "echo" in only:
            mine.setdefault("console_echo_ms", []).append(median_ms(side.echo(40)))
        if "marker" in only:
            mine.setdefault("marker_command_ms", []).append(median_ms(side.marker(30)))
        if "console" in only:
            mine.setdefault("console_kib_per_s", []).append(side.throughput())
        if "forward" in only:
            addr = side.forward()
            with socket.create_connection(addr, timeout=30) as sock:
                mine.setdefault("forward_round_trip_ms", []).append(median_ms(echo_round_trips(sock, 200)))
            mine.setdefault("forward_mib_per_s", []).append(echo_throughput(addr, PF_SIZE))
    finally:
        side.close()


LOWER_IS_BETTER = ("connect_s", "power_on_to_prompt_s", "console_echo_ms", "marker_command_ms",
                   "forward_round_trip_ms", "flash_64m_verified_s")  # fmt: skip


TIMING_CONFTEST = """
import json, os, time
import pytest

_times = []

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    began = time.perf_counter()
    yield
    _times.append(time.perf_counter() - began)

def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMES"], "w") as f:
        json.dump(_times, f)
"""


def per_test_overhead(address: str, workdir: Path, count: int) -> tuple[float, float]:
    """Median seconds of one test's whole protocol (setup, call, teardown) on a kept remote board
    (``reset: none``) and of the same test without a device; measured inside pytest by a hook."""
    import json

    folder = Path(tempfile.mkdtemp(dir=workdir))
    (folder / "board.yaml").write_text(
        "name: remote\ndevices:\n  board:\n    driver: jumpstarter\n    scope: session\n"
        f"    exporter: {address}\n    insecure: true\n    power: mockpower\n"
    )
    (folder / "conftest.py").write_text(TIMING_CONFTEST)
    head = "import pytest\n@pytest.mark.parametrize('i', range({n}))\n"
    with_board = head + "def test_many(target, i):\n    target.device('board')\n"
    plain = head + "def test_many(i):\n    pass\n"

    def median_protocol(template: str) -> float:
        (folder / "test_many.py").write_text(template.format(n=count))
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--target=board.yaml"]
        env = dict(os.environ, BENCH_TIMES=str(folder / "times.json"))
        subprocess.run(argv, cwd=folder, check=True, capture_output=True, timeout=600, env=env)
        times = json.loads((folder / "times.json").read_text())[1:]  # the first one starts the board
        return statistics.median(times)

    return median_protocol(with_board), median_protocol(plain)


def grpc_round_trip(address: str) -> float:
    from anyio.from_thread import start_blocking_portal
    from jumpstarter.client import client_from_path

    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        client = stack.enter_context(
            portal.wrap_async_context_manager(
                client_from_path(address, portal, stack, allow=[], unsafe=True, insecure=True)
            )
        )
        samples = [timed(client.mockpower.on) for _ in range(300)]
    return statistics.median(samples)


@contextlib.contextmanager
def exporter(workdir: Path) -> Iterator[str]:
    export = demo_board_export(workdir, {"http": 80, "echo": 7})
    export["mockpower"] = {"type": "jumpstarter_driver_power.driver.MockPower"}
    with running_exporter("bench", export, workdir, listen=f"127.0.0.1:{free_port()}") as running:
        assert running.listen is not None
        yield running.listen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flash-size", type=int, default=64 << 20)
    parser.add_argument("--flash-rounds", type=int, default=2)
    parser.add_argument("--tests", type=int, default=200, help="trivial tests for the per-test overhead")
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to measure, of {','.join(FIGURES)} (default: all)",
    )
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(FIGURES):
        parser.error(f"--only: unknown figures {sorted(only - set(FIGURES))}; known: {','.join(FIGURES)}")
    if not BOOTDISK.exists():
        sys.exit(f"needs {BOOTDISK}: run scripts/build-images")
    # Both sides pay the client stack's import (about 1 s) before any timing, not inside "connect".
    import jumpstarter.client  # noqa: F401
    import jumpstarter_driver_network.adapters  # noqa: F401
    import pytest_jumpstarter_remote.session  # noqa: F401

    workdir = private_dir("pytest-jumpstarter-bench-")
    figures: dict[str, dict[str, list[float]]] = {"ours": {}, "theirs": {}}
    try:
        with exporter(workdir) as address:
            print(f"exporter at {address}; {args.rounds} rounds", flush=True)
            for side in (Ours(address, workdir), Theirs(address, workdir)):
                # Untimed: the first connection of a process pays one-off set-up (gRPC, lazy imports).
                side.connect()
                side.close()
            for r in range(args.rounds if only - {"flash", "overhead"} else 0):
                sides = [Ours(address, workdir), Theirs(address, workdir)]
                for side in sides if r % 2 == 0 else reversed(sides):
                    run_round(side, figures, only)
                    extra = (
                        f" (console reads: count, median bytes {side.reads})"
                        if isinstance(side, Ours) and side.reads
                        else ""
                    )
                    print(f"  round {r + 1} {side.name}: done{extra}", flush=True)
            if "overhead" in only:
                grpc_rt = grpc_round_trip(address)
                with_board, plain = per_test_overhead(address, workdir, args.tests)
            image = workdir / "flash.img"
            if "flash" in only:
                image.write_bytes(os.urandom(args.flash_size))
                give_to_exporter_user(image)
            for r in range(args.flash_rounds if "flash" in only else 0):
                sides = [Ours(address, workdir), Theirs(address, workdir)]
                for side in sides if r % 2 == 0 else reversed(sides):
                    try:
                        side.connect()
                        figures[side.name].setdefault("flash_64m_verified_s", []).append(
                            timed(lambda side=side: side.flash(image))  # type: ignore[misc]
                        )
                    finally:
                        side.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'figure':<24}{'ours':>12}{'theirs':>12}{'ours/theirs':>14}   per-round ratios (spread)")
    worst = []
    for key in figures["ours"]:
        ours, theirs = statistics.median(figures["ours"][key]), statistics.median(figures["theirs"][key])
        # A ratio above 1.0 is always "we are slower": rates are inverted.
        ratio = ours / theirs if key in LOWER_IS_BETTER else theirs / ours
        rounds = [
            o / t if key in LOWER_IS_BETTER else t / o
            for o, t in zip(figures["ours"][key], figures["theirs"][key], strict=True)
        ]
        worst.append((ratio, key))
        spread = " ".join(f"{r:.2f}" for r in rounds) + f" (min {min(rounds):.2f}, max {max(rounds):.2f})"
        print(f"{key:<24}{ours:>12.4f}{theirs:>12.4f}{ratio:>14.2f}   {spread}")
    if "overhead" in only:
        overhead = with_board - plain
        print(f"\ngRPC round trip (MockPower.on, theirs): {grpc_rt * 1000:.2f} ms")
        print(f"one test, kept remote board: {with_board * 1000:.2f} ms; no device: {plain * 1000:.2f} ms")
        print(f"per-test overhead, kept remote board:   {overhead * 1000:.2f} ms "
              f"({overhead / grpc_rt:.2f} gRPC round trips)")  # fmt: skip
    print(f"worst ratio: {max(worst)[0]:.2f} ({max(worst)[1]})")


if __name__ == "__main__":
    main()
