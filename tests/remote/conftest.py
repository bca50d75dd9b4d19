"""Fixtures for tests against real Jumpstarter exporters (``jmp run`` as nobody, QEMU under TCG)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from exporter_support import BOOTDISK, Exporter, demo_board_export, free_port, private_dir, running_exporter


def _need_stack() -> None:
    pytest.importorskip(
        "jumpstarter_cli", reason="needs the [jumpstarter] extra (pip install -e '.[jumpstarter]')"
    )
    if not BOOTDISK.exists():
        message = (
            f"needs {BOOTDISK} (run scripts/build-images with syslinux, mtools and dosfstools installed)"
        )
        if os.environ.get("JUMPSTARTER_REQUIRE_IMAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def demo_exporter() -> Iterator[Exporter]:
    """A standalone exporter serving the demo board (QEMU VM with http/echo/ssh forwards, MockPower)."""
    _need_stack()
    workdir = private_dir("pytest-jumpstarter-exporter-")
    try:
        export = demo_board_export(workdir, {"http": 80, "echo": 7, "ssh": 22})
        with running_exporter("demo", export, workdir, listen=f"127.0.0.1:{free_port()}") as exporter:
            yield exporter
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
