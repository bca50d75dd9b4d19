"""The serial driver against real byte streams: a socat pty pair, a TCP listener, loop://."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from core_support import write
from pytest_jumpstarter_serial import SerialConsole

from pytest_jumpstarter import ConsoleTimeout, DeviceContext, DriverError, Transcript


def make(url: str, **settings: object) -> SerialConsole:
    merged = {"url": url, "baudrate": 115200, "timeout": 5.0, "open_timeout": 2.0, **settings}
    return SerialConsole(
        DeviceContext(
            name="con", target="bench", settings=SerialConsole.settings_from(merged), transcript=Transcript()
        )
    )


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"PTY,link={a},raw,echo=0", f"PTY,link={b},raw,echo=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, (
                f"socat exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "socat made no pty links within 10 s"
            # socat gives no signal when its links exist: poll the file system.
            threading.Event().wait(0.01)
        yield a, b
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_pty_pair_carries_lines_both_ways(pty_pair: tuple[Path, Path]) -> None:
    a, b = pty_pair
    left, right = make(str(a)), make(str(b))
    left.start()
    right.start()
    try:
        left.sendline("ping from A")
        right.expect("ping from A")
        right.console.sendline("pong from B")
        left.console.expect_exact("pong from B")
        assert "ping from A" in right.ctx.transcript.end()
    finally:
        left.stop()
        right.stop()


def test_socket_url_talks_to_a_real_tcp_listener_and_keeps_its_first_words() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"U-Boot 2023.01\r\n=> ")
            conn.settimeout(5)
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                line += chunk
            got.append(line)
            conn.sendall(b"version\r\nU-Boot 2023.01 (Jan 01 2023)\r\n=> ")
            conn.recv(100)  # stay connected until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    con = make(f"socket://127.0.0.1:{port}")
    con.start()
    try:
        con.expect(r"\r\n=> ")
        con.sendline("version")
        con.expect(r"\(Jan 01 2023\)")
        assert got == [b"version\n"]
    finally:
        con.stop()
        thread.join(timeout=5)
        server.close()


def test_loop_url_echoes_and_times_out_with_the_console_tail() -> None:
    con = make("loop://", timeout=0.2)
    con.start()
    try:
        con.sendline("hello")
        con.expect("hello")
        with pytest.raises(ConsoleTimeout, match=r"timed out after 0\.2s waiting for 'never'"):
            con.expect("never")
    finally:
        con.stop()
    assert not con.started
    con.stop()  # idempotent


def test_unopenable_port_names_the_url_and_what_to_do() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    con = make(f"socket://127.0.0.1:{port}", open_timeout=0.3)
    with pytest.raises(
        DriverError, match=rf"cannot open serial port 'socket://127.0.0.1:{port}'.*within open_timeout=0.3s"
    ):
        con.start()
    assert not con.started


def test_console_needs_a_started_device() -> None:
    with pytest.raises(DriverError, match="console needs a started device"):
        make("loop://").console  # noqa: B018


def test_serial_console_fixture_end_to_end(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "board.yaml",
        "name: loop-board\ndevices:\n  console: {driver: serial, url: 'loop://', timeout: 2s}\n",
    )
    pytester.makepyfile(
        """
        def test_echo(console):
            console.sendline("root@board:~# uname")
            console.expect("uname")

        def test_fails(console):
            console.sendline("kernel says hi")
            console.expect("says hi")
            assert False
        """
    )
    result = pytester.runpytest("--target=board.yaml", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_echo[[]loop-board[]] PASSED*", "*Captured console console call*", "kernel says hi"]
    )
