"""Validating a parsed target file against the installed drivers.

Every problem is collected, located and worded for the user (what was expected, what was found,
"did you mean"), so one run reports all of them.  References between devices are checked for
existence, cycles and the capabilities the referring setting needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .capabilities import describe_needs
from .driver import Driver, Referred
from .model import (
    _NAME,
    DEFAULT_LOCK_TIMEOUT,
    GENERIC_KEYS,
    SCOPES,
    TOP_KEYS,
    DeviceSpec,
    Scope,
    TargetDescription,
)
from .settings import SettingValueError, build, coerce, describe, suggest
from .sources import Doc, Problems, expand


def secret_values_in(data: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, ...]:
    secrets = data.get("secrets")
    if not isinstance(secrets, list):
        return ()
    return tuple(environ[s] for s in secrets if isinstance(s, str) and environ.get(s))


def validate(
    doc: Doc,
    path: Path,
    drivers: Mapping[str, type[Driver[Any]]],
    environ: Mapping[str, str],
    problems: Problems,
    driver_notes: Sequence[str],
) -> TargetDescription | None:
    data = doc.data
    for key in data:
        if key not in TOP_KEYS:
            problems.add(
                (key,),
                f"unknown key {key!r}{suggest(key, TOP_KEYS)} (expected one of: {', '.join(TOP_KEYS)})",
            )

    secrets: list[str] = []
    raw_secrets = data.get("secrets", [])
    if not isinstance(raw_secrets, list) or not all(isinstance(s, str) for s in raw_secrets):
        problems.add(
            ("secrets",), f"expected a list of environment variable names, found {describe(raw_secrets)}"
        )
    else:
        secrets = raw_secrets
    data = {
        key: (value if key == "secrets" else expand(value, (key,), environ, problems))
        for key, value in data.items()
    }

    name = data.get("name")
    if name is None:
        problems.add((), "missing required key 'name' (the target's name, shown in test ids)")
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.add(
            ("name",),
            f"expected a name of letters, digits and '_.+-' (it appears in test ids), found {describe(name)}",
        )

    labels: dict[str, str] = {}
    raw_labels = data.get("labels", {})
    if not isinstance(raw_labels, dict):
        problems.add(("labels",), f"expected a mapping of label: value, found {describe(raw_labels)}")
    else:
        for key, value in raw_labels.items():
            if isinstance(value, bool):
                labels[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                labels[key] = str(value)
            else:
                problems.add(
                    ("labels", key), f"expected a single value (string or number), found {describe(value)}"
                )

    raw_devices = data.get("devices", {})
    if raw_devices is None:
        raw_devices = {}
    if not isinstance(raw_devices, dict):
        problems.add(
            ("devices",), f"expected a mapping of device name: settings, found {describe(raw_devices)}"
        )
        raw_devices = {}

    base_dir = path.resolve().parent
    partial: dict[str, dict[str, Any]] = {}
    for device, body in raw_devices.items():
        spec = _validate_device(device, body, drivers, base_dir, problems, driver_notes)
        if spec is not None:
            partial[device] = spec

    _check_refs(partial, raw_devices, problems)
    if problems.items or not isinstance(name, str):
        return None

    scopes = _effective_scopes(partial)
    devices = {
        device: DeviceSpec(
            name=device,
            driver=spec["driver"],
            role=spec["role"],
            scope=scopes[device],
            declared_scope=spec["scope"],
            reset=spec["reset"],
            exclusive=spec["exclusive"],
            settings=spec["settings"],
            refs=spec["refs"],
            line=doc.lines.get(("devices", device)),
            lock=spec["lock"],
            lock_timeout=DEFAULT_LOCK_TIMEOUT if spec["lock_timeout"] is None else spec["lock_timeout"],
        )
        for device, spec in partial.items()
    }
    target = TargetDescription(
        name=name,
        source=path.resolve(),
        labels=labels,
        secrets=tuple(secrets),
        devices=devices,
        secret_values=tuple(environ[s] for s in secrets if environ.get(s)),
        name_line=doc.lines.get(("name",)),
    )
    return target


def _validate_device(
    device: str,
    body: Any,
    drivers: Mapping[str, type[Driver[Any]]],
    base_dir: Path,
    problems: Problems,
    driver_notes: Sequence[str],
) -> dict[str, Any] | None:
    where = ("devices", device)
    if not _NAME.match(device):
        problems.add(where, f"expected a device name of letters, digits and '_.+-', found {device!r}")
    if not isinstance(body, dict):
        problems.add(where, f"expected a mapping of settings (driver: ... and more), found {describe(body)}")
        return None
    generic: dict[str, Any] = {}
    for key, setting in GENERIC_KEYS.items():
        if key not in body:
            if setting.required:
                problems.add(where, f"missing required key {key!r} (which driver runs this device)")
            else:
                generic[key] = setting.default
            continue
        try:
            generic[key] = coerce(setting, body[key], base_dir)
        except SettingValueError as exc:
            problems.add((*where, key), str(exc))
    for key in ("lock", "lock_timeout"):
        if generic.get(key) is not None and generic.get("exclusive") is False:
            problems.add(
                (*where, key),
                f"{key} applies to exclusive devices only, and this one is not: add exclusive: true"
                " (or remove it)",
            )
    driver_name = generic.get("driver")
    if driver_name is None:
        return None
    driver = drivers.get(driver_name)
    if driver is None:
        known = ", ".join(sorted(drivers)) or "none are installed"
        notes = "".join(f"\n    note: {note}" for note in driver_notes)
        problems.add(
            (*where, "driver"),
            f"unknown driver {driver_name!r}{suggest(driver_name, drivers)} (known drivers: {known}){notes}",
        )
        return None
    role = generic.get("role") or driver.role or device
    if not _NAME.match(role):
        problems.add((*where, "role"), f"expected a role name of letters, digits and '_.+-', found {role!r}")

    settings: dict[str, Any] = {}
    refs: dict[str, str] = {}
    for key, value in body.items():
        if key in GENERIC_KEYS:
            continue
        declared = driver.settings.get(key)
        if declared is None:
            accepted = ", ".join(sorted(driver.settings)) or "no settings"
            hint = suggest(key, [*driver.settings, *GENERIC_KEYS])
            problems.add(
                (*where, key),
                f"unknown setting {key!r} for driver {driver.name!r}{hint} "
                f"({driver.name} accepts: {accepted})",
            )
            continue
        try:
            settings[key] = coerce(declared, value, base_dir)
        except SettingValueError as exc:
            for leaf in exc.leaves():
                problems.add((*where, key, *leaf.path), f"{leaf.message} (setting of driver {driver.name!r})")
            continue
        if declared.kind == "ref" and settings[key] is not None:
            refs[key] = settings[key]
    for key, setting in driver.settings.items():
        if key in settings or key in body:
            continue
        if setting.required:
            doc = f": {setting.doc}" if setting.doc else ""
            problems.add(
                where, f"missing required setting {key!r} ({setting.kind}) for driver {driver.name!r}{doc}"
            )
        else:
            settings[key] = setting.default
    if len(settings) < len(driver.settings):
        return {**generic, "driver": driver, "role": role, "settings": None, "refs": refs}
    typed = build(driver.settings, driver.settings_class, settings)
    for key, message in driver.check(typed):
        # "forwards.ssh" names a nested key: located at its own line.
        problems.add((*where, *key.split(".")) if key else where, message)
    return {**generic, "driver": driver, "role": role, "settings": typed, "refs": refs}


def _check_refs(partial: Mapping[str, dict[str, Any]], raw: Mapping[str, Any], problems: Problems) -> None:
    names = list(raw)
    for device, spec in partial.items():
        for key, ref in spec["refs"].items():
            if ref == device:
                problems.add(("devices", device, key), f"a device cannot refer to itself (found {ref!r})")
            elif ref not in raw:
                problems.add(
                    ("devices", device, key),
                    f"refers to device {ref!r}, which this target does not have{suggest(ref, names)} "
                    f"(devices: {', '.join(names)})",
                )
            else:
                _check_needs(device, key, ref, spec, partial, problems)
        _check_with_refs(device, spec, partial, problems)
    # A cycle can only run through devices whose references all resolved.
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(device: str, trail: list[str]) -> None:
        state[device] = 1
        trail.append(device)
        for key, ref in partial[device]["refs"].items():
            if ref not in partial or ref == device:
                continue
            if state.get(ref) == 1:
                cycle = [*trail[trail.index(ref) :], ref]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    problems.add(
                        ("devices", device, key),
                        "devices refer to each other in a cycle: "
                        + " -> ".join(cycle)
                        + " (a referred device is started first, so references must not loop)",
                    )
            elif ref not in state:
                visit(ref, trail)
        trail.pop()
        state[device] = 2

    for device in partial:
        if device not in state:
            visit(device, [])


def _provided(spec: Mapping[str, Any]) -> tuple[type, ...] | None:
    """What a validated device can do; None when its settings did not validate (nothing to say)."""
    if spec.get("settings") is None:
        return None
    driver: type[Driver[Any]] = spec["driver"]
    return driver.provides(spec["settings"])


def _check_with_refs(
    device: str, spec: Mapping[str, Any], partial: Mapping[str, dict[str, Any]], problems: Problems
) -> None:
    """The driver's own checks that depend on the devices it refers to (:meth:`Driver.check_refs`)."""
    if spec.get("settings") is None:
        return
    referred = {
        key: Referred(ref, partial[ref]["driver"].name, provided)
        for key, ref in spec["refs"].items()
        if ref != device and ref in partial and (provided := _provided(partial[ref])) is not None
    }
    for key, message in spec["driver"].check_refs(spec["settings"], referred):
        problems.add(("devices", device, *key.split(".")) if key else ("devices", device), message)


