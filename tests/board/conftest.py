"""Fixtures of the board tests: a real QEMU lab (skipped without QEMU and U-Boot), a fake console server."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from board_support import MIB, UBOOT_ARM64, FakeConsoleServer, Lab, free_port, listening


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if shutil.which("qemu-system-aarch64") is None or not UBOOT_ARM64.exists():
        pytest.skip(
            "needs qemu-system-aarch64 and Debian's u-boot-qemu (apt-get install qemu-system-arm u-boot-qemu)"
        )
    state = tmp_path / "lab"
    tftp = tmp_path / "tftp"
    state.mkdir()
    tftp.mkdir()
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xab" * (16 * MIB))
    made = Lab(state, free_port(), disk, tftp)
    yield made
    left = made.alive()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"QEMU processes left behind: {left}"
    assert not listening(made.port), f"console port {made.port} still listens"


@pytest.fixture
def console_server() -> Iterator[FakeConsoleServer]:
    server = FakeConsoleServer(b"\r\nfake board 1.0\r\nfake-board ready\r\n# ")
    yield server
    server.close()
