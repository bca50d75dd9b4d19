"""reset: snapshot through the plugin: each test gets the booted board back, RAM and disks, without a reboot."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_jumpstarter_qemu.images import Images
from reset_support import read_records

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(240)]

BOARD = """
name: snap
devices:
  qemu_vm:
    driver: qemu
    scope: session
    reset: {reset}
    kernel: {kernel}
    initrd: {initrd}
    disks: {disks}
"""

#: Each test checks that nothing an earlier test left is there (a file in RAM, bytes on a disk),
#: leaves both behind, and records which boot and which QEMU it ran on.
TESTS = r"""
import json

import pytest

RECORDS = "@RECORDS@"


@pytest.mark.parametrize("n", range(3))
def test_leaves_a_mess(qemu_vm, n):
    run = qemu_vm.console.run
    assert run("test -e /root/left-behind").status == 1, "a file from an earlier test survived"
    run(f"echo test-{n} > /root/left-behind").check()
    has_disk = run("test -b /dev/vda").ok
    if has_disk:
        disk = run("dd if=/dev/vda bs=8 count=1 2>/dev/null").check().output
        assert "mess" not in disk, f"the disk still has an earlier test's bytes: {disk!r}"
        run(f"printf 'mess-{n}!' | dd of=/dev/vda bs=8 count=1 conv=fsync 2>/dev/null").check()
    record = {
        "n": n,
        "boot_id": run("cat /proc/sys/kernel/random/boot_id").check().output,
        "pid": qemu_vm.pid,
        "boots": qemu_vm.boots,
        "disk": has_disk,
    }
    with open(RECORDS, "a") as f:
        f.write(json.dumps(record) + "\n")
"""


def run_inner(
    pytester: pytest.Pytester, images: Images, disks: str, reset: str = "snapshot", count: int = 3
) -> tuple[pytest.RunResult, list[dict]]:
    records = pytester.path / "records.jsonl"
    board = BOARD.format(kernel=images.linux_kernel, initrd=images.linux_initrd, disks=disks, reset=reset)
    pytester.makefile(".yaml", board=board)
    tests = TESTS.replace("@RECORDS@", str(records)).replace("range(3)", f"range({count})")
    pytester.makepyfile(test_mess=tests)
    # -rP shows the report sections of passed tests: a cold boot would be noted there.
    result = pytester.runpytest_subprocess(
        "--target=board.yaml", "-rP", "-p", "no:cacheprovider", "--timeout=120"
    )
    return result, read_records(records)


def test_a_restored_board_has_nothing_an_earlier_test_left_and_was_not_rebooted(
    pytester: pytest.Pytester, images: Images, tmp_path: Path
) -> None:
    base = tmp_path / "data.img"
    base.write_bytes(bytes(64 * 1024))
    result, records = run_inner(pytester, images, f"{{data: {{file: {base}, format: raw}}}}")
    result.assert_outcomes(passed=3)
    assert [r["n"] for r in records] == [0, 1, 2]
    assert all(r["disk"] for r in records), "the guest did not see its disk"
    assert len({r["boot_id"] for r in records}) == 1, f"the guest rebooted between tests: {records}"
    assert len({r["pid"] for r in records}) == 1, f"QEMU was restarted between tests: {records}"
    assert {r["boots"] for r in records} == {1}
    assert "cold boot" not in result.stdout.str()
    # The base image is never written; the overlay's snapshot took the bytes back.
    assert base.read_bytes() == bytes(64 * 1024)
    # The memory summary names the one board.
    result.stdout.fnmatch_lines(
        ["*jumpstarter QEMU memory*", "snap/qemu_vm (QEMU pid *): RSS up to * MiB*over 3 tests"]
    )


def test_a_board_that_cannot_be_saved_cold_boots_and_the_report_says_why(
    pytester: pytest.Pytester, images: Images
) -> None:
    # A blank disk is a raw file: savevm refuses a writable disk without snapshot support.
    result, records = run_inner(pytester, images, "{vda: 1M}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*qemu_vm cold boot because savevm failed: Device 'disk-vda' is writable but does not support "
            "snapshots (every writable disk must be qcow2*"
        ]
    )
    assert result.stdout.str().count("cold boot because savevm failed") == 2
    # Pristine all the same, at the price of a boot per test.
    assert [r["boots"] for r in records] == [1, 2, 3]
    assert len({r["boot_id"] for r in records}) == 3


def test_reset_reboot_gives_each_test_a_fresh_boot_of_the_same_qemu(
    pytester: pytest.Pytester, images: Images
) -> None:
    result, records = run_inner(pytester, images, "{}", reset="reboot", count=2)
    result.assert_outcomes(passed=2)
    assert len({r["boot_id"] for r in records}) == 2, f"the second test did not get a new boot: {records}"
    assert len({r["pid"] for r in records}) == 1, f"a reboot should not start a new QEMU: {records}"
    assert "cold boot" not in result.stdout.str()
