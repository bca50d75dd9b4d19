"""The ``target`` fixture's object: the target a test runs on, and its devices started for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from .lifecycle import DeviceManager
    from .model import DeviceSpec, TargetDescription


class Target:
    """The target a test runs on (the ``target`` fixture): its name, labels and devices.

    ``target.device(role)`` returns that device, started (or reset) for this test.
    """

    def __init__(self, description: TargetDescription, manager: DeviceManager, item: pytest.Item) -> None:
        self.description = description
        self._manager = manager
        self._item = item

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def labels(self) -> Mapping[str, str]:
        return self.description.labels

    @property
    def devices(self) -> Mapping[str, DeviceSpec]:
        """The devices this target describes, by name (not started: use :meth:`device`)."""
        return self.description.devices

    def has(self, role: str) -> bool:
        """Whether some device serves ``role`` (or is named so)."""
        try:
            self.description.resolve(role)
        except LookupError:
            return False
        return True

    def device(self, role: str) -> Any:
        """The device named ``role``, or the one device serving ``role``, started for this test."""
        __tracebackhide__ = True
        try:
            name = self.description.resolve(role)
        except LookupError as exc:
            raise LookupError(f"target {self.name!r} ({self.description.source}): {exc}") from None
        return self._manager.acquire(self._item, self.description, name)

    def __repr__(self) -> str:
        return f"<Target {self.name} devices={list(self.devices)}>"
