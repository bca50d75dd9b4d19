"""Hook specifications: the extension points of pytest-jumpstarter.

Implement them in a ``conftest.py``, a pytest plugin, or a module named in the
``pytest_jumpstarter.drivers`` entry-point group (the built-in driver families do exactly that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .driver import Driver


@pytest.hookspec
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]]]:  # type: ignore[empty-body]
    """Return driver classes to make available to target descriptions.

    Called once per run; every implementation's list is merged.  Two classes with the same
    ``name`` are an error that names both.
    """


@pytest.hookspec
def pytest_jumpstarter_device_ready(device: Driver[Any], item: pytest.Item | None) -> None:
    """A device has started (or been reset) and is about to be handed to ``item``."""


@pytest.hookspec
def pytest_jumpstarter_device_teardown(device: Driver[Any], item: pytest.Item | None) -> None:
    """A device is about to be stopped.  ``item`` is the last test that used it, if any."""
