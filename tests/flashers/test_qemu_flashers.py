"""qemu-disk and uboot-tftp on real QEMU boards with real (slirp) TFTP, and the faults we promise to catch."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jumpstarter_flashers import base
from pytest_jumpstarter_flashers.qemu_disk import QemuDiskFlasher
from pytest_jumpstarter_flashers.testing.tftp import netns_tftp
from pytest_jumpstarter_flashers.uboot import UBootTftpFlasher

from pytest_jumpstarter.driver import DeviceContext, Transcript
from pytest_jumpstarter.errors import DeviceExited, FlashError

from .conftest import MIB, make_image

qemu = pytest.importorskip("pytest_jumpstarter_qemu", reason="the QEMU board driver is not installed")
images_mod = pytest.importorskip("pytest_jumpstarter_qemu.images")

pytestmark = pytest.mark.qemu


def make_board(settings: dict[str, Any], workdir: Path, name: str) -> Any:
    workdir.mkdir(parents=True, exist_ok=True)
    values = qemu.QemuBoard.settings_from(settings, workdir)
    return qemu.QemuBoard(
        DeviceContext(
            name=name, target="flash-test", settings=values, workdir=workdir, transcript=Transcript()
        )
    )


def make_flasher(cls: Any, board: Any, workdir: Path, **settings: Any) -> Any:
    workdir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    ctx = DeviceContext(
        name="flasher",
        target="flash-test",
        settings=cls.settings_from({"board": board.device_name, **settings}, workdir),
        refs={"board": board},
        workdir=workdir,
        progress=lines.append,
    )
    ctx.extra["progress_lines"] = lines
    flasher = cls(ctx)
    flasher.start()
    return flasher


# --- the U-Boot arm64 board -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uboot_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    images = images_mod.require_images(images_mod.UBOOT_ARM64)
    work = tmp_path_factory.mktemp("uboot-board")
    board = make_board(
        {
            "arch": "aarch64",
            "bios": str(images.uboot_arm64),
            "shell": "uboot",
            "memory": "512M",
            "network": {"tftp": True},
            "disks": {"disk0": "48M"},
        },
        work,
        "uboot_vm",
    )
    board.start()
    try:
        yield board
    finally:
        board.stop()
    assert not board.is_running


def uboot_flasher(board: Any, tmp_path: Path, **settings: Any) -> UBootTftpFlasher:
    flasher: UBootTftpFlasher = make_flasher(
        UBootTftpFlasher, board, tmp_path / "flasher", ram_size="384M", chunk_size="4M", **settings
    )
    return flasher


def disk_bytes(board: Any, start: int, length: int) -> bytes:
    assert board.disk_format("disk0") == "raw"
    with open(board.disk_path("disk0"), "rb") as f:
        f.seek(start)
        return f.read(length)


def test_uboot_tftp_flash_lands_on_the_disk_chunk_by_chunk(
    uboot_board: Any, tmp_path: Path, marker: bytes
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path)
    old = tmp_path / "old.img"
    old.write_bytes(b"\xab" * 20 * MIB)
    assert flasher.flash(old, verify=False).bytes_written == 20 * MIB
    image = tmp_path / "new.img"
    # Data, a whole zero chunk (8-12 MiB) that must overwrite the old 0xab, and an odd-sized tail.
    expected = make_image(
        image, 19 * MIB + 1000, {0: marker, 5 * MIB: os.urandom(3 * MIB), 19 * MIB + 990: b"end-marker"}
    )
    result = flasher.flash(image)
    assert result.verified and result.method == "uboot-tftp" and result.target == "disk"
    assert result.image_size == len(expected)
    # Chunks 0, 1 and 4 carry data; 2 and 3 are zeros written from U-Boot's zeroed buffer, not sent.
    assert result.bytes_written == 3 * 4 * MIB + 3 * MIB + 1000 - 4 * MIB
    assert disk_bytes(uboot_board, 0, len(expected)) == expected  # the host sees what U-Boot wrote
    assert disk_bytes(uboot_board, len(expected), 100) == b"\xab" * 100  # past the image: untouched
    dumped = tmp_path / "dump.bin"
    assert flasher.dump("disk", dumped, len(expected)) == len(expected)
    assert dumped.read_bytes() == expected
    assert not list(uboot_board.tftp_root.iterdir())  # no chunk left in the TFTP folder


def test_uboot_tftp_flashes_partitions_from_a_mapping(uboot_board: Any, tmp_path: Path) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path, partitions={"boot": "1M+1M", "rootfs": "disk:4M"})
    boot, rootfs = tmp_path / "boot.img", tmp_path / "rootfs.img"
    boot.write_bytes(b"BOOT" * 1000)
    rootfs.write_bytes(os.urandom(MIB + 512))
    results = flasher.flash({"boot": boot, "rootfs": rootfs})
    assert {name: r.verified for name, r in results.items()} == {"boot": True, "rootfs": True}
    assert disk_bytes(uboot_board, MIB, 4000) == boot.read_bytes()
    assert disk_bytes(uboot_board, 4 * MIB, MIB + 512) == rootfs.read_bytes()


def _flipping_stage(flasher: UBootTftpFlasher, monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Flip one bit of the staged chunk file, as a bad link would: ``times`` times."""
    flips: list[int] = []
    real = flasher._stage

    def stage(path: Path, data: bytes) -> None:
        if len(flips) < times:
            flips.append(len(data) // 2)
            data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x04]) + data[len(data) // 2 + 1 :]
        real(path, data)

    monkeypatch.setattr(flasher, "_stage", stage)
    return flips


def test_byte_flipped_in_transfer_is_caught_by_crc32_and_retried(
    uboot_board: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path)
    image = tmp_path / "fw.img"
    data = os.urandom(6 * MIB)
    image.write_bytes(data)
    flips = _flipping_stage(flasher, monkeypatch, times=1)
    result = flasher.flash(image)
    assert flips and flasher.retried == {0: 1}
    assert result.verified
    assert disk_bytes(uboot_board, 0, len(data)) == data
    assert any(
        "CRC32 after TFTP" in line and "retrying" in line for line in flasher.ctx.extra["progress_lines"]
    )


def test_chunk_corrupted_on_every_attempt_fails_naming_chunk_and_crcs(
    uboot_board: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path, retries=2)
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(MIB))
    _flipping_stage(flasher, monkeypatch, times=99)
    with pytest.raises(FlashError) as info:
        flasher.flash(image)
    message = str(info.value)
    assert (
        "uboot-tftp flash of disk: chunk 0 (image offset 0, 1048576 bytes, storage block 0x0+0x800)"
        in message
    )
    assert "failed, 2 attempts" in message
    assert re.search(
        r"CRC32 after TFTP: expected [0-9a-f]{8} \(host\), found [0-9a-f]{8} \(U-Boot\)", message
    )


