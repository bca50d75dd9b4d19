"""A QEMU that cannot start, dies, or panics is reported as such, at once, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import MakeBoard, board_from, linux_settings, qemu_pids

from pytest_jumpstarter.errors import BoardPanic, DeviceExited, DriverError
from pytest_jumpstarter.settings import SettingValueError

pytestmark = pytest.mark.qemu


def test_a_bad_option_fails_at_once_with_qemus_own_message(make_board: MakeBoard, images: Images) -> None:
    board = make_board(linux_settings(images, extra_args=["-no-such-option"]))
    start = time.monotonic()
    with pytest.raises(DeviceExited) as info:
        board.start()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "exited with code 1" in message
    assert "while starting" in message
    assert "-no-such-option" in message  # the command line and QEMU's complaint
    assert "invalid option" in info.value.stderr_tail
    assert not board.is_running


def test_a_missing_kernel_is_named_with_the_setting(
    make_board: MakeBoard, images: Images, tmp_path: Path
) -> None:
    board = make_board(linux_settings(images, kernel=str(tmp_path / "nope" / "vmlinuz")))
    with pytest.raises(DriverError, match=r"kernel file .*nope/vmlinuz does not exist \(setting kernel"):
        board.start()


def test_an_unknown_architecture_names_the_missing_binary(make_board: MakeBoard, images: Images) -> None:
    board = make_board(linux_settings(images, arch="nosucharch", machine="virt"))
    with pytest.raises(DriverError, match=r"qemu-system-nosucharch.* not found"):
        board.start()


def test_a_kernel_panic_at_boot_fails_at_once(make_board: MakeBoard, images: Images) -> None:
    # No such init: the kernel panics right after unpacking the initramfs (and would reboot forever).
    board = make_board(
        linux_settings(images, append="console=ttyS0 panic=-1 rdinit=/no-such-init", boot_timeout="60s")
    )
    start = time.monotonic()
    with pytest.raises(BoardPanic, match="Kernel panic - not syncing") as info:
        board.start()
    assert time.monotonic() - start < 30
    assert "Kernel panic" in info.value.console_tail
    assert not board.is_running  # a failed power-on leaves no QEMU


def test_qemu_killed_mid_test_is_reported_as_exited(make_board: MakeBoard, images: Images) -> None:
    board = make_board(linux_settings(images))
    board.start()
    assert board.pid is not None
    os.kill(board.pid, signal.SIGKILL)
    with pytest.raises(DeviceExited, match="killed by signal 9") as info:
        board.console.run("echo still there?", timeout=30)
    assert "qemu-system-x86_64" in " ".join(info.value.command)
    with pytest.raises(DeviceExited, match="exited"):
        board.execute("query-status")
    board.reset()  # a dead board comes back as a fresh QEMU
    assert board.console.run("echo back").output == "back"


def test_a_guest_panic_after_boot_fails_the_wait_at_once(make_board: MakeBoard, images: Images) -> None:
    board = make_board(linux_settings(images))
    board.start()
    start = time.monotonic()
    with pytest.raises(BoardPanic, match="Kernel panic - not syncing"):
        board.console.run("echo c > /proc/sysrq-trigger", timeout=60)
    assert time.monotonic() - start < 30


def test_qemu_dies_with_a_sigkilled_owner(images: Images, tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: even a pytest killed with SIGKILL leaves no QEMU running."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from qemu_board_helpers import board_from
        settings = {{"kernel": {str(images.linux_kernel)!r}, "autostart": False}}
        board = board_from(settings, Path({str(tmp_path)!r}))
        board.start()
        board._launch("tcg")  # QEMU runs (paused at first); we need the process, not the boot
        print(board.process.pid, flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        qemu_pid = int(owner.stdout.readline())
        assert qemu_pid in qemu_pids()
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while qemu_pid in qemu_pids() and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel delivers SIGKILL asynchronously; poll briefly for the exit
        assert qemu_pid not in qemu_pids()
    finally:
        owner.kill()
        owner.wait(10)


def test_stop_leaves_no_process_and_no_files(make_board: MakeBoard, images: Images) -> None:
    board = make_board(linux_settings(images, disks={"scratch": "4M"}, network={"tftp": True}))
    board.start()
    assert board.process is not None
    pid = board.process.pid
    assert board.process.sockdir is None  # the socket files go as soon as QEMU has connected
    scratch = board.disk_path("scratch")
    assert scratch.stat().st_size == 4 * 1024 * 1024
    board.stop()
    board.stop()  # idempotent
    assert pid not in qemu_pids()
    assert not scratch.exists()
    assert board.tftp_root is None


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({}, "kernel", "needs something to boot"),
        ({"bios": "/x", "append": "quiet"}, "append", "needs kernel"),
        ({"kernel": "/k", "disks": {"a": {"file": "/x", "format": "vmdk"}}}, "disks: a: format", "'qcow2'"),
        ({"kernel": "/k", "disks": {"a": {}}}, "disks: a", "give a file or a size"),
        ({"kernel": "/k", "disks": {"a b": "4M"}}, "disks", "use letters, digits"),
        ({"kernel": "/k", "network": {"forwards": {"ssh": 70000}}}, "network: forwards: ssh", "1-65535"),
        ({"kernel": "/k", "network": {"bridge": "br0"}}, "network: bridge", "unknown key"),
        ({"kernel": "/k", "arch": "mips"}, "machine", "no default machine"),
    ],
)
def test_settings_from_reports_bad_and_inconsistent_settings(
    settings: dict[str, object], key: str, message: str
) -> None:
    with pytest.raises(SettingValueError) as caught:
        QemuBoard.settings_from(settings, Path("/"))
    assert any(key in str(p) and message in str(p) for p in caught.value.leaves()), str(caught.value)


def test_board_from_refuses_nothing_bootable(tmp_path: Path) -> None:
    with pytest.raises(SettingValueError, match="needs something to boot"):
        board_from({}, tmp_path)


def test_accel_auto_boots_with_what_really_works(make_board: MakeBoard, images: Images) -> None:
    """KVM only after a probe boots (here /dev/kvm may exist while KVM aborts or hangs): else TCG."""
    board = make_board(linux_settings(images, accel="auto"))
    board.start()
    assert board.process is not None
    command = board.process.command
    accel = command[command.index("-accel") + 1].split(",")[0]  # tcg,tb-size=32 -> tcg
    assert accel == board.accel
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert accel == "tcg"
    assert board.console.run("echo booted").output == "booted"
