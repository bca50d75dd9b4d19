"""Reading target files: YAML and ini parsed into plain values, with the line of every key.

Both formats describe one model; the parsers only turn text into nested dicts and lists of strings,
numbers and booleans (no YAML tag builds an object) and record where each key path was written, so
the validator can point at the line.  ``${VAR}`` interpolation happens here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Problem
from .settings import describe

_VAR = re.compile(r"\$(\$|\{([^}]*)\}|\{)")
_VAR_BODY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


@dataclass
class Doc:
    """A parsed file before validation: plain values, and where each key path was written."""

    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    keyname: Callable[[tuple[str, ...]], str]


class Problems:
    """Every problem found in one file, each located at the line of the deepest key path known."""

    def __init__(self, file: str, doc: Doc | None = None) -> None:
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


#: At most this many values in one YAML file once aliases are expanded (a real one has hundreds).
MAX_YAML_VALUES = 100_000
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


class _Refused(Exception):
    def __init__(self, node: Any, message: str) -> None:
        super().__init__(message)
        self.node = node


class _TooBig(_Refused):
    def __init__(self, node: Any) -> None:
        super().__init__(
            node,
            f"YAML file expands to more than {MAX_YAML_VALUES} values through its aliases (*name); refused",
        )


class _SelfReference(_Refused):
    def __init__(self, node: Any) -> None:
        super().__init__(node, "YAML alias refers to itself (a value that contains itself); refused")


class _BadTag(_Refused):
    def __init__(self, node: Any) -> None:
        super().__init__(
            node, f"YAML tag {node.tag!r} is not allowed: a target description is plain data (no tags)"
        )


def parse_yaml(text: str, problems: Problems) -> Doc | None:
    import yaml

    lines: dict[tuple[str, ...], int] = {}
    doc = Doc({}, lines, lambda path: ".".join(path))
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
    budget = [MAX_YAML_VALUES]
    active: set[int] = set()

    def convert(node: yaml.Node, path: tuple[str, ...]) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        # Aliases share nodes: a file of a few lines can expand to billions of values
        # ("billion laughs"), or refer to itself.  Both end here, located, before any real work.
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooBig(node)
        if id(node) in active:
            raise _SelfReference(node)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise _BadTag(node)
        active.add(id(node))
        try:
            return convert_node(node, path)
        finally:
            active.discard(id(node))

    def convert_node(node: yaml.Node, path: tuple[str, ...]) -> Any:
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
    except _Refused as exc:
        problems.add((), str(exc), line=exc.node.start_mark.line + 1)
        return None
    except yaml.YAMLError as exc:  # e.g. an unknown tag
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        problems.add((), f"YAML error: {problem}", line=mark.line + 1 if mark else None)
        return None
    except (ValueError, TypeError, OverflowError) as exc:  # a malformed timestamp, say
        problems.add((), f"YAML value that cannot be read: {exc}")
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


def parse_ini(text: str, problems: Problems) -> Doc | None:
    import configparser
    import difflib

    lines: dict[tuple[str, ...], int] = {}
    doc = Doc({}, lines, _ini_keyname)
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
            head = section.split()[0] if section.split() else section
            if difflib.get_close_matches(head, ["device"], n=1, cutoff=0.6):
                hint = f"; did you mean [device {section[len(head) :].strip() or 'NAME'}]?"
            elif close := difflib.get_close_matches(section, ["target", "labels"], n=1, cutoff=0.6):
                hint = f"; did you mean [{close[0]}]?"
            else:
                hint = ""
            problems.add(
                (),
                f"unknown section [{section}]{hint} (expected one of: [target], [labels], [device NAME])",
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


def expand(value: Any, path: tuple[str, ...], environ: Mapping[str, str], problems: Problems) -> Any:
    if isinstance(value, str):
        text, found = interpolate(value, environ)
        for message in found:
            problems.add(path, message)
        return text
    if isinstance(value, list):
        return [expand(item, (*path, str(i)), environ, problems) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: expand(item, (*path, key), environ, problems) for key, item in value.items()}
    return value