def test_storage_that_does_not_keep_the_data_fails_the_read_back(uboot_board: Any, tmp_path: Path) -> None:
    # A wrong write command (always block 0) stands in for storage that loses writes: TFTP and
    # the CRC of the RAM copy are fine, only reading the partition back can tell.
    flasher = uboot_flasher(
        uboot_board,
        tmp_path,
        retries=2,
        partitions={"p": "8M"},
        write_command="virtio write {addr} 0 {count}",
    )
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(MIB))
    with pytest.raises(FlashError) as info:
        flasher.flash(image, target="p")
    message = str(info.value)
    assert (
        "uboot-tftp flash of p (disk at offset 8388608): chunk 0" in message
        and "failed, 2 attempts" in message
    )
    assert re.search(
        r"read-back differs at image offset 0 \(storage byte 8388608\): expected word 0x[0-9a-f]+, found",
        message,
    )


def test_tftp_transfer_cut_short_mid_chunk_fails_after_bounded_retries(
    uboot_board: Any, tmp_path: Path
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path, retries=2)
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(4 * MIB))
    root: Path = uboot_board.tftp_root
    stop = threading.Event()

    def cut() -> None:
        # The server's file shrinks under it while U-Boot is fetching: the transfer ends early.
        while not stop.wait(0.01):
            for path in root.glob("*.bin"):
                if path.stat().st_size > MIB:
                    os.truncate(path, MIB // 2)

    cutter = threading.Thread(target=cut, name="tftp-cutter")
    cutter.start()
    try:
        with pytest.raises(FlashError) as info:
            flasher.flash(image)
    finally:
        stop.set()
        cutter.join(timeout=5)
    message = str(info.value)
    assert "chunk 0 (image offset 0, 4194304 bytes" in message and "failed, 2 attempts" in message
    assert re.search(r"tftpboot transferred \d+, expected 4194304 bytes", message)


def test_tftp_server_without_the_file_fails_naming_the_tftp_error(
    uboot_board: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path, retries=2)
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(MIB))
    monkeypatch.setattr(flasher, "_stage", lambda path, data: None)  # the server never gets it
    with pytest.raises(FlashError, match=r"(?s)chunk 0 .*failed, 2 attempts.*tftpboot failed: TFTP error"):
        flasher.flash(image)


