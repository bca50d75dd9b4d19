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
