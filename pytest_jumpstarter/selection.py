"""Which tests need which target: the ``device`` marker, the device fixtures a test uses, and why a
target cannot run a test."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .target import TargetDescription

#: Set on a fixture function made by ``device_fixture``: the role it serves.
ROLE_ATTRIBUTE = "_jumpstarter_role"


@dataclass(frozen=True)
class Needs:
    roles: tuple[str, ...]
    labels: Mapping[str, tuple[str, ...]]

    def unmet(self, target: TargetDescription) -> str | None:
        """Why ``target`` cannot run the test, or None."""
        missing: list[str] = []
        for role in self.roles:
            try:
                target.resolve(role)
            except LookupError as exc:
                missing.append(str(exc))
        for key, wanted in self.labels.items():
            have = target.labels.get(key)
            if have is None:
                missing.append(f"no label {key!r} (the test needs {key}={_alternatives(wanted)})")
            elif have not in wanted:
                missing.append(f"label {key} is {have!r}, the test needs {_alternatives(wanted)}")
        if not missing:
            return None
        return f"target {target.name!r} cannot run this test: " + "; ".join(missing)


def _alternatives(values: Sequence[str]) -> str:
    return " or ".join(repr(v) for v in values)


def _label_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def needs(markers: Iterable[pytest.Mark], fixture_roles: Iterable[str]) -> Needs:
    roles: list[str] = []
    labels: dict[str, tuple[str, ...]] = {}
    for mark in markers:
        for role in mark.args:
            if not isinstance(role, str):
                raise pytest.UsageError(f"@pytest.mark.device: expected role names (strings), found {role!r}")
            if role not in roles:
                roles.append(role)
        for key, value in mark.kwargs.items():
            values = (
                tuple(_label_text(v) for v in value)
                if isinstance(value, list | tuple | set)
                else (_label_text(value),)
            )
            # Markers closer to the test come first; a label narrowed twice must fit both.
            labels[key] = tuple(v for v in labels[key] if v in values) if key in labels else values
    for role in fixture_roles:
        if role not in roles:
            roles.append(role)
    return Needs(tuple(roles), labels)


def fixture_roles(metafunc: pytest.Metafunc) -> list[str]:
    """Roles of the device fixtures (made by :func:`device_fixture`) the test uses, directly or not."""
    # Metafunc has no public view of the fixture definitions; this attribute has been stable for years.
    defs: Mapping[str, Sequence[Any]] = getattr(metafunc, "_arg2fixturedefs", {})
    roles = []
    for name in metafunc.fixturenames:
        fixturedefs = defs.get(name)
        if fixturedefs:
            role = getattr(fixturedefs[-1].func, ROLE_ATTRIBUTE, None)
            if role is not None:
                roles.append(role)
    return roles


def is_device_test(markers: Sequence[pytest.Mark], fixturenames: Iterable[str]) -> bool:
    return bool(markers) or "jumpstarter_target" in fixturenames


def item_roles(item: pytest.Item) -> list[str]:
    """The roles ``item`` needs: its ``device`` markers' and its device fixtures'."""
    info = getattr(item, "_fixtureinfo", None)
    defs: Mapping[str, Sequence[Any]] = getattr(info, "name2fixturedefs", {})
    roles = [r for name in getattr(item, "fixturenames", ()) for r in _role_of(defs.get(name))]
    return list(needs(item.iter_markers("device"), roles).roles)


def _role_of(fixturedefs: Sequence[Any] | None) -> list[str]:
    role = getattr(fixturedefs[-1].func, ROLE_ATTRIBUTE, None) if fixturedefs else None
    return [role] if role is not None else []


def xdist_group(item: pytest.Item, target: TargetDescription) -> str | None:
    """The ``--dist loadgroup`` group of a test on ``target``: tests that share a kept device or an
    exclusive one go to the same worker, so it boots once and nobody waits for its lease."""
    names: list[str] = []
    for role in item_roles(item):
        try:
            names.extend(target.start_order(target.resolve(role)))
        except LookupError:
            continue
    specs = [target.devices[n] for n in dict.fromkeys(names)]
    if any(s.scope == "session" for s in specs):
        return f"jumpstarter:{target.name}"
    exclusive = sorted(s.lock or f"{target.name}/{s.name}" for s in specs if s.exclusive)
    if exclusive:
        return f"jumpstarter:{exclusive[0]}"
    if any(s.scope == "module" for s in specs):
        module = item.getparent(pytest.Module)
        return f"jumpstarter:{target.name}:{module.nodeid if module else ''}"
    return None
