"""Storage faults on real QEMU boards: an unwritable or full log or work folder (a small tmpfs the test
mounts and unmounts), TFTP stopping mid-flash, storage that loses writes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fault_support import board_yaml, first_line_with, leftovers, mounted_tmpfs, record, start_inner
from pytest_jumpstarter_flashers.testing.tftp import netns_tftp
from pytest_jumpstarter_qemu.images import UBOOT_ARM64, Images, require_images

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs and network namespaces need root")

CHATTY_TEST = """
def test_chatty(qemu_vm):
    assert qemu_vm.console.run("seq 1 40000 | tail -n 3", timeout=60).output.endswith("40000")
    assert qemu_vm.console.run("seq 1 40000", timeout=120).output.endswith("40000")

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo back").output == "back"
"""


def test_a_log_folder_that_fills_up_stops_the_log_not_the_test(tmp_path: Path, images: Images) -> None:
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(CHATTY_TEST)
    with mounted_tmpfs(tmp_path / "logs", "128k"):
        inner = start_inner(tmp_path, "--target=board.yaml", "--jumpstarter-logdir=logs", "-rA")
        sent = time.monotonic()
        code = inner.finish()
        left = leftovers(inner)
    seen = first_line_with(inner.text, "stopped: No space left on device")
    record("the log folder fills up mid-test", seen, left, time.monotonic() - sent, code)
    assert code == 0, inner.text
    assert "stopped: No space left on device" in inner.text, inner.text
    assert not left, left


def test_a_read_only_log_folder_is_a_usage_error_at_start(tmp_path: Path, images: Images) -> None:
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(CHATTY_TEST)
    with mounted_tmpfs(tmp_path / "logs", "128k", read_only=True):
        inner = start_inner(tmp_path, "--target=board.yaml", "--jumpstarter-logdir=logs")
        sent = time.monotonic()
        code = inner.finish()
        left = leftovers(inner)
    seen = first_line_with(inner.text, "--jumpstarter-logdir")
    record("the log folder is read-only", seen, left, time.monotonic() - sent, code)
    assert code == pytest.ExitCode.USAGE_ERROR, inner.text
    assert "--jumpstarter-logdir" in seen and str(tmp_path / "logs") in seen, inner.text
    assert not inner.recorded(), "a board started before the usage error"
    assert not left, left


FILLING_TEST = """
def test_fills_the_disk(qemu_vm):
    print("IN-TEST", flush=True)
    qemu_vm.console.run("dd if=/dev/zero of=/dev/vda bs=1M count=56 conv=fsync; echo WROTE", timeout=8)

def test_after(qemu_vm):
    assert qemu_vm.console.run("echo back").output == "back"
"""


def test_a_full_work_folder_under_a_running_guest_is_named_as_no_space(
    tmp_path: Path, images: Images
) -> None:
    # The guest's blank raw disk is a sparse file in the work folder (TMPDIR): writing it fills the tmpfs.
    (tmp_path / "board.yaml").write_text(board_yaml(images, disks="{disk0: 64M}"))
    (tmp_path / "test_board.py").write_text(FILLING_TEST)
    with mounted_tmpfs(tmp_path / "tmp", "24m"):
        inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
        inner.wait_for(b"IN-TEST")
        sent = time.monotonic()
        code = inner.finish()
        left = leftovers(inner)
    seen = first_line_with(inner.text, "No space left on device") or first_line_with(
        inner.text, "ConsoleTimeout"
    )
    record("the work folder fills up under a running guest", seen, left, time.monotonic() - sent, code)
    assert "ConsoleTimeout" in inner.text and "No space left on device" in inner.text, inner.text
    assert "(not interrupted: the device cannot run, see below)" in inner.text, inner.text
    assert "1 failed, 1 passed" in inner.text, inner.text
    assert not left, left


def uboot_yaml(images: Images, board: str, flasher: str) -> str:
    return (
        "name: flash\ndevices:\n"
        f"  qemu_vm:\n    driver: qemu\n    arch: aarch64\n    bios: {images.uboot_arm64}\n"
        f"    shell: uboot\n    memory: 512M\n{board}"
        f"  flasher:\n    driver: uboot-tftp\n    board: qemu_vm\n    ram_size: 384M\n{flasher}"
    )


FLASH_TEST = """
import os

def test_flash(flasher, tmp_path):
    image = tmp_path / "fw.img"
    image.write_bytes(os.urandom({size}))
    print("FLASHING", flush=True)
    result = flasher.flash(image)
    print("FLASHED", result, flush=True)
