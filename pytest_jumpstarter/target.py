"""Loading target descriptions (YAML and ini, one model): the API the plugin calls.

Everything wrong with a description is collected before anything runs: each problem carries the
file and line, the key path, what was expected and what was found, and a "did you mean" when a
name is close to a known one.  Nothing here starts a device or touches pytest fixtures.
Parsing is in :mod:`.sources`, checking in :mod:`.validate`, the model in :mod:`.model`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .driver import Driver
from .errors import Problem, TargetError
from .model import (
    DEFAULT_LOCK_TIMEOUT,
    GENERIC_KEYS,
    RESET_MODES,
    SCOPES,
    TOP_KEYS,
    DeviceSpec,
    Scope,
    TargetDescription,
)
from .redact import Redactor
from .settings import suggest
from .sources import Problems, interpolate, parse_ini, parse_yaml
from .validate import secret_values_in, validate

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "GENERIC_KEYS",
    "RESET_MODES",
    "SCOPES",
    "TOP_KEYS",
    "DeviceSpec",
    "Redactor",
    "Scope",
    "TargetDescription",
    "interpolate",
    "load_target",
    "load_targets",
    "suggest",
]


def load_target(
    path: Path,
    drivers: Mapping[str, type[Driver[Any]]],
    environ: Mapping[str, str] | None = None,
    display: str | None = None,
    driver_notes: Sequence[str] = (),
) -> TargetDescription:
    """Read and validate one target file; raise :class:`TargetError` with every problem found."""
    target, problems = _load(path, drivers, os.environ if environ is None else environ, display, driver_notes)
    if problems or target is None:
        raise TargetError(problems)
    return target


def load_targets(
    paths: Sequence[Path],
    drivers: Mapping[str, type[Driver[Any]]],
    environ: Mapping[str, str] | None = None,
    displays: Sequence[str] | None = None,
    driver_notes: Sequence[str] = (),
) -> list[TargetDescription]:
    """Load several target files, reporting the problems of all of them (and name clashes) at once."""
    env = os.environ if environ is None else environ
    targets: list[TargetDescription] = []
    problems: list[Problem] = []
    seen: dict[str, tuple[str, int | None]] = {}
    for index, path in enumerate(paths):
        display = displays[index] if displays else None
        target, found = _load(path, drivers, env, display, driver_notes)
        problems.extend(found)
        if target is None:
            continue
        shown = display or str(path)
        if target.name in seen:
            other_file, other_line = seen[target.name]
            where = f"{other_file}:{other_line}" if other_line else other_file
            problems.append(
                Problem(
                    shown,
                    target.name_line,
                    "name",
                    f"target name {target.name!r} is also used by {where}; each target needs its own name",
                )
            )
            continue
        seen[target.name] = (shown, target.name_line)
        targets.append(target)
    if problems:
        raise TargetError(problems)
    return targets


def _load(
    path: Path,
    drivers: Mapping[str, type[Driver[Any]]],
    environ: Mapping[str, str],
    display: str | None,
    driver_notes: Sequence[str],
) -> tuple[TargetDescription | None, list[Problem]]:
    shown = display or str(path)
    problems = Problems(shown)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".ini", ".cfg"):
        problems.add((), f"expected a .yaml, .yml or .ini target file, found {path.name!r}")
        return None, problems.items
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.add((), f"cannot read target file: {reason} (resolved to {path.resolve()})")
        return None, problems.items
    doc = parse_yaml(text, problems) if suffix in (".yaml", ".yml") else parse_ini(text, problems)
    if doc is None:
        return None, problems.items
    target = validate(doc, path, drivers, environ, problems, driver_notes)
    secrets = target.secret_values if target is not None else secret_values_in(doc.data, environ)
    if secrets:
        redact = Redactor(secrets)
        problems.items = [Problem(p.file, p.line, p.key, redact(p.message)) for p in problems.items]
    problems.items.sort(key=lambda p: p.line or 0)
    return (None if problems.items else target), problems.items
