"""Boards made of parts: ``board`` (a power device plus a console device) and ``command-power``.

``board`` is the composite board's role and the fixture that serves it.  Importing this module is
cheap; the drivers load with a target.
"""

from __future__ import annotations

import pytest

from pytest_jumpstarter import device_fixture
from pytest_jumpstarter.families import DriverRef

# Not bound to the name ``board``: importing the submodule .board sets that attribute.
board_fixture = device_fixture(
    "board", doc="The composite board (driver board: power + console) of the current target."
)


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[DriverRef]:
    return [
        DriverRef("board", "pytest_jumpstarter_board.board:Board"),
        DriverRef("command-power", "pytest_jumpstarter_board.command_power:CommandPower"),
    ]
