"""Declared driver settings, and turning what a target file says into typed values.

A driver declares ``settings = {"kernel": Setting("path", doc=...), ...}``.  The target loader
checks every device's settings against that declaration, so a misspelt key, a wrong type or a
missing required setting is reported at start-up with the file and line, before any test runs.

YAML gives typed scalars; ini gives strings.  Both go through :func:`coerce`, so the two formats
describe the same model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["str", "int", "float", "bool", "path", "list", "mapping", "ref", "duration", "size", "any"]

_MISSING: Any = object()


@dataclass(frozen=True)
class Setting:
    """One setting a driver accepts.

    ``kind`` says how the value is read:

    - ``str``, ``int``, ``float``, ``bool``: scalars (ini: ``yes/no/true/false/on/off/1/0`` for bool);
    - ``path``: a file path, relative paths resolved against the target file's folder;
    - ``list``: a list of ``item`` values (ini: one per line, or comma separated);
    - ``mapping``: ``name: value`` pairs (ini: ``name=value`` per line or comma separated);
    - ``ref``: the name of another device of the same target (a flasher names its board);
    - ``duration``: seconds, a number or ``"500ms"``, ``"2s"``, ``"1.5m"``;
    - ``size``: bytes, a number or ``"512K"``, ``"256M"``, ``"2G"`` (powers of 1024);
    - ``any``: taken as written.
    """

    kind: Kind
    default: Any = _MISSING
    doc: str = ""
    choices: Sequence[Any] | None = None
    item: Kind = "str"
    must_exist: bool = False

    @property
    def required(self) -> bool:
        return self.default is _MISSING


class SettingValueError(ValueError):
    """A value does not fit its :class:`Setting`; the message says what was expected and found."""


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def describe(value: object) -> str:
    """How an error message shows a value the user wrote: its type and a short repr."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}" if value is not None else "nothing (an empty value)"


def coerce(setting: Setting, value: object, base_dir: Path) -> Any:
    """Turn ``value`` (from YAML or ini) into what ``setting`` declares, or raise SettingValueError."""
    result = _coerce_kind(setting.kind, value, base_dir, setting.item)
    if setting.choices is not None and result not in setting.choices:
        choices = ", ".join(repr(c) for c in setting.choices)
        raise SettingValueError(f"expected one of {choices}, found {describe(value)}")
    if setting.must_exist and setting.kind == "path" and not Path(result).exists():
        raise SettingValueError(f"expected an existing file, found {str(value)!r} (resolved to {result})")
    return result


def _coerce_kind(kind: Kind, value: object, base_dir: Path, item: Kind = "str") -> Any:
    if kind == "any":
        return value
    if kind in ("str", "ref"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            what = "a device name" if kind == "ref" else "a string"
            raise SettingValueError(f"expected {what}, found {describe(value)}")
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise SettingValueError(f"expected an integer, found {describe(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 0)
            except ValueError:
                pass
        raise SettingValueError(f"expected an integer, found {describe(value)}")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SettingValueError(f"expected a number, found {describe(value)}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise SettingValueError(f"expected true or false, found {describe(value)}")
    if kind == "path":
        if not isinstance(value, str) or not value.strip():
            raise SettingValueError(f"expected a file path, found {describe(value)}")
        path = Path(value.strip()).expanduser()
        return path if path.is_absolute() else (base_dir / path).resolve()
    if kind == "duration":
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        if isinstance(value, str) and (m := _DURATION.match(value)):
            scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
            return float(m.group(1)) * scale
        raise SettingValueError(f"expected a duration such as 30, '500ms' or '2m', found {describe(value)}")
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and (m := _SIZE.match(value)):
            unit = (m.group(2) or "").upper().rstrip("B").rstrip("I") or ""
            return int(m.group(1)) * _SIZE_UNITS[unit]
        raise SettingValueError(f"expected a size such as 256M or 1G, found {describe(value)}")
    if kind == "list":
        if isinstance(value, str):
            parts: list[object] = [p.strip() for p in re.split(r"[\n,]", value) if p.strip()]
        elif isinstance(value, list):
            parts = list(value)
        else:
            raise SettingValueError(f"expected a list, found {describe(value)}")
        out = []
        for index, part in enumerate(parts):
            try:
                out.append(_coerce_kind(item, part, base_dir))
            except SettingValueError as exc:
                raise SettingValueError(f"item {index}: {exc}") from None
        return out
    if kind == "mapping":
        if isinstance(value, str):
            pairs: dict[str, object] = {}
            for part in re.split(r"[\n,]", value):
                if not part.strip():
                    continue
                name, sep, rest = part.partition("=") if "=" in part else part.partition(":")
                if not sep or not name.strip():
                    raise SettingValueError(f"expected name=value pairs, found {part.strip()!r}")
                pairs[name.strip()] = rest.strip()
            value = pairs
        if not isinstance(value, Mapping):
            raise SettingValueError(f"expected a mapping of name: value, found {describe(value)}")
        out_map = {}
        for key, val in value.items():
            try:
                out_map[str(key)] = _coerce_kind(item, val, base_dir) if item != "str" else _scalar(val)
            except SettingValueError as exc:
                raise SettingValueError(f"{key}: {exc}") from None
        return out_map
    raise AssertionError(f"unknown setting kind {kind!r}")


def _scalar(value: object) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    raise SettingValueError(f"expected a scalar value, found {describe(value)}")
