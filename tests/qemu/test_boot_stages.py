"""Boot stages on a real chain: Debian's x86 U-Boot loads the demo Linux over TFTP and zboots it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import require_images
from qemu_board_helpers import board_from

from pytest_jumpstarter.linux import LinuxShell
from pytest_jumpstarter.uboot import UBootShell

pytestmark = pytest.mark.qemu
EXAMPLE = Path(__file__).parents[2] / "conftest_examples" / "qemu-x86_64-uboot-linux.yaml"
UBOOT_X86 = Path("/usr/lib/u-boot/qemu-x86/u-boot.rom")


def test_uboot_boots_the_demo_linux_over_tftp_and_back(tmp_path: Path) -> None:
    require_images()
    if not UBOOT_X86.exists():
        pytest.skip(f"{UBOOT_X86} is missing (apt-get install u-boot-qemu)")
    import yaml

    settings = yaml.safe_load(EXAMPLE.read_text())["devices"]["qemu_vm"]
    images = str(require_images().linux_kernel.parent)
    for name, path in settings["stages"]["linux"]["tftp"].items():
        settings["stages"]["linux"]["tftp"][name] = path.replace(
            "${JUMPSTARTER_IMAGES:-~/.cache/pytest-jumpstarter/images}/linux-x86_64", images
        )
    del settings["driver"]
    board: QemuBoard = board_from(settings, tmp_path)
    board.start()
    try:
        assert board.stage == "uboot" and isinstance(board.console.shell, UBootShell)
        assert board.console.run("echo in-uboot").output == "in-uboot"
        board.boot_to("linux")
        assert board.stage == "linux" and isinstance(board.console.shell, LinuxShell)
        assert board.console.run("uname -s").output == "Linux"
        board.boot_to("uboot")  # not on the way: the board is reset to its first stage
        assert board.console.run("echo back-in-uboot").output == "back-in-uboot"
    finally:
        board.stop()
