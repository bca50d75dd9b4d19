"""Declared driver settings, and turning what a target file says into typed values.

A driver declares its settings as a frozen dataclass whose fields say their defaults and docs
through :func:`setting`::

    @dataclass(frozen=True, kw_only=True)
    class SerialSettings:
        url: str = setting(doc="pyserial URL")            # no default: required
        timeout: float = setting(30.0, kind="duration")

    class SerialConsole(Driver[SerialSettings]): ...

The kind of each value follows from its annotation (``int``, ``Path``, ``list[str]``, a nested
dataclass for a group of settings, ``dict[str, Disk]`` for named groups) unless ``kind=`` says it
(``duration``, ``size``, ``ref``).  The target loader checks every device's settings against that
declaration, so a misspelt key, a wrong type or a missing required setting is reported at start-up
with the file and line, before any test runs; the driver gets the dataclass, defaults filled in.

YAML gives typed scalars; ini gives strings.  Both go through :func:`coerce`, so the two formats
describe the same model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal[
    "str", "int", "float", "bool", "path", "list", "mapping", "ref", "duration", "size", "any", "group"
]

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
    - ``group``: named settings of their own (``fields``), built into the dataclass ``group``;
    - ``any``: taken as written.

    ``needs`` (``ref`` only) names the capabilities the referred device must provide; the loader
    checks them.  ``item_setting`` (``list``/``mapping`` of groups) declares each item.
    ``shorthand`` turns a value that is not a mapping into one, for a group with a short form
    (``network: none``); on a list or mapping of groups it is each item's (``forwards: {ssh: 22}``).
    ``collection_shorthand`` (a mapping of groups) rewrites a whole value that is not a mapping
    into one first (``disks: [a.img, b.img]``).
    """

    kind: Kind
    default: Any = _MISSING
    doc: str = ""
    choices: Sequence[Any] | None = None
    item: Kind = "str"
    must_exist: bool = False
    needs: tuple[type, ...] = ()
    fields: Mapping[str, Setting] | None = None
    group: type | None = None
    item_setting: Setting | None = None
    shorthand: Callable[[object], object] | None = None
    collection_shorthand: Callable[[object], object] | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def default_value(self) -> Any:
        """The default, a fresh copy for mutable ones (each device gets its own)."""
        value = self.default
        if isinstance(value, dict | list):
            return type(value)(value)
        return value


class SettingValueError(ValueError):
    """A value does not fit its :class:`Setting`; the message says what was expected and found.

    ``path`` is where inside a nested value the problem is (``("disk0", "size")``), so the loader
    can point at that line; a nested value with several mistakes carries each in ``problems``.
    """

    def __init__(
        self, message: str, path: tuple[str, ...] = (), problems: Sequence[SettingValueError] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.problems = list(problems)

    def __str__(self) -> str:
        if self.problems:
            return "; ".join(str(p) for p in self.problems)
        return "".join(f"{key}: " for key in self.path) + self.message

    def within(self, key: str) -> SettingValueError:
        return SettingValueError(self.message, (key, *self.path), [p.within(key) for p in self.problems])

    def leaves(self) -> list[SettingValueError]:
        """Each single mistake, with its path."""
        return [leaf for p in self.problems for leaf in p.leaves()] if self.problems else [self]

    @classmethod
    def combine(cls, errors: Sequence[SettingValueError]) -> SettingValueError:
        return errors[0] if len(errors) == 1 else cls("several mistakes", problems=errors)


_FIELD_KEY = "pytest_jumpstarter"


def setting(
    default: Any = _MISSING,
    *,
    doc: str = "",
    kind: Kind | None = None,
    choices: Sequence[Any] | None = None,
    needs: tuple[type, ...] = (),
    must_exist: bool = False,
    shorthand: Callable[[object], object] | None = None,
    collection_shorthand: Callable[[object], object] | None = None,
) -> Any:
    """A dataclass field that is a driver setting (see the module docstring).  No default: required."""
    meta = {
        _FIELD_KEY: {
            "kind": kind,
            "doc": doc,
            "choices": choices,
            "needs": needs,
            "must_exist": must_exist,
            "shorthand": shorthand,
            "collection_shorthand": collection_shorthand,
        }
    }
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_SCALARS: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}


def declare(cls: type) -> dict[str, Setting]:
    """The :class:`Setting` of each field of settings dataclass ``cls``, in field order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} must be a dataclass to declare settings")
    hints = typing.get_type_hints(cls)
    declared: dict[str, Setting] = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get(_FIELD_KEY, {}))
        default: Any = _MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        try:
            declared[f.name] = _from_annotation(hints[f.name], default, meta)
        except TypeError as exc:
            raise TypeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
    return declared


def _from_annotation(hint: Any, default: Any, meta: dict[str, Any]) -> Setting:
    hint = _strip_optional(hint)
    kind: Kind | None = meta.pop("kind", None)
    extra: dict[str, Any] = {}
    origin = typing.get_origin(hint)
    if kind is None:
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kind = "group"
        elif origin in (list, Sequence):
            kind = "list"
        elif origin in (dict, Mapping):
            kind = "mapping"
        elif hint in _SCALARS:
            kind = _SCALARS[hint]
        elif hint is Any or hint is object:
            kind = "any"
        else:
            raise TypeError(f"cannot tell the kind of setting from {hint!r}: give kind=")
    if kind == "group":
        extra = {"fields": declare(hint), "group": hint}
    elif kind in ("list", "mapping"):
        args = typing.get_args(hint)
        item = _strip_optional(args[-1]) if args else str
        if dataclasses.is_dataclass(item) and isinstance(item, type):
            # A short form given for a list or mapping of groups is each item's.
            short = meta.pop("shorthand", None)
            extra = {"item_setting": Setting("group", fields=declare(item), group=item, shorthand=short)}
        elif item in _SCALARS:
            extra = {"item": _SCALARS[item]}
        else:
            extra = {"item": "any"}
    return Setting(kind, default, **{k: v for k, v in meta.items() if v is not None}, **extra)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def settings_items(settings: Any) -> list[tuple[str, Any]]:
    """``(key, value)`` of a settings object (a settings dataclass, or a mapping)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return [(f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings)]
    return list(settings.items())


