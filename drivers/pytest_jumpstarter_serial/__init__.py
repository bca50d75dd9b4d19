"""Serial console devices over a pyserial URL (``socket://``, ``loop://``, ``rfc2217://``, a tty path).

The ``console`` fixture is this family's: ``console`` is the serial driver's role.  Importing this
module is cheap (pytest does at every start, for the fixture); the driver loads with a target.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef

if TYPE_CHECKING:
    from .driver import SerialConsole

_WHERE = {"SerialConsole": "driver"}
__all__ = ["SerialConsole"]

console = device_fixture("console", doc="The console device (e.g. driver serial) of the current target.")


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [DriverRef("serial", "pytest_jumpstarter_serial.driver:SerialConsole")]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{where}", __name__), name)
