"""The ssh driver on the demo board over real dropbear: run, parallel sessions, forwards, errors."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from pytest_jumpstarter_ssh import SshShell
from ssh_support import host_key, ssh_on

from pytest_jumpstarter import RunResult, SshError


def test_run_gives_stdout_stderr_and_exit_status(ssh: SshShell) -> None:
    result = ssh.run("echo out; echo err >&2; exit 3")
    assert isinstance(result, RunResult)
    assert (result.stdout, result.stderr, result.status) == ("out", "err", 3)
    assert not result.ok
    assert result.channel.startswith("ssh root@127.0.0.1:")


def test_same_result_type_as_the_console(ssh: SshShell, qemu: QemuBoard) -> None:
    over_ssh, over_console = ssh.run("uname -sm"), qemu.console.run("uname -sm")
    assert over_ssh.output == over_console.output == "Linux x86_64"
    assert over_ssh.status == over_console.status == 0


def test_four_sessions_run_at_once(ssh: SshShell) -> None:
    # Each session waits for a file the next one creates: they can only all finish if they overlap.
    ssh.run("rm -f /tmp/s1 /tmp/s2 /tmp/s3 /tmp/s4").check()
    commands = [
        f"touch /tmp/s{i}; n=0; while [ ! -e /tmp/s{i % 4 + 1} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; [ -e /tmp/s{i % 4 + 1} ] && echo {i}"
        for i in range(1, 5)
    ]
    results: dict[int, RunResult] = {}

    def one(i: int) -> None:
        results[i] = ssh.run(commands[i - 1], timeout=30)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: r.output for i, r in results.items()} == {1: "1", 2: "2", 3: "3", 4: "4"}


def test_forward_reaches_a_port_on_the_board(ssh: SshShell) -> None:
    port = ssh.forward(7)  # the demo board's TCP echo service
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.settimeout(10)
        conn.sendall(b"through ssh\n")
        got = b""
        while not got.endswith(b"\n"):
            got += conn.recv(100)
    assert got == b"through ssh\n"


def test_interactive_is_a_pexpect_channel(ssh: SshShell) -> None:
    shell = ssh.interactive()
    try:
        shell.sendline("echo $((6*7))")
        shell.expect("42", timeout=10)
    finally:
        shell.close()


def test_the_demo_host_key_is_the_one_build_images_wrote(
    qemu: QemuBoard, images: Images, tmp_path: Path
) -> None:
    shell = ssh_on(qemu, tmp_path, host_key=str(host_key(images)))
    shell.start()
    try:
        assert shell.run("true").ok
    finally:
        shell.stop()


def test_a_changed_host_key_is_reported_with_board_and_address(qemu: QemuBoard, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    shell = ssh_on(qemu, tmp_path / "dev", host_key=str(other) + ".pub")
    with pytest.raises(SshError) as info:
        shell.start()
    message = str(info.value)
    assert "device 'ssh'" in message and "root@127.0.0.1:" in message
    assert "host key of test/qemu_vm is not the one pinned" in message


def test_a_refused_key_is_reported_with_board_and_address(qemu: QemuBoard, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    shell = ssh_on(qemu, tmp_path / "dev", key=str(wrong), ready_timeout="5s")
    with pytest.raises(SshError) as info:
        shell.start()
    message = str(info.value)
    assert "root@127.0.0.1:" in message
    assert f"the board refused key {wrong} for user 'root'" in message


def test_password_login_with_the_demo_password(qemu: QemuBoard, tmp_path: Path) -> None:
    shell = ssh_on(qemu, tmp_path, password="jumpstarter", authorize=False)
    shell.start()
    try:
        assert shell.run("id -u").output == "0"
    finally:
        shell.stop()


DROPBEAR = (
    "LD_LIBRARY_PATH=/usr/lib/jumpstarter-ssh dropbear -r /etc/dropbear/dropbear_ed25519_host_key -p 22"
)


def test_a_dropped_connection_names_board_and_address_then_reconnects(
    qemu: QemuBoard, tmp_path: Path
) -> None:
    shell = ssh_on(qemu, tmp_path, ready_timeout="3s")
    shell.start()
    try:
        address = shell.address
        # The guest's SSH server goes away under a running command (its own session included).
        with pytest.raises(SshError) as info:
            shell.run("killall dropbear; sleep 10")
        message = str(info.value)
        assert f"board qemu_vm at root@{address}" in message
        assert "lost the connection running 'killall dropbear; sleep 10'" in message
        # While it is down, a new login is refused, and said so, within the ready timeout.
        with pytest.raises(SshError) as info:
            shell.run("true")
        message = str(info.value)
        assert f"no SSH login to board qemu_vm at root@{address} within 3s" in message
        assert "no SSH server answered on the board" in message
        # Back up: the same device logs in again by itself.
        qemu.console.run(DROPBEAR, timeout=10.0).check()
        assert shell.run("echo back").output == "back"
    finally:
        qemu.console.run(f"pidof dropbear >/dev/null || {DROPBEAR}", timeout=10.0)
        shell.stop()


def test_a_killed_master_is_remade_on_the_next_run(ssh: SshShell) -> None:
    client = ssh._client
    assert client is not None and client._master is not None
    killed = client._master.pid
    client._master.kill()
    assert ssh.run("echo again").output == "again"
    assert ssh._client is not None and ssh._client._master is not None
    assert ssh._client._master.pid != killed
