"""A tunnel peer that resets; what a real run listens on; secrets in every output of a real run."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import board_yaml, first_line_with, leftovers, record, session_processes, start_inner
from pytest_jumpstarter_qemu.images import Images

RESET_TEST = """
import socket, time

def test_peer_resets(net_tunnel):
    with net_tunnel.connect("svc") as sock:
        sock.settimeout(60)
        sock.sendall(b"hello\\n")
        began = time.monotonic()
        try:
            data = sock.recv(100)
        except OSError as exc:
            print(f"PEER-ERROR after {time.monotonic() - began:.2f} s:", type(exc).__name__, exc, flush=True)
            raise
        print("PEER-DATA", data, flush=True)
"""


@pytest.fixture
def resetting_peer() -> Iterator[int]:
    """A TCP server on loopback that reads the first bytes and answers with a reset (linger 0)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with linger 0: a reset, not an end of stream

    thread = threading.Thread(target=serve, name="resetting-peer")
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        thread.join(timeout=10)


def test_a_tunnel_peer_that_resets_is_a_reset_error_not_a_hang(tmp_path: Path, resetting_peer: int) -> None:
    (tmp_path / "board.yaml").write_text(
        "name: net\ndevices:\n  net_tunnel:\n    driver: tcp-relay\n    address: 127.0.0.1\n"
        f"    forwards: {{svc: {resetting_peer}}}\n"
    )
    (tmp_path / "test_net.py").write_text(RESET_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    sent = time.monotonic()
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "PEER-ERROR") or first_line_with(inner.text, "PEER-DATA")
    record(
        "a tunnel peer resets the connection",
        seen.removeprefix("PEER-ERROR "),
        left,
        time.monotonic() - sent,
        code,
    )
    assert "PEER-ERROR" in seen and "ConnectionResetError" in seen, inner.text
    assert "1 failed" in inner.text, inner.text
    assert not left, left


LISTEN_TEST = """
import json, os, time

def test_listens(qemu_vm, net_tunnel):
    net_tunnel.tcp("http"), net_tunnel.tcp("echo"), net_tunnel.udp(5353)
    folder = os.environ["FAULT_DIR"]
    with open(os.path.join(folder, "listening"), "w") as f:
        json.dump({"pytest": os.getpid(), "qemu": qemu_vm.pid}, f)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(folder, "checked")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the outer test reads the socket tables meanwhile
"""


def _sockets(table: str) -> dict[int, tuple[str, int, str]]:
    """inode -> (local address, port, state) of /proc/net/<table> (tcp, tcp6, udp, udp6)."""
    found = {}
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        raw = bytes.fromhex(address)
        # The kernel prints each 32-bit word in host byte order (little-endian here).
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        found[int(fields[9])] = (socket.inet_ntop(family, words), int(port, 16), fields[3])
    return found


