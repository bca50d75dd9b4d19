"""Choosing targets (option, env, ini), ids per target, marker needs, skip reasons, listing."""

from __future__ import annotations

import os

import pytest
from core_support import events, write

BOARD_A = """
name: board-a
labels: {arch: x86_64, lab: north}
devices:
  rec: {driver: rec}
"""
BOARD_B = """
name: board-b
labels: {arch: aarch64}
devices:
  rec: {driver: rec}
  other: {driver: other}
"""
TESTS = """
import pytest

def test_plain():
    pass

def test_uses_rec(rec):
    assert rec.started

@pytest.mark.device("other")
def test_needs_other():
    pass

@pytest.mark.device(arch="aarch64")
def test_arm_only():
    pass

@pytest.mark.device(arch=("x86_64", "riscv64"))
def test_x86_or_riscv():
    pass
"""


@pytest.fixture
def boards(rec_pytester: pytest.Pytester) -> pytest.Pytester:
    write(rec_pytester, "boards/a.yaml", BOARD_A)
    write(rec_pytester, "boards/b.yaml", BOARD_B)
    rec_pytester.makepyfile(test_boards=TESTS)
    return rec_pytester


def test_target_option_puts_the_target_name_in_device_test_ids(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "-v")
    result.stdout.fnmatch_lines(
        [
            "*test_plain PASSED*",
            "*test_uses_rec[[]board-a[]] PASSED*",
            "*test_needs_other[[]board-a[]] SKIPPED*",
            "*test_arm_only[[]board-a[]] SKIPPED*",
            "*test_x86_or_riscv[[]board-a[]] PASSED*",
        ]
    )
    assert result.ret == 0


def test_repeated_target_runs_each_device_test_once_per_target(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "-v")
    result.assert_outcomes(passed=6, skipped=3)
    result.stdout.fnmatch_lines(
        ["*test_uses_rec[[]board-a[]] PASSED*", "*test_uses_rec[[]board-b[]] PASSED*"]
    )
    result.stdout.fnmatch_lines(
        ["*test_needs_other[[]board-b[]] PASSED*", "*test_arm_only[[]board-b[]] PASSED*"]
    )


def test_k_selects_one_board(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "-v", "-k", "board-b")
    result.assert_outcomes(passed=3, skipped=1, deselected=5)
    assert "board-a" not in "".join(line for line in result.outlines if "PASSED" in line)


