"""Malformed target descriptions: every problem at once, each with file:line, key, expected and found.

Each case is a real inner pytest run: the answer must be a usage error (exit code 4), never an
INTERNALERROR or a traceback.
"""

from __future__ import annotations

import pytest
from core_support import write

OK_DEVICE = "devices:\n  rec: {driver: rec}\n"

CASES = [
    # --- YAML syntax -------------------------------------------------------------------------------
    (
        "yaml-syntax",
        "t.yaml",
        "name: t\ndevices:\n  rec: {driver: rec\n  other: 1\n",
        ["t.yaml:4: YAML syntax error: *expected ',' or '}'*"],
    ),
    (
        "yaml-bad-indent",
        "t.yaml",
        "name: t\ndevices:\n  rec:\n    driver: rec\n   say: x\n",
        ["t.yaml:5: YAML syntax error:*"],
    ),
    (
        "yaml-duplicate-key",
        "t.yaml",
        "name: t\ndevices:\n  rec: {driver: rec}\n  rec: {driver: other}\n",
        ["t.yaml:4: devices.rec: duplicate key 'rec' (first written at line 3); each key may appear once"],
    ),
    (
        "yaml-empty-file",
        "t.yaml",
        "# nothing here\n",
        ["t.yaml: expected a mapping with name and devices, found an empty file"],
    ),
    (
        "yaml-top-level-list",
        "t.yaml",
        "- name: t\n",
        ["t.yaml:1: expected a mapping with name and devices at the top, found list [{'name': 't'}]"],
    ),
    # --- structure ---------------------------------------------------------------------------------
    (
        "unknown-top-key",
        "t.yaml",
        "name: t\ndevcies:\n  rec: {driver: rec}\n",
        [
            "t.yaml:2: devcies: unknown key 'devcies'; did you mean 'devices'? (expected one of: name, labels, secrets, devices)"
        ],
    ),
    (
        "missing-name",
        "t.yaml",
        OK_DEVICE,
        ["t.yaml:1: missing required key 'name' (the target's name, shown in test ids)"],
    ),
    (
        "bad-name",
        "t.yaml",
        "name: my board\n" + OK_DEVICE,
        [
            "t.yaml:1: name: expected a name of letters, digits and '_.+-' (it appears in test ids), found string 'my board'"
        ],
    ),
    (
        "devices-not-mapping",
        "t.yaml",
        "name: t\ndevices: [rec, other]\n",
        ["t.yaml:2: devices: expected a mapping of device name: settings, found list*"],
    ),
    (
        "label-not-scalar",
        "t.yaml",
        "name: t\nlabels:\n  arch: [x86_64]\n" + OK_DEVICE,
        ["t.yaml:3: labels.arch: expected a single value (string or number), found list*"],
    ),
    (
        "secrets-not-list",
        "t.yaml",
        "name: t\nsecrets: {a: 1}\n" + OK_DEVICE,
        ["t.yaml:2: secrets: expected a list of environment variable names, found mapping*"],
    ),
    (
        "missing-driver-key",
        "t.yaml",
        "name: t\ndevices:\n  rec: {say: hi}\n",
        ["t.yaml:3: devices.rec: missing required key 'driver' (which driver runs this device)"],
    ),
    # --- drivers and settings ----------------------------------------------------------------------
    (
        "unknown-driver",
        "t.yaml",
        "name: t\ndevices:\n  con:\n    driver: serail\n    url: loop://\n",
        [
            "t.yaml:4: devices.con.driver: unknown driver 'serail'; did you mean 'serial'? (known drivers: *other, *rec, serial*)"
        ],
    ),
    (
        "unknown-setting",
        "t.yaml",
        "name: t\ndevices:\n  rec:\n    driver: rec\n    can_rest: true\n",
        [
            "t.yaml:5: devices.rec.can_rest: unknown setting 'can_rest' for driver 'rec'; did you mean 'can_reset'? "
            "(rec accepts: board, can_reset, events, fail_start, interrupt_start, say, slow_stop)"
        ],
    ),
    (
        "wrong-bool",
        "t.yaml",
        "name: t\ndevices:\n  rec:\n    driver: rec\n    fail_start: maybe\n",
        [
            "t.yaml:5: devices.rec.fail_start: expected true or false, found string 'maybe' (setting of driver 'rec')"
        ],
    ),
    (
        "wrong-int",
        "t.yaml",
        "name: t\ndevices:\n  con:\n    driver: serial\n    url: loop://\n    baudrate: fast\n",
        [
            "t.yaml:6: devices.con.baudrate: expected an integer, found string 'fast' (setting of driver 'serial')"
        ],
    ),
    (
        "wrong-duration",
        "t.yaml",
        "name: t\ndevices:\n  con: {driver: serial, url: 'loop://', timeout: soon}\n",
        [
            "t.yaml:3: devices.con.timeout: expected a duration such as 30, '500ms' or '2m', found string 'soon'*"
        ],
    ),
    (
        "driver-check",
        "t.yaml",
        "name: t\ndevices:\n  con: {driver: serial, url: 'loop://', baudrate: -5}\n",
        ["t.yaml:3: devices.con.baudrate: expected a positive line speed, found -5"],
    ),
    (
        "wrong-scope",
        "t.yaml",
        "name: t\ndevices:\n  rec: {driver: rec, scope: forever}\n",
        ["t.yaml:3: devices.rec.scope: expected one of 'test', 'module', 'session', found string 'forever'"],
    ),
    (
        "wrong-reset",
        "t.yaml",
        "name: t\ndevices:\n  rec: {driver: rec, reset: reflash}\n",
        [
            "t.yaml:3: devices.rec.reset: expected one of 'none', 'reboot', 'snapshot', 'on-failure', found string 'reflash'"
        ],
    ),
    (
        "missing-required-setting",
        "t.yaml",
        "name: t\ndevices:\n  con:\n    driver: serial\n",
        [
            "t.yaml:3: devices.con: missing required setting 'url' (str) for driver 'serial': pyserial URL or tty path*"
        ],
    ),
    # --- references --------------------------------------------------------------------------------
    (
        "dangling-ref",
        "t.yaml",
        "name: t\ndevices:\n  board: {driver: rec}\n  flasher: {driver: other, board: bord}\n",
        [
            "t.yaml:4: devices.flasher.board: refers to device 'bord', which this target does not have; "
            "did you mean 'board'? (devices: board, flasher)"
        ],
    ),
    (
        "cyclic-ref",
        "t.yaml",
        "name: t\ndevices:\n  a: {driver: rec, board: b}\n  b: {driver: rec, board: c}\n  c: {driver: rec, board: a}\n",
        ["t.yaml:5: devices.c.board: devices refer to each other in a cycle: a -> b -> c -> a*"],
    ),
    (
        "self-ref",
        "t.yaml",
        "name: t\ndevices:\n  a: {driver: rec, board: a}\n",
        ["t.yaml:3: devices.a.board: a device cannot refer to itself (found 'a')"],
    ),
    # --- variables and files -----------------------------------------------------------------------
    (
        "unset-variable",
        "t.yaml",
        "name: t\ndevices:\n  rec:\n    driver: rec\n    say: ${JS_TEST_UNSET_VAR}\n",
        [
            "t.yaml:5: devices.rec.say: environment variable JS_TEST_UNSET_VAR is not set and ${JS_TEST_UNSET_VAR} "
            "has no default (set it, or write ${JS_TEST_UNSET_VAR:-value})"
        ],
    ),
    (
        "malformed-variable",
        "t.yaml",
        "name: t\ndevices:\n  rec: {driver: rec, say: '${1BAD}'}\n",
        [
            "t.yaml:3: devices.rec.say: malformed variable reference '${1BAD}': expected ${NAME} or ${NAME:-default}"
        ],
    ),
    (
        "missing-must-exist-file",
        "t.yaml",
        "name: t\ndevices:\n  img: {driver: needs_file, image: nothere.img}\n",
        [
            "t.yaml:3: devices.img.image: expected an existing file, found 'nothere.img' (resolved to */nothere.img)*"
        ],
    ),
    (
        "wrong-extension",
        "t.json",
        "{}",
        ["t.json: expected a .yaml, .yml or .ini target file, found 't.json'"],
    ),
    # --- ini ---------------------------------------------------------------------------------------
    (
        "ini-syntax",
        "t.ini",
        "[target]\nname = t\nthis line has no equals sign\n",
        [
            "t.ini:3: ini syntax error: expected 'key = value' or a [section], found 'this line has no equals sign'"
        ],
    ),
    (
        "ini-no-section",
        "t.ini",
        "name = t\n",
        ["t.ini:1: ini syntax error: expected a [section] header before the first key"],
    ),
    (
        "ini-duplicate-key",
        "t.ini",
        "[target]\nname = t\n[device rec]\ndriver = rec\ndriver = other\n",
        ["t.ini:5: duplicate key 'driver' in section [device rec]; each may appear once"],
    ),
    (
        "ini-unknown-section",
        "t.ini",
        "[target]\nname = t\n[devce rec]\ndriver = rec\n",
        [
            "t.ini:3: unknown section [devce rec]; did you mean [device rec]? (expected one of: [target], [labels], [device NAME])"
        ],
    ),
    (
        "ini-unknown-setting",
        "t.ini",
        "[target]\nname = t\n\n[device rec]\ndriver = rec\nfail_strat = yes\n",
        [
            "t.ini:6: [device rec] fail_strat: unknown setting 'fail_strat' for driver 'rec'; did you mean 'fail_start'?*"
        ],
    ),
    (
        "ini-unknown-driver",
        "t.ini",
        "[target]\nname = t\n[device rec]\ndriver = recc\n",
        ["t.ini:4: [device rec] driver: unknown driver 'recc'; did you mean 'rec'?*"],
    ),
    (
        "ini-wrong-type",
        "t.ini",
        "[target]\nname = t\n[device rec]\ndriver = rec\nfail_start = perhaps\n",
        [
            "t.ini:5: [device rec] fail_start: expected true or false, found string 'perhaps' (setting of driver 'rec')"
        ],
    ),
    (
        "ini-unknown-target-key",
        "t.ini",
        "[target]\nname = t\nlables = x\n",
        ["t.ini:3: [target] lables: unknown key 'lables'; did you mean 'labels'?*"],
    ),
    (
        "ini-misspelt-section",
        "t.ini",
        "[target]\nname = t\n[lables]\narch = x86_64\n",
        [
            "t.ini:3: unknown section [lables]; did you mean [labels]? (expected one of: [target], [labels], [device NAME])"
        ],
    ),
]

