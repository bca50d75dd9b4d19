"""Boards of a Jumpstarter lab (``driver: jumpstarter``), leased or standalone, through our fixtures.

Registering costs nothing: the Jumpstarter client stack (about 1 s and 77 MB to import) is imported
only when a ``jumpstarter`` device starts.  It is the optional extra ``pytest-jumpstarter[jumpstarter]``.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jumpstarter.driver import Driver

from .driver import JumpstarterBoard
from .tunnel import JumpstarterNetwork

__all__ = ["JumpstarterBoard", "JumpstarterNetwork"]


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:
    return [JumpstarterBoard, JumpstarterNetwork]
