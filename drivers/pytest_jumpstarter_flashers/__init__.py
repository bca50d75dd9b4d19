"""Flashers: write an image onto a board's storage and prove it arrived.

Methods (``driver:`` in a target description, role ``flasher``, this family's fixture): ``block``
(a block device or image file), ``qemu-disk`` (a QEMU board's disk while it is off), ``uboot-tftp``
(U-Boot pulls the image over TFTP in RAM-sized chunks and writes it), ``dfu`` (USB DFU 1.1 over
pyusb).  Importing this module is cheap; the drivers load with a target.  Test doubles (a software
DFU device) are in :mod:`.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef, lazy_exports

if TYPE_CHECKING:
    from .base import Destination, FlasherDriver
    from .block import BlockFlasher
    from .dfu import DfuFlasher
    from .qemu_disk import QemuDiskFlasher
    from .uboot import UBootTftpFlasher

_WHERE = {
    "BlockFlasher": "block",
    "Destination": "base",
    "DfuFlasher": "dfu",
    "FlasherDriver": "base",
    "QemuDiskFlasher": "qemu_disk",
    "UBootTftpFlasher": "uboot",
}
__all__ = [
    "BlockFlasher",
    "Destination",
    "DfuFlasher",
    "FlasherDriver",
    "QemuDiskFlasher",
    "UBootTftpFlasher",
]

flasher = device_fixture("flasher", doc="The flasher device of the current target.")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [
        DriverRef("block", "pytest_jumpstarter_flashers.block:BlockFlasher"),
        DriverRef("dfu", "pytest_jumpstarter_flashers.dfu:DfuFlasher"),
        DriverRef("qemu-disk", "pytest_jumpstarter_flashers.qemu_disk:QemuDiskFlasher"),
        DriverRef("uboot-tftp", "pytest_jumpstarter_flashers.uboot:UBootTftpFlasher"),
    ]


__getattr__ = lazy_exports(__name__, _WHERE)