def build(declared: Mapping[str, Setting], cls: type | None, values: Mapping[str, Any]) -> Any:
    """The settings object a driver gets: ``cls(**values)`` with every default filled in."""
    complete = {key: values[key] if key in values else s.default_value() for key, s in declared.items()}
    return cls(**complete) if cls is not None else complete


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
    if setting.kind == "group":
        return _coerce_group(setting, value, base_dir)
    if setting.item_setting is not None:
        return _coerce_items(setting, value, base_dir)
    result = _coerce_kind(setting.kind, value, base_dir, setting.item)
    if setting.choices is not None and result not in setting.choices:
        choices = ", ".join(repr(c) for c in setting.choices)
        raise SettingValueError(f"expected one of {choices}, found {describe(value)}")
    if setting.must_exist and setting.kind == "path" and not Path(result).exists():
        raise SettingValueError(f"expected an existing file, found {str(value)!r} (resolved to {result})")
    return result


def _coerce_group(setting: Setting, value: object, base_dir: Path) -> Any:
    assert setting.fields is not None
    if setting.shorthand is not None and not isinstance(value, Mapping):
        value = setting.shorthand(value)
    if isinstance(value, str):
        value = _coerce_kind("mapping", value, base_dir)
    if not isinstance(value, Mapping):
        known = ", ".join(setting.fields)
        raise SettingValueError(f"expected a mapping of settings ({known}), found {describe(value)}")
    values: dict[str, Any] = {}
    errors: list[SettingValueError] = []
    for key, item in value.items():
        declared = setting.fields.get(str(key))
        if declared is None:
            hint = suggest(str(key), setting.fields)
            errors.append(
                SettingValueError(
                    f"unknown key {key!r}{hint} (known: {', '.join(setting.fields)})", (str(key),)
                )
            )
            continue
        try:
            values[str(key)] = coerce(declared, item, base_dir)
        except SettingValueError as exc:
            errors.append(exc.within(str(key)))
    for key, declared in setting.fields.items():
        if key not in values and declared.required and key not in value:
            doc = f": {declared.doc}" if declared.doc else ""
            errors.append(SettingValueError(f"missing required key {key!r} ({declared.kind}){doc}"))
    if errors:
        raise SettingValueError.combine(errors)
    return build(setting.fields, setting.group, values)


def _coerce_items(setting: Setting, value: object, base_dir: Path) -> Any:
    item = setting.item_setting
    assert item is not None
    if setting.collection_shorthand is not None and not isinstance(value, Mapping):
        value = setting.collection_shorthand(value)
    if setting.kind == "list":
        if not isinstance(value, list):
            raise SettingValueError(f"expected a list, found {describe(value)}")
        pairs = [(str(index), part) for index, part in enumerate(value)]
    else:
        if isinstance(value, str):
            # ini: "name=value, name=value"; each value is then read as the group's short form.
            value = _coerce_kind("mapping", value, base_dir)
        if not isinstance(value, Mapping):
            raise SettingValueError(f"expected a mapping of name: settings, found {describe(value)}")
        pairs = [(str(key), part) for key, part in value.items()]
    built: dict[str, Any] = {}
    errors: list[SettingValueError] = []
    for key, part in pairs:
        try:
            built[key] = coerce(item, part, base_dir)
        except SettingValueError as exc:
            errors.append(exc.within(key))
    if errors:
        raise SettingValueError.combine(errors)
    return list(built.values()) if setting.kind == "list" else built


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
        if "\x00" in value:
            raise SettingValueError(
                f"expected a file path, found {describe(value)} (it holds a NUL character)"
            )
        try:
            path = Path(value.strip()).expanduser()
            return path if path.is_absolute() else (base_dir / path).resolve()
        except (RuntimeError, OSError, ValueError) as exc:  # ~nobody/..., a loop of symlinks
            raise SettingValueError(
                f"expected a file path, found {describe(value)}, which cannot be resolved: {exc}"
                " (is ~user a user's home folder?)"
            ) from None
    if kind == "duration":
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
            return float(value)
        if isinstance(value, str) and (m := _DURATION.match(value)):
            scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
            seconds = float(m.group(1)) * scale
            if seconds < math.inf:
                return seconds
        raise SettingValueError(f"expected a duration such as 30, '500ms' or '2m', found {describe(value)}")
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and (m := _SIZE.match(value)) and len(m.group(1)) <= 30:
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


def suggest(word: str, choices: Iterable[str]) -> str:
    """A "; did you mean 'x'?" suffix when ``word`` is close to one of ``choices``, else ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
