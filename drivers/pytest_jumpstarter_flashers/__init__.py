"""Flashers: write an image onto a board's storage and prove it arrived.

Methods (``driver:`` in a target description, role ``flasher``): ``block`` (a block device or
image file), ``qemu-disk`` (a QEMU board's disk while it is off), ``uboot-tftp`` (U-Boot pulls the
image over TFTP in RAM-sized chunks and writes it), ``dfu`` (USB DFU 1.1 over pyusb).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jumpstarter.driver import Driver

from .base import Destination, FlasherDriver
from .block import BlockFlasher
from .dfu import DfuFlasher
from .qemu_disk import QemuDiskFlasher
from .uboot import UBootTftpFlasher


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:
    return [BlockFlasher, DfuFlasher, QemuDiskFlasher, UBootTftpFlasher]


__all__ = [
    "BlockFlasher",
    "Destination",
    "DfuFlasher",
    "FlasherDriver",
    "QemuDiskFlasher",
    "UBootTftpFlasher",
]