NEEDS_FILE = """
from pytest_jumpstarter import Driver, Setting

class NeedsFile(Driver):
    name = "needs_file"
    settings = {"image": Setting("path", must_exist=True)}

@pytest.hookimpl
def pytest_jumpstarter_add_drivers():
    return [NeedsFile]
"""


def _escaped(pattern: str) -> str:
    """fnmatch reads [...] as a character class; the messages show ini sections in brackets."""
    return pattern.replace("[", "[[]") if "*" in pattern else pattern


@pytest.fixture
def errors_pytester(rec_pytester: pytest.Pytester) -> pytest.Pytester:
    write(rec_pytester, "needs_file_plugin.py", "import pytest\n" + NEEDS_FILE)
    rec_pytester.syspathinsert()
    rec_pytester.makepyfile("def test_never_runs(rec):\n    raise AssertionError('must not run')\n")
    return rec_pytester


@pytest.mark.parametrize(("name", "text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_target_is_a_usage_error_naming_file_line_and_key(
    errors_pytester: pytest.Pytester, name: str, text: str, expected: list[str]
) -> None:
    write(errors_pytester, name, text)
    result = errors_pytester.runpytest("-p", "needs_file_plugin", f"--target={name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: 1 problem in target description:", *(_escaped(f"  {e}") for e in expected)]
    )
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


