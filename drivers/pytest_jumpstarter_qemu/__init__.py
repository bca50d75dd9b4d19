"""QEMU boards: power, serial console and QMP for guests under qemu-system-*.

Registered through the ``pytest_jumpstarter.drivers`` entry point.  Importing this module is cheap:
qemu.qmp is imported only when a board powers on.
"""

from __future__ import annotations

import pytest

from .board import QemuBoard
from .images import demo_images

__all__ = ["QemuBoard", "demo_images"]


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[QemuBoard]]:
    return [QemuBoard]
