"""The flashers as the plugin sees them: found through the entry point, configured by target files."""

from __future__ import annotations

from typing import Any

import pytest

images = pytest.importorskip("pytest_jumpstarter_qemu.images")

DFU_TARGET = """
name: dfu-sim
devices:
  flasher:
    driver: dfu
    backend: simulated
    simulated_size: 2M
    simulated_alts: [boot, rootfs]
"""


def test_flasher_fixture_flashes_a_mapping_on_the_simulated_dfu_device(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", target=DFU_TARGET)
    pytester.makepyfile(
        """
        import os
        from pytest_jumpstarter import FlashResult

        def test_flash(flasher, tmp_path):
            boot, rootfs = tmp_path / "boot.bin", tmp_path / "rootfs.bin"
            boot.write_bytes(os.urandom(5000))
            rootfs.write_bytes(os.urandom(300000))
            results = flasher.flash({"boot": boot, "rootfs": rootfs})
            assert all(isinstance(r, FlashResult) and r.verified for r in results.values())
            assert bytes(flasher.simulator.storage[1][:300000]) == rootfs.read_bytes()
        """
    )
    pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_misspelt_flasher_setting_is_reported_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml", target=DFU_TARGET + "    simulated_sise: 4M\n    partitions: {boot: 'disk:lots'}\n"
    )
    pytester.makepyfile("def test_flash(flasher):\n    pass\n")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(
        [
            "*target.yaml:3: devices.flasher.partitions.boot: expected a size such as 256M*found string 'lots'",
            "*target.yaml:8: devices.flasher.simulated_sise: unknown setting*did you mean 'simulated_size'?*",
        ]
    )
    assert result.ret != 0


@pytest.fixture(scope="module")
def linux_images() -> object:
    # Resolved before pytester moves HOME (the default images folder is under ~).
    return images.require_images(images.LINUX_KERNEL, images.LINUX_INITRD)


def test_qemu_disk_flashes_the_board_named_in_the_target_and_it_boots_the_image(
    linux_images: object, pytester: pytest.Pytester
) -> None:
    demo: Any = linux_images
    pytester.makefile(
        ".yaml",
        target=f"""
name: linux-flash
devices:
  qemu_vm:
    driver: qemu
    kernel: {demo.linux_kernel}
    initrd: {demo.linux_initrd}
    network: none
    autostart: false
    disks: {{disk0: 16M}}
  flasher:
    driver: qemu-disk
    board: qemu_vm
""",
    )
    pytester.makepyfile(
        """
        def test_flash_then_boot(flasher, qemu_vm, tmp_path):
            image = tmp_path / "disk.img"
            image.write_bytes(b"MARKER-FROM-THE-HOST" + bytes(3 * 1024 * 1024))
            result = flasher.flash(image)
            assert result.verified and result.bytes_written == 1024 * 1024
            assert qemu_vm.console.run("head -c 20 /dev/vda").output == "MARKER-FROM-THE-HOST"
        """
    )
    pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider").assert_outcomes(passed=1)
