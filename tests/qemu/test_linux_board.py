"""One Linux board (cloud kernel + BusyBox initramfs) booted once for the module; each test uses it."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import board_from, linux_settings, qemu_pids

from pytest_jumpstarter.errors import DeviceStateError

pytestmark = pytest.mark.qemu

BASE_DISK_BYTES = b"jumpstarter base image\n".ljust(512, b"\0") * 2048  # 1 MiB


@pytest.fixture(scope="module")
def base_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "data.raw"
    path.write_bytes(BASE_DISK_BYTES)
    return path


@pytest.fixture(scope="module")
def board(images: Images, base_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuBoard]:
    settings = linux_settings(
        images,
        disks={"data": str(base_disk)},
        network={"forwards": {"http": 80, "echo": 7}, "tftp": True},
        powerdown_timeout="10s",
    )
    board = board_from(settings, tmp_path_factory.mktemp("board"))
    board.start()
    yield board
    pid = board.pid
    board.stop()
    assert pid not in qemu_pids()


def boot_id(board: QemuBoard) -> str:
    return board.console.run("cat /proc/sys/kernel/random/boot_id").check().output.strip()


def test_commands_run_with_their_output_and_exit_status(board: QemuBoard) -> None:
    result = board.console.run("uname -s; uname -r")
    assert result.status == 0
    assert result.output.splitlines()[0] == "Linux"
    assert result.output.splitlines()[1].endswith("-cloud-amd64")
    assert board.console.run("exit_with() { return $1; }; exit_with 42").status == 42
    long_line = "x" * 300  # longer than ash's 80-column re-wrapping of the echo
    assert board.console.run(f"echo {long_line}").output == long_line


def test_qmp_reports_a_running_guest(board: QemuBoard) -> None:
    status = board.execute("query-status")
    assert status["status"] == "running"
    assert "Chardev" in board.hmp("info chardev") or "console0" in board.hmp("info chardev")


def test_qmp_events_are_recorded(board: QemuBoard) -> None:
    assert "RESUME" in board.events.names()  # the board starts paused and is let run


def test_http_page_reaches_the_host_through_a_named_forward(board: QemuBoard) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{board.forward('http')}/", timeout=10) as response:
        assert b"pytest-jumpstarter demo board" in response.read()


def test_guest_serves_http_to_itself(board: QemuBoard) -> None:
    result = board.console.run("wget -q -O - http://127.0.0.1/")
    assert result.ok
    assert "pytest-jumpstarter demo board" in result.output


def test_tcp_echo_service_echoes(board: QemuBoard) -> None:
    with socket.create_connection(("127.0.0.1", board.forward("echo")), timeout=10) as sock:
        sock.sendall(b"ping over slirp\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = sock.recv(100)
            assert chunk, "echo service closed the connection"
            got += chunk
    assert got == b"ping over slirp\n"


def test_hostfwd_add_reads_back_the_port_slirp_chose(board: QemuBoard) -> None:
    port = board.hostfwd_add(80)
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert b"demo board" in response.read()
    board.hostfwd_remove(port)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_guest_got_its_address_by_dhcp(board: QemuBoard) -> None:
    assert board.console.run("cat /run/ipaddr").output == "10.0.2.15"
    assert board.guest_address is None  # user-mode networking: reach it through forwards


def test_guest_fetches_from_the_tftp_root(board: QemuBoard) -> None:
    assert board.tftp_root is not None
    (board.tftp_root / "hello.txt").write_text("served by slirp\n")
    result = board.console.run("cd /tmp && tftp -g -r hello.txt 10.0.2.2 && cat hello.txt")
    assert result.ok, result.output
    assert result.output.endswith("served by slirp")


def test_guest_writes_to_its_disk_but_the_base_image_is_untouched(board: QemuBoard, base_disk: Path) -> None:
    assert board.disk_format("data") == "qcow2"
    assert board.disk_path("data").parent == board.ctx.workdir
    result = board.console.run(
        "echo written-by-guest | dd of=/dev/vda conv=notrunc 2>/dev/null; sync; head -c 16 /dev/vda"
    )
    assert result.output == "written-by-guest"
    assert base_disk.read_bytes() == BASE_DISK_BYTES


def test_set_disk_refuses_a_running_board(board: QemuBoard, tmp_path: Path) -> None:
    with pytest.raises(DeviceStateError, match="powered off"):
        board.set_disk("data", tmp_path / "other.raw")


def test_reset_reboots_the_guest(board: QemuBoard) -> None:
    before = boot_id(board)
    pid = board.pid
    board.reset()
    assert boot_id(board) != before
    assert board.pid is not None and board.pid == pid  # same QEMU, warm reset


def test_cycle_cold_boots_a_fresh_qemu(board: QemuBoard) -> None:
    before = boot_id(board)
    old_pid = board.pid
    board.cycle()
    assert boot_id(board) != before
    assert board.pid is not None and board.pid != old_pid
    assert old_pid not in qemu_pids()
    # The disk survives a power cycle, as on hardware.
    assert board.console.run("head -c 16 /dev/vda").output == "written-by-guest"


def test_off_powers_down_cleanly_through_acpi(board: QemuBoard) -> None:
    proc = board.process
    assert proc is not None
    board.off()
    assert not board.is_running
    assert proc.returncode == 0  # the guest powered itself off: QEMU was not killed
    assert "POWERDOWN" in board.events.names()
    shutdown = board.wait_event("SHUTDOWN", timeout=0)
    assert shutdown["data"]["reason"] == "guest-shutdown"
    with pytest.raises(DeviceStateError, match="call on"):
        _ = board.console
    board.on()  # leave it on for the module's teardown
