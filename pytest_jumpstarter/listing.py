"""``--jumpstarter-list``: the targets, their devices and labels, and which tests run on each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from .model import DeviceSpec
from .settings import settings_items
from .target import TargetDescription

TARGET_PARAM = "_jumpstarter_target"


def render(
    targets: Sequence[TargetDescription],
    sources: Sequence[str],
    items: Sequence[pytest.Item],
    more: Callable[[TargetDescription, DeviceSpec], list[str]] = lambda target, device: [],
) -> str:
    """The listing as text (the caller redacts secrets); ``more`` adds lines per device (hooks)."""
    if not targets:
        return (
            "jumpstarter: no targets configured (pass --target=board.yaml, set JUMPSTARTER_TARGET, "
            "or list files under jumpstarter_targets in the ini file)"
        )
    runs: dict[str, list[str]] = {t.name: [] for t in targets}
    skips: dict[str, list[str]] = {t.name: [] for t in targets}
    other = 0
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get(TARGET_PARAM) if callspec is not None else None
        if name not in runs:
            other += 1
            continue
        skip = item.get_closest_marker("skip")
        if skip is not None:
            skips[name].append(f"{item.nodeid}: {skip.kwargs.get('reason', 'skipped')}")
        else:
            runs[name].append(item.nodeid)
    lines = [f"jumpstarter targets ({len(targets)}):"]
    for target, source in zip(targets, sources, strict=True):
        lines.append("")
        lines.append(f"target {target.name}  ({source})")
        if target.labels:
            lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in target.labels.items()))
        lines.append(f"  devices ({len(target.devices)}):")
        for device in target.devices.values():
            scope = (
                device.scope
                if device.scope == device.declared_scope
                else (
                    f"{device.scope} (declared {device.declared_scope}, widened by a device referring to it)"
                )
            )
            lines.append(
                f"    {device.name}: driver {device.driver.name}, role {device.role}, scope {scope}, "
                f"reset {device.reset}"
                + (
                    f", exclusive (lock {device.lock or f'{target.name}/{device.name}'})"
                    if device.exclusive
                    else ""
                )
            )
            for key, value in settings_items(device.settings):
                declared = device.driver.settings.get(key)
                if declared is not None and not declared.required and declared.default == value:
                    continue  # defaults would drown what the file says
                if key in device.refs:
                    lines.append(f"      {key} -> device {value}")
                else:
                    lines.append(f"      {key} = {_show(value)}")
            lines.extend(f"      {line}" for line in more(target, device))
        lines.append(f"  tests that run here ({len(runs[target.name])}):")
        lines.extend(f"    {nodeid}" for nodeid in runs[target.name])
        if skips[target.name]:
            lines.append(f"  tests skipped here ({len(skips[target.name])}):")
            lines.extend(f"    {text}" for text in skips[target.name])
    lines.append("")
    lines.append(f"tests that use no device: {other}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in settings_items(value)) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value) if not isinstance(value, str) else repr(value)
