"""Boards of a Jumpstarter lab (``driver: jumpstarter``), leased or standalone, through our fixtures.

Registering costs nothing: the driver modules load with a target, and the Jumpstarter client stack
(about 1 s and 77 MB to import) only when a ``jumpstarter`` device starts.  It is the optional extra
``pytest-jumpstarter[jumpstarter]``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter.families import DriverRef, lazy_exports

if TYPE_CHECKING:
    from .driver import JumpstarterBoard
    from .tunnel import JumpstarterNetwork

_WHERE = {"JumpstarterBoard": "driver", "JumpstarterNetwork": "tunnel"}
__all__ = ["JumpstarterBoard", "JumpstarterNetwork"]


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [
        DriverRef("jumpstarter", "pytest_jumpstarter_remote.driver:JumpstarterBoard"),
        DriverRef("jumpstarter-network", "pytest_jumpstarter_remote.tunnel:JumpstarterNetwork"),
    ]


@pytest.hookimpl
def pytest_jumpstarter_list_device(config: pytest.Config, target: Any, device: Any) -> list[str]:
    """Where a ``jumpstarter`` board is served from, and its driver tree (see :mod:`.listing`)."""
    driver = sys.modules.get(f"{__name__}.driver")  # not loaded: the target has no jumpstarter board
    if driver is None or device.driver is not driver.JumpstarterBoard or device.settings is None:
        return []
    from .listing import describe

    return describe(device.name, device.settings)


__getattr__ = lazy_exports(__name__, _WHERE)