def test_env_var_holds_several_paths(boards: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUMPSTARTER_TARGET", os.pathsep.join(["boards/a.yaml", "boards/b.yaml"]))
    result = boards.runpytest("-v")
    result.stdout.fnmatch_lines(
        ["*test_uses_rec[[]board-a[]] PASSED*", "*test_uses_rec[[]board-b[]] PASSED*"]
    )


def test_command_line_wins_over_the_env_var(boards: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUMPSTARTER_TARGET", "boards/b.yaml")
    result = boards.runpytest("-v", "--target=boards/a.yaml")
    result.stdout.fnmatch_lines(["*test_uses_rec[[]board-a[]] PASSED*"])
    assert "board-b" not in result.stdout.str()


def test_ini_option_lists_targets_relative_to_the_ini_file(boards: pytest.Pytester) -> None:
    boards.makeini("[pytest]\njumpstarter_targets =\n    boards/a.yaml\n    boards/b.yaml\n")
    sub = boards.mkdir("sub")
    result = boards.runpytest(
        "-v", f"--rootdir={boards.path}", "-c", str(boards.path / "tox.ini"), str(sub.parent)
    )
    result.stdout.fnmatch_lines(
        ["*test_uses_rec[[]board-a[]] PASSED*", "*test_uses_rec[[]board-b[]] PASSED*"]
    )


def test_without_target_device_tests_skip_saying_how_to_enable_them(boards: pytest.Pytester) -> None:
    result = boards.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(
        ["*needs a target: pass --target=board.yaml, set JUMPSTARTER_TARGET*jumpstarter_targets*"]
    )
    assert "[board-a]" not in result.stdout.str()
    assert events(boards) == []


def test_unmet_role_skips_for_that_target_naming_what_is_missing(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "-rs")
    result.stdout.fnmatch_lines(
        [
            "*target 'board-a' cannot run this test: no device with role 'other' (it has: rec)*",
            "*target 'board-a' cannot run this test: label arch is 'x86_64', the test needs 'aarch64'*",
            "*target 'board-b' cannot run this test: label arch is 'aarch64', "
            "the test needs 'x86_64' or 'riscv64'*",
        ]
    )


def test_missing_label_is_named_in_the_skip_reason(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "a.yaml", BOARD_A)
    rec_pytester.makepyfile("import pytest\n@pytest.mark.device(usb=True)\ndef test_x(): pass\n")
    result = rec_pytester.runpytest("--target=a.yaml", "-rs")
    result.stdout.fnmatch_lines(["*no label 'usb' (the test needs usb='true')*"])


def test_fixture_without_marker_counts_as_marked(boards: pytest.Pytester) -> None:
    boards.makepyfile(
        test_indirect="""
        import pytest

        @pytest.fixture
        def booted(other):
            return other

        def test_through_a_fixture(booted):
            assert booted.started
        """
    )
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "-rs", "test_indirect.py")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*board-a*no device with role 'other'*"])


def test_device_marker_is_registered_for_strict_markers(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--strict-markers", "--target=boards/a.yaml")
    assert result.ret == 0
    result = boards.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.device(*roles, **labels)*"])


def test_jumpstarter_list_shows_targets_devices_and_tests_without_starting_anything(
    boards: pytest.Pytester,
) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "--jumpstarter-list")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "jumpstarter targets (2):",
            "target board-a  (boards/a.yaml)",
            "  labels: arch=x86_64, lab=north",
            "  devices (1):",
            "    rec: driver rec, role rec, scope test, reset none",
            "  tests that run here (2):",
            "    test_boards.py::test_uses_rec[[]board-a[]]",
            "    test_boards.py::test_x86_or_riscv[[]board-a[]]",
            "  tests skipped here (2):",
            "*test_needs_other[[]board-a[]]: target 'board-a' cannot run this test: "
            "no device with role 'other'*",
            "*",
            "target board-b  (boards/b.yaml)",
            "*",
            "tests that use no device: 1",
        ]
    )
    assert "passed" not in result.stdout.str()
    assert events(boards) == []


