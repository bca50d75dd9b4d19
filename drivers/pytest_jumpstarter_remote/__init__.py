"""Boards of a Jumpstarter lab (``driver: jumpstarter``), leased or standalone, through our fixtures.

Registering costs nothing: the driver modules load with a target, and the Jumpstarter client stack
(about 1 s and 77 MB to import) only when a ``jumpstarter`` device starts.  It is the optional extra
``pytest-jumpstarter[jumpstarter]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


__getattr__ = lazy_exports(__name__, _WHERE)