def test_board_reset_mid_flash_is_reported_as_a_reset(
    uboot_board: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path)
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(10 * MIB))
    real = flasher._stage

    def stage(path: Path, data: bytes) -> None:
        real(path, data)
        if path.name.endswith("-1.bin"):
            uboot_board.execute("system_reset")  # chunk 0 is written; the board restarts under us

    monkeypatch.setattr(flasher, "_stage", stage)
    with pytest.raises(FlashError) as info:
        flasher.flash(image)
    message = str(info.value)
    assert "chunk 1 (image offset 4194304" in message
    assert "the board reset while running 'tftpboot" in message
    flasher.interrupt(10.0)  # stop the autoboot that follows the reset: the next test starts clean


def test_board_that_dies_mid_flash_is_reported_dead_not_as_a_timeout(
    uboot_board: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path, command_timeout=30)
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(6 * MIB))
    real = flasher._stage

    def stage(path: Path, data: bytes) -> None:
        real(path, data)
        if path.name.endswith("-1.bin"):
            uboot_board.execute("quit")  # QEMU exits, as a board losing power would

    monkeypatch.setattr(flasher, "_stage", stage)
    with pytest.raises(FlashError) as info:
        flasher.flash(image)
    message = str(info.value)
    assert "chunk 1 (image offset 4194304" in message
    assert "process exited with code 0" in message
    assert isinstance(info.value.__cause__, DeviceExited)


def test_truncated_image_over_uboot_is_a_flash_error(uboot_board: Any, tmp_path: Path) -> None:
    flasher = uboot_flasher(uboot_board, tmp_path)
    packed = gzip.compress(os.urandom(6 * MIB), compresslevel=1)
    image = tmp_path / "fw.img.gz"
    image.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(
        FlashError, match=r"uboot-tftp flash of disk: .*gzip stream ends early after \d+ bytes"
    ):
        flasher.flash(image)


# --- the Linux x86_64 board -------------------------------------------------------------------------


