"""Hook specifications: the extension points of pytest-jumpstarter.

Implement them in a ``conftest.py``, a pytest plugin, or a module named in the
``pytest_jumpstarter.drivers`` entry-point group (the built-in driver families do exactly that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .driver import Driver
    from .families import DriverRef
    from .model import DeviceSpec, TargetDescription


@pytest.hookspec
def pytest_jumpstarter_add_drivers() -> list[type[Driver[Any]] | DriverRef]:  # type: ignore[empty-body]
    """Return the drivers to make available to target descriptions: classes, or
    :class:`~pytest_jumpstarter.DriverRef` (name and ``"module:Class"``), which are imported only
    when a target uses them, so a family costs nothing to a run that does not.

    Called once per run; every implementation's list is merged.  Two drivers with the same
    ``name`` are an error that names both.
    """


@pytest.hookspec
def pytest_jumpstarter_device_ready(device: Driver[Any], item: pytest.Item | None) -> None:
    """A device has started (or been reset) and is about to be handed to ``item``."""


@pytest.hookspec
def pytest_jumpstarter_device_teardown(device: Driver[Any], item: pytest.Item | None) -> None:
    """A device is about to be stopped.  ``item`` is the last test that used it, if any."""


@pytest.hookspec
def pytest_jumpstarter_list_device(  # type: ignore[empty-body]
    config: pytest.Config, target: TargetDescription, device: DeviceSpec
) -> list[str]:
    """More lines for ``--jumpstarter-list`` about ``device`` (e.g. whether a kept booted state fits
    it); touches no hardware.  Every implementation's lines are shown."""
