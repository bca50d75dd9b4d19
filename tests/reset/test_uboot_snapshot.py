"""reset: snapshot on a U-Boot board: the environment a test changed is back to the booted one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import UBOOT_ARM64, require_images

from pytest_jumpstarter.driver import DeviceContext, Transcript

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]


def test_a_uboot_board_gets_its_booted_environment_back_without_a_new_qemu(tmp_path: Path) -> None:
    images = require_images(UBOOT_ARM64)
    settings = {"arch": "aarch64", "bios": str(images.uboot_arm64), "shell": "uboot", "memory": "512M"}
    typed = QemuBoard.settings_from(settings, tmp_path)
    ctx = DeviceContext(
        name="qemu_vm",
        target="t",
        settings=typed,
        workdir=tmp_path,
        transcript=Transcript(),
        reset="snapshot",
    )
    board = QemuBoard(ctx)
    board.start()
    try:
        assert board.snapshot_error is None
        pid = board.pid
        for _ in range(2):
            assert board.uboot.run("printenv jsmark").status != 0, "an earlier change survived the restore"
            board.uboot.run("setenv jsmark dirty").check()
            assert board.restore("snapshot") is None
        assert (board.pid, board.boots) == (pid, 1)
    finally:
        board.stop()
    assert not board.is_running
