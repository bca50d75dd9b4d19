"""Serial console devices over a pyserial URL (``socket://``, ``loop://``, ``rfc2217://``, a tty path).

The ``console`` fixture is this family's: ``console`` is the serial driver's role.  Importing this
module is cheap (pytest does at every start, for the fixture); the driver loads with a target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef, lazy_exports

if TYPE_CHECKING:
    from .driver import SerialConsole

_WHERE = {"SerialConsole": "driver"}
__all__ = ["SerialConsole"]

console = device_fixture("console", doc="The console device (e.g. driver serial) of the current target.")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [DriverRef("serial", "pytest_jumpstarter_serial.driver:SerialConsole")]


__getattr__ = lazy_exports(__name__, _WHERE)
