"""The arm64 U-Boot board: stopped at its prompt, commands with status, TFTP in, a virtio disk out."""

from __future__ import annotations

import select
import socket
import time
import zlib
from collections.abc import Iterator

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import UBOOT_ARM64, Images, require_images
from qemu_board_helpers import board_from, qemu_pids, uboot_settings

from pytest_jumpstarter.errors import BoardReset
from pytest_jumpstarter.uboot import UBootShell

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def uboot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuBoard]:
    images: Images = require_images(UBOOT_ARM64)
    board = board_from(
        uboot_settings(images, disks={"flash": "1M"}, network={"tftp": True}, boot_timeout="30s"),
        tmp_path_factory.mktemp("uboot"),
    )
    board.start()
    yield board
    pid = board.pid
    board.stop()
    assert pid not in qemu_pids()


def test_board_is_ready_at_the_uboot_prompt(uboot: QemuBoard) -> None:
    assert isinstance(uboot.console.shell, UBootShell)
    result = uboot.console.run("version")
    assert result.ok
    assert result.output.startswith("U-Boot 20")


def test_command_status_comes_back(uboot: QemuBoard) -> None:
    assert uboot.uboot.run("false").status == 1
    assert uboot.uboot.run("true").status == 0


def test_crc32_output_is_not_mistaken_for_the_prompt(uboot: QemuBoard) -> None:
    result = uboot.console.run("crc32 0x40000000 0x100; echo after")
    assert "==> " in result.output
    assert result.output.endswith("after")


def test_tftpboot_from_the_tftp_root_arrives_intact(uboot: QemuBoard) -> None:
    assert uboot.tftp_root is not None
    payload = bytes(range(256)) * 1024
    (uboot.tftp_root / "payload.bin").write_bytes(payload)
    result = uboot.console.run(
        "setenv ipaddr 10.0.2.15; setenv serverip 10.0.2.2; tftpboot 0x40400000 payload.bin", timeout=30
    )
    assert result.ok, result.output
    crc = uboot.console.run("crc32 0x40400000 ${filesize}").check().output
    assert f"==> {zlib.crc32(payload):08x}" in crc


def test_virtio_write_reaches_the_disk_file(uboot: QemuBoard) -> None:
    assert uboot.disk_format("flash") == "raw"
    uboot.console.run("mw.b 0x40800000 0x5a 0x400").check()
    uboot.console.run("virtio scan; virtio write 0x40800000 0 2").check()
    assert uboot.disk_path("flash").read_bytes()[:1024] == b"\x5a" * 1024


def test_reset_stops_autoboot_again(uboot: QemuBoard) -> None:
    uboot.reset()
    assert uboot.console.run("echo again").output == "again"


def test_interrupt_at_an_idle_prompt_whose_output_was_read_returns_at_once(uboot: QemuBoard) -> None:
    # The state a board's power-on leaves for the uboot-tftp flasher: nothing more will be printed.
    uboot.console.drain(quiet=0.2)
    uboot.uboot.interrupt(5.0)
    uboot.console.send("echo half-typed")  # a half-typed line is cancelled, not run
    uboot.uboot.interrupt(5.0)
    assert uboot.uboot.run("echo idle").output == "idle"


def test_a_board_that_resets_under_a_command_is_reported_as_reset(uboot: QemuBoard) -> None:
    with pytest.raises(
        BoardReset, match=r"the board reset while running 'reset' \(console showed 'resetting \.\.\.'"
    ):
        uboot.uboot.run("reset", timeout=20)
    uboot.uboot.interrupt(20.0)  # the countdown that follows: stopped again
    assert uboot.uboot.run("echo back").output == "back"


def test_power_off_with_unread_console_output_quits_cleanly(make_board, images: Images) -> None:
    # U-Boot autobooting after a reset prints while nobody reads; QEMU then left QMP quit and
    # SIGTERM unanswered and had to be killed.  off() must still end it through QMP quit (exit 0).
    board = make_board(uboot_settings(images, network={"tftp": True}, boot_timeout="30s"))
    board.start()
    proc = board.process
    assert proc is not None
    since = len(board.events)
    board.execute("system_reset")
    board.wait_event("RESET", since=since)
    # Wait, without reading, until U-Boot has printed its console setup: from there on, QEMU stays
    # stuck until someone reads the console.
    sock = board.console.transport.sock
    pending = b""
    deadline = time.monotonic() + 20
    while b"Out:" not in pending:
        assert time.monotonic() < deadline, f"U-Boot did not get to its console setup: {pending!r}"
        select.select([sock], [], [], 1.0)
        pending = sock.recv(65536, socket.MSG_PEEK)
    board.off()
    assert proc.returncode == 0, f"QEMU did not quit by QMP: exit status {proc.returncode}"
