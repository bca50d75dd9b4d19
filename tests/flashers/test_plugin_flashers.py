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
            "*target.yaml:8: devices.flasher.simulated_sise: unknown setting*did you mean 'simulated_size'?*",
            # A nested setting's mistake is located at its own line.
            "*target.yaml:9: devices.flasher.partitions.boot.offset: expected a size such as 256M*found string 'lots'*",
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
    scope: module
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

        def test_the_flashed_disk_outlives_the_flasher(qemu_vm):
            # The flasher of the test before is gone; the module's board still boots its disk.
            qemu_vm.cycle()
            assert qemu_vm.console.run("head -c 20 /dev/vda").output == "MARKER-FROM-THE-HOST"
        """
    )
    pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider").assert_outcomes(passed=2)


WRONG_BOARDS = """
name: wrong-boards
devices:
  uart0:
    driver: serial
    url: loop://
  qemu_vm:
    driver: qemu
    bios: /dev/null
    autostart: false
  disk_flasher:
    driver: qemu-disk
    board: uart0
  uboot_flasher:
    driver: uboot-tftp
    board: uart0
"""


def test_a_flasher_whose_board_lacks_what_it_needs_is_a_located_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".yaml", target=WRONG_BOARDS)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*target.yaml:12: devices.disk_flasher.board: device 'uart0' (driver serial) does not provide "
            "Power (on, off, cycle) and DiskHost (disk_path, disk_format, set_disk, new_disk_file); "
            "devices that do: qemu_vm",
            "*target.yaml:15: devices.uboot_flasher.board: device 'uart0' (driver serial) does not provide "
            "Power (on, off, cycle); devices that do: qemu_vm",
            "*target.yaml:15: devices.uboot_flasher.board: uboot-tftp needs a tftp_root: set tftp_root or use "
            "a board that provides TftpHost (tftp_root); device 'uart0' (driver serial) does not",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_uboot_tftp_with_its_own_tftp_root_needs_no_tftp_host(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        target="""
name: own-root
devices:
  qemu_vm: {driver: qemu, bios: /dev/null, autostart: false}
  uart0: {driver: serial, url: "loop://"}
  flasher: {driver: uboot-tftp, board: uart0, tftp_root: /srv/tftp}
""",
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*target.yaml:5: devices.flasher.board: device 'uart0' (driver serial)*Power*"]
    )
    assert "tftp_root" not in result.stderr.str()


def test_uboot_tftp_on_a_qemu_board_without_tftp_is_refused_at_load(pytester: pytest.Pytester) -> None:
    """A QEMU board serves TFTP only with ``network: {tftp: true}``; without it the flasher has no
    folder to serve from, and that is said at the target's line, not mid-flash."""
    pytester.makefile(
        ".yaml",
        target="""
name: no-tftp
devices:
  qemu_vm: {driver: qemu, bios: /dev/null, autostart: false, network: {forwards: {ssh: 22}}}
  flasher: {driver: uboot-tftp, board: qemu_vm}
""",
    )
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*target.yaml:4: devices.flasher.board: uboot-tftp needs a tftp_root: set tftp_root or use "
            "a board that provides TftpHost (tftp_root); device 'qemu_vm' (driver qemu) does not"
        ]
    )
    pytester.makefile(
        ".yaml",
        target=pytester.path.joinpath("target.yaml").read_text().replace("forwards: {ssh: 22}", "tftp: true"),
    )
    assert pytester.runpytest("--target=target.yaml", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK
