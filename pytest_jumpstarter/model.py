"""The model of a target description: a target, its devices and what each device's driver is.

Built by the loader (:mod:`.target`, :mod:`.validate`) from a file; read by the plugin, the lifecycle
and the listing.  Nothing here reads files or starts devices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .driver import Driver
from .settings import Setting

Scope = Literal["test", "module", "session"]
SCOPES: tuple[Scope, ...] = ("test", "module", "session")
RESET_MODES = ("none", "reboot", "snapshot", "on-failure")
#: Keys of a device that belong to the plugin; every other key is a driver setting.
GENERIC_KEYS: Mapping[str, Setting] = {
    "driver": Setting("str", doc="the driver's name"),
    "role": Setting("str", default=None, doc="the fixture this device serves (default: the driver's role)"),
    "scope": Setting("str", default="test", choices=SCOPES),
    "reset": Setting("str", default="none", choices=RESET_MODES),
    "exclusive": Setting("bool", default=False),
    "lock": Setting("str", default=None, doc="lease name of an exclusive device (default: target/device)"),
    "lock_timeout": Setting("duration", default=None, doc="how long to wait for an exclusive device"),
}
#: How long a run waits for an exclusive device held by another run, unless told otherwise.
DEFAULT_LOCK_TIMEOUT = 300.0
TOP_KEYS = ("name", "labels", "secrets", "devices")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class DeviceSpec:
    """One validated device of a target: which driver, its typed settings, and how long it lives."""

    name: str
    driver: type[Driver[Any]]
    role: str
    #: The scope the device really gets: at least that of every device referring to it.
    scope: Scope
    declared_scope: Scope
    reset: str
    exclusive: bool
    #: The driver's settings object (its settings dataclass), defaults filled in.
    settings: Any
    #: Devices this one refers to, by the setting that names them (``{"board": "qemu_vm"}``).
    refs: Mapping[str, str]
    line: int | None = None
    #: The lease name of an exclusive device (``lock:``), shared by every target file naming it.
    lock: str | None = None
    #: How long to wait for an exclusive device held by another run, in seconds.
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT


@dataclass(frozen=True)
class TargetDescription:
    """A validated target: its name, labels, secrets and devices (in file order)."""

    name: str
    source: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    devices: Mapping[str, DeviceSpec] = field(default_factory=dict)
    #: The values of the secret variables, to be removed from anything shown.
    secret_values: tuple[str, ...] = ()
    #: Where ``name`` is written, for messages about name clashes.
    name_line: int | None = None

    def resolve(self, role: str) -> str:
        """The device serving ``role``: the device of that name, else the one device with that role.

        Raises :class:`LookupError` whose message says why none fits.
        """
        if role in self.devices:
            return role
        matches = [d.name for d in self.devices.values() if d.role == role]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LookupError(
                f"role {role!r} is served by several devices ({', '.join(matches)}); "
                f"name one of them {role!r} or ask for it by name with target.device(name)"
            )
        have = ", ".join(sorted({d.role for d in self.devices.values()} | set(self.devices))) or "none"
        raise LookupError(f"no device with role {role!r} (it has: {have})")

    def start_order(self, name: str) -> list[str]:
        """``name`` and every device it refers to, directly or not, referred devices first."""
        order: list[str] = []

        def visit(current: str) -> None:
            if current in order:
                return
            for ref in self.devices[current].refs.values():
                visit(ref)
            order.append(current)

        visit(name)
        return order
