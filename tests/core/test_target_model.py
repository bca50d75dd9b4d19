"""The target model: interpolation, relative paths, ini/YAML equivalence, roles, scopes, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_support import write

from pytest_jumpstarter import Driver, Redactor, Setting, TargetError, load_target
from pytest_jumpstarter.target import interpolate


class Board(Driver):
    name = "board"
    role = "qemu_vm"
    settings = {
        "kernel": Setting("path"),
        "memory": Setting("size", "256M"),
        "password": Setting("str", ""),
        "cmdline": Setting("list", []),
    }


class Flasher(Driver):
    name = "flasher"
    role = "flasher"
    settings = {"board": Setting("ref")}


DRIVERS = {"board": Board, "flasher": Flasher}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${HOME_X}/img", "/home/me/img"),
        ("${UNSET_X:-~/cache}/img", "~/cache/img"),
        ("${HOME_X:-/other}", "/home/me"),
        ("price: $$5 and $5", "price: $5 and $5"),
        ("${EMPTY_X:-fallback}", ""),
        ("no variables", "no variables"),
    ],
)
def test_interpolation_expands_variables_defaults_and_escapes(text: str, expected: str) -> None:
    assert interpolate(text, {"HOME_X": "/home/me", "EMPTY_X": ""}) == (expected, [])


def test_interpolation_reports_unset_and_malformed_references() -> None:
    _, problems = interpolate("${A} ${1B} ${C", {})
    assert problems == [
        "environment variable A is not set and ${A} has no default (set it, or write ${A:-value})",
        "malformed variable reference '${1B}': expected ${NAME} or ${NAME:-default}",
        "unclosed '${': expected ${NAME} or ${NAME:-default} (write $$ for a literal $)",
    ]


def test_yaml_and_ini_describe_the_same_model(tmp_path: Path) -> None:
    yaml_file = write_file(
        tmp_path / "boards/t.yaml",
        """
name: lab-1
labels: {arch: aarch64, usb: true}
devices:
  vm:
    driver: board
    kernel: ../images/${KVER:-6.1}/vmlinuz
    memory: 1G
    cmdline: [console=ttyS0, quiet]
    scope: session
    reset: snapshot
  flasher: {driver: flasher, board: vm}
""",
    )
    ini_file = write_file(
        tmp_path / "boards/t.ini",
        """
[target]
name = lab-1

[labels]
arch = aarch64
usb = true

[device vm]
driver = board
kernel = ../images/${KVER:-6.1}/vmlinuz
memory = 1G
cmdline = console=ttyS0, quiet
scope = session
reset = snapshot

[device flasher]
driver = flasher
board = vm
""",
    )
    from_yaml = load_target(yaml_file, DRIVERS, environ={})
    from_ini = load_target(ini_file, DRIVERS, environ={})
    for target in (from_yaml, from_ini):
        assert target.name == "lab-1"
        assert dict(target.labels) == {"arch": "aarch64", "usb": "true"}
        vm = target.devices["vm"]
        assert vm.settings["kernel"] == tmp_path / "images/6.1/vmlinuz"  # relative to the file
        assert vm.settings["memory"] == 1024**3
        assert vm.settings["cmdline"] == ["console=ttyS0", "quiet"]
        assert (vm.role, vm.scope, vm.reset) == ("qemu_vm", "session", "snapshot")
        assert target.devices["flasher"].refs == {"board": "vm"}
        assert target.start_order("flasher") == ["vm", "flasher"]
        assert target.resolve("qemu_vm") == "vm"


def test_secret_values_are_redacted_from_problems(tmp_path: Path) -> None:
    path = write_file(
        tmp_path / "t.yaml",
        "name: t\nsecrets: [BMC_PASSWORD]\n"
        "devices:\n  vm: {driver: board, kernel: k, memory: '${BMC_PASSWORD}'}\n",
    )
    with pytest.raises(TargetError) as info:
        load_target(path, DRIVERS, environ={"BMC_PASSWORD": "hunter2"})
    assert "hunter2" not in str(info.value)
    assert "found string '***'" in str(info.value)


def test_redactor_replaces_longest_secrets_first() -> None:
    redact = Redactor(["abc", "abcdef", ""])
    assert redact("x abcdef y abc") == "x *** y ***"
    assert not Redactor([])


def write_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


SECRET_BOARD = """
name: vault
secrets: [JS_BMC_PASSWORD]
devices:
  rec:
    driver: rec
    say: "login with ${JS_BMC_PASSWORD}"
"""


def test_secrets_never_appear_in_reports_logs_or_listings(
    rec_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JS_BMC_PASSWORD", "s3cr3t-pw")
    write(rec_pytester, "t.yaml", SECRET_BOARD)
    rec_pytester.makepyfile(
        """
        def test_leaks(rec):
            rec.ctx.transcript.write("password: s3cr3t-pw\\n")
            print("stdout s3cr3t-pw")
            assert rec.ctx.settings["say"] == "nothing", rec.ctx.settings["say"]
        """
    )
    logdir = rec_pytester.path / "logs"
    result = rec_pytester.runpytest("--target=t.yaml", f"--jumpstarter-logdir={logdir}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "s3cr3t-pw" not in out
    for shown in (
        "*Captured console rec setup*",
        "login with [*][*][*]",
        "password: [*][*][*]",
        "stdout [*][*][*]",
    ):
        result.stdout.fnmatch_lines([shown])
    logs = "".join(p.read_text() for p in logdir.rglob("*.log"))
    assert "login with ***" in logs and "s3cr3t-pw" not in logs
    listing = rec_pytester.runpytest("--target=t.yaml", "--jumpstarter-list")
    assert "say = 'login with ***'" in listing.stdout.str()
    assert "s3cr3t-pw" not in listing.stdout.str()
