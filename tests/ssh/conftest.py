"""Fixtures for the ssh family's tests: one demo board (with dropbear) per module, and an ssh shell on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_jumpstarter_qemu import QemuBoard
from pytest_jumpstarter_qemu.images import Images
from pytest_jumpstarter_ssh import SshShell
from ssh_support import board, ssh_images, ssh_on


@pytest.fixture(scope="module")
def images() -> Images:
    return ssh_images()


@pytest.fixture(scope="module")
def qemu(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuBoard]:
    """A booted demo board with user networking (forwards added at run time)."""
    b = board(images, tmp_path_factory.mktemp("board"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def ssh(qemu: QemuBoard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshShell]:
    shell = ssh_on(qemu, tmp_path_factory.mktemp("ssh"))
    shell.start()
    try:
        yield shell
    finally:
        shell.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