def _check_needs(
    device: str,
    key: str,
    ref: str,
    spec: Mapping[str, Any],
    partial: Mapping[str, dict[str, Any]],
    problems: Problems,
) -> None:
    """Setting ``key`` of ``device`` names ``ref``: does ``ref`` provide what the setting needs?"""
    declared = spec["driver"].settings[key]
    provided = _provided(partial[ref]) if ref in partial else None
    if not declared.needs or provided is None:
        return
    missing = [need for need in declared.needs if need not in provided]
    if not missing:
        return
    able = [
        name
        for name, other in partial.items()
        if name != device
        and (have := _provided(other)) is not None
        and all(n in have for n in declared.needs)
    ]
    problems.add(
        ("devices", device, key),
        f"device {ref!r} (driver {partial[ref]['driver'].name}) does not provide {describe_needs(missing)}; "
        + (f"devices that do: {', '.join(able)}" if able else "no device of this target does"),
    )


def _effective_scopes(partial: Mapping[str, dict[str, Any]]) -> dict[str, Scope]:
    """Widen each device's scope to the widest scope of the devices referring to it (transitively)."""
    scopes: dict[str, Scope] = {name: spec["scope"] for name, spec in partial.items()}
    changed = True
    while changed:
        changed = False
        for name, spec in partial.items():
            for ref in spec["refs"].values():
                if SCOPES.index(scopes[name]) > SCOPES.index(scopes[ref]):
                    scopes[ref] = scopes[name]
                    changed = True
    return scopes