def test_qemu_disk_flash_boots_and_the_guest_reads_the_marker(tmp_path: Path, marker: bytes) -> None:
    images = images_mod.require_images(images_mod.LINUX_KERNEL, images_mod.LINUX_INITRD)
    board = make_board(
        {
            "kernel": str(images.linux_kernel),
            "initrd": str(images.linux_initrd),
            "disks": {"disk0": "32M"},
            "network": "none",
            "autostart": False,  # the flasher powers it on: one boot, of what was flashed
        },
        tmp_path / "board",
        "qemu_vm",
    )
    board.start()
    try:
        flasher = make_flasher(QemuDiskFlasher, board, tmp_path / "flasher")
        image = tmp_path / "rootfs.img"
        expected = make_image(image, 24 * MIB, {0: marker, 20 * MIB: marker[::-1]})
        result = flasher.flash(image)
        assert result.verified and result.method == "qemu-disk" and result.target == "disk0"
        assert result.bytes_written == 2 * MIB  # two data blocks; the zeros stayed holes
        assert board.is_running
        shell = board.console
        assert shell.run(f"head -c {len(marker)} /dev/vda").output == marker.decode()
        tail = shell.run(f"dd if=/dev/vda bs=1M skip=20 count=1 2>/dev/null | head -c {len(marker)}").output
        assert tail == marker[::-1].decode()
        assert shell.run("cat /sys/block/vda/size").output == str(32 * MIB // 512)  # the disk kept its size
        assert board.disk_path("disk0").parent == tmp_path / "board"  # a fresh per-run file the board owns
        assert board.disk_path("disk0").read_bytes()[: len(expected)] == expected
    finally:
        board.stop()


def test_qemu_disk_partition_never_touches_the_base_image(tmp_path: Path) -> None:
    base_image = tmp_path / "base.raw"
    base_image.write_bytes(b"\x5a" * 8 * MIB)
    before = hashlib.sha256(base_image.read_bytes()).hexdigest()
    board = make_board(
        {"bios": "/dev/null", "autostart": False, "disks": {"disk0": str(base_image)}},
        tmp_path / "board",
        "qemu_vm",
    )
    board.start()
    try:
        flasher = make_flasher(
            QemuDiskFlasher, board, tmp_path / "flasher", power_on=False, partitions={"data": "1M+2M"}
        )
        part = tmp_path / "part.img"
        part.write_bytes(b"P" * 5000)
        assert flasher.flash(part, target="data").verified
        dumped = tmp_path / "dump.bin"
        flasher.dump("disk0", dumped, 2 * MIB)
        data = dumped.read_bytes()
        assert data[:MIB] == b"\x5a" * MIB and data[MIB : MIB + 5000] == b"P" * 5000
        assert data[MIB + 5000 :] == b"\x5a" * (MIB - 5000)
        assert hashlib.sha256(base_image.read_bytes()).hexdigest() == before
    finally:
        board.stop()


def test_qemu_disk_byte_flipped_on_the_way_fails_verification(
    tmp_path: Path, marker: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = make_board(
        {"bios": "/dev/null", "autostart": False, "disks": {"disk0": "8M"}}, tmp_path / "b", "qemu_vm"
    )
    board.start()
    try:
        flasher = make_flasher(QemuDiskFlasher, board, tmp_path / "flasher", power_on=False)
        image = tmp_path / "disk.img"
        make_image(image, 4 * MIB, {3 * MIB + 7: marker})
        real = base._pwrite_all

        def flipping(fl: Any, dest: Any, fd: int, data: bytes, position: int) -> None:
            if position == 3 * MIB:
                data = data[:7] + bytes([data[7] ^ 0x80]) + data[8:]
            real(fl, dest, fd, data, position)

        monkeypatch.setattr(base, "_pwrite_all", flipping)
        with pytest.raises(FlashError, match=r"qemu-disk flash of disk0: verify: block 3 \(offset 3145728"):
            flasher.flash(image)
        assert not board.is_running  # a failed flash does not boot the board
    finally:
        board.stop()


# --- the same board on a TAP, with a real TFTP server in a network namespace --------------------------


@pytest.fixture(scope="module")
def tap_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    images = images_mod.require_images(images_mod.UBOOT_ARM64)
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    work = tmp_path_factory.mktemp("tap-board")
    root = work / "tftp"
    root.mkdir()
    with netns_tftp(root, "qemu-system-aarch64") as ns:
        board = make_board(
            {
                "arch": "aarch64",
                "bios": str(images.uboot_arm64),
                "shell": "uboot",
                "memory": "512M",
                "network": "none",
                "disks": {"disk0": "16M"},
                "binary": str(ns.qemu_binary),
                "extra_args": ns.qemu_args(),
            },
            work / "board",
            "tap_vm",
        )
        board.start()
        try:
            yield board, ns
        finally:
            board.stop()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.server is not None and ns.server.poll() is not None


def tap_flasher(tap_board: tuple[Any, Any], tmp_path: Path, **settings: Any) -> UBootTftpFlasher:
    board, ns = tap_board
    values = {"ram_size": "384M", "chunk_size": "2M", **settings}
    flasher: UBootTftpFlasher = make_flasher(
        UBootTftpFlasher,
        board,
        tmp_path / "flasher",
        tftp_root=str(ns.root),
        ipaddr=ns.board_address,
        serverip=ns.server_address,
        **values,
    )
    return flasher


def test_uboot_tftp_through_a_tftp_server_in_a_namespace(tap_board: tuple[Any, Any], tmp_path: Path) -> None:
    board, _ = tap_board
    image = tmp_path / "fw.img"
    data = os.urandom(3 * MIB + 100)
    image.write_bytes(data)
    assert tap_flasher(tap_board, tmp_path).flash(image).verified
    assert disk_bytes(board, 0, len(data)) == data


def test_tftp_server_killed_mid_transfer_is_a_flash_error(
    tap_board: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    board, ns = tap_board
    flasher = tap_flasher(tap_board, tmp_path, retries=1, tftp_timeout=0.5, chunk_size="6M")
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom(12 * MIB))
    real = flasher._stage

    def stage(path: Path, data: bytes) -> None:
        real(path, data)
        if path.name.endswith("-1.bin"):
            # Chunk 0 went through; this one's transfer is cut by the server dying under it.  Soon
            # after staging: its 6 MiB can take only 0.17 s (36 MiB/s seen), and a server killed
            # after that lets the flash succeed; killed before U-Boot asks, it fails the same way.
            threading.Timer(0.03, ns.kill_server).start()

    monkeypatch.setattr(flasher, "_stage", stage)
    with pytest.raises(FlashError) as info:
        flasher.flash(image)
    message = str(info.value)
    assert "chunk 1 (image offset 6291456" in message and "failed, 1 attempt" in message
    assert re.search(r"tftpboot (failed|transferred \d+, expected 6291456)", message)
    assert disk_bytes(board, 0, 100) == image.read_bytes()[:100]  # chunk 0 had landed