def test_jumpstarter_list_without_targets_says_how_to_add_one(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--jumpstarter-list")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["jumpstarter: no targets configured (pass --target=board.yaml*"])


def test_report_header_names_the_targets_in_collect_only(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--collect-only", "-q", "-p", "no:randomly")
    result = boards.runpytest("--target=boards/a.yaml", "--collect-only")
    result.stdout.fnmatch_lines(["jumpstarter targets: board-a (boards/a.yaml, 1 devices)"])
    result.stdout.fnmatch_lines(["*<Function test_uses_rec[[]board-a[]]>*"])


def test_tests_without_devices_are_not_parametrized(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--target=boards/b.yaml", "--collect-only", "-q")
    assert "test_boards.py::test_plain\n" in result.stdout.str() + "\n"
    assert "test_plain[" not in result.stdout.str()


def test_disabling_the_plugin_turns_everything_off(boards: pytest.Pytester) -> None:
    boards.makepyfile(test_boards="def test_plain():\n    pass\n")
    (boards.path / "conftest.py").unlink()  # its hook implementations would be unknown hooks
    result = boards.runpytest("-p", "no:jumpstarter", "--target=boards/a.yaml")
    assert result.ret == 4  # --target is not an option any more
    result.stderr.fnmatch_lines(["*unrecognized arguments: --target*"])
    result = boards.runpytest("-p", "no:jumpstarter")
    result.assert_outcomes(passed=1)
    assert "jumpstarter" not in result.stdout.str()


def test_third_party_driver_and_fixture_from_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from pytest_jumpstarter import Driver, Setting, device_fixture

        class Probe(Driver):
            name = "probe"
            role = "probe"
            settings = {"channel": Setting("int", 1)}

        @pytest.hookimpl
        def pytest_jumpstarter_add_drivers():
            return [Probe]

        probe = device_fixture("probe")
        """
    )
    write(pytester, "t.yaml", "name: lab\ndevices:\n  my_probe: {driver: probe, channel: 3}\n")
    pytester.makepyfile(
        """
        def test_probe(probe, target):
            assert probe.ctx.settings["channel"] == 3
            assert target.device("my_probe") is probe
            assert target.name == "lab"
        """
    )
    result = pytester.runpytest("--target=t.yaml", "-v")
    result.stdout.fnmatch_lines(["*test_probe[[]lab[]] PASSED*"])


def test_two_drivers_with_one_name_is_an_error_naming_both(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester,
        "more_drivers.py",
        "import pytest\nfrom pytest_jumpstarter import Driver\n"
        "class Rec2(Driver):\n    name = 'rec'\n"
        "@pytest.hookimpl\ndef pytest_jumpstarter_add_drivers():\n    return [Rec2]\n",
    )
    write(rec_pytester, "a.yaml", BOARD_A)
    rec_pytester.syspathinsert()
    result = rec_pytester.runpytest("-p", "more_drivers", "--target=a.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*driver name 'rec' is provided twice: *conftest.Rec (from *) "
            "and more_drivers.Rec2 (from *more_drivers*)*"
        ]
    )


def test_role_served_by_a_differently_named_device(rec_pytester: pytest.Pytester) -> None:
    write(
        rec_pytester,
        "t.yaml",
        "name: t\ndevices:\n  main_board: {driver: rec}\n  aux: {driver: other, role: helper}\n",
    )
    rec_pytester.makepyfile(
        """
        import pytest
        @pytest.mark.device("helper")
        def test_roles(rec, target):
            assert rec.ctx.name == "main_board"
            assert target.device("helper").ctx.name == "aux"
            assert target.has("rec") and not target.has("flasher")
            with pytest.raises(LookupError, match="no device with role 'flasher'"):
                target.device("flasher")
        """
    )
    result = rec_pytester.runpytest("--target=t.yaml")
    result.assert_outcomes(passed=1)


def test_ambiguous_role_skips_with_a_reason(rec_pytester: pytest.Pytester) -> None:
    write(rec_pytester, "t.yaml", "name: t\ndevices:\n  one: {driver: rec}\n  two: {driver: rec}\n")
    rec_pytester.makepyfile("def test_x(rec): pass\n")
    result = rec_pytester.runpytest("--target=t.yaml", "-rs")
    result.stdout.fnmatch_lines(["*role 'rec' is served by several devices (one, two)*"])


def test_without_a_target_only_the_families_fixture_modules_load(pytester: pytest.Pytester) -> None:
    # The families' top modules define the device fixtures, so they load at every start; their
    # drivers (and pexpect, PyYAML, qemu.qmp) only when a target needs them.
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            loaded = sorted(
                m for m in sys.modules
                if m.startswith("pytest_jumpstarter_") and "." in m or m in ("pexpect", "yaml", "qemu.qmp")
            )
            print("driver modules loaded:", loaded or "none")
        """
    )
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-s")
    result.stdout.fnmatch_lines(["*driver modules loaded: none"])
    write(pytester, "t.yaml", "name: t\ndevices:\n  console: {driver: serial, url: 'loop://'}\n")
    result = pytester.runpytest_subprocess("-s", "--target=t.yaml")
    result.stdout.fnmatch_lines(["*driver modules loaded: [[]*'pytest_jumpstarter_serial.driver'*"])


def test_device_fixtures_come_from_their_families_and_mark_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_vm(qemu_vm): pass
        def test_flash(flasher): pass
        def test_tunnel(net_tunnel): pass
        def test_console(console): pass
        """
    )
    # No target: each is a device test, skipped saying how to give one (not "fixture not found").
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*needs a target*"])
    write(pytester, "t.yaml", "name: t\ndevices:\n  console: {driver: serial, url: 'loop://'}\n")
    result = pytester.runpytest("-rs", "--target=t.yaml")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*target 't' cannot run this test: no device with role 'qemu_vm'*"])
    # A family left out takes its fixture along; the others stay.
    result = pytester.runpytest("--target=t.yaml", "-p", "no:jumpstarter-drivers-qemu")
    result.assert_outcomes(passed=1, skipped=2, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'qemu_vm' not found*"])


def test_a_driver_package_from_the_entry_point_group_is_registered(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    write(
        pytester,
        "acme_drivers.py",
        "import pytest\nfrom pytest_jumpstarter import Driver\n"
        "class Relay(Driver):\n    name = 'acme-relay'\n    role = 'power'\n"
        "@pytest.hookimpl\ndef pytest_jumpstarter_add_drivers():\n    return [Relay]\n",
    )
    pytester.syspathinsert()
    real = metadata.entry_points

    def entry_points(**kw: str) -> object:
        found = list(real(**kw))
        if kw.get("group") == "pytest_jumpstarter.drivers":
            found.append(metadata.EntryPoint("acme", "acme_drivers", "pytest_jumpstarter.drivers"))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    write(pytester, "t.yaml", "name: t\ndevices:\n  relay: {driver: acme-relay}\n")
    pytester.makepyfile(
        "import pytest\n@pytest.mark.device('power')\ndef test_x(target):\n    assert target.device('power').started\n"
    )
    pytester.runpytest("--target=t.yaml").assert_outcomes(passed=1)
    blocked = pytester.runpytest("--target=t.yaml", "-p", "no:jumpstarter-drivers-acme")
    assert blocked.ret == pytest.ExitCode.USAGE_ERROR
    blocked.stderr.fnmatch_lines(["*unknown driver 'acme-relay'*"])


def test_jumpstarter_list_with_xdist_lists_in_this_process(boards: pytest.Pytester) -> None:
    result = boards.runpytest("--target=boards/a.yaml", "--jumpstarter-list", "-n", "2")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["  tests that run here (2):", "    test_boards.py::test_uses_rec[[]board-a[]]"]
    )


PROBE_CONFTEST = (
    "import pytest\nfrom pytest_jumpstarter import Driver\n"
    "class Probe(Driver):\n    name = 'acme-probe'\n    role = 'probe'\n"
    "@pytest.hookimpl\ndef pytest_jumpstarter_add_drivers():\n    return [Probe]\n"
)
PROBE_TEST = "def test_probe(target):\n    assert target.device('probe').started\n"
PROBE_BOARD = "name: t\ndevices:\n  probe: {driver: acme-probe}\n"


def test_a_driver_from_the_conftest_of_the_target_files_folder_is_known(pytester: pytest.Pytester) -> None:
    # pytest loads hil/conftest.py only when it collects hil/, after the targets are checked.
    write(pytester, "hil/conftest.py", PROBE_CONFTEST)
    write(pytester, "hil/test_probe.py", PROBE_TEST)
    write(pytester, "hil/board.yaml", PROBE_BOARD)
    pytester.runpytest("--target=hil/board.yaml").assert_outcomes(passed=1)
    pytester.runpytest("hil", "--target=hil/board.yaml").assert_outcomes(passed=1)


def test_a_driver_from_a_conftest_not_loaded_yet_is_unknown_saying_why(pytester: pytest.Pytester) -> None:
    write(pytester, "tests/hil/conftest.py", PROBE_CONFTEST)
    write(pytester, "tests/hil/test_probe.py", PROBE_TEST)
    write(pytester, "boards/board.yaml", PROBE_BOARD)
    result = pytester.runpytest("--target=boards/board.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*boards/board.yaml:3: devices.probe.driver: unknown driver 'acme-probe'*",
            "*note: targets are checked at start, when pytest has loaded only the conftest.py files of the rootdir,*"
            "*name that folder on the command line*",
        ]
    )
    # What the note says works.
    pytester.runpytest("tests/hil", "--target=boards/board.yaml").assert_outcomes(passed=1)