def _inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.parametrize("exposed_by_setting", [False, True], ids=["default", "listen-and-host-0.0.0.0"])
def test_tunnels_and_servers_of_a_real_run_listen_on_loopback_unless_a_setting_says_otherwise(
    tmp_path: Path, images: Images, exposed_by_setting: bool
) -> None:
    wide = "    listen: 0.0.0.0\n    host: 0.0.0.0\n" if exposed_by_setting else ""
    (tmp_path / "board.yaml").write_text(
        board_yaml(images)
        + "  net_tunnel:\n    driver: qemu-user-forward\n    board: qemu_vm\n    relay: true\n"
        f"    forwards: {{http: 80, echo: 7}}\n{wide}"
    )
    (tmp_path / "test_listen.py").write_text(LISTEN_TEST)
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    try:
        pids = json.loads(inner.wait_for_file_glob("listening").read_text())
        # Every socket of the run's processes (pytest, its QEMU, anything else in its session).
        owners = {pids["pytest"]: "pytest", pids["qemu"]: "QEMU"}
        owners |= {pid: "session" for pid in session_processes(inner.proc.pid) if pid not in owners}
        tables = {t: _sockets(t) for t in ("tcp", "tcp6", "udp", "udp6")}
        bound = []
        for pid, who in owners.items():
            for inode in _inodes(pid):
                for table, entries in tables.items():
                    if inode in entries:
                        address, port, state = entries[inode]
                        listening = state == "0A" if table.startswith("tcp") else state == "07"
                        if listening:
                            bound.append((who, table, address, port))
    finally:
        (tmp_path / "checked").touch()
    code = inner.finish()
    left = leftovers(inner)
    exposed = [b for b in bound if b[2] not in ("127.0.0.1", "::1")]
    assert code == 0, inner.text
    # slirp's forwards (tcp and udp) in QEMU, the relay's listeners in pytest: all on loopback.
    assert {"QEMU", "pytest"} <= {b[0] for b in bound}, bound
    assert any(b[1] == "udp" for b in bound), bound
    if exposed_by_setting:
        # The check sees what a setting exposes: slirp's forwards and the relay's listeners, on 0.0.0.0.
        assert {"QEMU", "pytest"} <= {b[0] for b in exposed} and {b[2] for b in exposed} == {"0.0.0.0"}, bound
    else:
        assert not exposed, exposed
    assert not left, left


SECRET = "Zq8-hunter2-Wx4-secret-9Kp"

SECRET_TEST = """
import os

SECRET = os.environ["FAULT_SECRET"]

def test_console_and_assert(qemu_vm):
    half = len(SECRET) // 2
    # The guest prints the secret in two writes: it reaches us in two console reads.
    out = qemu_vm.console.run(f"printf %s {SECRET[:half]}; sleep 0.3; echo {SECRET[half:]}").output
    print("the guest said", out, "and the test knows", SECRET)
    assert SECRET == "something else"

def test_error_message(qemu_vm):
    qemu_vm.console.run(f"echo token={SECRET}; false").check()
"""


def test_secrets_stay_out_of_html_junit_logs_and_terminal_of_a_real_run(
    tmp_path: Path, images: Images
) -> None:
    pytest.importorskip("pytest_html", reason="needs pytest-html (the [test] extra)")
    (tmp_path / "board.yaml").write_text("secrets: [FAULT_SECRET]\n" + board_yaml(images))
    (tmp_path / "test_secret.py").write_text(SECRET_TEST)
    os.environ["FAULT_SECRET"] = SECRET
    try:
        inner = start_inner(
            tmp_path,
            "--target=board.yaml",
            "-rA",
            "--jumpstarter-logdir=logs",
            "--junitxml=junit.xml",
            "-o",
            "junit_logging=all",  # captured output in JUnit too
            "--html=report.html",
            "--self-contained-html",
            # With -s a test's own prints go straight to the terminal, past any plugin.
            capture=True,
        )
    finally:
        del os.environ["FAULT_SECRET"]
    code = inner.finish()
    logs = {str(p): p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    outputs = {
        "terminal": inner.text,
        "junit": (tmp_path / "junit.xml").read_text(),
        "html": (tmp_path / "report.html").read_text(),
        **logs,
    }
    assert code == 1 and "2 failed" in inner.text, inner.text
    # Each output did carry it, masked: the guest's console line, the test's print, the assertion.
    assert logs and any("\n***\r\n" in text or "\n***\n" in text for text in logs.values()), logs
    for name in ("terminal", "junit", "html"):
        assert "the test knows ***" in outputs[name] and "token=***" in outputs[name], name
    # The halves are printed whole by the echoed command line; the whole secret never is.
    leaked = {name: _around(text, SECRET) for name, text in outputs.items() if SECRET in text}
    assert not leaked, f"the secret appears in: {leaked}"
    assert not leftovers(inner)


def _around(text: str, needle: str, width: int = 150) -> str:
    at = text.index(needle)
    return text[max(0, at - width) : at + len(needle) + width]
