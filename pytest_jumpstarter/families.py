"""Which driver families and drivers a run has.

A family is a module implementing ``pytest_jumpstarter_add_drivers``: an installed package named in
the ``pytest_jumpstarter.drivers`` entry-point group (the built-in ones are), any other plugin, or a
``conftest.py``.  Families are registered at every start, since they define the device fixtures a
test may use (so a device test without a target skips instead of missing its fixture); a family's
module is kept cheap to import and loads its drivers only when asked for them, with a target.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .driver import Driver
    from .errors import TargetError

ENTRY_POINT_GROUP = "pytest_jumpstarter.drivers"

#: Why a driver defined in a ``conftest.py`` can be unknown, and what to do (a note on "unknown driver").
CONFTEST_NOTE = (
    "targets are checked at start, when pytest has loaded only the conftest.py files of the rootdir, "
    "of the paths given on the command line and of the target files' folders; a driver defined in a "
    "conftest.py elsewhere is not known yet: name that folder on the command line, move the driver "
    "to one of those conftest.py files, or install it as a package in the pytest_jumpstarter.drivers "
    "entry-point group"
)


@dataclass(frozen=True)
class DriverRef:
    """A driver named by a family without importing it: ``DriverRef("qemu", "pkg.board:QemuBoard")``.

    ``pytest_jumpstarter_add_drivers`` may return these instead of classes; a driver module is then
    imported only when a target names its driver, so a run pays for the families it uses.
    """

    name: str
    path: str

    def load(self) -> type[Driver[Any]]:
        """Import the class; a module that fails to import, or a class that is not this driver, raises."""
        from .driver import Driver

        module, _, attr = self.path.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Driver)) or cls.name != self.name:
            raise TypeError(f"{self.path} is not a Driver subclass named {self.name!r}")
        return cls


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a family's top module: ``name`` is imported from its submodule
    ``where[name]`` on first use, so importing the family (at every pytest start) stays cheap."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module}", package), name)

    return __getattr__


def register_families(pm: pytest.PytestPluginManager) -> list[str]:
    """Register the modules of the entry-point group as plugins ``jumpstarter-drivers-<name>``.

    ``-p no:jumpstarter-drivers-<name>`` leaves one out.  Returns a note for each module that failed
    to import (shown with an "unknown driver" error, which is how the user notices).
    """
    from importlib.metadata import entry_points

    notes: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        name = f"jumpstarter-drivers-{ep.name}"
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            module = ep.load()
        except Exception as exc:
            notes.append(
                f"driver package {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
            )
            continue
        if not pm.is_registered(module):
            pm.register(module, name)
    return notes


class DriverTable(Mapping[str, "type[Driver[Any]]"]):
    """Driver classes by name; a :class:`DriverRef` is imported the first time its name is looked up."""

    def __init__(
        self, entries: Mapping[str, type[Driver[Any]] | DriverRef], origin: Mapping[str, str]
    ) -> None:
        self._entries = dict(entries)
        self._origin = dict(origin)

    def __getitem__(self, name: str) -> type[Driver[Any]]:
        entry = self._entries[name]
        if not isinstance(entry, DriverRef):
            return entry
        try:
            cls = entry.load()
        except Exception as exc:
            raise pytest.UsageError(
                f"driver {name!r} ({entry.path}, from {self._origin[name]}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._entries[name] = cls
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def collect_drivers(pm: pytest.PytestPluginManager) -> DriverTable:
    """Every driver the registered families provide, by ``Driver.name`` (classes, or references
    imported when a target uses them)."""
    from .driver import Driver

    drivers: dict[str, type[Driver[Any]] | DriverRef] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    for impl in reversed(pm.hook.pytest_jumpstarter_add_drivers.get_hookimpls()):
        where = impl.plugin_name
        classes = impl.function()
        if not isinstance(classes, list | tuple):
            problems.append(f"{where}: pytest_jumpstarter_add_drivers must return a list of Driver classes")
            continue
        for cls in classes:
            if isinstance(cls, DriverRef):
                name, label = cls.name, cls.path
            elif isinstance(cls, type) and issubclass(cls, Driver) and cls.name:
                name, label = cls.name, f"{cls.__module__}.{cls.__qualname__}"
            else:
                label = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
                problems.append(f"{where}: {label} is not a Driver subclass with a name, nor a DriverRef")
                continue
            if name in drivers and drivers[name] != cls:
                other = drivers[name]
                shown = (
                    other.path if isinstance(other, DriverRef) else f"{other.__module__}.{other.__qualname__}"
                )
                problems.append(
                    f"driver name {name!r} is provided twice: {shown} "
                    f"(from {origin[name]}) and {label} (from {where}); rename one of them"
                )
                continue
            drivers[name] = cls
            origin[name] = where
    if problems:
        raise pytest.UsageError("pytest-jumpstarter driver registration failed:\n  " + "\n  ".join(problems))
    return DriverTable(drivers, origin)


def has_unknown_driver(error: TargetError) -> bool:
    return any(p.key.endswith(".driver") and p.message.startswith("unknown driver") for p in error.problems)


def load_target_conftests(config: pytest.Config, target_files: Iterable[Path]) -> list[Path]:
    """Load the ``conftest.py`` files between the rootdir and each target file's folder that pytest
    has not loaded yet (it loads a sub-folder's only when it collects there, after targets are
    checked); returns those it loaded.

    Used when a target names an unknown driver, which such a conftest may define.  pytest has no
    public call for this; if its private one changes, nothing is loaded and the error's note says
    what to do instead.
    """
    pm = config.pluginmanager
    loaded = {Path(f).resolve() for f in (getattr(p, "__file__", None) for p in pm.get_plugins()) if f}
    root = config.rootpath.resolve()
    found: list[Path] = []
    for target_file in target_files:
        folder = target_file.resolve().parent
        if folder != root and root not in folder.parents:
            continue
        missing = [
            d / "conftest.py"
            for d in (folder, *folder.parents)
            if (d == root or root in d.parents) and (d / "conftest.py").is_file()
        ]
        missing = [c for c in missing if c not in loaded and c not in found]
        if not missing:
            continue
        try:
            pm._loadconftestmodules(
                folder,
                config.getoption("importmode"),
                rootpath=config.rootpath,
                consider_namespace_packages=bool(config.getini("consider_namespace_packages")),
            )
        except (AttributeError, TypeError):
            return found
        found += missing
    return found
