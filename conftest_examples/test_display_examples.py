"""Example tests for a board with a screen (conftest_examples/qemu-x86_64-display.yaml).

    pytest conftest_examples --target=conftest_examples/qemu-x86_64-display.yaml

When a test on this board fails, its report carries a PNG of the screen: an attachment in the JUnit
XML, an image in pytest-html, an attachment in Allure, and ``<logdir>/<test id>/qemu_vm.png``.
"""

from __future__ import annotations

import pytest

display = pytest.mark.device(display="vga")


@display
def test_screen_shows_what_the_guest_wrote(qemu_vm, tmp_path):
    qemu_vm.console.run("echo 'hello from the guest' > /dev/tty0").check()
    png = qemu_vm.screenshot(tmp_path / "screen.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
