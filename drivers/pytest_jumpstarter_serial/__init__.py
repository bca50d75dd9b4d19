"""Serial console devices over a pyserial URL (``socket://``, ``loop://``, ``rfc2217://``, a tty path)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jumpstarter.driver import Driver

from .driver import SerialConsole

__all__ = ["SerialConsole"]


@pytest.hookimpl
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:
    return [SerialConsole]