def test_all_problems_of_all_files_are_reported_at_once(errors_pytester: pytest.Pytester) -> None:
    write(
        errors_pytester,
        "a.yaml",
        "name: t\ndevices:\n  rec: {driver: rec, scope: forever, fail_start: maybe}\n",
    )
    write(errors_pytester, "b.ini", "[target]\nname = t\n[device x]\ndriver = nope\n")
    write(errors_pytester, "c.yaml", "name: dup\n" + OK_DEVICE)
    write(errors_pytester, "d.yaml", "\n\nname: dup\n" + OK_DEVICE)
    result = errors_pytester.runpytest(
        "--target=a.yaml", "--target=b.ini", "--target=c.yaml", "--target=d.yaml", "--target=gone.yaml"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: 5 problems in target description:",
            "  a.yaml:3: devices.rec.scope: expected one of*",
            "  a.yaml:3: devices.rec.fail_start: expected true or false*",
            "  b.ini:4: [[]device x] driver: unknown driver 'nope'*",
            "  d.yaml:3: name: target name 'dup' is also used by c.yaml:1; each target needs its own name",
            "  gone.yaml: cannot read target file: No such file or directory (resolved to */gone.yaml)",
        ]
    )


def test_a_driver_package_that_fails_to_import_is_named_when_its_driver_is_missing(
    rec_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    real = metadata.entry_points

    def entry_points(**kw: str) -> object:
        found = list(real(**kw))
        if kw.get("group") == "pytest_jumpstarter.drivers":
            found.append(
                metadata.EntryPoint("broken", "no_such_driver_package_x", "pytest_jumpstarter.drivers")
            )
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  x: {driver: brokn}\n")
    result = rec_pytester.runpytest("--target=t.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*devices.x.driver: unknown driver 'brokn'*",
            "    note: driver package 'broken' (no_such_driver_package_x) failed to import: ModuleNotFoundError*",
        ]
    )
