"""Loading and validating target descriptions (YAML and ini, one model).

Everything wrong with a description is collected before anything runs: each problem carries the
file and line, the key path, what was expected and what was found, and a "did you mean" when a
name is close to a known one.  Nothing here starts a device or touches pytest fixtures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .driver import Driver
from .errors import Problem, TargetError
from .settings import Setting, SettingValueError, coerce, describe

Scope = Literal["test", "module", "session"]
SCOPES: tuple[Scope, ...] = ("test", "module", "session")
RESET_MODES = ("none", "reboot", "snapshot")
#: Keys of a device that belong to the plugin; every other key is a driver setting.
GENERIC_KEYS: Mapping[str, Setting] = {
    "driver": Setting("str", doc="the driver's name"),
    "role": Setting("str", default=None, doc="the fixture this device serves (default: the driver's role)"),
    "scope": Setting("str", default="test", choices=SCOPES),
    "reset": Setting("str", default="none", choices=RESET_MODES),
    "exclusive": Setting("bool", default=False),
}
TOP_KEYS = ("name", "labels", "secrets", "devices")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_VAR = re.compile(r"\$(\$|\{([^}]*)\}|\{)")
_VAR_BODY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class DeviceSpec:
    """One validated device of a target: which driver, its typed settings, and how long it lives."""

    name: str
    driver: type[Driver]
    role: str
    #: The scope the device really gets: at least that of every device referring to it.
    scope: Scope
    declared_scope: Scope
    reset: str
    exclusive: bool
    settings: Mapping[str, Any]
    #: Devices this one refers to, by the setting that names them (``{"board": "qemu_vm"}``).
    refs: Mapping[str, str]
    line: int | None = None


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


@dataclass
class _Doc:
    """A parsed file before validation: plain values, and where each key path was written."""

    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    keyname: Callable[[tuple[str, ...]], str]


class _Problems:
    def __init__(self, file: str, doc: _Doc | None = None) -> None:
        self.file = file
        self.doc = doc
        self.items: list[Problem] = []

    def add(self, path: tuple[str, ...], message: str, line: int | None = None) -> None:
        if line is None and self.doc is not None:
            for cut in range(len(path), -1, -1):
                if (found := self.doc.lines.get(path[:cut])) is not None:
                    line = found
                    break
        key = self.doc.keyname(path) if self.doc is not None and path else ".".join(path)
        self.items.append(Problem(self.file, line, key, message))


def suggest(word: str, choices: Iterable[str]) -> str:
    """A "; did you mean 'x'?" suffix when ``word`` is close to one of ``choices``, else ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def interpolate(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$``; return the text and the problems found."""
    problems: list[str] = []

    def expand(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        body = match.group(2)
        if body is None:
            problems.append("unclosed '${': expected ${NAME} or ${NAME:-default} (write $$ for a literal $)")
            return match.group(0)
        parsed = _VAR_BODY.match(body)
        if parsed is None:
            problems.append(
                f"malformed variable reference '${{{body}}}': expected ${{NAME}} or ${{NAME:-default}}"
            )
            return match.group(0)
        name, default = parsed.group(1), parsed.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            f"environment variable {name} is not set and ${{{name}}} has no default "
            f"(set it, or write ${{{name}:-value}})"
        )
        return match.group(0)

    return _VAR.sub(expand, text), problems


# --- parsing ------------------------------------------------------------------------------------------


def _parse_yaml(text: str, problems: _Problems) -> _Doc | None:
    import yaml

    lines: dict[tuple[str, ...], int] = {}
    doc = _Doc({}, lines, lambda path: ".".join(path))
    problems.doc = doc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.add((), f"YAML syntax error: {what}", line=mark.line + 1 if mark else None)
        return None
    except yaml.YAMLError as exc:
        problems.add((), f"YAML syntax error: {exc}")
        return None
    if root is None:
        problems.add((), "expected a mapping with name and devices, found an empty file")
        return None
    constructor = yaml.SafeLoader("")

    def convert(node: yaml.Node, path: tuple[str, ...]) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    problems.add(
                        path, f"expected a name as key, found {describe(key)}", key_node.start_mark.line + 1
                    )
                    continue
                key = str(key)
                if key in out:
                    problems.add(
                        (*path, key),
                        f"duplicate key {key!r} (first written at line {lines[(*path, key)]}); "
                        "each key may appear once",
                        key_node.start_mark.line + 1,
                    )
                    continue
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = convert(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(item, (*path, str(index))) for index, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        data = convert(root, ())
    except yaml.YAMLError as exc:  # e.g. a bad tag or a malformed timestamp
        mark = getattr(exc, "problem_mark", None)
        problems.add((), f"YAML error: {exc}", line=mark.line + 1 if mark else None)
        return None
    if not isinstance(data, dict):
        problems.add((), f"expected a mapping with name and devices at the top, found {describe(data)}")
        return None
    doc.data = data
    return doc


_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]*)\]")
_OPTION = re.compile(r"^(?P<key>[^\s=:;#][^=:]*?)\s*[=:]")


def _ini_keyname(path: tuple[str, ...]) -> str:
    if path[:1] == ("devices",) and len(path) >= 2:
        return f"[device {path[1]}]" + (f" {path[2]}" if len(path) > 2 else "")
    if path[:1] == ("labels",):
        return "[labels]" + (f" {path[1]}" if len(path) > 1 else "")
    return "[target]" + (f" {path[0]}" if path else "")


def _parse_ini(text: str, problems: _Problems) -> _Doc | None:
    import configparser
    import difflib

    lines: dict[tuple[str, ...], int] = {}
    doc = _Doc({}, lines, _ini_keyname)
    problems.doc = doc
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, default_section="\x00no default section", delimiters=("=", ":")
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as exc:
        problems.add(
            (), "ini syntax error: expected a [section] header before the first key", line=exc.lineno
        )
        return None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        what = (
            f"section [{exc.section}]"
            if isinstance(exc, configparser.DuplicateSectionError)
            else f"key {exc.option!r} in section [{exc.section}]"
        )
        problems.add((), f"duplicate {what}; each may appear once", line=exc.lineno)
        return None
    except configparser.ParsingError as exc:
        source = text.splitlines()
        for lineno, _ in exc.errors:
            found = source[lineno - 1].strip() if 0 < lineno <= len(source) else "?"
            problems.add(
                (), f"ini syntax error: expected 'key = value' or a [section], found {found!r}", lineno
            )
        return None
    except configparser.Error as exc:
        problems.add((), f"ini syntax error: {exc}")
        return None

    # configparser does not keep line numbers: find each section's and key's line ourselves.
    section_path: tuple[str, ...] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line[:1] in ("#", ";") or not line.strip():
            continue
        if m := _SECTION.match(line):
            section_path = _section_path(m.group("name").strip())
            lines.setdefault(section_path, number)
        elif section_path is not None and not line[:1].isspace() and (m := _OPTION.match(line)):
            key = m.group("key").strip()
            if section_path == ("target",):
                lines.setdefault((key,), number)
            else:
                lines.setdefault((*section_path, key), number)

    data: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    for section in parser.sections():
        values = dict(parser.items(section))
        path = _section_path(section.strip())
        if path == ("target",):
            for key, value in values.items():
                if key == "secrets":
                    data[key] = [part.strip() for part in re.split(r"[\n,]", value) if part.strip()]
                elif key in ("labels", "devices"):
                    problems.add((key,), f"{key} have their own section ([{key}] / [device NAME]), not a key")
                else:
                    data[key] = value
        elif path == ("labels",):
            data["labels"] = values
        elif path[0] == "devices" and len(path) == 2 and path[1]:
            devices[path[1]] = values
        else:
            known = ["target", "labels", "device NAME"]
            head = section.split()[0] if section.split() else section
            hint = ""
            if difflib.get_close_matches(head, ["device"], n=1, cutoff=0.6):
                rest = section[len(head) :].strip() or "NAME"
                hint = f"; did you mean [device {rest}]?"
            else:
                hint = suggest(section, ["target", "labels"]).replace("'", "[", 1).replace("'", "]", 1)
            problems.add(
                (),
                f"unknown section [{section}]{hint} (expected one of: "
                + ", ".join(f"[{k}]" for k in known)
                + ")",
                line=lines.get(path),
            )
    if devices:
        data["devices"] = devices
    doc.data = data
    return doc


def _section_path(section: str) -> tuple[str, ...]:
    if section in ("target", "labels"):
        return (section,)
    parts = section.split(None, 1)
    if len(parts) == 2 and parts[0] == "device":
        return ("devices", parts[1].strip())
    return ("?section", section)


# --- validation ---------------------------------------------------------------------------------------


def load_target(
    path: Path,
    drivers: Mapping[str, type[Driver]],
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
    drivers: Mapping[str, type[Driver]],
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
    drivers: Mapping[str, type[Driver]],
    environ: Mapping[str, str],
    display: str | None,
    driver_notes: Sequence[str],
) -> tuple[TargetDescription | None, list[Problem]]:
    shown = display or str(path)
    problems = _Problems(shown)
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
    doc = _parse_yaml(text, problems) if suffix in (".yaml", ".yml") else _parse_ini(text, problems)
    if doc is None:
        return None, problems.items
    target = _validate(doc, path, drivers, environ, problems, driver_notes)
    secret_values = target.secret_values if target is not None else _secret_values(doc.data, environ)
    if secret_values:
        redact = Redactor(secret_values)
        problems.items = [Problem(p.file, p.line, p.key, redact(p.message)) for p in problems.items]
    problems.items.sort(key=lambda p: p.line or 0)
    return (None if problems.items else target), problems.items


def _secret_values(data: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, ...]:
    secrets = data.get("secrets")
    if not isinstance(secrets, list):
        return ()
    return tuple(environ[s] for s in secrets if isinstance(s, str) and environ.get(s))


def _expand(value: Any, path: tuple[str, ...], environ: Mapping[str, str], problems: _Problems) -> Any:
    if isinstance(value, str):
        text, found = interpolate(value, environ)
        for message in found:
            problems.add(path, message)
        return text
    if isinstance(value, list):
        return [_expand(item, (*path, str(i)), environ, problems) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _expand(item, (*path, key), environ, problems) for key, item in value.items()}
    return value


def _validate(
    doc: _Doc,
    path: Path,
    drivers: Mapping[str, type[Driver]],
    environ: Mapping[str, str],
    problems: _Problems,
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
        key: (value if key == "secrets" else _expand(value, (key,), environ, problems))
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
    drivers: Mapping[str, type[Driver]],
    base_dir: Path,
    problems: _Problems,
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
            problems.add((*where, key), f"{exc} (setting of driver {driver.name!r})")
            continue
        if declared.kind == "ref":
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
    if len(settings) == len(driver.settings):
        for key, message in driver.check(settings):
            problems.add((*where, key) if key else where, message)
    return {**generic, "driver": driver, "role": role, "settings": settings, "refs": refs}


def _check_refs(partial: Mapping[str, dict[str, Any]], raw: Mapping[str, Any], problems: _Problems) -> None:
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


class Redactor:
    """Replaces every secret value with ``***`` (longest first, so one secret inside another is covered)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = sorted({v for v in values if v}, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.values)

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, "***")
        return text
