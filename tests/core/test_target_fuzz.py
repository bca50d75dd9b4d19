"""Random and mutated target files: every outcome is a valid target or a located usage error.

Never an exception of another kind, never a hang: the loader is fed what a fuzzer would feed it
(mutations of the example boards, random structures, YAML alias bombs), with every built-in driver
family registered, exactly as a run sees them.  Each example is loaded in-process (a thousand
inner pytest runs would take minutes); the plugin turns a TargetError into exit code 4, which
tests/core/test_target_errors.py checks through real runs.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_jumpstarter import Driver, DriverRef, TargetDescription, TargetError, load_target

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "conftest_examples"
FAMILIES = (
    "pytest_jumpstarter_serial",
    "pytest_jumpstarter_qemu",
    "pytest_jumpstarter_flashers",
    "pytest_jumpstarter_network",
)
#: Every example counts towards the thousand CI runs; a local run can ask for more.
EXAMPLES_PER_TEST = int(os.environ.get("JUMPSTARTER_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,  # a slow example is not a failure here; a hang is, and the loader bounds its work
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples in CI every time: a failure reproduces
)


def _drivers() -> dict[str, type[Driver[Any]]]:
    found: dict[str, type[Driver[Any]]] = {}
    for family in FAMILIES:
        for ref in importlib.import_module(family).pytest_jumpstarter_add_drivers():
            cls = ref.load() if isinstance(ref, DriverRef) else ref
            found[cls.name] = cls
    return found


DRIVERS = _drivers()
SEEDS = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".ini"))
SEED_TEXTS = [(p.suffix, p.read_text()) for p in SEEDS]
SPECIALS = [
    *":{}[]&*!|>-#'\"\n\t ,=%@`?$\\",
    "${X}",
    "${",
    "~",
    "\x00",
    "0x",
    "1e999",
    ".inf",
    "-1",
    "[device ",
    "]",
]
KEYS = [
    "name",
    "labels",
    "secrets",
    "devices",
    "driver",
    "role",
    "scope",
    "reset",
    "exclusive",
    "lock",
    "lock_timeout",
    "board",
    "kernel",
    "memory",
    "disks",
    "network",
    "forwards",
    "tftp",
    "url",
    "arch",
    "boot_timeout",
    "partitions",
    "file",
    "size",
    "format",
    "port",
    "<<",
    "qemu_vm",
    "flasher",
]


def load(tmp_path: Path, suffix: str, text: str | bytes) -> TargetDescription | None:
    path = tmp_path / f"fuzz{suffix}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_target(path, DRIVERS, environ={"JUMPSTARTER_IMAGES": str(tmp_path)})
    except TargetError as exc:
        assert exc.problems, "a TargetError names at least one problem"
        for problem in exc.problems:
            assert problem.file == str(path)
            assert problem.message.strip()
        return None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    suffix, text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "insert", "dup-line", "swap-lines", "replace-value"]))
        lines = text.split("\n")
        if op == "delete" and text:
            start = draw(st.integers(0, len(text) - 1))
            text = text[:start] + text[start + draw(st.integers(1, 20)) :]
        elif op == "insert":
            at = draw(st.integers(0, len(text)))
            piece = draw(st.one_of(st.sampled_from(SPECIALS), st.sampled_from(KEYS), st.text(max_size=8)))
            text = text[:at] + piece + text[at:]
        elif op == "dup-line":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == "swap-lines" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "replace-value":
            i = draw(st.integers(0, len(lines) - 1))
            key, sep, _ = lines[i].partition(":" if suffix == ".yaml" else "=")
            if sep:
                value = draw(
                    st.one_of(
                        st.sampled_from(SPECIALS),
                        st.integers(-(2**70), 2**70).map(str),
                        st.floats().map(str),
                        st.text(max_size=12),
                    )
                )
                lines[i] = f"{key}{sep} {value}"
                text = "\n".join(lines)
    return suffix, text


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(
        [
            "qemu",
            "serial",
            "qemu-disk",
            "uboot-tftp",
            "tcp-relay",
            "session",
            "snapshot",
            "256M",
            "2m",
            ".inf",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=25,
)


@FUZZ
@given(mutated())
def test_mutated_example_files_load_or_fail_with_located_problems(
    tmp_path: Path, case: tuple[str, str]
) -> None:
    load(tmp_path, *case)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), st.sampled_from(list(DRIVERS)))
def test_random_structures_load_or_fail_with_located_problems(
    tmp_path: Path, top: dict[str, Any], driver: str
) -> None:
    top.setdefault(
        "devices", {"dut": {"driver": driver, **{k: v for k, v in top.items() if k not in ("devices",)}}}
    )
    load(tmp_path, ".yaml", yaml.safe_dump(top, allow_unicode=True))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".yaml", ".ini"]))
def test_random_bytes_load_or_fail_with_located_problems(tmp_path: Path, data: bytes, suffix: str) -> None:
    load(tmp_path, suffix, data)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nname: bomb\ndevices: {}\nlabels: {x: *a9}\n"
    with pytest.raises(TargetError, match="aliases"):
        load_target(_write(tmp_path, text), DRIVERS)


def test_a_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="refers to itself"):
        load_target(_write(tmp_path, "name: t\nlabels: &l {x: *l}\n"), DRIVERS)


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    text = "name: t\nlabels: {x: !!python/object/apply:os.system [echo pwned]}\n"
    with pytest.raises(TargetError, match="YAML"):
        load_target(_write(tmp_path, text), DRIVERS)


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("kernel", "~no_such_user_here/vmlinuz", "home folder"),
        ("kernel", "bad\x00path", "file path"),
        ("memory", "9" * 5000, "size"),
        ("smp", "9" * 5000, "integer"),
        ("boot_timeout", "9" * 400, "duration"),
        ("boot_timeout", ".nan", "duration"),
    ],
)
def test_values_that_break_conversion_are_usage_problems(
    tmp_path: Path, setting: str, value: str, expected: str
) -> None:
    kernel = "" if setting == "kernel" else "    kernel: /vmlinuz\n"
    quoted = '"' + value.replace("\x00", "\\0") + '"'
    text = f"name: t\ndevices:\n  qemu_vm:\n    driver: qemu\n{kernel}    {setting}: {quoted}\n"
    with pytest.raises(TargetError, match=expected) as info:
        load_target(_write(tmp_path, text), DRIVERS)
    assert info.value.problems[0].line is not None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path