"""


def test_tftp_stopping_mid_flash_is_a_flash_error_never_a_success(tmp_path: Path) -> None:
    images = require_images(UBOOT_ARM64)
    root = tmp_path / "tftp"
    root.mkdir()
    with netns_tftp(root, "qemu-system-aarch64") as ns:
        args = "".join(f"      - {a!r}\n" for a in ns.qemu_args())
        board = f"    network: none\n    disks: {{disk0: 16M}}\n    binary: {ns.qemu_binary}\n    extra_args:\n{args}"
        flasher = (
            f"    tftp_root: {root}\n    ipaddr: {ns.board_address}\n    serverip: {ns.server_address}\n"
            "    chunk_size: 6M\n    retries: 1\n    tftp_timeout: 0.5s\n"
        )
        (tmp_path / "board.yaml").write_text(uboot_yaml(images, board, flasher))
        (tmp_path / "test_flash.py").write_text(FLASH_TEST.format(size=12 << 20))
        inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
        inner.wait_for(b"FLASHING")
        # Chunk 0 goes through; the server dies while U-Boot fetches chunk 1, as a crashed server does.
        # Soon after chunk 1 is staged: its 6 MiB can take only 0.17 s (36 MiB/s seen), and a server
        # killed after that lets the flash succeed; killed before U-Boot asks, it fails the same way.
        inner.wait_for_file_glob("tftp/*-1.bin")
        threading.Timer(0.03, ns.kill_server).start()
        sent = time.monotonic()
        code = inner.finish()
        left = leftovers(inner)
        staged = sorted(p.name for p in root.iterdir())
    seen = first_line_with(inner.text, "errors.FlashError: ", following=1)
    record(
        "the TFTP server stops mid-flash",
        seen,
        left + [f"staged {n}" for n in staged],
        time.monotonic() - sent,
        code,
    )
    assert seen and "chunk 1 (image offset 6291456" in inner.text, inner.text
    assert "FLASHED" not in inner.text and "1 failed" in inner.text, inner.text
    assert not left and not staged, (left, staged)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert ns.name not in namespaces, namespaces


def test_storage_that_loses_writes_is_caught_by_the_read_back(tmp_path: Path) -> None:
    images = require_images(UBOOT_ARM64)
    # A null-co drive takes every write and keeps none (it reads zeros): a disk that lies.
    lost = ["-blockdev", "driver=null-co,node-name=lost,size=67108864,read-zeroes=on"]
    lost += ["-device", "virtio-blk-device,drive=lost"]
    args = "".join(f"      - {a!r}\n" for a in lost)
    board = f"    network: {{tftp: true}}\n    extra_args:\n{args}"
    flasher = "    chunk_size: 4M\n    retries: 2\n"
    (tmp_path / "board.yaml").write_text(uboot_yaml(images, board, flasher))
    (tmp_path / "test_flash.py").write_text(FLASH_TEST.format(size=1 << 20))
    inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
    inner.wait_for(b"FLASHING")
    sent = time.monotonic()
    code = inner.finish()
    left = leftovers(inner)
    seen = first_line_with(inner.text, "errors.FlashError: ", following=1)
    record("storage that loses writes", seen, left, time.monotonic() - sent, code)
    assert seen and "read-back differs" in inner.text, inner.text
    assert "FLASHED" not in inner.text and "1 failed" in inner.text, inner.text
    assert not left, left


def test_a_read_only_work_folder_is_not_used_and_nothing_is_left_anywhere(
    tmp_path: Path, images: Images
) -> None:
    (tmp_path / "board.yaml").write_text(board_yaml(images))
    (tmp_path / "test_board.py").write_text(
        'def test_runs(qemu_vm):\n    assert qemu_vm.console.run("echo hi").output == "hi"\n'
    )
    with mounted_tmpfs(tmp_path / "tmp", "1m", read_only=True):
        inner = start_inner(tmp_path, "--target=board.yaml", "-rA")
        sent = time.monotonic()
        code = inner.finish()
        left = leftovers(inner)  # the recorded folders, wherever they went, and the TMPDIR
    roots = sorted({str(Path(str(r["workroot"])).parent) for r in inner.recorded()})
    record(
        "the work folder (TMPDIR) is read-only",
        f"exit {code}: the run works in {', '.join(roots)} instead (Python's tempfile skips an unwritable TMPDIR)",
        left,
        time.monotonic() - sent,
        code,
    )
    assert code == 0 and roots and str(tmp_path) not in roots[0], inner.text
    assert not left, left
