"""Reset policies on a real kept board: on-failure, a dead board restarted, a board that cannot come back."""

from __future__ import annotations

import shutil

import pytest
from pytest_jumpstarter_qemu.images import Images
from qemu_board_helpers import qemu_pids

pytestmark = pytest.mark.qemu


def kept_board(pytester: pytest.Pytester, images: Images, reset: str, kernel: str) -> None:
    pytester.makefile(
        ".yaml",
        board=f"""
        name: qemu-x86_64
        devices:
          qemu_vm:
            driver: qemu
            scope: session
            reset: {reset}
            kernel: {kernel}
            initrd: {images.linux_initrd}
        """,
    )


def test_on_failure_restores_only_after_a_failed_test(pytester: pytest.Pytester, images: Images) -> None:
    kept_board(pytester, images, "on-failure", str(images.linux_kernel))
    pytester.makepyfile(
        """
        def test_a_leaves_a_mark(qemu_vm):
            qemu_vm.console.run("touch /tmp/mark").check()
        def test_b_still_sees_it_and_fails(qemu_vm):
            assert qemu_vm.console.run("test -e /tmp/mark").ok
            assert False, "fail on purpose"
        def test_c_gets_a_restored_board(qemu_vm):
            assert not qemu_vm.console.run("test -e /tmp/mark").ok
        """
    )
    result = pytester.runpytest("--target=board.yaml", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)


def test_a_kept_board_found_dead_is_restarted(pytester: pytest.Pytester, images: Images) -> None:
    kept_board(pytester, images, "none", str(images.linux_kernel))
    pytester.makepyfile(
        """
        import os, signal
        def test_kills_it(qemu_vm):
            os.kill(qemu_vm.pid, signal.SIGKILL)
        def test_gets_a_live_board(qemu_vm):
            assert qemu_vm.console.run("echo alive").output == "alive"
        """
    )
    result = pytester.runpytest("--target=board.yaml", "-p", "no:randomly", "-rA")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*qemu_vm was found dead*after*test_kills_it*restarting it*"])


def test_a_dead_board_that_cannot_come_back_makes_the_rest_skip_with_the_reason(
    pytester: pytest.Pytester, images: Images
) -> None:
    kernel = pytester.path / "vmlinuz"
    shutil.copy(images.linux_kernel, kernel)
    kept_board(pytester, images, "none", str(kernel))
    pytester.makepyfile(
        f"""
        import os, signal
        def test_kills_it_for_good(qemu_vm):
            os.unlink({str(kernel)!r})
            os.kill(qemu_vm.pid, signal.SIGKILL)
        def test_two(qemu_vm):
            pass
        def test_three(qemu_vm):
            pass
        """
    )
    result = pytester.runpytest("--target=board.yaml", "-p", "no:randomly", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*device 'qemu_vm'*is down: it died after*test_kills_it_for_good*"])
    assert qemu_pids(str(kernel)) == set()  # none of this run's QEMUs is left (others' may run)
